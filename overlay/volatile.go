package overlay

// Reusable volatile mounts. A volatile mount never fsyncs the upper while
// it is mounted; it keeps the kernel's work/incompat/volatile/dirty marker
// so that no mount (the kernel's included) takes an upper it may have left
// inconsistent, and it records every upper object it changes:
//
//   - The sync set holds, per changed object (keyed by its upper inode
//     number), a read-only descriptor opened when the object was first
//     changed. The descriptor keeps the inode in memory, so a writeback
//     error on it is not lost to eviction, and fsync through it reports
//     every error since it was opened. Files whose data or metadata
//     changed and directories whose entries or xattrs changed are in it.
//   - A new symlink, device, FIFO or socket is made durable by the fsync of
//     its directory; a metadata change of an existing one cannot be synced
//     alone (it cannot be opened for fsync), nor can more objects than the
//     bound: past either, the set stops tracking and the end of the mount
//     syncs the whole upper filesystem (syncfs) instead, through a
//     descriptor opened at mount, which sees every writeback error since.
//   - Each object first changed is appended (file handle, no fsync) to the
//     journal in work/incompat/volatile/ (format/volatile.go), next to the
//     record of the upper filesystem's identity.
//
// A clean end of the mount (Close, after the kernel unmounted it) fsyncs
// every recorded object, or syncfs past the bound, and removes
// work/incompat/volatile only if every sync succeeded. A later mount that
// finds ovl's record after an unclean stop accepts the upper only if the
// identities match and the fsync of every journalled object succeeds
// (recoverVolatile); Config.VolatileRecovery says what else to do.

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/internal/fault"
)

// DefaultVolatileBound is the number of changed objects a volatile mount
// tracks one by one before it falls back to syncfs of the upper
// filesystem at unmount. Each costs one open descriptor in the daemon.
const DefaultVolatileBound = 16384

// Values of Config.VolatileRecovery.
const (
	RecoveryCheck   = ""        // refuse an upper that cannot be proven durable
	RecoveryAccept  = "accept"  // use it as it is
	RecoveryDiscard = "discard" // empty the upper and the workdir, then mount
)

// syncSet records what a volatile mount changed in the upper.
type syncSet struct {
	mu    sync.Mutex
	objs  map[uint64]int // upper inode number -> O_RDONLY descriptor
	bound int
	// syncfs is set once the set stopped tracking objects one by one: the
	// reason, for the log and the journal.
	syncfs string
	// sbFd is a descriptor of the upper root opened at mount: syncfs
	// through it reports writeback errors since the mount.
	sbFd    int
	journal int // the journal, O_APPEND; -1 when it could not be written
	mntFd   int // the upper root, for name_to_handle_at (not owned)
}

func newSyncSet(upperRoot, volDir, bound int) (*syncSet, error) {
	if bound <= 0 {
		bound = DefaultVolatileBound
	}
	sbFd, err := unix.Open(format.ProcPath(upperRoot), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	j, err := format.OpenAt(volDir, format.VolatileJournalName, unix.O_CREAT|unix.O_TRUNC|unix.O_WRONLY|unix.O_APPEND|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		unix.Close(sbFd)
		return nil, err
	}
	return &syncSet{objs: map[uint64]int{}, bound: bound, sbFd: sbFd, journal: j, mntFd: upperRoot}, nil
}

// stopTracking switches to syncfs at the end; s.mu is held.
func (s *syncSet) stopTracking(reason string) {
	if s.syncfs != "" {
		return
	}
	s.syncfs = reason
	s.appendJournal(format.JournalEntry{Syncfs: reason})
	// syncfs through sbFd covers them, errors included.
	for ino, fd := range s.objs {
		unix.Close(fd)
		delete(s.objs, ino)
	}
}

// appendJournal writes one entry; s.mu is held. A journal that cannot be
// written makes an unclean stop unprovable: it says so, once.
func (s *syncSet) appendJournal(e format.JournalEntry) {
	if s.journal < 0 {
		return
	}
	if _, err := unix.Write(s.journal, e.Line()); err != nil {
		log.Printf("volatile journal: %v; after an unclean stop this upper will need -o volatile_recovery=", err)
		unix.Close(s.journal)
		s.journal = -1
	}
}

// add records the object open at fd (any descriptor, O_PATH included).
func (s *syncSet) add(fd int) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return // gone: nothing of it to make durable
	}
	kind := st.Mode & unix.S_IFMT
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.syncfs != "" {
		return
	}
	if _, ok := s.objs[st.Ino]; ok {
		return
	}
	if kind != unix.S_IFREG && kind != unix.S_IFDIR {
		s.stopTracking("the metadata of a symlink, device, FIFO or socket changed")
		return
	}
	if len(s.objs) >= s.bound {
		s.stopTracking(fmt.Sprintf("more than %d objects changed", s.bound))
		return
	}
	flags := unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK
	if kind == unix.S_IFDIR {
		flags |= unix.O_DIRECTORY
	}
	rfd, err := unix.Open(format.ProcPath(fd), flags, 0)
	if err != nil {
		s.stopTracking(fmt.Sprintf("cannot open a changed object for fsync: %v", err))
		return
	}
	h, _, err := unix.NameToHandleAt(rfd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		unix.Close(rfd)
		s.stopTracking(fmt.Sprintf("no file handle for a changed object: %v", err))
		return
	}
	s.objs[st.Ino] = rfd
	s.appendJournal(format.JournalEntry{HandleType: h.Type(), Handle: h.Bytes()})
}

// addAt records name in dirfd.
func (s *syncSet) addAt(dirfd int, name string) {
	fd, err := format.OpenAt(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && (st.Mode&unix.S_IFMT == unix.S_IFREG || st.Mode&unix.S_IFMT == unix.S_IFDIR) {
		s.add(fd)
	}
	unix.Close(fd)
}

// len returns the number of objects tracked one by one.
func (s *syncSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.objs)
}

// finish makes every recorded change durable and reports the first
// error; it releases the set's descriptors.
func (s *syncSet) finish() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	fds := make([]int, 0, len(s.objs))
	for _, fd := range s.objs {
		fds = append(fds, fd)
	}
	errs = append(errs, fsyncAll(fds)...)
	for _, fd := range fds {
		unix.Close(fd)
	}
	s.objs = map[uint64]int{}
	if s.syncfs != "" {
		if err := unix.Syncfs(s.sbFd); err != nil {
			errs = append(errs, fmt.Errorf("syncfs of the upper (%s): %w", s.syncfs, err))
		}
	}
	unix.Close(s.sbFd)
	s.sbFd = -1
	if s.journal >= 0 {
		unix.Close(s.journal)
		s.journal = -1
	}
	return errors.Join(errs...)
}

// fsyncWorkers is how many fsyncs finish runs at once: a journaling
// filesystem commits concurrent fsyncs together (ext4's and xfs's group
// commit), where one after the other each waits for a commit and a cache
// flush of its own.
const fsyncWorkers = 64

// fsyncAll fsyncs every descriptor and returns the first few errors. It
// starts the writeback of all of them first, so that the data goes out in
// one stream.
func fsyncAll(fds []int) []error {
	for _, fd := range fds {
		unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	next := make(chan int)
	for range min(fsyncWorkers, len(fds)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fd := range next {
				if err := unix.Fsync(fd); err != nil {
					p, _ := os.Readlink(format.ProcPath(fd))
					mu.Lock()
					if len(errs) < 4 {
						errs = append(errs, fmt.Errorf("fsync %s: %w", p, err))
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, fd := range fds {
		next <- fd
	}
	close(next)
	wg.Wait()
	return errs
}

// note records that the upper object open at fd changed, on a volatile
// mount; nothing otherwise.
func (o *Overlay) note(fd int) {
	if o.syncs != nil && fd >= 0 {
		o.syncs.add(fd)
	}
}

// noteUpper is note for n's own upper object, open at fd: once per node,
// as a node's upper object never changes once it is there.
func (n *Node) noteUpper(fd int) {
	if n.o.syncs == nil || n.noted.Load() {
		return
	}
	n.o.note(fd)
	n.noted.Store(true)
}

// noteAt is note for name in dirfd.
func (o *Overlay) noteAt(dirfd int, name string) {
	if o.syncs != nil && dirfd >= 0 {
		o.syncs.addAt(dirfd, name)
	}
}

// startVolatile makes the kernel's marker and ovl's record and starts the
// sync set; mode is work/'s.
func (o *Overlay) startVolatile(mode uint32) error {
	if err := makeVolatileMarker(o.work, mode); err != nil {
		return err
	}
	vol, err := format.OpenAt(o.work, filepath.Join(format.IncompatDirName, format.VolatileDirName), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(vol)
	id, err := format.VolatileIdentity(o.upper.path, o.upper.root)
	if err != nil {
		return err
	}
	if id.MountIDKind != format.MountIDUnique {
		log.Printf("volatile: this kernel has no STATX_MNT_ID_UNIQUE; the record holds the reusable mount id")
	}
	if err := format.WriteVolatileRecord(vol, id); err != nil {
		return err
	}
	s, err := newSyncSet(o.upper.root, vol, o.cfg.VolatileBound)
	if err != nil {
		return err
	}
	o.syncs = s
	return nil
}

// volatileClosingName, in work/incompat/volatile/, says that a volatile
// mount's daemon is syncing at its end: a new mount of the upper waits for
// its lock up to volatileCloseWait instead of calling it busy at once.
const volatileClosingName = "ovl-closing"

const volatileCloseWait = 5 * time.Minute

// volatileClosing reports whether the workdir wfd has a volatile mount
// syncing at its end.
func volatileClosing(wfd int) bool {
	p := filepath.Join(format.WorkDirName, format.IncompatDirName, format.VolatileDirName, volatileClosingName)
	fd, err := format.OpenAt(wfd, p, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// finishVolatile ends a volatile mount cleanly: sync what it changed, and
// only then remove the marker. On failure the marker stays, and the error
// says why.
func (o *Overlay) finishVolatile() error {
	s := o.syncs
	o.syncs = nil
	if fd, err := format.OpenAt(o.work, filepath.Join(format.IncompatDirName, format.VolatileDirName, volatileClosingName),
		unix.O_CREAT|unix.O_WRONLY|unix.O_NOFOLLOW, 0o600); err == nil {
		unix.Close(fd)
	}
	start := time.Now()
	n, mode := s.len(), "fsync of each"
	if s.syncfs != "" {
		mode = "syncfs (" + s.syncfs + ")"
	}
	err := fault.Hit("volatile.finish")
	if err == nil {
		err = s.finish()
	}
	if err != nil {
		volDir := filepath.Join(format.IncompatDirName, format.VolatileDirName)
		// The error is reported now and never again (the kernel clears a
		// writeback error once fsync returned it): a later mount must not
		// take a clean fsync for proof, so the failure is written down.
		if werr := writeSyncFailed(o.work, volDir, err); werr != nil {
			log.Printf("volatile: recording the failed sync in %s: %v", volDir, werr)
		}
		unix.Unlinkat(o.work, filepath.Join(volDir, volatileClosingName), 0)
		return fmt.Errorf("volatile upper %s not made durable, the marker stays: %w", o.cfg.Upper, err)
	}
	if err := removeVolatileMarker(o.work); err != nil {
		return fmt.Errorf("volatile upper %s is durable, but removing its marker failed: %w", o.cfg.Upper, err)
	}
	// Best effort: a removal lost to a crash of the machine only makes the
	// next boot refuse the upper (its boot id differs).
	fsyncAt(o.work, ".")
	log.Printf("volatile: upper %s made durable by %s of %d changed objects in %.3f s; marker removed",
		o.cfg.Upper, mode, n, time.Since(start).Seconds())
	return nil
}

// writeSyncFailed writes cause into format.VolatileFailedName in volDir
// (under workFd), durably: this file is the only trace of the error.
func writeSyncFailed(workFd int, volDir string, cause error) error {
	fd, err := format.OpenAt(workFd, filepath.Join(volDir, format.VolatileFailedName),
		unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = unix.Write(fd, []byte(oneLine(cause.Error())+"\n"))
	if err == nil {
		err = unix.Fsync(fd)
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return fsyncAt(workFd, volDir)
}

// oneLine folds s onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// removeVolatileMarker removes work/incompat/volatile and, when empty,
// work/incompat: the kernel refuses any entry there, an empty
// directory included.
func removeVolatileMarker(workFd int) error {
	inc, err := format.OpenAt(workFd, format.IncompatDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(inc)
	vol, err := format.OpenAt(inc, format.VolatileDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err == nil {
		err = removeContents(vol)
		unix.Close(vol)
		if err == nil {
			err = unix.Unlinkat(inc, format.VolatileDirName, unix.AT_REMOVEDIR)
		}
	}
	if err != nil && err != unix.ENOENT {
		return err
	}
	if err := unix.Unlinkat(workFd, format.IncompatDirName, unix.AT_REMOVEDIR); err != nil && err != unix.ENOTEMPTY && err != unix.EEXIST {
		return err
	}
	return nil
}

// recoverVolatile deals with a volatile marker that an earlier mount left
// (it did not stop cleanly: a clean stop removes it). Another feature's
// entry in work/incompat is left to checkIncompat. An upper whose record
// matches this boot, device, mount and filesystem, and whose journalled
// objects all fsync without error, is accepted and the marker removed;
// otherwise Config.VolatileRecovery decides: refuse (the default, one
// line saying why and what to do), accept as it is, or discard.
func (o *Overlay) recoverVolatile(wfd int, workdir string) error {
	inc, err := format.OpenAt(o.work, format.IncompatDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(inc)
	names, err := readNames(inc)
	if err != nil {
		return nil
	}
	for _, n := range names {
		if n != format.VolatileDirName {
			return nil // checkIncompat refuses it
		}
	}
	vol, err := format.OpenAt(inc, format.VolatileDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(vol)
	why := o.volatileDurable(vol)
	if why == "" {
		log.Printf("volatile: the upper %s left by an unclean stop was made durable (identities match, every recorded change synced); accepted", o.cfg.Upper)
		return removeVolatileMarker(o.work)
	}
	switch o.cfg.VolatileRecovery {
	case RecoveryAccept:
		log.Printf("volatile: accepting the upper %s as it is (volatile_recovery=accept), although %s", o.cfg.Upper, why)
		return removeVolatileMarker(o.work)
	case RecoveryDiscard:
		log.Printf("volatile: discarding the contents of upper %s and workdir %s (volatile_recovery=discard): %s", o.cfg.Upper, workdir, why)
		if err := removeContents(o.upper.root); err != nil {
			return fmt.Errorf("discard upper %s: %w", o.cfg.Upper, err)
		}
		// The index describes the upper's objects: it goes with them.
		if idx, err := format.OpenAt(wfd, format.IndexDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0); err == nil {
			err = removeContents(idx)
			unix.Close(idx)
			if err != nil {
				return fmt.Errorf("discard %s/%s: %w", workdir, format.IndexDirName, err)
			}
		}
		return removeVolatileMarker(o.work)
	case RecoveryCheck:
	default:
		return fmt.Errorf("volatile_recovery=%s: want accept or discard", o.cfg.VolatileRecovery)
	}
	return fmt.Errorf("workdir %s: overlay with incompat feature 'volatile' cannot be mounted: a volatile mount of upper %s did not stop cleanly and %s, so writes to it may be lost: "+
		"mount with -o volatile_recovery=accept to use the upper as it is, or -o volatile_recovery=discard to empty it", workdir, o.cfg.Upper, why)
}

// volatileDurable returns "" when the upper a crashed volatile mount left
// is as durable as a clean unmount would have made it, else why not.
func (o *Overlay) volatileDurable(vol int) string {
	if fd, err := format.OpenAt(vol, format.VolatileFailedName, unix.O_RDONLY|unix.O_NOFOLLOW, 0); err == nil {
		buf := make([]byte, 512)
		n, _ := unix.Read(fd, buf)
		unix.Close(fd)
		return fmt.Sprintf("its own sync at the end of the mount failed (%s)", strings.TrimSpace(string(buf[:max(n, 0)])))
	}
	rec, err := format.ReadVolatileRecord(vol)
	if errors.Is(err, unix.ENOENT) {
		return "it left no record of what it changed (a mount by the kernel or an older ovl)"
	}
	if err != nil {
		return fmt.Sprintf("its record is unreadable (%v)", err)
	}
	cur, err := format.VolatileIdentity(o.upper.path, o.upper.root)
	if err != nil {
		return fmt.Sprintf("the upper's identity cannot be read (%v)", err)
	}
	if why := rec.Mismatch(cur); why != "" {
		return why
	}
	entries, err := format.ReadVolatileJournal(vol)
	if err != nil {
		return fmt.Sprintf("its journal is unreadable (%v)", err)
	}
	// open_by_handle_at takes no O_PATH descriptor as its mount (EBADF).
	mnt, err := unix.Open(format.ProcPath(o.upper.root), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Sprintf("the upper cannot be opened (%v)", err)
	}
	defer unix.Close(mnt)
	synced := 0
	for _, e := range entries {
		if e.Syncfs != "" {
			if err := unix.Syncfs(mnt); err != nil {
				return fmt.Sprintf("the syncfs of the upper failed (%v)", err)
			}
			continue
		}
		fd, err := unix.OpenByHandleAt(mnt, unix.NewFileHandle(e.HandleType, e.Handle), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY)
		if err == unix.ESTALE || err == unix.ENOENT {
			continue // removed since: its directory's entry is what counts, and that is recorded
		}
		if err == unix.EPERM || err == unix.EACCES {
			// No CAP_DAC_READ_SEARCH (rootless): a syncfs covers every
			// recorded object, and reports the same unseen errors.
			if err := unix.Syncfs(mnt); err != nil {
				return fmt.Sprintf("the syncfs of the upper failed (%v)", err)
			}
			log.Printf("volatile: cannot open file handles without CAP_DAC_READ_SEARCH; synced the whole upper filesystem instead")
			return ""
		}
		if err != nil {
			return fmt.Sprintf("a recorded change cannot be reopened to sync it (%v)", err)
		}
		err = fault.Hit("volatile.recover")
		if err == nil {
			err = unix.Fsync(fd)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Sprintf("the fsync of a recorded change failed (%v)", err)
		}
		synced++
	}
	log.Printf("volatile: synced %d recorded objects of the earlier mount", synced)
	return ""
}
