// Package overlay is the merged view of an overlay filesystem, without FUSE:
// lookup through the layers, readdir merge, copy-up, whiteouts and opaque
// directories, and the namespace operations. It writes the kernel's on-disk
// format (package format) and follows the kernel's rules
// (Documentation/filesystems/overlayfs.rst); the function comments name the
// kernel function whose behaviour they mirror.
//
// Rules this package enforces:
//   - Only the upper layer is ever written; every layer is reached through
//     directory file descriptors with format.Resolve, so no symlink or mount
//     inside a layer leads outside it.
//   - An object changes layer only by copy-up, which builds the copy in
//     work/ and renames it into place: no reader sees a half-made object.
//   - AUFS whiteouts and opaque marks (format/aufs.go) count in every layer,
//     the upper included (aufs.go); their names are never objects. ovl
//     writes only the kernel's whiteouts: an AUFS whiteout in the upper
//     becomes one before a name it hides is made again.
//   - A volatile mount never fsyncs the upper while mounted, records every
//     upper object it changes, and at a clean Close syncs exactly those and
//     only then removes the kernel's work/incompat/volatile marker; a
//     marker left by an unclean stop is accepted only when proven durable
//     (volatile.go).
//   - Overlapping layers are refused at mount, as by the kernel, and no
//     lookup through the overlay reaches a layer root or work directory
//     that an allowed overlap (an upper inside a lower) puts in a layer: it
//     answers ELOOP (overlap.go).
//   - With Config.LowerCache, a lookup or listing in a lower directory
//     whose inode and ctime match the layer's index is answered from the
//     index (cache.go); every other access to a lower layer is real.
//   - A node's Key is its identity, for the binding's table of nodes; its
//     Ino is the st_ino it reports, which several objects may share (the
//     names of a lower hard link) and a copy-up may change (ino.go).
//   - Each directory node holds O_PATH descriptors of its directories in each
//     layer it merges; non-directories are reached through their parent's.
//   - A Node lives while it has references (Ref, Forget): one per holder,
//     such as each FUSE inode that stands for it, each request or lookup in
//     progress that uses it, each child node (a node holds its parent, as a
//     dentry does), the overlay for the root. The last Forget closes its
//     descriptors; a released node answers ESTALE, never panics, and never
//     comes back (Ref needs a reference already held). Stats.Nodes counts
//     the nodes from their first reference to their last.
//
// Locking, in acquisition order:
//  1. Overlay.renameMu serialises renames (the kernel's s_vfs_rename_mutex).
//  2. Node.mu serialises copy-up of a node and guards its layer state; a
//     node's mu may be held while its ancestors' are taken, never the reverse.
//  3. Node.dirMu serialises namespace changes inside a directory; at most one
//     is held, except by rename, which takes two in Key order. Copy-up never
//     starts while a dirMu is held.
//  4. Overlay.treeMu guards Node.parent and Node.name.
//  5. Overlay.keptMu guards Overlay.kept; nothing is taken under it.
//
// Node.refs is atomic: Ref takes no lock. A Forget that drops the last
// reference takes the node's mu, keptMu and treeMu in turn, none while
// another is held, and then Forgets the parent; so no overlay lock is held
// where a last reference may go.
//
// What a caller (the FUSE binding, fusefs) may hold when it calls in: none
// of the locks above, which are the package's own. Of its own locks it may
// hold those that overlay never takes, which then come before all of the
// above: fusefs holds a passthrough object's lock (ptNode.mu) across Open
// and Setattr, which may copy up, and its inode table's lock across Ref
// and Key/Ino/Kind only, never across a call that may take an overlay lock.
package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/idmap"
	"github.com/ovl-project/ovl/layerindex"
)

// Config describes the layers of an overlay, in the kernel's terms.
type Config struct {
	// Lowers are the read-only layers, topmost first (lowerdir=A:B puts A over B).
	Lowers []string
	// Upper is the writable layer; empty gives a read-only overlay.
	Upper string
	// Work is the work directory: empty, on the same filesystem as Upper.
	Work string
	// UserXattr stores overlay xattrs under user.overlay.* instead of trusted.overlay.*.
	UserXattr bool
	// Volatile skips every fsync of the upper while mounted, as the
	// kernel's "volatile" option (fsync=volatile); ovl records what it
	// changes and makes that durable at a clean Close (volatile.go).
	Volatile bool
	// FsyncStrict is the kernel's fsync=strict: a copy-up, metadata-only
	// ones included, completes only once the upper object and its parent
	// directory are synced. Without it (fsync=auto) only the data of a
	// copied-up regular file is synced before it is renamed into place.
	FsyncStrict bool
	// VolatileRecovery says what to do with an upper that a volatile
	// mount left after an unclean stop and that cannot be proven durable
	// (volatile.go): RecoveryCheck refuses it, RecoveryAccept uses it as
	// it is, RecoveryDiscard empties it first.
	VolatileRecovery string
	// VolatileBound is how many changed objects a volatile mount syncs
	// one by one at unmount before it falls back to syncfs of the upper
	// filesystem; 0 means DefaultVolatileBound.
	VolatileBound int
	// RedirectDir is the kernel's redirect_dir=: "on" renames directories
	// that have a lower part by writing overlay.redirect, and follows
	// redirects; "follow" and "off" follow them but rename such
	// directories with EXDEV; "nofollow" ignores them. Empty means "on",
	// or "nofollow" with UserXattr (the kernel refuses redirects there).
	RedirectDir string
	// Metacopy is the kernel's metacopy=: "on" copies up only the metadata
	// of a regular file for chmod, chown, utimes, xattr changes, link and
	// rename (see metacopy.go). It needs redirects. Empty means "off".
	Metacopy string
	// Index is the kernel's index=: "on" keeps the names of a lower hard
	// link one object across copy-up (see index.go). Empty means "off".
	Index string
	// IDs maps owners between the layers and the mount (fuse-overlayfs's
	// uidmapping=, gidmapping= and squash options; see owner.go). Nil
	// shows the layers' owners as they are.
	IDs *idmap.Map
	// XattrPermissions is fuse-overlayfs's xattr_permissions=: 0 keeps
	// owners and modes in the upper's inodes; 1 and 2 keep those of new
	// regular files and directories in security.fuseoverlayfs.override_stat
	// and user.fuseoverlayfs.override_stat, and read the override xattrs
	// of every layer (see owner.go).
	XattrPermissions int
	// LowerCache is a directory of layer indexes (package layerindex):
	// lookups and listings of lower directories are answered from a
	// lower's index where it has a valid one, built at mount where it has
	// none. Empty: no index (cache.go).
	LowerCache string
}

// redirectMode resolves Config.RedirectDir: whether redirects are made and
// whether they are followed.
func (c Config) redirectMode() (create, follow bool, err error) {
	switch c.RedirectDir {
	case "":
		return !c.UserXattr, !c.UserXattr, nil
	case "on":
		if c.UserXattr {
			return false, false, errors.New("redirect_dir=on conflicts with userxattr (the kernel does not follow redirects in user.overlay.*)")
		}
		return true, true, nil
	case "follow", "off":
		if c.UserXattr && c.RedirectDir == "follow" {
			return false, false, errors.New("redirect_dir=follow conflicts with userxattr")
		}
		return false, !c.UserXattr, nil
	case "nofollow":
		return false, false, nil
	}
	return false, false, fmt.Errorf("redirect_dir=%s: want on, follow, nofollow or off", c.RedirectDir)
}

// Redirects reports whether an overlay of c writes overlay.redirect when
// it renames a directory with a lower part (create) and whether its
// lookups follow one (follow), or why c's options conflict.
func (c Config) Redirects() (create, follow bool, err error) { return c.redirectMode() }

// Stats counts what the overlay has done since it was created.
type Stats struct {
	CopyUps     uint64 `json:"copy_ups"`
	CopyUpBytes uint64 `json:"copy_up_bytes"`
	Whiteouts   uint64 `json:"whiteouts"`
	Lookups     uint64 `json:"lookups"`
	Nodes       int64  `json:"nodes"`
}

// layer is one opened layer directory.
type layer struct {
	path   string
	root   int  // O_PATH fd of the layer root (a detached clone when cloned)
	cloned bool // walks cannot see submounts
	dev    uint64
	fsIdx  uint64 // index of the layer's filesystem among the overlay's, for inode numbers
	uuid   [16]byte
	hasID  bool // uuid valid: origin handles can be written and checked

	mountOnce sync.Once
	mfd       int // see mountFd

	// mapped: a lower on an idmapped mount, whose inode owners are the
	// mount's already; overrides: the override xattrs its objects are
	// read for, in order (see owner.go). Written only by New.
	mapped    bool
	overrides []string

	// cache is the layer's index (cache.go), nil without, kept in
	// cacheFile; written only by New. staleLogged: a directory no longer
	// matches it (logged once, and the file removed).
	cache       *layerindex.Index
	cacheFile   string
	staleLogged atomic.Bool
}

// Overlay is a merged view of the layers in a Config.
type Overlay struct {
	cfg        Config
	names      format.Names
	upper      *layer   // nil when read-only
	lowers     []*layer // topmost first
	work       int      // O_PATH fd of workdir/work, -1 when read-only
	lockFd     int      // flock'ed upperdir, -1 when read-only
	lockWorkFd int      // flock'ed workdir, -1 when read-only

	root *Node

	// syncs records what a volatile mount changed (volatile.go); nil
	// otherwise. Set by New, cleared by Close.
	syncs *syncSet

	renameMu sync.Mutex
	treeMu   sync.RWMutex
	// kept maps the upper inode number of a copied-up non-directory whose
	// key differs from what a lookup of the upper object computes (a split
	// lower hard link) to the node that holds the object; see keep.
	keptMu sync.Mutex
	kept   map[uint64]*Node
	// renumbered is OnRenumber's function, nil if none.
	renumbered atomic.Pointer[func(dir *Node)]
	tempSeq    atomic.Uint64
	// noClone: a FICLONE into the upper filesystem failed as unsupported;
	// copy-ups copy the data without trying again (copyData).
	noClone  atomic.Bool
	xinoBits uint

	// whShared names the whiteout in work/ that new whiteouts are hard
	// links of (see tempWhiteout); whNoShare is set once linking failed.
	whMu      sync.Mutex
	whShared  string
	whNoShare bool
	// high bits that carry the filesystem index in inode numbers

	index      int  // O_PATH fd of workdir/index, -1 without index
	indexOn    bool // index=on
	metacopyOn bool // metacopy=on

	createRedirects bool // rename directories with a lower part (overlay.redirect)
	followRedirects bool // lookups follow overlay.redirect

	// traps are the layer roots and work directories, which no lookup
	// may reach (see overlap.go); written only by New.
	traps map[format.DirID]bool

	// ids maps owners (nil: none); ovName is the override xattr new upper
	// objects get ("": none); owners: objects need more than their inode
	// for what the mount shows (see owner.go). Written only by New.
	ids    *idmap.Map
	ovName string
	owners bool

	stats struct {
		copyUps, copyUpBytes, whiteouts, lookups atomic.Uint64
		nodes                                    atomic.Int64
	}
}

// New opens the layers of cfg, checks them and prepares the work directory.
// It takes a lock on the work directory, which Close releases, so that two
// ovl mounts never share an upper.
//
// New sets the process umask to 0: the overlay applies each caller's umask
// itself, and a daemon umask would mask modes a second time.
func New(cfg Config) (*Overlay, error) {
	if len(cfg.Lowers) == 0 {
		return nil, errors.New("no lower layer given (lowerdir=)")
	}
	if (cfg.Upper == "") != (cfg.Work == "") {
		return nil, errors.New("upperdir and workdir must be given together")
	}
	createRedirects, followRedirects, err := cfg.redirectMode()
	if err != nil {
		return nil, err
	}
	// Before anything is opened or written: a lower inside the workdir
	// must not be emptied with work/.
	traps, err := checkLayers(cfg)
	if err != nil {
		return nil, err
	}
	raiseFileLimit()
	syscall.Umask(0)
	o := &Overlay{cfg: cfg, names: format.NewNames(cfg.UserXattr), work: -1, lockFd: -1, lockWorkFd: -1, index: -1,
		createRedirects: createRedirects, followRedirects: followRedirects, traps: traps}
	ok := false
	defer func() {
		if !ok {
			o.Close()
		}
	}()
	devs := map[uint64]uint64{}
	open := func(kind, path string) (*layer, error) {
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", kind, path, errors.Unwrap(err))
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("%s %s: not a directory", kind, path)
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", kind, path, err)
		}
		fd, cloned, err := format.OpenLayerRoot(abs)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", kind, path, errors.Unwrap(err))
		}
		var sst unix.Stat_t
		if err := unix.Fstat(fd, &sst); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("%s %s: %w", kind, path, err)
		}
		l := &layer{path: abs, root: fd, cloned: cloned, dev: sst.Dev}
		if idx, seen := devs[sst.Dev]; seen {
			l.fsIdx = idx
		} else {
			l.fsIdx = uint64(len(devs))
			devs[sst.Dev] = l.fsIdx
		}
		l.uuid, l.hasID = format.FSUUID(fd)
		return l, nil
	}
	if cfg.Upper != "" {
		if err := o.openUpper(devs); err != nil {
			return nil, err
		}
	}
	for _, p := range cfg.Lowers {
		l, err := open("lowerdir", p)
		if err != nil {
			return nil, err
		}
		o.lowers = append(o.lowers, l)
	}
	for len(devs) > 1<<o.xinoBits {
		o.xinoBits++
	}
	switch cfg.Metacopy {
	case "", "off":
	case "on":
		if !o.createRedirects {
			return nil, errors.New("metacopy=on needs redirect_dir=on (and is refused with userxattr, as by the kernel)")
		}
		o.metacopyOn = true
	default:
		return nil, fmt.Errorf("metacopy=%s: want on or off", cfg.Metacopy)
	}
	switch cfg.Index {
	case "", "on", "off":
	default:
		return nil, fmt.Errorf("index=%s: want on or off", cfg.Index)
	}
	if o.upper != nil && cfg.Index == "on" {
		if err := o.setupIndex(o.lockWorkFd); err != nil {
			return nil, err
		}
		o.indexOn = true
	}
	if err := o.setupOwners(); err != nil {
		return nil, err
	}
	o.loadCaches()
	// work/ and index/ are traps too (ovl_make_workdir, ovl_get_indexdir).
	for _, fd := range []int{o.work, o.index} {
		if fd < 0 {
			continue
		}
		if id, err := format.IDOf(fd); err == nil {
			o.traps[id] = true
		}
	}
	root, err := o.newRoot()
	if err != nil {
		return nil, err
	}
	o.root = root
	ok = true
	return o, nil
}

// openUpper checks upper and work against each other (both directories,
// one mount, xattrs supported; checkLayers has refused overlaps), opens
// them, locks the work directory, refuses a work/ marked with an
// incompatible feature, empties work/, and marks it for a volatile mount.
func (o *Overlay) openUpper(devs map[uint64]uint64) error {
	upper, work := o.cfg.Upper, o.cfg.Work
	for _, d := range []struct{ kind, path string }{{"upperdir", upper}, {"workdir", work}} {
		st, err := os.Stat(d.path)
		if err != nil {
			return fmt.Errorf("%s %s: %w", d.kind, d.path, errors.Unwrap(err))
		}
		if !st.IsDir() {
			return fmt.Errorf("%s %s: not a directory", d.kind, d.path)
		}
	}
	// Same directory, or one inside the other: checkLayers.
	ru, err1 := filepath.EvalSymlinks(upper)
	rw, err2 := filepath.EvalSymlinks(work)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("resolve upperdir/workdir: %w", errors.Join(err1, err2))
	}
	ru, _ = filepath.Abs(ru)
	rw, _ = filepath.Abs(rw)
	var ust, wst unix.Stat_t
	if unix.Stat(ru, &ust) == nil && unix.Stat(rw, &wst) == nil && ust.Dev != wst.Dev {
		return fmt.Errorf("upperdir %s and workdir %s are on different filesystems", upper, work)
	}
	ufd, wfd, cloned, err := format.OpenUpperWork(ru, rw)
	if err != nil {
		return err
	}
	defer unix.Close(wfd)
	l := &layer{path: ru, root: ufd, cloned: cloned, dev: ust.Dev}
	l.fsIdx = uint64(len(devs))
	devs[ust.Dev] = l.fsIdx
	l.uuid, l.hasID = format.FSUUID(ufd)
	o.upper = l

	// Lock both directories, as the kernel marks both "in use": two mounts
	// sharing either would corrupt each other.
	for _, d := range []struct {
		fd         int
		kind, path string
		lock       *int
	}{{ufd, "upperdir", upper, &o.lockFd}, {wfd, "workdir", work, &o.lockWorkFd}} {
		lfd, err := unix.Open(format.ProcPath(d.fd), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%s %s: %w", d.kind, d.path, err)
		}
		*d.lock = lfd
		// A daemon that was just unmounted may still be closing: wait a
		// little before calling the directory busy, longer while a
		// volatile mount's end syncs its changes (volatile.go).
		// Once the closing mark was seen, the wait goes on after it is
		// gone: the daemon removes it with the marker, then exits and
		// only then releases the lock.
		deadline := time.Now().Add(2 * time.Second)
		sawClosing := false
		for {
			err = unix.Flock(lfd, unix.LOCK_EX|unix.LOCK_NB)
			if err == nil {
				break
			}
			if err == unix.EWOULDBLOCK && time.Now().After(deadline) && (sawClosing || volatileClosing(wfd)) && time.Now().Before(deadline.Add(volatileCloseWait)) {
				sawClosing = true
				time.Sleep(100 * time.Millisecond)
				continue
			}
			if err != unix.EWOULDBLOCK || time.Now().After(deadline) {
				return fmt.Errorf("%s %s is in use by another ovl mount", d.kind, d.path)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// work/ must start empty, as the kernel empties it at mount.
	// The kernel makes work/ with mode 0; the mounter must still be able to
	// read it when it has no CAP_DAC_OVERRIDE.
	workMode := uint32(0)
	if os.Geteuid() != 0 {
		workMode = 0o700
	}
	if err := unix.Mkdirat(wfd, format.WorkDirName, workMode); err != nil && err != unix.EEXIST {
		return fmt.Errorf("create %s/%s: %w", work, format.WorkDirName, err)
	}
	o.work, err = format.OpenAt(wfd, format.WorkDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s/%s: %w", work, format.WorkDirName, err)
	}
	if o.cfg.Volatile && o.cfg.FsyncStrict {
		return errors.New("fsync=strict conflicts with volatile (fsync=volatile)")
	}
	if err := o.recoverVolatile(wfd, work); err != nil {
		return err
	}
	if err := checkIncompat(o.work, work); err != nil {
		return err
	}
	if err := removeContents(o.work); err != nil {
		return fmt.Errorf("empty %s/%s: %w", work, format.WorkDirName, err)
	}
	// The upper must take overlay xattrs: try one on a temporary.
	tmp := format.TempName(o.tempSeq.Add(1))
	if err := unix.Mkdirat(o.work, tmp, 0o700); err != nil {
		return fmt.Errorf("workdir %s: %w", work, err)
	}
	defer unix.Unlinkat(o.work, tmp, unix.AT_REMOVEDIR)
	tfd, err := format.OpenAt(o.work, tmp, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("workdir %s: %w", work, err)
	}
	defer unix.Close(tfd)
	if err := format.Setxattr(tfd, o.names.Name(format.Opaque), format.OpaqueValue(), 0); err != nil {
		hint := ""
		if !o.cfg.UserXattr {
			hint = " (try -o userxattr)"
		}
		return fmt.Errorf("upperdir %s: filesystem does not support %s xattrs: %v%s", upper, o.names.Prefix(), err, hint)
	}
	if o.cfg.Volatile {
		if err := o.startVolatile(workMode); err != nil {
			return fmt.Errorf("workdir %s: create the volatile marker %s/%s/%s/%s: %w", work,
				format.WorkDirName, format.IncompatDirName, format.VolatileDirName, format.DirtyName, err)
		}
	}
	return nil
}

// checkIncompat refuses a work directory whose work/incompat/ holds an
// entry, the mark of a feature that makes the upper unsafe to mount, such
// as a volatile mount's, whose upper may be inconsistent after a crash
// (kernel: ovl_workdir_cleanup_recurse, which fails the mount on the first
// entry it reads). Nothing is deleted. A work/incompat that is not a
// directory, or is empty, is a leftover emptied with work/, as by the
// kernel.
func checkIncompat(workFd int, workdir string) error {
	fd, err := format.OpenAt(workFd, format.IncompatDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err == unix.ENOENT || err == unix.ENOTDIR || err == unix.ELOOP {
		return nil
	}
	path := filepath.Join(workdir, format.WorkDirName, format.IncompatDirName)
	if err != nil {
		return fmt.Errorf("workdir %s: %s: %w", workdir, path, err)
	}
	defer unix.Close(fd)
	names, err := readNames(fd)
	if err != nil {
		return fmt.Errorf("workdir %s: read %s: %w", workdir, path, err)
	}
	for _, name := range names {
		if name == "." || name == ".." {
			continue
		}
		return fmt.Errorf("workdir %s: overlay with incompat feature '%s' cannot be mounted (%s/%s exists: "+
			"a mount with that feature used this upper, which may be inconsistent after a crash)", workdir, name, path, name)
	}
	return nil
}

// makeVolatileMarker creates work/incompat/volatile/dirty, as the kernel
// does at a volatile mount (ovl_create_volatile_dirty): until someone
// removes it, no mount takes this upper, which skipped every fsync. mode
// is work/'s; the kernel makes them all mode 0. Unlike the kernel, ovl
// removes it at a clean unmount, once what the mount changed is synced
// (volatile.go).
func makeVolatileMarker(workFd int, mode uint32) error {
	dir := workFd
	defer func() {
		if dir != workFd {
			unix.Close(dir)
		}
	}()
	for _, name := range []string{format.IncompatDirName, format.VolatileDirName} {
		if err := unix.Mkdirat(dir, name, mode); err != nil && err != unix.EEXIST {
			return err
		}
		fd, err := format.OpenAt(dir, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		if dir != workFd {
			unix.Close(dir)
		}
		dir = fd
	}
	fd, err := format.OpenAt(dir, format.DirtyName, unix.O_CREAT|unix.O_WRONLY|unix.O_NOFOLLOW, mode&0o600)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// removeContents empties the directory dirfd (O_PATH is fine) recursively.
func removeContents(dirfd int) error {
	names, err := readNames(dirfd)
	if err != nil {
		return err
	}
	for _, name := range names {
		err := unix.Unlinkat(dirfd, name, 0)
		if err == unix.EISDIR || err == unix.EPERM {
			sub, oerr := format.OpenAt(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
			if oerr != nil {
				return oerr
			}
			err = removeContents(sub)
			unix.Close(sub)
			if err != nil {
				return err
			}
			err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		}
		if err != nil && err != unix.ENOENT {
			return fmt.Errorf("remove %s: %w", name, err)
		}
	}
	return nil
}

func raiseFileLimit() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil {
		return
	}
	want := uint64(1 << 20)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		var n uint64
		if _, err := fmt.Sscan(string(b), &n); err == nil && n > 0 {
			want = n
		}
	}
	if lim.Max < want {
		nl := unix.Rlimit{Cur: want, Max: want}
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &nl) == nil {
			return
		}
	}
	lim.Cur = lim.Max
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
}

// Close releases the layers and the lock on the work directory. A volatile
// mount's changes are made durable first, and its marker removed if they
// could be (volatile.go); the error says when not.
func (o *Overlay) Close() error {
	var err error
	if o.syncs != nil {
		err = o.finishVolatile()
	}
	if o.root != nil {
		o.root.Forget()
		o.root = nil
	}
	for _, l := range append(o.lowers, o.upper) {
		if l != nil && l.root >= 0 {
			unix.Close(l.root)
			l.root = -1
		}
		if l != nil {
			l.mountOnce.Do(func() { l.mfd = -1 })
			if l.mfd >= 0 {
				unix.Close(l.mfd)
				l.mfd = -1
			}
		}
	}
	for _, fd := range []*int{&o.work, &o.index} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	for _, fd := range []*int{&o.lockFd, &o.lockWorkFd} {
		if *fd >= 0 {
			unix.Close(*fd) // drops the flock
			*fd = -1
		}
	}
	return err
}

// Stats returns the counters.
func (o *Overlay) Stats() Stats {
	return Stats{
		CopyUps:     o.stats.copyUps.Load(),
		CopyUpBytes: o.stats.copyUpBytes.Load(),
		Whiteouts:   o.stats.whiteouts.Load(),
		Lookups:     o.stats.lookups.Load(),
		Nodes:       o.stats.nodes.Load(),
	}
}

// ReadOnly reports whether the overlay has no upper layer.
func (o *Overlay) ReadOnly() bool { return o.upper == nil }

// Root returns the root directory node.
func (o *Overlay) Root() *Node { return o.root }

// Statfs reports the upper's filesystem, or the top lower's when read-only,
// as the kernel's ovl_statfs does.
func (o *Overlay) Statfs(st *unix.Statfs_t) error {
	l := o.lowers[0]
	if o.upper != nil {
		l = o.upper
	}
	return unix.Fstatfs(l.root, st)
}

// FsyncDir fsyncs a directory's upper directory (kernel: ovl_dir_fsync):
// nothing for one that is not in the upper, nor on a volatile mount.
func (n *Node) FsyncDir() error {
	if !n.IsDir() || n.o.cfg.Volatile {
		return nil
	}
	n.mu.Lock()
	fd := n.upperFd
	if fd < 0 {
		n.mu.Unlock()
		return nil
	}
	// A copy of the descriptor: the node may be forgotten meanwhile.
	rfd, err := unix.Open(format.ProcPath(fd), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	n.mu.Unlock()
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	return unix.Fsync(rfd)
}

// SyncFS flushes the upper's filesystem (syncfs), unless volatile. The
// kernel sends FUSE_SYNCFS only to virtiofs servers (fs/fuse/inode.c
// fuse_sync_fs returns at once without fc->sync_fs, which only
// virtio_fs.c sets), so syncfs(2) on an ovl mount never reaches here.
func (o *Overlay) SyncFS() error {
	if o.upper == nil || o.cfg.Volatile {
		return nil
	}
	fd, err := unix.Open(format.ProcPath(o.upper.root), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// inoFor maps a real inode number on layer l to the overlay's: the real
// number when all layers share one filesystem, else with the filesystem's
// index in the high bits (the kernel's xino scheme).
func (o *Overlay) inoFor(l *layer, ino uint64) uint64 {
	if o.xinoBits == 0 || l.fsIdx == 0 {
		return ino
	}
	return ino | l.fsIdx<<(64-o.xinoBits)
}

// Volatile reports whether syncs to the upper are skipped.
func (o *Overlay) Volatile() bool { return o.cfg.Volatile }
