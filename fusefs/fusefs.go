// Package fusefs serves an overlay.Overlay through FUSE with go-fuse's fs
// package. It is a thin adapter: every decision about layers is made by the
// overlay package; this package translates requests and keeps one go-fuse
// inode per overlay node.
//
// Rules it enforces:
//   - The kernel checks permissions (default_permissions, POSIX ACLs on).
//   - The daemon holds POSIX, OFD and flock locks of regular files per
//     overlay object (locks.go), so that they conflict whichever FUSE inode
//     and descriptor of the object they come through, before and after a
//     copy-up; the kernel holds directories' locks on their FUSE inode.
//   - FUSE passthrough (passthrough.go, docs/passthrough.md) serves reads
//     and writes of open files from the layer files without the daemon; a
//     lower file is never the backing file of a writable open. A data
//     change of an object open on its lower file through passthrough is
//     served through a new FUSE inode of the object (retire); FUSE inodes
//     of one object share its overlay node (object).
//   - The kernel keeps entries, negative entries and attributes for an hour
//     (cacheTimeout) and directory listings until a change: the layers
//     change only through the mount, and the kernel itself updates or drops
//     what a request's reply covers. ovl notifies it of what a reply does
//     not: attributes after a copy-up (afterCopyUp: lower hard-link
//     st_nlink, a metacopy's mtime), its directory's listing when the
//     copy-up renumbered the object, a moved directory's listing (".."),
//     and the names of a retired inode (passthrough.go).
//   - Directories have no open handles where the kernel allows it
//     (nodir.go); GETXATTRs of security.capability are answered from what
//     ovl knows where it can (capcache.go).
package fusefs

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/fusecount"
	"github.com/ovl-project/ovl/internal/fuseuring"
	"github.com/ovl-project/ovl/internal/privilege"
	"github.com/ovl-project/ovl/overlay"
)

// Options are the FUSE-level mount options.
type Options struct {
	// AllowOther lets users other than the mounter use the mount (default as root).
	AllowOther bool
	// NoSuid, NoDev and NoExec ask for those mount flags; ovl leaves them off
	// by default because a container root needs setuid binaries and devices.
	NoSuid, NoDev, NoExec bool
	// ReadOnly mounts read-only (always so without an upper layer).
	ReadOnly bool
	// FsName is the "source" shown in /proc/mounts.
	FsName string
	// Debug logs every FUSE request.
	Debug bool
	// NoPassthrough serves every read and write through the daemon
	// (passthrough=off): full coherence across copy-up, no page cache
	// shared with the lower layers.
	NoPassthrough bool
	// Uring serves requests through FUSE-over-io_uring where the kernel
	// offers it (fuse_uring=on; internal/fuseuring), else through
	// /dev/fuse.
	Uring bool
}

// cacheTimeout is how long the kernel may keep entries, negative entries
// and attributes: the lower layers never change under a mount and the upper
// changes only through it (see Mount).
const cacheTimeout = time.Hour

// Server is a mounted overlay.
type Server struct {
	srv        *fuse.Server
	mountpoint string
	ov         *overlay.Overlay
	root       *node
	reqs       *fusecount.Counts
	ring       *fuseuring.Server // nil: served by go-fuse's own server
}

// Requests returns how many FUSE requests of each opcode the mount has
// served (ovl stats, the bench's requests per operation).
func (s *Server) Requests() map[string]uint64 { return s.reqs.Snapshot() }

// Mount serves ov at mountpoint and returns once the mount is ready.
func Mount(mountpoint string, ov *overlay.Overlay, opts Options) (*Server, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("no FUSE device: %w (load the fuse module or give the container /dev/fuse)", err)
	}
	gens := newGenerations()
	locks := newMountLocks()
	root := &node{ov: ov, n: ov.Root(), obj: &object{n: ov.Root()}, gens: gens, locks: locks}
	gens.addRoot(root)
	ov.OnRenumber(gens.renumbered)
	// Long caches: the lower layers never change under a mount and the
	// upper changes only through it; the kernel updates or drops what a
	// request changes, and ovl drops what a copy-up changes (afterCopyUp).
	entry, attr, neg := cacheTimeout, cacheTimeout, cacheTimeout
	fsName := opts.FsName
	if fsName == "" {
		fsName = "ovl"
	}
	mo := fuse.MountOptions{
		FsName:     fsName,
		Name:       "ovl",
		AllowOther: opts.AllowOther,
		Debug:      opts.Debug,
		MaxWrite:   1 << 20,
		EnableAcl:  true,
		// Readdirplus only when the kernel sees stats of a directory's
		// entries (READDIRPLUS_AUTO), so ls -f costs no lookups; plusRaw
		// serves it, as go-fuse's own loses entries on a redo.
		// ATOMIC_O_TRUNC: O_TRUNC comes with the OPEN, which copies up and
		// truncates as the kernel's ovl_open does, instead of an OPEN
		// without it and then a SETATTR of the size through the new file.
		// HANDLE_KILLPRIV_V2: the daemon clears setuid, setgid on chown,
		// truncate and write (killpriv.go); the kernel then sends no
		// GETATTR before each kill, and marks the superblock SB_NOSEC,
		// so that a write to an inode it has seen without setuid,
		// setgid or security.capability asks no GETXATTR.
		ExtraCapabilities: fuse.CAP_READDIRPLUS_AUTO | fuse.CAP_ATOMIC_O_TRUNC | fuse.CAP_HANDLE_KILLPRIV_V2,
		// FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS: locks.go.
		EnableLocks: true,
		// The kernel checks the caller against the overlay inode's owner,
		// mode and ACLs; the daemon acts on the layers as the mounter.
		Options: []string{"default_permissions"},
	}
	cacheOptions(&mo)
	ro := opts.ReadOnly || ov.ReadOnly()
	if os.Geteuid() == 0 {
		// Mount directly, without the nosuid,nodev that fusermount adds.
		mo.DirectMountStrict = true
		flags := uintptr(syscall.MS_MGC_VAL)
		if opts.NoSuid {
			flags |= syscall.MS_NOSUID
		}
		if opts.NoDev {
			flags |= syscall.MS_NODEV
		}
		if opts.NoExec {
			flags |= syscall.MS_NOEXEC
		}
		if ro {
			flags |= syscall.MS_RDONLY
		}
		mo.DirectMountFlags = flags
	} else {
		if opts.NoExec {
			mo.Options = append(mo.Options, "noexec")
		}
		if ro {
			mo.Options = append(mo.Options, "ro")
		}
	}
	raw := fs.NewNodeFS(root, &fs.Options{
		MountOptions:    mo,
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &neg,
		RootStableAttr:  &fs.StableAttr{Ino: 1},
		// Modes are the layers' own: without this, go-fuse reports
		// permission bits 0 as 0644 (0755 for directories), and the
		// kernel then lets anyone read a mode-0 file.
		NullPermissions: true,
	})
	dirs := &dirRaw{RawFileSystem: &identRaw{RawFileSystem: raw, g: gens}, g: gens}
	raw = &plusRaw{RawFileSystem: dirs}
	raw = &lockRaw{RawFileSystem: raw, l: locks}
	raw = &killRaw{RawFileSystem: raw, g: gens}
	var pt *ptMount
	if !opts.NoPassthrough {
		// Without the privilege to register backing files, negotiating
		// passthrough would only raise the mount's stacking depth (the
		// kernel sets it at INIT), so that a kernel overlayfs stacked on
		// an overlayfs over this mount (a container in a rootless
		// container) would fail to mount. Leave it out, as passthrough=off.
		if ok, why, err := privilege.SysAdmin(); err != nil {
			log.Printf("passthrough: off: %v (registering backing files needs CAP_SYS_ADMIN in the initial user namespace)", err)
			opts.NoPassthrough = true
		} else if !ok {
			log.Printf("passthrough: off: %s, which registering backing files needs", why)
			opts.NoPassthrough = true
		}
	}
	if opts.NoPassthrough {
		mo.DisabledCapabilities |= fuse.CAP_PASSTHROUGH
	} else {
		pt = newPTMount(ov)
		raw = &ptRaw{RawFileSystem: raw, m: pt}
		gens.pt.Store(pt)
	}
	reqs := new(fusecount.Counts)
	raw = fusecount.Wrap(raw, reqs)
	srv, ring, err := serve(mountpoint, raw, &mo, opts.Uring, func(srv *fuse.Server) {
		gens.killprivV2.Store(srv.KernelSettings().Flags64()&fuse.CAP_HANDLE_KILLPRIV_V2 != 0)
		dirs.stateless.Store(srv.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT != 0)
	})
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	if pt != nil {
		if err := pt.probe(); err != nil {
			log.Printf("passthrough: off: %v", err)
			gens.pt.Store(nil) // nothing to track: every open is served by the daemon
		}
	}
	return &Server{srv: srv, mountpoint: mountpoint, ov: ov, root: root, reqs: reqs, ring: ring}, nil
}

// serve is fs.Mount for a raw file system; inited runs after INIT, before
// the first other request. With uring (as root: fuseuring mounts with
// mount(2)) the requests go through io_uring where the kernel offers it.
func serve(mountpoint string, raw fuse.RawFileSystem, mo *fuse.MountOptions, uring bool, inited func(*fuse.Server)) (*fuse.Server, *fuseuring.Server, error) {
	if uring && os.Geteuid() == 0 {
		r, err := fuseuring.Mount(mountpoint, raw, *mo, fuseuring.Options{Inited: inited})
		if err != nil {
			return nil, nil, err
		}
		return r.Fuse, r, nil
	} else if uring {
		log.Printf("fuse_uring: off: only a mount made as root can use it")
	}
	srv, err := fuse.NewServer(raw, mountpoint, mo)
	if err != nil {
		return nil, nil, err
	}
	inited(srv)
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, nil, err
	}
	return srv, nil, nil
}

// UringRequests is how many requests were served through io_uring.
func (s *Server) UringRequests() uint64 {
	if s.ring == nil {
		return 0
	}
	return s.ring.RingRequests()
}

// Wait blocks until the filesystem is unmounted.
func (s *Server) Wait() {
	if s.ring != nil {
		s.ring.Wait()
		return
	}
	s.srv.Wait()
}

// Unmount unmounts the filesystem; Wait then returns.
func (s *Server) Unmount() error {
	if s.ring != nil {
		return s.ring.Unmount()
	}
	return s.srv.Unmount()
}

// node is the go-fuse inode of one overlay node. It holds one reference on
// its overlay node (the root's is the overlay's own) until go-fuse forgets
// it for good: see generations.
type node struct {
	fs.Inode
	ov   *overlay.Overlay
	n    *overlay.Node // obj.n
	obj  *object
	gens *generations
	// locks is the mount's lock table (locks.go), shared by every node.
	locks *mountLocks
	attr  fs.StableAttr // the key of this node in gens.live
	// Guarded by gens.mu: handed counts the requests in progress that gave
	// this inode to go-fuse, which registers it after the request returns;
	// id and lookups are its FUSE node id and the kernel's lookup count of
	// it; dead: the node gave back its reference on n.
	handed  int
	id      uint64
	lookups uint64
	dead    bool
	// retired: the object's lookups give another FUSE inode now; this one
	// lives on for its open handles (passthrough.go, retire).
	retired atomic.Bool
	// pt is this FUSE inode's passthrough state, made at its first open;
	// guarded by obj.ptMu.
	pt *ptNode
	// names are other names than the first that lookups found this
	// inode under (hard links), for retire to invalidate; guarded by
	// gens.mu. A pointer, nil for the many objects with one name: the
	// node is made for every object the kernel looks up (issue 21).
	names *[]nameRef
	// A directory's last merged listing, kept while no entry changed since
	// (listGen == gen), for the opens that the kernel serves from its
	// readdir cache: see dir.
	listMu  sync.Mutex
	listing []fuse.DirEntry
	gen     uint64
	listGen uint64
}

// changed records that the entries of directory p changed (a name came,
// went or moved, or its ".." did): its kept listing is stale.
func (p *node) changed() {
	p.listMu.Lock()
	p.gen++
	p.listing = nil
	p.listMu.Unlock()
}

// lastListing is p's kept listing, nil if there is none.
func (p *node) lastListing() []fuse.DirEntry {
	p.listMu.Lock()
	defer p.listMu.Unlock()
	if p.listGen != p.gen {
		return nil
	}
	return p.listing
}

// listed keeps ents, a listing begun at generation gen, unless an entry
// changed since it began.
func (p *node) listed(ents []fuse.DirEntry, gen uint64) {
	p.listMu.Lock()
	if p.gen == gen {
		p.listing, p.listGen = ents, gen
	}
	p.listMu.Unlock()
}

// generation is p's current generation of entries.
func (p *node) generation() uint64 {
	p.listMu.Lock()
	defer p.listMu.Unlock()
	return p.gen
}

// object is what the FUSE inodes of one overlay object share. An object
// has one FUSE inode, and for a while two when a data change retired the
// one its lower file is open through (passthrough.go, retire): both stand
// for the same overlay node, and each holds a reference on it.
type object struct {
	n *overlay.Node // immutable
	// opens counts the open handles of a regular file through any of
	// its FUSE inodes (see pin).
	opens atomic.Int32
	// ptMu serialises the passthrough decision of an open or truncate
	// with the copy-up it makes and the backing it registers.
	ptMu sync.Mutex
	// capAbsent: the object has no security.capability if this is the
	// mount's capGen + 1 (capcache.go).
	capAbsent atomic.Uint64
}

type nameRef struct {
	parent *fs.Inode
	name   string
}

// maxNames bounds node.names: a name left out only costs a revalidation.
const maxNames = 8

// noteName records that a lookup of name in p found c, if c is known
// under another name: the names a retirement must invalidate.
func (c *node) noteName(p *node, name string) {
	pname, pp := c.Parent()
	if pp == p.EmbeddedInode() && pname == name {
		return
	}
	g := c.gens
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range []nameRef{{pp, pname}, {p.EmbeddedInode(), name}} {
		var names []nameRef
		if c.names != nil {
			names = *c.names
		}
		known := r.parent == nil
		for _, k := range names {
			known = known || k == r
		}
		if !known && len(names) < maxNames {
			if c.names == nil {
				c.names = new([]nameRef)
			}
			*c.names = append(names, r)
		}
	}
}

// cachedNames returns the names the kernel may have cached for c.
func (c *node) cachedNames() []nameRef {
	var refs []nameRef
	if name, parent := c.Parent(); parent != nil {
		refs = append(refs, nameRef{parent, name})
	}
	c.gens.mu.Lock()
	if c.names != nil {
		refs = append(refs, *c.names...)
	}
	c.gens.mu.Unlock()
	return refs
}

// successor is the FUSE inode a retired one hands its object to.
type successor struct {
	gen uint64
	old *node // the retired inode
}

// retire starts a new generation of nd's key whose lookups make a
// new FUSE inode for nd's object; false if nd is not its object's current
// FUSE inode (already retired, or the object has no name left).
func (g *generations) retire(nd *node) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	key := nd.attr.Ino
	if g.m[key] != nd.attr.Gen || nd.retired.Load() || nd.dead {
		return false
	}
	g.m[key]++
	g.succ[key] = successor{gen: g.m[key], old: nd}
	nd.retired.Store(true)
	return true
}

// gone records that the object of n has no name left that go-fuse knows.
func (p *node) gone(n *overlay.Node) {
	n.Detach()
	p.gens.bump(n.Key())
}

var (
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRmdirer        = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeStatfser       = (*node)(nil)
	_ fs.NodeGetxattrer     = (*node)(nil)
	_ fs.NodeSetxattrer     = (*node)(nil)
	_ fs.NodeListxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer  = (*node)(nil)
	_ fs.NodeFsyncer        = (*node)(nil)
)

func errno(err error) syscall.Errno { return fs.ToErrno(err) }

func cred(ctx context.Context) overlay.Cred {
	if c, ok := fuse.FromContext(ctx); ok {
		return overlay.Cred{Uid: c.Uid, Gid: c.Gid}
	}
	return overlay.Cred{Uid: uint32(os.Geteuid()), Gid: uint32(os.Getegid())}
}

func (p *node) entry(ctx context.Context, name string, child *overlay.Node, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	var st unix.Stat_t
	if err := child.Getattr(&st); err != nil {
		child.Forget()
		return nil, errno(err)
	}
	out.Attr.FromStat(toSyscall(&st))
	return p.inode(ctx, name, child), 0
}

func toSyscall(st *unix.Stat_t) *syscall.Stat_t {
	return &syscall.Stat_t{
		Dev: st.Dev, Ino: st.Ino, Nlink: st.Nlink, Mode: st.Mode, Uid: st.Uid, Gid: st.Gid,
		Rdev: st.Rdev, Size: st.Size, Blksize: st.Blksize, Blocks: st.Blocks,
		Atim: syscall.Timespec(st.Atim), Mtim: syscall.Timespec(st.Mtim), Ctim: syscall.Timespec(st.Ctim),
	}
}

func (p *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	var st unix.Stat_t
	child, err := p.n.LookupStat(name, &st)
	if err != nil {
		return nil, errno(err)
	}
	out.Attr.FromStat(toSyscall(&st))
	return p.inode(ctx, name, child), 0
}

func (p *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if h, ok := f.(*file); ok {
		// An open file may no longer have a name; stat what is open.
		h.current(ctx)
		h.mu.Lock()
		fd := h.fd
		h.mu.Unlock()
		if err := p.n.Fstat(fd, &st); err != nil {
			return errno(err)
		}
	} else if err := p.n.Getattr(&st); err != nil {
		return errno(err)
	}
	out.FromStat(toSyscall(&st)) // go-fuse puts the key here; identRaw puts st_ino back
	if p.retired.Load() {
		// Another FUSE inode changes the object, through passthrough
		// writes the daemon does not see: the kernel must ask again at
		// every stat through this one's descriptors. go-fuse replaces a
		// zero timeout with the mount's; ptRaw turns this one into zero.
		out.SetTimeout(retiredAttrMark)
	}
	return 0
}

func (p *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	defer p.afterCopyUp(p.upState())
	var a overlay.SetAttr
	if m, ok := in.GetMode(); ok {
		a.Mode = &m
	}
	if u, ok := in.GetUID(); ok {
		a.Uid = &u
	}
	if g, ok := in.GetGID(); ok {
		a.Gid = &g
	}
	if sz, ok := in.GetSize(); ok {
		a.Size = &sz
	}
	if in.Valid&fuse.FATTR_ATIME != 0 {
		ts := unix.Timespec{Nsec: unix.UTIME_NOW}
		if in.Valid&fuse.FATTR_ATIME_NOW == 0 {
			ts = unix.Timespec{Sec: int64(in.Atime), Nsec: int64(in.Atimensec)}
		}
		a.Atime = &ts
	}
	if in.Valid&fuse.FATTR_MTIME != 0 {
		ts := unix.Timespec{Nsec: unix.UTIME_NOW}
		if in.Valid&fuse.FATTR_MTIME_NOW == 0 {
			ts = unix.Timespec{Sec: int64(in.Mtime), Nsec: int64(in.Mtimensec)}
		}
		a.Mtime = &ts
	}
	fd := -1
	if h, ok := f.(*file); ok && h.writable {
		fd = h.fd
	}
	chown := a.Uid != nil || a.Gid != nil
	// A SETATTR that changes nothing is what is left of a kill request
	// once fuse_setattr dropped the kill flags and their mode: from a
	// chown(f, -1, -1), or from a write (file_remove_privs; also of
	// passthrough writes, which the daemon does not see otherwise); only
	// the chown may fail (see inChown).
	bare := in.Valid&^uint32(fuse.FATTR_FH|fuse.FATTR_LOCKOWNER|fuse.FATTR_CTIME) == 0
	if p.gens.killprivV2.Load() && (chown || bare || a.Size != nil) {
		var st unix.Stat_t
		if err := p.n.Getattr(&st); err != nil {
			return errno(err)
		}
		if m, c, kill := killV2(ctx, &st, chown || bare && inChown(ctx), a.Size != nil && in.Valid&fuse.FATTR_KILL_SUIDGID != 0 || bare); kill {
			if chown || bare && inChown(ctx) {
				if c.uid != st.Uid && !c.capable(unix.CAP_FOWNER) {
					return syscall.EPERM // setattr_prepare on the ATTR_MODE the kill adds
				}
			}
			a.Mode = &m
		}
	} else if chown || bare || a.Size != nil {
		var st unix.Stat_t
		if err := p.n.Getattr(&st); err != nil {
			return errno(err)
		}
		if c, kill := needsSgidKill(ctx, &st); kill {
			if (chown || bare && inChown(ctx)) && c.uid != st.Uid && !c.capable(unix.CAP_FOWNER) {
				return syscall.EPERM
			}
			m := st.Mode & 0o7777 &^ (unix.S_ISUID | unix.S_ISGID)
			if a.Mode != nil {
				m = *a.Mode &^ unix.S_ISGID
			}
			a.Mode = &m
		}
	}
	var err error
	if pt := p.gens.pt.Load(); pt != nil {
		err = pt.setattr(p, a, fd)
	} else {
		err = p.n.Setattr(a, fd)
	}
	if err != nil {
		return errno(err)
	}
	if e := p.Getattr(ctx, f, out); e != 0 {
		return e
	}
	if out.Timeout() == 0 {
		// go-fuse (v2.12.1, fs/bridge.go SetAttr) sends what the node
		// sets, unlike GETATTR, where it puts in the mount's timeout: a
		// zero would make the kernel ask again at the next stat.
		out.SetTimeout(cacheTimeout)
	}
	return 0
}

func (p *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	defer p.afterCopyUp(p.upState())
	if pt := p.gens.pt.Load(); pt != nil {
		h, e := pt.open(ctx, p, flags)
		if e != 0 {
			return nil, 0, e
		}
		p.truncKill(ctx, flags)
		return p.opened(h), 0, 0
	}
	fd, err := p.n.Open(int(flags))
	if err != nil {
		return nil, 0, errno(err)
	}
	p.truncKill(ctx, flags)
	// The kernel's page cache of the object stays valid across opens:
	// its data changes only through this mount (copy-up keeps it).
	return p.opened(newFile(p.ov, p.n, fd, int(flags))), fuse.FOPEN_KEEP_CACHE, 0
}

// opened counts h, a new handle of p (nil: none), until its release; the
// handle holds a reference on its overlay node meanwhile, as go-fuse may
// process the inode's FORGET before the handle's RELEASE.
func (p *node) opened(h fs.FileHandle) fs.FileHandle {
	if f, ok := h.(*file); ok && f != nil {
		f.owner = p
		p.obj.opens.Add(1)
		f.n.Ref()
	}
	return h
}

// pin is Pin for an object whose name is going away, where it is needed:
// a regular file only while it has open handles.
func pin(ch *fs.Inode) {
	c := ch.Operations().(*node)
	if c.n.Kind() != unix.S_IFREG || c.obj.opens.Load() > 0 {
		c.n.Pin()
	}
}

func (p *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	defer p.changed()
	child, fd, err := p.n.Create(name, int(flags), mode, cred(ctx))
	if err != nil {
		return nil, nil, 0, errno(err)
	}
	ch, e := p.entry(ctx, name, child, out)
	if e != 0 {
		unix.Close(fd)
		return nil, nil, 0, e
	}
	if flags&syscall.O_EXCL != 0 {
		p.gens.caps.none(&ch.Operations().(*node).obj.capAbsent) // a new file
	}
	if pt := p.gens.pt.Load(); pt != nil {
		h, e := pt.create(ctx, ch.Operations().(*node), fd, flags)
		if e != 0 {
			return nil, nil, 0, e
		}
		return ch, ch.Operations().(*node).opened(h), 0, 0
	}
	return ch, ch.Operations().(*node).opened(newFile(p.ov, ch.Operations().(*node).n, fd, int(flags))), 0, 0
}

func (p *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer p.changed()
	child, err := p.n.Mkdir(name, mode, cred(ctx))
	if err != nil {
		return nil, errno(err)
	}
	return p.entry(ctx, name, child, out)
}

func (p *node) Mknod(ctx context.Context, name string, mode uint32, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer p.changed()
	child, err := p.n.Mknod(name, mode, uint64(rdev), cred(ctx))
	if err != nil {
		return nil, errno(err)
	}
	return p.entry(ctx, name, child, out)
}

func (p *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer p.changed()
	child, err := p.n.Symlink(target, name, cred(ctx))
	if err != nil {
		return nil, errno(err)
	}
	return p.entry(ctx, name, child, out)
}

func (p *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer p.changed()
	t := target.(*node)
	defer t.afterCopyUp(t.upState())
	if _, err := p.n.Link(t.n, name); err != nil {
		return nil, errno(err)
	}
	var st unix.Stat_t
	if err := t.n.Getattr(&st); err != nil {
		return nil, errno(err)
	}
	out.Attr.FromStat(toSyscall(&st))
	t.noteName(p, name)
	return t.EmbeddedInode(), 0
}

func (p *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	s, err := p.n.Readlink()
	if err != nil {
		return nil, errno(err)
	}
	return []byte(s), 0
}

// childNode returns the overlay node go-fuse holds for name, or nil.
func (p *node) childNode(name string) *overlay.Node {
	if ch := p.GetChild(name); ch != nil {
		if c, ok := ch.Operations().(*node); ok {
			return c.n
		}
	}
	return nil
}

func (p *node) Unlink(ctx context.Context, name string) syscall.Errno {
	defer p.changed()
	ch := p.GetChild(name)
	links := uint32(1)
	if ch != nil {
		pin(ch)
		links = nlink(ch.Operations().(*node).n)
	}
	if err := p.n.Unlink(name); err != nil {
		if ch != nil {
			ch.Operations().(*node).n.Unpin()
		}
		return errno(err)
	}
	if ch == nil {
		return 0
	}
	p.RmChild(name)
	p.forgetName(ch, links)
	return 0
}

// nlink is the object's link count before a change, 1 if unknown.
func nlink(n *overlay.Node) uint32 {
	var st unix.Stat_t
	if n.IsDir() || n.Getattr(&st) != nil {
		return 1
	}
	return uint32(st.Nlink)
}

// forgetName keeps the object of ch, which just lost one of its links
// names, reachable through another of its names that go-fuse knows. If
// go-fuse knows none, the object keeps its key while it has
// other links (a lookup of one finds it again); else it is gone.
func (p *node) forgetName(ch *fs.Inode, links uint32) {
	child := ch.Operations().(*node).n
	// go-fuse's parent records of an inode can be stale (see
	// generations): the parent must still hold ch under that name, and
	// still hold its overlay node.
	if pname, pp := ch.Parent(); pp != nil && pp.GetChild(pname) == ch {
		if pn := pp.Operations().(*node); p.gens.hold(pn) {
			child.SetLocation(pn.n, pname)
			pn.n.Forget()
			child.Unpin()
			return
		}
	}
	if links > 1 {
		child.Detach()
	} else {
		p.gone(child)
	}
}

func (p *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	defer p.changed()
	child := p.childNode(name)
	if err := p.n.Rmdir(name); err != nil {
		return errno(err)
	}
	if child != nil {
		p.gone(child)
	}
	return 0
}

func (p *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np := newParent.(*node)
	defer p.changed()
	defer np.changed()
	tch := np.GetChild(newName)
	var target *overlay.Node
	if tch != nil {
		target = tch.Operations().(*node).n
	}
	tlinks := uint32(1)
	if target != nil && flags&unix.RENAME_EXCHANGE == 0 {
		pin(tch)
		tlinks = nlink(target)
	}
	// Renaming copies up: the kernel's cached attributes of the moved
	// objects were the lower ones.
	if sch := p.GetChild(name); sch != nil {
		defer sch.Operations().(*node).afterCopyUp(sch.Operations().(*node).upState())
	}
	if tch != nil && flags&unix.RENAME_EXCHANGE != 0 {
		defer tch.Operations().(*node).afterCopyUp(tch.Operations().(*node).upState())
	}
	if err := p.n.Rename(name, p.childNode(name), np.n, newName, target, flags); err != nil {
		if target != nil {
			target.Unpin()
		}
		return errno(err)
	}
	if tch != nil && flags&unix.RENAME_EXCHANGE == 0 {
		// The replaced object may live on under another name go-fuse
		// knows (a hard link); else it has none left.
		np.RmChild(newName)
		p.forgetName(tch, tlinks)
	}
	if np != p {
		// A moved directory lists a new "..": drop its cached listing
		// (offset 0, length 0: all of its pages).
		for _, ch := range []*fs.Inode{p.GetChild(name), np.GetChild(newName)} {
			if ch != nil && ch.IsDir() {
				ch.Operations().(*node).changed()
				ch.NotifyContent(0, 0)
			}
		}
	}
	return 0
}

func (p *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if !p.n.IsDir() {
		return nil, 0, syscall.ENOTDIR
	}
	// The kernel may keep the listing (FOPEN_CACHE_DIR): lower layers do
	// not change under a mount and the upper only through it, and every
	// request that changes this directory's entries is one the kernel
	// sends for it, after which it drops the cache (fuse_dir_changed).
	// Only ".." can change otherwise, by a move of this directory:
	// Rename drops the moved directory's listing.
	return newDir(p, p.parentIno()), fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

func (p *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st unix.Statfs_t
	if err := p.ov.Statfs(&st); err != nil {
		return errno(err)
	}
	out.Blocks, out.Bfree, out.Bavail = st.Blocks, st.Bfree, st.Bavail
	out.Files, out.Ffree = st.Files, st.Ffree
	out.Bsize, out.NameLen, out.Frsize = uint32(st.Bsize), uint32(st.Namelen), uint32(st.Frsize)
	return 0
}

func (p *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	var gen uint64
	if attr == capName {
		if p.gens.caps.known(&p.obj.capAbsent) {
			return 0, syscall.ENODATA
		}
		gen = p.gens.caps.begin()
	}
	v, err := p.n.Getxattr(attr)
	if attr == capName {
		p.gens.caps.found(&p.obj.capAbsent, gen, err)
	}
	if err != nil {
		return 0, errno(err)
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (p *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	defer p.afterCopyUp(p.upState())
	p.gens.caps.change(attr)
	defer p.gens.caps.change(attr)
	return errno(p.n.Setxattr(attr, data, int(flags)))
}

func (p *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	defer p.afterCopyUp(p.upState())
	p.gens.caps.change(attr)
	defer p.gens.caps.change(attr)
	return errno(p.n.Removexattr(attr))
}

// upState is what afterCopyUp compares: whether the object is up, whether
// its data is (not a metacopy), and its inode number.
type upState struct {
	up, data bool
	ino      uint64
}

func (p *node) upState() upState { return upState{p.n.InUpper(), p.n.DataInUpper(), p.n.Ino()} }

// afterCopyUp drops the attributes the kernel cached for p if the request
// copied it up (was is p's state before): they were the lower object's (the
// st_nlink of a lower hard link, for one), and requests without an
// attribute reply leave them. A copy-up that split a lower hard link also
// changed p's number (overlay/ino.go), which its directory's listings, the
// kept one and the kernel's cache, hold as d_ino: they go too. Copying the
// data of a metacopy file up writes the upper file, which gives it a new
// mtime, as in the kernel (ovl_copy_up_meta_inode_data).
func (p *node) afterCopyUp(was upState) {
	now := p.upState()
	if now.up == was.up && now.data == was.data {
		return
	}
	p.NotifyContent(-1, 0) // a negative offset: attributes only
	if was.up || now.ino == was.ino {
		return
	}
	if _, parent := p.Parent(); parent != nil {
		parent.Operations().(*node).changed()
		parent.NotifyContent(0, 0) // offset 0, length 0: all of its pages
	}
}

func (p *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, err := p.n.Listxattr()
	if err != nil {
		return 0, errno(err)
	}
	sz := 0
	for _, n := range names {
		sz += len(n) + 1
	}
	if len(dest) < sz {
		return uint32(sz), syscall.ERANGE
	}
	off := 0
	for _, n := range names {
		off += copy(dest[off:], n)
		dest[off] = 0
		off++
	}
	return uint32(sz), 0
}

func (p *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if h, ok := f.(*file); ok {
		return h.Fsync(ctx, flags)
	}
	return 0
}
