package fusefs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ovl-project/ovl/overlay"
)

// dir is an open directory: the merged listing taken at the first readdir
// and again at each rewind (as the kernel's overlayfs caches it per open
// file), with "." and ".." first. Offsets are positions in that list, so
// telldir/seekdir are exact within one listing, and names that stay are
// listed once however the directory changes meanwhile.
//
// The kernel keeps listings (FOPEN_CACHE_DIR) and serves an open from the
// cache, filled through other opens, until it runs out of cached entries
// mid-way and asks this open for the rest at an offset of that listing.
// So an open starts with the directory's last listing while no entry has
// changed since it was taken: it is the one the cache holds, or equal to
// it. Listings are never changed once taken, only replaced.
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
	gen := d.p.generation()
	ents, err := d.n.ReadDir()
	if err != nil {
		return errno(err)
	}
	d.ents = make([]fuse.DirEntry, 0, len(ents)+2)
	d.ents = append(d.ents,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: d.n.Ino()},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: d.parentIno})
	for _, e := range ents {
		d.ents = append(d.ents, fuse.DirEntry{Name: e.Name, Mode: e.Type, Ino: e.Ino})
	}
	for i := range d.ents {
		d.ents[i].Off = uint64(i + 1)
	}
	d.p.listed(d.ents, gen)
	return 0
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

// Seekdir positions after the entry whose offset is off (0: the start).
func (d *dir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 || d.ents == nil {
		// rewinddir: list afresh, as the kernel does on seek to 0.
		if e := d.list(); e != 0 {
			return e
		}
	}
	if off > uint64(len(d.ents)) {
		off = uint64(len(d.ents))
	}
	d.pos = int(off)
	return 0
}

func (d *dir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno { return 0 }
