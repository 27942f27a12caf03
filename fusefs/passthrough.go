package fusefs

// FUSE passthrough (docs/passthrough.md). The kernel ties one backing file
// to a FUSE inode while any passthrough open of it exists, fails every other
// open of that inode that is not a passthrough open on the same backing, and
// serves each passthrough open by reopening the backing file's path with the
// new open's flags (fs/fuse/iomode.c, fs/fuse/passthrough.c). So ovl decides
// per open, per overlay object, and registers backing files itself: go-fuse's
// bridge would hand an inode's first backing to every later open, a writable
// one included.
//
// Lock order: ptNode.mu, then ptMount.mu.

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/overlay"
)

// releaseWait is how long a write open waits for the read-only handles on a
// lower backing to be released before it fails with ETXTBSY. The kernel
// sends RELEASE after close(2) has returned, so a process that closes its
// read-only descriptor and then opens the file for writing must not be
// refused because that RELEASE is still on its way.
const releaseWait = time.Second

// mounts finds the passthrough state of a mount from its overlay, so that
// node.Open needs no field of its own.
var mounts sync.Map // *overlay.Overlay -> *ptMount

func ptFor(ov *overlay.Overlay) *ptMount {
	if m, ok := mounts.Load(ov); ok {
		return m.(*ptMount)
	}
	return nil
}

// ptMount is one mount's passthrough state.
type ptMount struct {
	ov  *overlay.Overlay
	srv atomic.Pointer[fuse.Server]
	// on: the mount-time check registered a backing file; until then, and
	// for good if it failed, every open is served by the daemon.
	on atomic.Bool

	mu      sync.Mutex
	nodes   map[*overlay.Node]*ptNode // objects with handles, opens in progress or a cached backing
	ids     map[<-chan struct{}]int32 // backing id for the OPEN/CREATE in progress, by its cancel channel
	badDev  map[uint64]bool           // devices whose files cannot be backing files
	noClone bool                      // lower files cannot be cloned read-only: no lower backings
	logged  map[string]bool
	// idle holds the objects whose lower backing stays registered with no
	// handle open, most recently released first, so that opening the same
	// lower file again costs no clone and no registration. Upper backings
	// are not kept: they would keep a deleted upper file's space in use.
	idle *list.List // of *ptNode
}

// idleMax bounds the idle lower backings a mount keeps registered; each
// holds an open file in the kernel and its overlay object here.
const idleMax = 1024

// ptNode is what the kernel keeps per FUSE inode, for one overlay object,
// plus a registration kept after the last handle (ptMount.idle).
type ptNode struct {
	n *overlay.Node // immutable
	// Guarded by ptMount.mu: pins counts handles, opens in progress and
	// a place in ptMount.idle (elem); the entry goes when pins is 0.
	pins int
	elem *list.Element

	mu       sync.Mutex
	id       int32         // registered backing id, 0 if none
	lower    bool          // the backing is the lower file
	dev, ino uint64        // the backing's real file
	refs     int           // handles opened on the backing: it is live in the kernel
	cached   int           // handles opened without passthrough
	gone     chan struct{} // closed when the last handle on a lower backing is released
}

func newPTMount(ov *overlay.Overlay) *ptMount {
	return &ptMount{
		ov:     ov,
		nodes:  map[*overlay.Node]*ptNode{},
		ids:    map[<-chan struct{}]int32{},
		badDev: map[uint64]bool{},
		logged: map[string]bool{},
		idle:   list.New(),
	}
}

// logOnce logs msg the first time key is seen.
func (m *ptMount) logOnce(key, format string, args ...any) {
	m.mu.Lock()
	seen := m.logged[key]
	m.logged[key] = true
	m.mu.Unlock()
	if !seen {
		log.Printf("passthrough: "+format, args...)
	}
}

// probe checks, once the kernel has answered INIT, that a backing file can
// really be registered, and turns passthrough on if so. It returns why not.
func (m *ptMount) probe() error {
	srv := m.srv.Load()
	if srv == nil {
		return errors.New("no FUSE server")
	}
	if srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		return errors.New("the kernel does not offer FUSE passthrough (needs Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH)")
	}
	fd, err := unix.MemfdCreate("ovl-passthrough-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	defer unix.Close(fd)
	id, errno := srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		if errno == syscall.EPERM {
			return fmt.Errorf("registering a backing file: %w (needs CAP_SYS_ADMIN in the initial user namespace)", errno)
		}
		return fmt.Errorf("registering a backing file: %w", errno)
	}
	if errno := srv.UnregisterBackingFd(id); errno != 0 {
		return fmt.Errorf("unregistering the probe's backing file: %w", errno)
	}
	m.on.Store(true)
	return nil
}

func (m *ptMount) pin(n *overlay.Node) *ptNode {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.nodes[n]
	if s == nil {
		s = &ptNode{n: n}
		m.nodes[n] = s
	}
	s.pins++
	return s
}

func (m *ptMount) unpin(n *overlay.Node, s *ptNode) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.pins--; s.pins == 0 {
		delete(m.nodes, n)
	}
}

// cancelOf is the key that ties a node's Open to the raw OPEN reply: go-fuse
// passes the request's cancel channel in the context.
func cancelOf(ctx context.Context) <-chan struct{} {
	if c, ok := ctx.(*fuse.Context); ok {
		return c.Cancel
	}
	return nil
}

// open serves node.Open.
func (m *ptMount) open(ctx context.Context, n *overlay.Node, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	s := m.pin(n)
	s.mu.Lock()
	h, e := m.openLocked(ctx, n, s, int(flags))
	s.mu.Unlock()
	if e != 0 {
		m.unpin(n, s)
		return nil, 0, e
	}
	return h, 0, 0
}

func (m *ptMount) openLocked(ctx context.Context, n *overlay.Node, s *ptNode, flags int) (*file, syscall.Errno) {
	write := changesData(flags)
	if write {
		// Rule 4: no copy-up, no write, while a lower backing is live.
		if e := s.waitNoLower(); e != 0 {
			return nil, e
		}
	}
	before := n.DataInUpper()
	fd, err := n.Open(flags)
	if err != nil {
		return nil, errno(err)
	}
	upper := before || write // a write open copies up before it opens
	if !upper && n.DataInUpper() {
		// Copied up meanwhile (chmod, another writer): fd may be either;
		// reopen, now surely on the upper.
		unix.Close(fd)
		if fd, err = n.Open(flags); err != nil {
			return nil, errno(err)
		}
		upper = true
	}
	h := newFile(m.ov, n, fd, flags)
	if e := m.attach(ctx, s, h, upper, write); e != 0 {
		h.lf.Release(ctx)
		return nil, e
	}
	return h, 0
}

// create serves node.Create: fd is a new file in the upper layer.
func (m *ptMount) create(ctx context.Context, n *overlay.Node, fd int, flags uint32) (fs.FileHandle, syscall.Errno) {
	s := m.pin(n)
	s.mu.Lock()
	h := newFile(m.ov, n, fd, int(flags))
	e := m.attach(ctx, s, h, true, changesData(int(flags)))
	s.mu.Unlock()
	if e != 0 {
		h.lf.Release(ctx)
		m.unpin(n, s)
		return nil, e
	}
	return h, 0
}

func changesData(flags int) bool {
	return flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
}

// waitNoLower waits, with s.mu held (and released meanwhile), until s has
// no live lower backing; ETXTBSY if it still has one after releaseWait.
// It does not give up on FUSE_INTERRUPT: the kernel sends one for any
// signal (Go programs get SIGURG all the time), and answering EINTR would
// fail open(2) on a regular file; a fatal signal ends the caller's wait in
// the kernel anyway.
func (s *ptNode) waitNoLower() syscall.Errno {
	var timeout <-chan time.Time
	for s.refs > 0 && s.lower {
		if timeout == nil {
			t := time.NewTimer(releaseWait)
			defer t.Stop()
			timeout = t.C
		}
		gone := s.gone
		s.mu.Unlock()
		select {
		case <-gone:
			s.mu.Lock()
		case <-timeout:
			s.mu.Lock()
			if s.refs > 0 && s.lower {
				return syscall.ETXTBSY
			}
		}
	}
	return 0
}

// attach decides whether h is a passthrough handle and on which backing,
// with s.mu held. upper: h's descriptor is on the upper layer.
func (m *ptMount) attach(ctx context.Context, s *ptNode, h *file, upper, write bool) syscall.Errno {
	h.pm, h.pt = m, s
	cancel := cancelOf(ctx)
	if !m.on.Load() || cancel == nil || s.cached > 0 {
		s.cached++
		h.cachedRef = true
		return 0
	}
	var st unix.Stat_t
	if err := unix.Fstat(h.fd, &st); err != nil {
		return errno(err)
	}
	same := s.id != 0 && s.dev == st.Dev && s.ino == st.Ino
	if s.id != 0 && s.refs == 0 {
		// A lower backing kept after its last handle: take it out of the
		// idle list, and drop it unless it is this file's, for reading.
		m.mu.Lock()
		if s.elem != nil {
			m.idle.Remove(s.elem)
			s.elem = nil
			s.pins-- // the idle list's pin; this open holds another
		}
		m.mu.Unlock()
		if !same || write {
			m.unregister(s)
		}
	}
	switch {
	case s.id == 0:
		id, ok := m.register(h.fd, &st, upper)
		if !ok {
			s.cached++
			h.cachedRef = true
			return 0
		}
		s.id, s.lower, s.dev, s.ino = id, !upper, st.Dev, st.Ino
	case same && !(write && s.lower):
		// The same real file: share its backing.
	case s.lower && upper && !write:
		// Copied up (metadata only: data changes wait for the lower
		// backing to go) while the lower file is open: same data.
	default:
		// Another file than the live backing's: the kernel would refuse
		// both passthrough (EBUSY) and a cached open (EIO).
		return syscall.ETXTBSY
	}
	if s.refs == 0 && s.lower {
		s.gone = make(chan struct{})
	}
	s.refs++
	h.backed = true
	m.mu.Lock()
	m.ids[cancel] = s.id
	m.mu.Unlock()
	return 0
}

// unregister drops s's backing, with s.mu held.
func (m *ptMount) unregister(s *ptNode) {
	if srv := m.srv.Load(); srv != nil {
		if errno := srv.UnregisterBackingFd(s.id); errno != 0 {
			log.Printf("passthrough: unregistering backing %d: %v", s.id, errno)
		}
	}
	s.id, s.lower = 0, false
}

// register makes fd's file a backing file. A lower file is registered only
// from a read-only mount, the layer's own clone or else a clone of the
// file's mount made here: the kernel reopens a backing with each open's
// flags, so a writable open can then never reach the lower file through it.
func (m *ptMount) register(fd int, st *unix.Stat_t, upper bool) (int32, bool) {
	srv := m.srv.Load()
	m.mu.Lock()
	skip := m.badDev[st.Dev] || !upper && m.noClone
	m.mu.Unlock()
	if skip || srv == nil {
		return 0, false
	}
	regFd := fd
	if !upper && !onReadOnlyMount(fd) {
		ro, err := readOnlyClone(fd)
		if err != nil {
			m.logOnce("clone", "lower files are served by the daemon: no read-only clone of a lower file: %v", err)
			m.mu.Lock()
			m.noClone = true
			m.mu.Unlock()
			return 0, false
		}
		defer unix.Close(ro)
		regFd = ro
	}
	id, errno := srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(regFd)})
	switch errno {
	case 0:
		return id, true
	case syscall.ELOOP, syscall.EINVAL, syscall.EOPNOTSUPP, syscall.EPERM:
		// What the file's filesystem is, not a passing state.
		why := errno.Error()
		if errno == syscall.ELOOP {
			why = "the filesystem is itself stacked (overlayfs, FUSE), too deep for FUSE stack depth 1"
		}
		m.logOnce(fmt.Sprint("dev", st.Dev), "files on device %d:%d are served by the daemon: %s",
			unix.Major(st.Dev), unix.Minor(st.Dev), why)
		m.mu.Lock()
		m.badDev[st.Dev] = true
		m.mu.Unlock()
	default:
		m.logOnce(fmt.Sprint("errno", errno), "registering a backing file: %v (such opens are served by the daemon)", errno)
	}
	return 0, false
}

// onReadOnlyMount reports whether fd's file is on a read-only mount: the
// lower layers' own clones are (format.OpenLayerRoot), so their files are
// backing files as they are, with no clone per file, whose teardown costs
// an RCU grace period.
func onReadOnlyMount(fd int) bool {
	var sfs unix.Statfs_t
	return unix.Fstatfs(fd, &sfs) == nil && sfs.Flags&unix.ST_RDONLY != 0
}

// readOnlyClone returns an O_PATH descriptor of fd's file on a private,
// read-only, noatime clone of its mount.
func readOnlyClone(fd int) (int, error) {
	t, err := unix.OpenTree(fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return -1, fmt.Errorf("open_tree: %w", err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOATIME, Attr_clr: unix.MOUNT_ATTR__ATIME}
	if err := unix.MountSetattr(t, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(t)
		return -1, fmt.Errorf("mount_setattr: %w", err)
	}
	return t, nil
}

// release drops h's hold on its object's state; the last handle on a
// backing unregisters it. The kernel has dropped the inode's backing before
// it sends the RELEASE that gets here.
func (m *ptMount) release(h *file) {
	s := h.pt
	keep := false
	s.mu.Lock()
	switch {
	case h.backed:
		if s.refs--; s.refs == 0 {
			if s.gone != nil {
				close(s.gone)
				s.gone = nil
			}
			if keep = s.lower; !keep {
				m.unregister(s)
			}
		}
	case h.cachedRef:
		s.cached--
	}
	h.backed, h.cachedRef = false, false
	if keep {
		m.mu.Lock()
		s.elem = m.idle.PushFront(s)
		s.pins++
		m.mu.Unlock()
	}
	s.mu.Unlock()
	m.unpin(s.n, s)
	if keep {
		m.trimIdle()
	}
}

// trimIdle unregisters the least recently used idle lower backings beyond
// idleMax. It holds no ptNode lock on entry.
func (m *ptMount) trimIdle() {
	for {
		m.mu.Lock()
		if m.idle.Len() <= idleMax {
			m.mu.Unlock()
			return
		}
		v := m.idle.Remove(m.idle.Back()).(*ptNode)
		v.elem = nil
		m.mu.Unlock()
		v.mu.Lock()
		if v.refs == 0 && v.id != 0 {
			m.unregister(v)
		}
		v.mu.Unlock()
		m.unpin(v.n, v)
	}
}

// takeID returns the backing id chosen for the request with this cancel
// channel, if any.
func (m *ptMount) takeID(cancel <-chan struct{}) (int32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.ids[cancel]
	delete(m.ids, cancel)
	return id, ok
}

// ptRaw wraps go-fuse's raw bridge to put ovl's backing ids into OPEN and
// CREATE replies, and to learn the server before the first request.
type ptRaw struct {
	fuse.RawFileSystem
	m *ptMount
}

func (r *ptRaw) Init(s *fuse.Server) {
	r.m.srv.Store(s)
	r.RawFileSystem.Init(s)
}

func (r *ptRaw) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	st := r.RawFileSystem.Open(cancel, in, out)
	r.finish(cancel, st, out)
	return st
}

func (r *ptRaw) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	st := r.RawFileSystem.Create(cancel, in, name, out)
	r.finish(cancel, st, &out.OpenOut)
	return st
}

func (r *ptRaw) finish(cancel <-chan struct{}, st fuse.Status, out *fuse.OpenOut) {
	id, ok := r.m.takeID(cancel)
	if !ok {
		return
	}
	if st != fuse.OK {
		// go-fuse fails no open after the node's Open succeeded.
		log.Printf("passthrough: open failed after a backing was chosen: %v", st)
		return
	}
	out.BackingID = id
	out.OpenFlags = out.OpenFlags&^(fuse.FOPEN_KEEP_CACHE|fuse.FOPEN_DIRECT_IO) | fuse.FOPEN_PASSTHROUGH
}

// ptSetattr runs n.Setattr; a truncate by path is a data change, refused
// while a lower backing is live (rule 4), and done under the object's lock
// so that no lower backing appears meanwhile.
func ptSetattr(ov *overlay.Overlay, n *overlay.Node, a overlay.SetAttr, fd int) error {
	m := ptFor(ov)
	if m == nil || a.Size == nil || fd >= 0 {
		return n.Setattr(a, fd)
	}
	s := m.pin(n)
	defer m.unpin(n, s)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.waitNoLower(); e != 0 {
		return e
	}
	return n.Setattr(a, fd)
}
