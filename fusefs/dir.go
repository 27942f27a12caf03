package fusefs

import (
	"context"
	"hash/fnv"
	"sort"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ovl-project/ovl/overlay"
)

// dir is an open directory: the merged listing taken at the first readdir
// and again at each rewind (as the kernel's overlayfs caches it per open
// file), with "." and ".." first. The offset (d_off) of an entry is a hash
// of its name (nameOff), and a listing is in offset order, so telldir and
// seekdir are exact within one listing, and names that stay are listed
// once however the directory changes meanwhile.
//
// The kernel keeps listings (FOPEN_CACHE_DIR) and serves an open from the
// cache, filled through any open (fs/fuse/readdir.c fuse_readdir_cached).
// When another open refilled the cache with a newer listing, an open
// read part-way goes on in the new cache after the entry whose offset is
// its position; when that entry is not there, it asks this open for the
// rest at that offset. Offsets of positions would name other entries in
// another listing (a name listed twice, another never); name hashes in
// order continue after the same name in any listing. An open starts with
// the directory's last listing while no entry has changed since it was
// taken. Listings are never changed once taken, only replaced.
type dir struct {
	p         *node
	n         *overlay.Node
	parentIno uint64
	ents      []fuse.DirEntry // nil: not listed yet
	pos       int
}

var (
	_ fs.FileReaddirenter = (*dir)(nil)
	_ fs.FileSeekdirer    = (*dir)(nil)
	_ fs.FileFsyncdirer   = (*dir)(nil)
	_ fs.FileReleasedirer = (*dir)(nil)
)

// newDir opens p; the handle holds a reference on p's overlay node until
// Releasedir.
func newDir(p *node, parentIno uint64) *dir {
	p.n.Ref()
	return &dir{p: p, n: p.n, parentIno: parentIno, ents: p.lastListing()}
}

func (d *dir) Releasedir(ctx context.Context, flags uint32) { d.n.Forget() }

// list takes the merged listing.
func (d *dir) list() syscall.Errno {
	ents, e := listDir(d.p, d.parentIno)
	if e != 0 {
		return e
	}
	d.ents = ents
	return 0
}

// listDir takes p's merged listing, with "." and ".." (numbered
// parentIno) first and the names in offset order, and keeps it as p's
// last listing unless an entry changed meanwhile.
func listDir(p *node, parentIno uint64) ([]fuse.DirEntry, syscall.Errno) {
	gen := p.generation()
	ents, err := p.n.ReadDir()
	if err != nil {
		return nil, errno(err)
	}
	out := make([]fuse.DirEntry, 0, len(ents)+2)
	out = append(out,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: p.n.Ino(), Off: 1},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parentIno, Off: 2})
	for _, e := range ents {
		out = append(out, fuse.DirEntry{Name: e.Name, Mode: e.Type, Ino: e.Ino, Off: nameOff(e.Name)})
	}
	named := out[2:]
	sort.Slice(named, func(i, j int) bool {
		if named[i].Off != named[j].Off {
			return named[i].Off < named[j].Off
		}
		return named[i].Name < named[j].Name
	})
	for i := 1; i < len(named); i++ {
		if named[i].Off <= named[i-1].Off {
			named[i].Off = named[i-1].Off + 1 // a collision: rare, and stays within this listing
		}
	}
	p.listed(out, gen)
	return out, 0
}

// nameOff is the offset of the entry name: a 62-bit FNV-1a hash, above
// the offsets 0 (start), 1 (".") and 2 (".."), and positive as a d_off
// (an off_t) must be.
func nameOff(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()>>2 + 3
}

func (d *dir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if d.ents == nil {
		if e := d.list(); e != 0 {
			return nil, e
		}
	}
	if d.pos >= len(d.ents) {
		return nil, 0
	}
	e := d.ents[d.pos]
	d.pos++
	return &e, 0
}

// Seekdir positions after the entries whose offsets are at most off (0:
// the start), whether or not one has offset off: in another listing
// that name may be gone.
func (d *dir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 || d.ents == nil {
		// rewinddir: list afresh, as the kernel does on seek to 0.
		if e := d.list(); e != 0 {
			return e
		}
	}
	d.pos = sort.Search(len(d.ents), func(i int) bool { return d.ents[i].Off > off })
	return 0
}

func (d *dir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return fs.ToErrno(d.n.FsyncDir())
}
