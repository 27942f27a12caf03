package kernelcmp

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Dirent is one entry returned by getdents64.
type Dirent struct {
	Ino  uint64
	Off  int64
	Type uint8
	Name string
}

// ParseDirents decodes a getdents64 buffer.
func ParseDirents(buf []byte) []Dirent {
	var out []Dirent
	for len(buf) >= 19 {
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen < 19 || reclen > len(buf) {
			break
		}
		name := buf[19:reclen]
		if i := strings.IndexByte(string(name), 0); i >= 0 {
			name = name[:i]
		}
		out = append(out, Dirent{
			Ino:  binary.NativeEndian.Uint64(buf[0:8]),
			Off:  int64(binary.NativeEndian.Uint64(buf[8:16])),
			Type: buf[18],
			Name: string(name),
		})
		buf = buf[reclen:]
	}
	return out
}

// ReadDirFd reads all remaining entries of an open directory with a
// getdents64 buffer of bufSize bytes.
func ReadDirFd(fd, bufSize int) ([]Dirent, error) {
	buf := make([]byte, bufSize)
	var out []Dirent
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return out, err
		}
		if n <= 0 {
			return out, nil
		}
		out = append(out, ParseDirents(buf[:n])...)
	}
}

// ReadDir lists a directory with getdents64, "." and ".." included, in
// the order the filesystem returns them.
func ReadDir(p string) ([]Dirent, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return ReadDirFd(fd, 64<<10)
}

func typeName(mode uint32, rdev uint64) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		if rdev == 0 {
			return "whiteout"
		}
		return "char"
	case unix.S_IFBLK:
		return "block"
	}
	return fmt.Sprintf("type%#o", mode&unix.S_IFMT)
}

func dtypeName(t uint8) string {
	switch t {
	case unix.DT_REG:
		return "file"
	case unix.DT_DIR:
		return "dir"
	case unix.DT_LNK:
		return "symlink"
	case unix.DT_FIFO:
		return "fifo"
	case unix.DT_SOCK:
		return "socket"
	case unix.DT_CHR:
		return "char"
	case unix.DT_BLK:
		return "block"
	case unix.DT_UNKNOWN:
		return "unknown"
	}
	return fmt.Sprintf("dt%d", t)
}

// Node is what a snapshot records about one object.
type Node struct {
	Type   string // file dir symlink fifo socket char block whiteout
	Perm   uint32 // mode & 07777
	UID    uint32
	GID    uint32
	Size   int64
	Blocks int64
	Nlink  uint64
	Rdev   uint64
	Hash   string // sha256 of a regular file's content
	Target string // symlink target
	// Xattrs are all xattrs except, in an upper snapshot, the overlay ones.
	Xattrs map[string]string
	// Ovl are the overlay xattrs of an upper snapshot, by suffix
	// ("opaque", "redirect", ...).
	Ovl          map[string]string
	Atime, Mtime int64 // ns
	Ctime        int64
	Ino, Dev     uint64
	// ReadDir is the errno of listing a directory that could not be
	// listed ("" if it could).
	ReadDir string
}

// Tree is a snapshot: nodes by slash path relative to the root ("" is the
// root), and problems found while walking (a name listed twice, a d_type
// that disagrees with lstat, a whiteout visible in a merged view, ...).
type Tree struct {
	Nodes    map[string]*Node
	Problems []string
}

// SnapOptions say how to walk.
type SnapOptions struct {
	// Upper walks an upper (or lower) layer on disk: whiteouts are recorded
	// as such and overlay xattrs with Prefix go to Node.Ovl.
	Upper  bool
	Prefix string
	// NoHash skips content hashing (for huge trees).
	NoHash bool
	// DIno makes the walk require each entry's readdir d_ino to equal its
	// lstat st_ino, and those of "." and ".." the directory's and its
	// parent's: ls -i, find -inum and tar's hard-link detection take one
	// for the other. Set it for ovl, which promises it; the kernel's
	// overlayfs lists other numbers than it stats in many cases, so its
	// walks leave it off.
	DIno bool
}

// Snapshot walks root.
func Snapshot(root string, o SnapOptions) (*Tree, error) {
	t := &Tree{Nodes: map[string]*Node{}}
	if err := t.walk(root, "", o); err != nil {
		return t, err
	}
	return t, nil
}

func (t *Tree) problem(format string, args ...any) {
	t.Problems = append(t.Problems, fmt.Sprintf(format, args...))
}

func (t *Tree) walk(root, rel string, o SnapOptions) error {
	p := root
	if rel != "" {
		p = root + "/" + rel
	}
	n, err := snapNode(p, o)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	t.Nodes[rel] = n
	if !o.Upper && n.Type == "whiteout" {
		t.problem("%s: whiteout (char 0/0) visible in the merged view", rel)
	}
	if n.Type != "dir" {
		return nil
	}
	ents, err := ReadDir(p)
	if e, ok := Errno(err); ok && e != 0 && (rel != "" || e != unix.ENOTCONN) {
		// A directory the mount refuses to list (hostile metadata, a
		// layer reached through the mount), the root too (the kernel
		// fails the readdir of an impure root with an entry whose lookup
		// fails): the errno is compared. A dead mount is an error.
		n.ReadDir = ErrnoName(e)
		return nil
	}
	if err != nil {
		return fmt.Errorf("readdir %s: %w", rel, err)
	}
	seen := map[string]bool{}
	var names []string
	for _, e := range ents {
		if seen[e.Name] {
			t.problem("%s: readdir lists %q twice", rel, e.Name)
			continue
		}
		seen[e.Name] = true
		if e.Name == "." || e.Name == ".." {
			if e.Type != unix.DT_DIR {
				t.problem("%s: d_type of %q is %s", rel, e.Name, dtypeName(e.Type))
			}
			// "." is the directory, ".." its parent (the root's is
			// outside the tree).
			want, ok := n, true
			if e.Name == ".." {
				want, ok = t.Nodes[parentRel(rel)], rel != ""
			}
			if o.DIno && ok && want != nil && e.Ino != want.Ino {
				t.problem("%s: d_ino of %q is %d but lstat says st_ino %d", rel, e.Name, e.Ino, want.Ino)
			}
			continue
		}
		names = append(names, e.Name)
	}
	if !seen["."] || !seen[".."] {
		t.problem("%s: readdir lacks . or .. (got .=%v ..=%v)", rel, seen["."], seen[".."])
	}
	sort.Strings(names)
	dtypes, dinos := map[string]uint8{}, map[string]uint64{}
	for _, e := range ents {
		dtypes[e.Name], dinos[e.Name] = e.Type, e.Ino
	}
	for _, name := range names {
		crel := path.Join(rel, name)
		if err := t.walk(root, crel, o); err != nil {
			e := errnoOf(errors.Unwrap(err))
			if e == unix.ENOENT && t.Nodes[crel] == nil {
				t.problem("%s: listed by readdir, but lstat fails with ENOENT", crel)
				continue
			}
			if e != 0 && t.Nodes[crel] == nil {
				// Listed, but the lookup fails (ELOOP for a layer
				// root, EACCES/EIO/ESTALE for hostile metadata): the
				// errno is what is compared.
				t.Nodes[crel] = &Node{Type: "error:" + ErrnoName(e)}
				continue
			}
			return err
		}
		want := t.Nodes[crel].Type
		if want == "whiteout" {
			want = "char"
		}
		if got := dtypeName(dtypes[name]); got != want {
			t.problem("%s: d_type %s but lstat says %s", crel, got, t.Nodes[crel].Type)
		}
		if n := t.Nodes[crel]; o.DIno && n.Type != "whiteout" && dinos[name] != n.Ino {
			t.problem("%s: d_ino %d but lstat says st_ino %d", crel, dinos[name], n.Ino)
		}
	}
	return nil
}

// parentRel is the walk's name of the parent of rel ("" for the root).
func parentRel(rel string) string {
	if d := path.Dir(rel); d != "." {
		return d
	}
	return ""
}

func snapNode(p string, o SnapOptions) (*Node, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, err
	}
	n := &Node{
		Type:   typeName(st.Mode, st.Rdev),
		Perm:   st.Mode & 0o7777,
		UID:    st.Uid,
		GID:    st.Gid,
		Size:   st.Size,
		Blocks: st.Blocks,
		Nlink:  uint64(st.Nlink),
		Rdev:   st.Rdev,
		Atime:  st.Atim.Nano(),
		Mtime:  st.Mtim.Nano(),
		Ctime:  st.Ctim.Nano(),
		Ino:    st.Ino,
		Dev:    st.Dev,
	}
	switch n.Type {
	case "symlink":
		buf := make([]byte, 4096)
		k, err := unix.Readlink(p, buf)
		if err != nil {
			n.Target = "<readlink: " + ErrnoName(errnoOf(err)) + ">"
		} else {
			n.Target = string(buf[:k])
		}
	case "file":
		if !o.NoHash {
			h, err := hashFile(p)
			if e, ok := Errno(err); ok && e != 0 {
				h = "<read: " + ErrnoName(e) + ">"
			} else if err != nil {
				return nil, err
			}
			n.Hash = h
		}
	}
	names, err := llistxattr(p)
	if e, ok := Errno(err); ok && e != 0 && e != unix.ENOTSUP {
		// Compared like a value.
		names, n.Xattrs = nil, map[string]string{"<listxattr>": ErrnoName(e)}
	} else if err != nil && err != unix.ENOTSUP {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	for _, name := range names {
		v, err := lgetxattr(p, name)
		if err != nil {
			v = []byte("<getxattr: " + ErrnoName(errnoOf(err)) + ">")
		}
		if o.Upper && o.Prefix != "" && strings.HasPrefix(name, o.Prefix) {
			if n.Ovl == nil {
				n.Ovl = map[string]string{}
			}
			n.Ovl[strings.TrimPrefix(name, o.Prefix)] = string(v)
			continue
		}
		if n.Xattrs == nil {
			n.Xattrs = map[string]string{}
		}
		n.Xattrs[name] = string(v)
	}
	return n, nil
}

func errnoOf(err error) unix.Errno {
	e, _ := Errno(err)
	return e
}

func hashFile(p string) (string, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	h := sha256.New()
	if _, err := io.CopyBuffer(h, fdReader(fd), make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// StatNode records one object like Snapshot does (without recursion).
func StatNode(p string, o SnapOptions) (*Node, error) { return snapNode(p, o) }
