// Package layerindex keeps what ovl learns about a read-only lower layer
// across mounts: every directory's entries, each with its attributes and
// its overlay xattrs (whiteout, metacopy, opaque, redirect markers), in
// one compact file, so that a cold walk of a large layer reads that file
// instead of thousands of inodes.
//
// Rules:
//   - An index describes one layer directory as it was when the index was
//     built. It is valid only for a layer whose root has the same
//     filesystem id (f_fsid), device, inode number, ctime and mtime
//     (Identity); Open refuses any other, and any file that is not exactly
//     what Build wrote (version, length, CRC32C over the whole file).
//   - The caller spot-checks every directory it opens for real against
//     the index (Dir.Matches: inode number and ctime, which every change
//     of the directory's entries bumps and no user can set back). A file
//     changed in place (chmod, write) changes neither: the index is for
//     layers that are immutable once written, as containers-storage keeps
//     its committed layers.
//   - Names are answered from the index only: a name absent from an
//     indexed directory is absent. Data is never in the index.
//
// File layout (all integers little-endian, varints as encoding/binary):
//
//	header:  magic "OVLLIDX\x00", u32 version, identity (fsid 8, dev 8,
//	         ino 8, ctime 16, mtime 16), u32 number of directories,
//	         u64 offset of the directory table
//	entries: per directory, its entries in listing order
//	table:   per directory, u64 offset of its first entry, u32 count,
//	         u64 ino, ctime (16)
//	trailer: u32 CRC32C of everything before it
package layerindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Version is the file format's version; a file of another is ignored.
const Version = 1

var magic = [8]byte{'O', 'V', 'L', 'L', 'I', 'D', 'X', 0}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrMismatch says an index belongs to another layer, or to this layer
// as it was before it changed.
var ErrMismatch = errors.New("layer index does not match the layer")

// ErrCorrupt says an index file is not one Build wrote: truncated,
// damaged or of another version.
var ErrCorrupt = errors.New("layer index damaged")

// Identity is what names a layer directory: its filesystem, its root
// inode and the root's change stamps.
type Identity struct {
	Fsid  [2]int32
	Dev   uint64
	Ino   uint64
	Ctime unix.Timespec
	Mtime unix.Timespec
}

// IdentityOf returns the identity of the layer directory rootfd.
func IdentityOf(rootfd int) (Identity, error) {
	var st unix.Stat_t
	if err := unix.Fstat(rootfd, &st); err != nil {
		return Identity{}, fmt.Errorf("stat layer root: %w", err)
	}
	var sf unix.Statfs_t
	if err := unix.Fstatfs(rootfd, &sf); err != nil {
		return Identity{}, fmt.Errorf("statfs layer root: %w", err)
	}
	return Identity{Fsid: sf.Fsid.Val, Dev: st.Dev, Ino: st.Ino, Ctime: st.Ctim, Mtime: st.Mtim}, nil
}

// Key names the index file of a layer with identity id inside a cache
// directory: the layer's filesystem and root inode, so that one cache
// directory serves many layers and a rebuilt layer replaces its file.
func (id Identity) Key() string {
	return fmt.Sprintf("%08x%08x-%x-%x.ovlidx", uint32(id.Fsid[0]), uint32(id.Fsid[1]), id.Dev, id.Ino)
}

// Entry is one name of an indexed directory.
type Entry struct {
	Name string
	// Stat holds the attributes lstat gave at build time.
	Stat unix.Stat_t
	// Xattrs holds the overlay xattrs (names with Prefixes), name to value.
	Xattrs map[string][]byte
	// sub is the directory number of a directory entry, or -1.
	sub int32
}

// Prefixes are the xattr name prefixes an index records: every xattr the
// overlay reads at lookup starts with one of them.
var Prefixes = []string{"trusted.overlay.", "user.overlay."}

// Recorded reports whether the index records the xattr name: only then
// is an absent one absent.
func Recorded(name string) bool {
	for _, p := range Prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Xattr returns the value of a recorded xattr, nil when the entry has none.
func (e *Entry) Xattr(name string) []byte { return e.Xattrs[name] }

// dirInfo is one row of the directory table.
type dirInfo struct {
	off   uint64
	count uint32
	ino   uint64
	ctime unix.Timespec
}

// Index is an opened index file.
type Index struct {
	id   Identity
	data []byte // the whole file
	dirs []dirInfo
}

// Dir is one decoded directory of an index.
type Dir struct {
	ix     *Index
	ino    uint64
	ctime  unix.Timespec
	ents   []Entry // listing order
	sorted []int32 // indexes into ents, by name
}

const headerLen = 8 + 4 + 8 + 8 + 8 + 16 + 16 + 4 + 8

// Parse checks data, an index file's contents, against want, the identity
// of the layer it is to serve, and returns the index. data must stay
// unchanged while the index is used.
func Parse(data []byte, want Identity) (*Index, error) {
	if len(data) < headerLen+4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrCorrupt, len(data))
	}
	body := data[:len(data)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(data[len(body):]) {
		return nil, fmt.Errorf("%w: checksum", ErrCorrupt)
	}
	if [8]byte(data[:8]) != magic {
		return nil, fmt.Errorf("%w: magic", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(data[8:]); v != Version {
		return nil, fmt.Errorf("%w: version %d", ErrCorrupt, v)
	}
	r := reader{b: data, off: 12}
	var id Identity
	id.Fsid[0], id.Fsid[1] = int32(r.u32()), int32(r.u32())
	id.Dev, id.Ino = r.u64(), r.u64()
	id.Ctime, id.Mtime = r.ts(), r.ts()
	if id != want {
		return nil, fmt.Errorf("%w: built for %+v, layer is %+v", ErrMismatch, id, want)
	}
	ndirs, tab := r.u32(), r.u64()
	if ndirs == 0 || tab < headerLen || tab > uint64(len(body)) || (uint64(len(body))-tab) != uint64(ndirs)*36 {
		return nil, fmt.Errorf("%w: directory table", ErrCorrupt)
	}
	ix := &Index{id: id, data: body, dirs: make([]dirInfo, ndirs)}
	r = reader{b: body, off: int(tab)}
	for i := range ix.dirs {
		d := &ix.dirs[i]
		d.off, d.count, d.ino, d.ctime = r.u64(), r.u32(), r.u64(), r.ts()
		if d.off < headerLen || d.off > tab {
			return nil, fmt.Errorf("%w: directory %d", ErrCorrupt, i)
		}
	}
	return ix, nil
}

// Identity returns the identity of the layer the index describes.
func (ix *Index) Identity() Identity { return ix.id }

// Root decodes the layer's root directory.
func (ix *Index) Root() (*Dir, error) { return ix.dir(0) }

func (ix *Index) dir(i int32) (*Dir, error) {
	if i < 0 || int(i) >= len(ix.dirs) {
		return nil, fmt.Errorf("%w: directory %d", ErrCorrupt, i)
	}
	di := ix.dirs[i]
	d := &Dir{ix: ix, ino: di.ino, ctime: di.ctime, ents: make([]Entry, di.count), sorted: make([]int32, di.count)}
	r := reader{b: ix.data, off: int(di.off)}
	for j := range d.ents {
		if err := r.entry(&d.ents[j]); err != nil {
			return nil, fmt.Errorf("%w: directory %d: %v", ErrCorrupt, i, err)
		}
		if s := d.ents[j].sub; s != -1 && (s <= 0 || int(s) >= len(ix.dirs)) {
			return nil, fmt.Errorf("%w: directory %d", ErrCorrupt, i)
		}
		d.sorted[j] = int32(j)
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: directory %d: %v", ErrCorrupt, i, r.err)
	}
	sort.Slice(d.sorted, func(a, b int) bool { return d.ents[d.sorted[a]].Name < d.ents[d.sorted[b]].Name })
	return d, nil
}

// Entries returns the directory's entries in the order the layer listed
// them; the caller must not change them.
func (d *Dir) Entries() []Entry { return d.ents }

// Lookup returns the entry name, or nil where the directory had none.
func (d *Dir) Lookup(name string) *Entry {
	i := sort.Search(len(d.sorted), func(i int) bool { return d.ents[d.sorted[i]].Name >= name })
	if i < len(d.sorted) && d.ents[d.sorted[i]].Name == name {
		return &d.ents[d.sorted[i]]
	}
	return nil
}

// Sub decodes the directory of the entry e of d (nil for a non-directory).
func (d *Dir) Sub(e *Entry) (*Dir, error) {
	if e.sub < 0 {
		return nil, nil
	}
	return d.ix.dir(e.sub)
}

// Matches reports whether st, a directory's real attributes, is the
// directory d describes, unchanged: same inode, same ctime.
func (d *Dir) Matches(st *unix.Stat_t) bool {
	return st.Ino == d.ino && st.Ctim == d.ctime
}

// reader decodes the file; the first error sticks.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) need(n int) bool {
	if r.err == nil && (n < 0 || r.off+n > len(r.b)) {
		r.err = errors.New("truncated")
	}
	return r.err == nil
}

func (r *reader) u32() uint32 {
	if !r.need(4) {
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v
}

func (r *reader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b[r.off:])
	r.off += 8
	return v
}

func (r *reader) ts() unix.Timespec {
	return unix.Timespec{Sec: int64(r.u64()), Nsec: int64(r.u64())}
}

func (r *reader) uv() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		r.err = errors.New("bad varint")
		return 0
	}
	r.off += n
	return v
}

func (r *reader) sv() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b[r.off:])
	if n <= 0 {
		r.err = errors.New("bad varint")
		return 0
	}
	r.off += n
	return v
}

func (r *reader) bytes() []byte {
	n := r.uv()
	if n > uint64(len(r.b)) || !r.need(int(n)) {
		return nil
	}
	v := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return v
}

// entry decodes one entry; see writer.entry for the fields.
func (r *reader) entry(e *Entry) error {
	e.Name = string(r.bytes())
	st := &e.Stat
	st.Mode = uint32(r.uv())
	st.Ino = r.uv()
	st.Nlink = r.uv()
	st.Uid, st.Gid = uint32(r.uv()), uint32(r.uv())
	st.Rdev = r.uv()
	st.Size, st.Blocks, st.Blksize = r.sv(), r.sv(), r.sv()
	st.Dev = r.uv()
	st.Atim = unix.Timespec{Sec: r.sv(), Nsec: r.sv()}
	st.Mtim = unix.Timespec{Sec: r.sv(), Nsec: r.sv()}
	st.Ctim = unix.Timespec{Sec: r.sv(), Nsec: r.sv()}
	e.sub = int32(r.sv())
	if nx := r.uv(); nx > 0 && r.err == nil {
		if nx > 1024 {
			return errors.New("too many xattrs")
		}
		e.Xattrs = make(map[string][]byte, nx)
		for range nx {
			k := string(r.bytes())
			v := r.bytes()
			if v == nil {
				v = []byte{}
			}
			e.Xattrs[k] = v
		}
	}
	if r.err == nil && (e.Name == "" || strings.ContainsRune(e.Name, '/') || e.Name == "." || e.Name == "..") {
		return errors.New("bad name")
	}
	return r.err
}
