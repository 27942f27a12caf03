// Package kernelcmp compares ovl with the Linux kernel's overlayfs, which is
// the oracle: the same layers are copied twice, the kernel's overlayfs is
// mounted on one copy and ovl on the other, the same steps run on both, and
// the errnos, the merged views and the upper layers are compared.
//
// The pieces are usable on their own, so that a randomized differential
// tester can drive them:
//
//   - Layer and Entry describe a layer tree compactly; Build writes one with
//     the right overlay xattr prefix (trusted.overlay. or user.overlay.).
//   - Options holds the kernel mount options that match what ovl implements
//     today; IntendedDifferences lists what may differ on purpose.
//   - Mounter mounts one side (Kernel or Ovl).
//   - Op is a serializable file-system operation; Apply runs it in process,
//     RunOps runs a list in a child process under another uid.
//   - Snapshot walks a merged view or an upper layer into a Tree; Compare
//     diffs two trees field by field.
//   - Pair puts it all together for a test.
package kernelcmp

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Kind is the type of a layer entry.
type Kind int

// The kinds of layer entries.
const (
	KindFile Kind = iota
	KindDir
	KindSymlink
	KindHardlink // a hard link to Target (a path in the same layer, created earlier)
	KindFIFO
	KindSocket
	KindChar
	KindBlock
	KindWhiteout  // char device 0/0
	KindXWhiteout // zero-size file with overlay.whiteout; its parent gets overlay.opaque=x
)

// Extent is a range of data in a sparse file.
type Extent struct {
	Off  int64
	Data []byte
}

// Entry is one object of a layer. Build it with File, Dir, ... and refine it
// with Mode, Owner, Xattr, Time.
type Entry struct {
	Path    string
	Kind    Kind
	Data    string   // file content
	Size    int64    // file size if larger than the data (the rest is a hole)
	Extents []Extent // sparse file data, written at their offsets after Data
	Perm    uint32   // permission bits including suid/sgid/sticky
	PermSet bool     // Perm was given (else the kind's default)
	UID     int
	GID     int
	Xattrs  map[string]string // full names, or "overlay.X" for the layer's overlay prefix
	Target  string            // symlink target, or hard-link target path
	Major   uint32
	Minor   uint32
	Mtime   time.Time // zero: DefaultTime
	// AUFS asks a whiteout or an opaque directory (OpaqueDir) to take an
	// AUFS form (aufs.go) on the sides that read it; "": the kernel's.
	AUFS string
}

// Layer is a layer tree. Parents are created implicitly (0755, root).
type Layer []Entry

// DefaultTime is the atime and mtime of every layer entry that sets none, so
// that tests can tell a preserved time from a fresh one.
var DefaultTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

// File is a regular file with the given content.
func File(path, data string) Entry { return Entry{Path: path, Kind: KindFile, Data: data} }

// SparseFile is a regular file of the given size with data at the extents
// and holes elsewhere.
func SparseFile(path string, size int64, ext ...Extent) Entry {
	return Entry{Path: path, Kind: KindFile, Size: size, Extents: ext}
}

// Dir is a directory.
func Dir(path string) Entry { return Entry{Path: path, Kind: KindDir} }

// OpaqueDir is a directory with overlay.opaque=y.
func OpaqueDir(path string) Entry { return Dir(path).Xattr("overlay.opaque", "y") }

// Symlink is a symbolic link to target.
func Symlink(path, target string) Entry {
	return Entry{Path: path, Kind: KindSymlink, Target: target}
}

// Hardlink is a hard link to target, a path of the same layer listed earlier.
func Hardlink(path, target string) Entry {
	return Entry{Path: path, Kind: KindHardlink, Target: target}
}

// FIFO is a named pipe.
func FIFO(path string) Entry { return Entry{Path: path, Kind: KindFIFO} }

// Socket is a socket inode made with mknod.
func Socket(path string) Entry { return Entry{Path: path, Kind: KindSocket} }

// CharDev is a character device.
func CharDev(path string, major, minor uint32) Entry {
	return Entry{Path: path, Kind: KindChar, Major: major, Minor: minor}
}

// BlockDev is a block device.
func BlockDev(path string, major, minor uint32) Entry {
	return Entry{Path: path, Kind: KindBlock, Major: major, Minor: minor}
}

// Whiteout is the kernel's whiteout: a char device 0/0.
func Whiteout(path string) Entry { return Entry{Path: path, Kind: KindWhiteout} }

// XWhiteout is the xattr whiteout: a zero-size file with overlay.whiteout in
// a directory with overlay.opaque=x (set by Build).
func XWhiteout(path string) Entry { return Entry{Path: path, Kind: KindXWhiteout} }

// Mode sets the permission bits (incl. suid, sgid, sticky).
func (e Entry) Mode(perm uint32) Entry { e.Perm, e.PermSet = perm, true; return e }

// Owner sets uid and gid.
func (e Entry) Owner(uid, gid int) Entry { e.UID, e.GID = uid, gid; return e }

// Xattr adds an xattr. "overlay.X" names get the layer's overlay prefix.
func (e Entry) Xattr(name, value string) Entry {
	m := make(map[string]string, len(e.Xattrs)+1)
	for k, v := range e.Xattrs {
		m[k] = v
	}
	m[name] = value
	e.Xattrs = m
	return e
}

// Time sets atime and mtime.
func (e Entry) Time(t time.Time) Entry { e.Mtime = t; return e }

// OverlayPrefix is the overlay xattr prefix: "trusted.overlay." or, with
// userxattr, "user.overlay.".
func OverlayPrefix(userxattr bool) string {
	if userxattr {
		return "user.overlay."
	}
	return "trusted.overlay."
}

func xattrName(name, prefix string) string {
	if strings.HasPrefix(name, "overlay.") {
		return prefix + strings.TrimPrefix(name, "overlay.")
	}
	return name
}

func (e Entry) defaultPerm() uint32 {
	switch e.Kind {
	case KindDir:
		return 0o755
	case KindSymlink:
		return 0o777
	case KindWhiteout:
		if e.AUFS != "" {
			return 0o644 // as layer tars carry them
		}
		return 0
	default:
		return 0o644
	}
}

// Build creates layer l under dir (which it creates), using prefix
// (OverlayPrefix) for "overlay." xattrs.
func Build(dir, prefix string, l Layer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	type meta struct {
		e    Entry
		path string
	}
	var metas []meta
	xparents := map[string]bool{}
	for _, e := range l {
		p := filepath.Join(dir, filepath.Clean("/"+e.Path))
		if p == dir && e.Kind != KindDir {
			return fmt.Errorf("build %s: only a Dir may be the layer root", e.Path)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		var err error
		switch e.Kind {
		case KindFile, KindXWhiteout:
			err = writeFile(p, e)
			if e.Kind == KindXWhiteout {
				xparents[filepath.Dir(p)] = true
			}
		case KindDir:
			err = os.Mkdir(p, 0o755)
			if os.IsExist(err) {
				err = nil
			}
			if err == nil && e.AUFS != "" && isOpaque(e) {
				err = aufsOpaque(p, prefix, e.AUFS)
			}
		case KindSymlink:
			err = os.Symlink(e.Target, p)
		case KindHardlink:
			err = os.Link(filepath.Join(dir, filepath.Clean("/"+e.Target)), p)
		case KindFIFO:
			err = unix.Mknod(p, unix.S_IFIFO, 0)
		case KindSocket:
			err = unix.Mknod(p, unix.S_IFSOCK, 0)
		case KindChar:
			err = unix.Mknod(p, unix.S_IFCHR, int(unix.Mkdev(e.Major, e.Minor)))
		case KindBlock:
			err = unix.Mknod(p, unix.S_IFBLK, int(unix.Mkdev(e.Major, e.Minor)))
		case KindWhiteout:
			if e.AUFS != "" {
				p = aufsPath(p, e)
				err = writeFile(p, e)
			} else {
				err = unix.Mknod(p, unix.S_IFCHR, 0)
			}
		default:
			err = fmt.Errorf("unknown kind %d", e.Kind)
		}
		if err != nil {
			return fmt.Errorf("build %s: %w", e.Path, err)
		}
		if e.Kind != KindHardlink {
			metas = append(metas, meta{e, p})
		}
	}
	for p := range xparents {
		if err := unix.Lsetxattr(p, prefix+"opaque", []byte("x"), 0); err != nil {
			return fmt.Errorf("build %s: opaque=x: %w", p, err)
		}
	}
	// Metadata deepest first, so that setting a directory's times comes
	// after its children were made; chown before chmod (chown clears suid).
	sort.SliceStable(metas, func(i, j int) bool {
		return strings.Count(metas[i].path, "/") > strings.Count(metas[j].path, "/")
	})
	for _, m := range metas {
		e, p := m.e, m.path
		if err := unix.Lchown(p, e.UID, e.GID); err != nil {
			return fmt.Errorf("build %s: chown: %w", e.Path, err)
		}
		for k, v := range e.Xattrs {
			if k == "overlay.opaque" && e.AUFS != "" && isOpaque(e) {
				continue // marked in its AUFS form
			}
			if err := unix.Lsetxattr(p, xattrName(k, prefix), []byte(v), 0); err != nil {
				return fmt.Errorf("build %s: setxattr %s: %w", e.Path, k, err)
			}
		}
		if e.Kind == KindXWhiteout {
			if err := unix.Lsetxattr(p, prefix+"whiteout", []byte("y"), 0); err != nil {
				return fmt.Errorf("build %s: whiteout xattr: %w", e.Path, err)
			}
		}
		if e.Kind != KindSymlink {
			perm := e.defaultPerm()
			if e.PermSet {
				perm = e.Perm
			}
			if err := unix.Chmod(p, perm); err != nil {
				return fmt.Errorf("build %s: chmod: %w", e.Path, err)
			}
		}
		t := e.Mtime
		if t.IsZero() {
			t = DefaultTime
		}
		ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("build %s: utimes: %w", e.Path, err)
		}
	}
	// Implicit parents and the layer root get the default time too.
	explicit := make(map[string]bool, len(metas))
	for _, m := range metas {
		explicit[m.path] = true
	}
	return filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.IsDir() || explicit[p] {
			return err
		}
		ts := []unix.Timespec{unix.NsecToTimespec(DefaultTime.UnixNano()), unix.NsecToTimespec(DefaultTime.UnixNano())}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

func writeFile(p string, e Entry) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(e.Data); err != nil {
		return err
	}
	for _, x := range e.Extents {
		if _, err := f.WriteAt(x.Data, x.Off); err != nil {
			return err
		}
	}
	if e.Size > 0 {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.Size() < e.Size {
			if err := f.Truncate(e.Size); err != nil {
				return err
			}
		}
	}
	return f.Close()
}
