package layerindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// ErrChanged says the layer changed while it was being indexed.
var ErrChanged = errors.New("layer changed while indexed")

// Build walks the layer directory rootfd and returns its index file's
// contents. It reads the layer only, through rootfd (format.OpenAt), and
// fails with ErrChanged where a directory's ctime moved during the walk.
func Build(rootfd int) ([]byte, error) {
	id, err := IdentityOf(rootfd)
	if err != nil {
		return nil, err
	}
	w := &writer{buf: make([]byte, headerLen, 1<<20)}
	root, err := format.OpenAt(rootfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("open layer root: %w", err)
	}
	w.dirs = append(w.dirs, dirInfo{})
	err = w.walk(root, 0, ".")
	unix.Close(root)
	if err != nil {
		return nil, err
	}
	if after, err := IdentityOf(rootfd); err != nil {
		return nil, err
	} else if after != id {
		return nil, fmt.Errorf("root: %w", ErrChanged)
	}
	tab := len(w.buf)
	for _, d := range w.dirs {
		w.buf = binary.LittleEndian.AppendUint64(w.buf, d.off)
		w.buf = binary.LittleEndian.AppendUint32(w.buf, d.count)
		w.buf = binary.LittleEndian.AppendUint64(w.buf, d.ino)
		w.buf = appendTs(w.buf, d.ctime)
	}
	h := append(w.buf[:0:0], magic[:]...)
	h = binary.LittleEndian.AppendUint32(h, Version)
	h = binary.LittleEndian.AppendUint32(h, uint32(id.Fsid[0]))
	h = binary.LittleEndian.AppendUint32(h, uint32(id.Fsid[1]))
	h = binary.LittleEndian.AppendUint64(h, id.Dev)
	h = binary.LittleEndian.AppendUint64(h, id.Ino)
	h = appendTs(h, id.Ctime)
	h = appendTs(h, id.Mtime)
	h = binary.LittleEndian.AppendUint32(h, uint32(len(w.dirs)))
	h = binary.LittleEndian.AppendUint64(h, uint64(tab))
	copy(w.buf, h)
	return binary.LittleEndian.AppendUint32(w.buf, crc32.Checksum(w.buf, castagnoli)), nil
}

func appendTs(b []byte, t unix.Timespec) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(t.Sec))
	return binary.LittleEndian.AppendUint64(b, uint64(t.Nsec))
}

type writer struct {
	buf  []byte
	dirs []dirInfo
}

type pending struct {
	name string
	num  int32
}

// walk records the directory fd (readable), number num, and below it.
func (w *writer) walk(fd int, num int32, path string) error {
	var before unix.Stat_t
	if err := unix.Fstat(fd, &before); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	names, err := listNames(fd)
	if err != nil {
		return fmt.Errorf("list %s: %w", path, err)
	}
	w.dirs[num] = dirInfo{off: uint64(len(w.buf)), count: uint32(len(names)), ino: before.Ino, ctime: before.Ctim}
	var subs []pending
	for _, name := range names {
		var st unix.Stat_t
		if err := format.Lstat(fd, name, &st); err != nil {
			return fmt.Errorf("stat %s/%s: %w", path, name, err)
		}
		xs, err := overlayXattrs(fd, name)
		if err != nil {
			return fmt.Errorf("xattrs of %s/%s: %w", path, name, err)
		}
		sub := int32(-1)
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			sub = int32(len(w.dirs))
			w.dirs = append(w.dirs, dirInfo{})
			subs = append(subs, pending{name, sub})
		}
		w.entry(name, &st, sub, xs)
	}
	var after unix.Stat_t
	if err := unix.Fstat(fd, &after); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if after.Ctim != before.Ctim {
		return fmt.Errorf("%s: %w", path, ErrChanged)
	}
	for _, s := range subs {
		cfd, err := format.OpenAt(fd, s.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("open %s/%s: %w", path, s.name, err)
		}
		err = w.walk(cfd, s.num, path+"/"+s.name)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) bytes(b []byte) {
	w.buf = binary.AppendUvarint(w.buf, uint64(len(b)))
	w.buf = append(w.buf, b...)
}

// entry encodes one entry; reader.entry decodes it in the same order.
func (w *writer) entry(name string, st *unix.Stat_t, sub int32, xs [][2]string) {
	u := func(v uint64) { w.buf = binary.AppendUvarint(w.buf, v) }
	s := func(v int64) { w.buf = binary.AppendVarint(w.buf, v) }
	w.bytes([]byte(name))
	u(uint64(st.Mode))
	u(st.Ino)
	u(st.Nlink)
	u(uint64(st.Uid))
	u(uint64(st.Gid))
	u(st.Rdev)
	s(st.Size)
	s(st.Blocks)
	s(st.Blksize)
	u(st.Dev)
	for _, t := range []unix.Timespec{st.Atim, st.Mtim, st.Ctim} {
		s(t.Sec)
		s(t.Nsec)
	}
	s(int64(sub))
	u(uint64(len(xs)))
	for _, x := range xs {
		w.bytes([]byte(x[0]))
		w.bytes([]byte(x[1]))
	}
}

// listNames lists the directory fd, without "." and "..".
func listNames(fd int) ([]string, error) {
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, err
	}
	buf := make([]byte, 64<<10)
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// overlayXattrs reads the xattrs of name in dirfd that the index records.
func overlayXattrs(dirfd int, name string) ([][2]string, error) {
	list, err := format.ListxattrAt(dirfd, name)
	if err != nil {
		return nil, err
	}
	var out [][2]string
	for _, x := range list {
		if !Recorded(x) {
			continue
		}
		v, err := format.GetxattrAt(dirfd, name, x)
		if err != nil {
			return nil, err
		}
		out = append(out, [2]string{x, string(v)})
	}
	return out, nil
}

// Load opens the index of the layer rootfd kept in the cache directory
// dir; the file is mapped, not read.
func Load(dir string, rootfd int) (*Index, error) {
	id, err := IdentityOf(rootfd)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(dir, id.Key()))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() < headerLen+4 || fi.Size() > 1<<40 {
		return nil, fmt.Errorf("%w: %d bytes", ErrCorrupt, fi.Size())
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", f.Name(), err)
	}
	ix, err := Parse(data, id)
	if err != nil {
		unix.Munmap(data)
		return nil, err
	}
	return ix, nil
}

// Save builds the index of the layer rootfd and writes it into the cache
// directory dir, replacing any older one atomically.
func Save(dir string, rootfd int) error {
	data, err := Build(rootfd)
	if err != nil {
		return err
	}
	id, err := IdentityOf(rootfd)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-*.ovlidx")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, id.Key()))
}
