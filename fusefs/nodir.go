package fusefs

import (
	"sort"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// dirRaw serves directories without open handles, where the kernel allows
// it (FUSE_NO_OPENDIR_SUPPORT, Linux 5.1): OPENDIR answers ENOSYS once,
// after which the kernel opens directories without asking (and sends no
// RELEASEDIR), keeping their listings as FOPEN_CACHE_DIR|FOPEN_KEEP_CACHE
// would (fs/fuse/file.c fuse_file_open). A warm walk then costs no request
// per directory.
//
// READDIR and FSYNCDIR come with handle 0 and are served from the node: a
// listing is the directory's kept one (node.lastListing, dropped by every
// change of its entries, see node.changed) or a new one, and the offset
// is found in it by name hash (see dir), so a read part-way goes on after
// the same name whichever listing it meets, as with a handle.
// READDIRPLUS is plusRaw's, over this READDIR.
type dirRaw struct {
	fuse.RawFileSystem
	g *generations
	// stateless: the kernel offered FUSE_NO_OPENDIR_SUPPORT; set after
	// INIT, before the first OPENDIR.
	stateless atomic.Bool
}

func (r *dirRaw) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if r.stateless.Load() {
		return fuse.ENOSYS
	}
	return r.RawFileSystem.OpenDir(cancel, in, out)
}

// dirNode returns the directory node of nodeID holding its overlay node
// (the caller drops it with Forget), nil if there is none.
func (r *dirRaw) dirNode(nodeID uint64) *node {
	r.g.mu.Lock()
	nd := r.g.byID[nodeID]
	r.g.mu.Unlock()
	if nd == nil || !r.g.hold(nd) {
		return nil
	}
	return nd
}

func (r *dirRaw) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if in.Fh != 0 {
		return r.RawFileSystem.ReadDir(cancel, in, out)
	}
	p := r.dirNode(in.NodeId)
	if p == nil {
		return fuse.Status(syscall.ESTALE)
	}
	defer p.n.Forget()
	if !p.n.IsDir() {
		return fuse.Status(syscall.ENOTDIR)
	}
	ents := p.lastListing()
	if ents == nil {
		var e syscall.Errno
		if ents, e = listDir(p, p.parentIno()); e != 0 {
			return fuse.Status(e)
		}
	}
	i := sort.Search(len(ents), func(i int) bool { return ents[i].Off > in.Offset })
	for ; i < len(ents); i++ {
		if !out.AddDirEntry(ents[i]) {
			break
		}
	}
	return fuse.OK
}

func (r *dirRaw) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	if in.Fh != 0 {
		return r.RawFileSystem.FsyncDir(cancel, in)
	}
	p := r.dirNode(in.NodeId)
	if p == nil {
		return fuse.Status(syscall.ESTALE)
	}
	defer p.n.Forget()
	return fuse.Status(errno(p.n.FsyncDir()))
}

// parentIno is the inode number p's listings give "..": its parent's, or
// its own at the root.
func (p *node) parentIno() uint64 {
	if _, parent := p.Parent(); parent != nil {
		return parent.Operations().(*node).n.Ino()
	}
	return p.n.Ino()
}
