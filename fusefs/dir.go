package fusefs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ovl-project/ovl/overlay"
)

// dir is an open directory: the merged listing taken at opendir (as the
// kernel caches it per open file), with "." and ".." first. Offsets are
// positions in that list, so telldir/seekdir are exact within one open.
type dir struct {
	n    *overlay.Node
	ents []fuse.DirEntry
	pos  int
}

var (
	_ fs.FileReaddirenter = (*dir)(nil)
	_ fs.FileSeekdirer    = (*dir)(nil)
	_ fs.FileFsyncdirer   = (*dir)(nil)
)

func newDir(n *overlay.Node, ents []overlay.DirEntry, parentIno uint64) *dir {
	d := &dir{n: n, ents: make([]fuse.DirEntry, 0, len(ents)+2)}
	d.ents = append(d.ents,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: n.Ino()},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parentIno})
	for _, e := range ents {
		d.ents = append(d.ents, fuse.DirEntry{Name: e.Name, Mode: e.Type, Ino: e.Ino})
	}
	for i := range d.ents {
		d.ents[i].Off = uint64(i + 1)
	}
	return d
}

func (d *dir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if d.pos >= len(d.ents) {
		return nil, 0
	}
	e := d.ents[d.pos]
	d.pos++
	return &e, 0
}

// Seekdir positions after the entry whose offset is off (0: the start).
func (d *dir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 {
		// rewinddir: list afresh, as the kernel does on seek to 0.
		if ents, err := d.n.ReadDir(); err == nil {
			nd := newDir(d.n, ents, d.ents[1].Ino)
			d.ents = nd.ents
		}
	}
	if off > uint64(len(d.ents)) {
		off = uint64(len(d.ents))
	}
	d.pos = int(off)
	return 0
}

func (d *dir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno { return 0 }
