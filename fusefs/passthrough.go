package fusefs

// FUSE passthrough (docs/passthrough.md). The kernel ties one backing file
// to a FUSE inode while any passthrough open of it exists, fails every other
// open of that inode that is not a passthrough open on the same backing, and
// serves each passthrough open by reopening the backing file's path with the
// new open's flags (fs/fuse/iomode.c, fs/fuse/passthrough.c). So ovl decides
// per open, per FUSE inode, and registers backing files itself: go-fuse's
// bridge would hand an inode's first backing to every later open, a writable
// one included. A data change that reaches an inode open on its lower file
// is sent to a new FUSE inode of the same object (retire); nothing waits for
// a RELEASE.
//
// Lock order: object.ptMu, then ptMount.mu.

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

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/overlay"
)

// ptMount is one mount's passthrough state.
type ptMount struct {
	ov  *overlay.Overlay
	srv atomic.Pointer[fuse.Server]
	// on: the mount-time check registered a backing file; until then, and
	// for good if it failed, every open is served by the daemon.
	on atomic.Bool

	mu      sync.Mutex
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

// ptNode is what the kernel keeps per FUSE inode: one overlay object may
// have two FUSE inodes for a while (retire), each with its own backing.
type ptNode struct {
	obj *object // immutable; obj.ptMu guards the fields below but elem

	elem *list.Element // guarded by ptMount.mu: its place in ptMount.idle

	id       int32  // registered backing id, 0 if none
	lower    bool   // the backing is the lower file
	dev, ino uint64 // the backing's real file
	refs     int    // handles opened on the backing: it is live in the kernel
	cached   int    // handles opened without passthrough
	// inval is closed once the names of the retired inode are
	// invalidated (retire).
	inval chan struct{}
}

func newPTMount(ov *overlay.Overlay) *ptMount {
	return &ptMount{
		ov:     ov,
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

// cancelOf is the key that ties a node's Open to the raw OPEN reply: go-fuse
// passes the request's cancel channel in the context.
func cancelOf(ctx context.Context) <-chan struct{} {
	if c, ok := ctx.(*fuse.Context); ok {
		return c.Cancel
	}
	return nil
}

// open serves node.Open for nd, a regular file.
func (m *ptMount) open(ctx context.Context, nd *node, flags uint32) (*file, syscall.Errno) {
	nd.obj.ptMu.Lock()
	h, e := m.openLocked(ctx, nd, flags)
	inval := nd.ptState().inval
	nd.obj.ptMu.Unlock()
	if e == syscall.ESTALE {
		awaitInval(inval)
	}
	return h, e
}

func (m *ptMount) openLocked(ctx context.Context, nd *node, flags uint32) (*file, syscall.Errno) {
	n, s := nd.n, nd.ptState()
	write := changesData(int(flags))
	if write && s.refs > 0 && s.lower {
		// Rule 4: the kernel cannot give this inode another backing.
		return nil, m.retire(nd)
	}
	before := n.DataInUpper()
	fd, err := n.Open(int(flags))
	if err != nil {
		return nil, errno(err)
	}
	upper := before || write // a write open copies up before it opens
	if !upper && n.DataInUpper() {
		// Copied up meanwhile (chmod, another writer): fd may be either;
		// reopen, now surely on the upper.
		unix.Close(fd)
		if fd, err = n.Open(int(flags)); err != nil {
			return nil, errno(err)
		}
		upper = true
	}
	h := newFile(m.ov, n, fd, int(flags))
	if e := m.attach(ctx, nd, h, upper, write); e != 0 {
		h.lf.Release(ctx)
		return nil, e
	}
	return h, 0
}

// create serves node.Create for nd, whose object is new: fd is a new file
// in the upper layer.
func (m *ptMount) create(ctx context.Context, nd *node, fd int, flags uint32) (*file, syscall.Errno) {
	nd.obj.ptMu.Lock()
	defer nd.obj.ptMu.Unlock()
	h := newFile(m.ov, nd.n, fd, int(flags))
	if e := m.attach(ctx, nd, h, true, changesData(int(flags))); e != 0 {
		h.lf.Release(ctx)
		return nil, e
	}
	return h, 0
}

// ptState returns nd's passthrough state, made at its first open, with
// nd.obj.ptMu held.
func (nd *node) ptState() *ptNode {
	if nd.pt == nil {
		nd.pt = &ptNode{obj: nd.obj}
	}
	return nd.pt
}

func changesData(flags int) bool {
	return flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
}

// retire serves a data change (a write or O_TRUNC open, a truncate by
// path) that reached nd while nd's object is open on its lower file
// through passthrough, with nd.obj.ptMu held. The kernel keeps that
// backing on nd until the last such handle is closed and lets no other
// open of nd in (rule 3 of docs/passthrough.md), so the change must reach
// the object through another FUSE inode. retire copies the object up
// (its data: so that no read-only open can put a lower backing on the new
// inode before the request comes back), gives the object's next LOOKUP a
// new FUSE node id (generations.retire), and answers ESTALE: the VFS
// repeats a path open (do_filp_open) or a path truncate (retry_estale)
// once with LOOKUP_REVAL, FUSE revalidates the name with a LOOKUP
// (fuse_dentry_revalidate), finds the new node id and sends the request
// to the new inode. A request that does not come through a name, a
// reopen through /proc/self/fd/N, comes back to nd and fails with ESTALE
// (TestKernelRetireRules).
//
// The names cached for nd are invalidated too, so that opens made after
// the change find the new inode: a name whose dentry still pointed at nd
// would give them nd, whose read-only opens share the lower backing
// (attach). That happens in a goroutine, outside the request and without
// the object's lock (an invalidation takes the kernel's lock of the
// parent directory); the request's reply waits for it (awaitInval).
func (m *ptMount) retire(nd *node) syscall.Errno {
	if err := nd.n.CopyUp(); err != nil {
		return errno(err)
	}
	if nd.gens.retire(nd) {
		done := make(chan struct{})
		nd.ptState().inval = done
		go func() {
			defer close(done)
			for _, r := range nd.cachedNames() {
				r.parent.NotifyEntry(r.name)
			}
			nd.NotifyContent(-1, 0) // its cached attributes: see node.Getattr
		}()
	}
	return syscall.ESTALE
}

// invalWait bounds how long the reply to a retired request waits for the
// invalidation of the old inode's names. It takes microseconds: nothing
// that the kernel holds while it waits for an OPEN or a truncate's
// SETATTR is needed by an invalidation, and the bound only guards against
// a kernel where that changes.
const invalWait = 10 * time.Second

// awaitInval waits until the names of a retired inode are invalidated
// (inval closed; nil: nothing to wait for), so that when the retried
// request has returned, a later open of any of them finds the new inode.
func awaitInval(inval <-chan struct{}) {
	if inval == nil {
		return
	}
	t := time.NewTimer(invalWait)
	defer t.Stop()
	select {
	case <-inval:
	case <-t.C:
		log.Printf("passthrough: the kernel did not take a name invalidation within %v", invalWait)
	}
}

// attach decides whether h is a passthrough handle of nd and on which
// backing, with nd.obj.ptMu held. upper: h's descriptor is on the upper
// layer.
func (m *ptMount) attach(ctx context.Context, nd *node, h *file, upper, write bool) syscall.Errno {
	s := nd.ptState()
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
		// Copied up while the lower file is open through nd: the kernel
		// takes no other backing. Same data after a copy-up of metadata
		// (a data change retires nd); on a retired nd, a read-only reopen
		// through /proc/self/fd/N, the lower data as its other handles.
	default:
		// Another file than the live backing's (not seen: the cases
		// above cover every open): the kernel would refuse both
		// passthrough (EBUSY) and a cached open (EIO).
		return m.retire(nd)
	}
	s.refs++
	h.backed = true
	m.mu.Lock()
	m.ids[cancel] = s.id
	m.mu.Unlock()
	return 0
}

// unregister drops s's backing, with s.obj.ptMu held.
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

// release drops h's hold on its inode's state; the last handle on a
// backing unregisters it, or keeps a lower one registered for the next
// open (rule 6). The kernel has dropped the inode's backing before it sends
// the RELEASE that gets here.
func (m *ptMount) release(h *file) {
	s := h.pt
	keep := false
	s.obj.ptMu.Lock()
	switch {
	case h.backed:
		if s.refs--; s.refs == 0 {
			// A retired inode gets no more opens but reopens through
			// /proc/self/fd: not worth a registration.
			if keep = s.lower && (h.owner == nil || !h.owner.retired.Load()); !keep {
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
		m.mu.Unlock()
	}
	s.obj.ptMu.Unlock()
	if keep {
		m.trimIdle()
	}
}

// forget drops the registration an inode the kernel forgot kept.
func (m *ptMount) forget(nd *node) {
	nd.obj.ptMu.Lock()
	s := nd.pt
	nd.obj.ptMu.Unlock()
	if s == nil {
		return
	}
	m.mu.Lock()
	idle := s.elem != nil
	if idle {
		m.idle.Remove(s.elem)
		s.elem = nil
	}
	m.mu.Unlock()
	if idle {
		s.obj.ptMu.Lock()
		if s.refs == 0 && s.id != 0 {
			m.unregister(s)
		}
		s.obj.ptMu.Unlock()
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
		v.obj.ptMu.Lock()
		if v.refs == 0 && v.id != 0 {
			m.unregister(v)
		}
		v.obj.ptMu.Unlock()
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

// retiredAttrMark is the attribute timeout node.Getattr gives a retired
// inode, which ptRaw sends as zero: a zero timeout makes the kernel ask at
// every stat (fuse_time_to_jiffies gives 0), a one-nanosecond one only
// from the next jiffy on.
const retiredAttrMark = time.Nanosecond

func (r *ptRaw) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	st := r.RawFileSystem.GetAttr(cancel, in, out)
	zeroRetired(out)
	return st
}

func (r *ptRaw) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	st := r.RawFileSystem.SetAttr(cancel, in, out)
	zeroRetired(out)
	return st
}

func zeroRetired(out *fuse.AttrOut) {
	if out.Timeout() == retiredAttrMark {
		out.AttrValid, out.AttrValidNsec = 0, 0
	}
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

// setattr runs nd's Setattr: a truncate by path is a data change, which
// retires nd while its object is open on the lower file through it, and is
// done under the object's lock so that no lower backing appears meanwhile.
func (m *ptMount) setattr(nd *node, a overlay.SetAttr, fd int) error {
	if a.Size == nil || fd >= 0 {
		return nd.n.Setattr(a, fd)
	}
	nd.obj.ptMu.Lock()
	if s := nd.pt; s != nil && s.refs > 0 && s.lower {
		e := m.retire(nd)
		inval := s.inval
		nd.obj.ptMu.Unlock()
		if e == syscall.ESTALE {
			awaitInval(inval)
		}
		return e
	}
	defer nd.obj.ptMu.Unlock()
	return nd.n.Setattr(a, fd)
}
