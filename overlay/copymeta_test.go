package overlay

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// TestCopyUpKeepsMetadata: a copy-up sets the copy's xattrs, owner, mode
// (setuid and a mode of 000 included) and times on the descriptor it
// created (regular files) or by name (symlinks, FIFOs), and gives a
// metacopy its size; each copy carries the origin and matches its lower.
func TestCopyUpKeepsMetadata(t *testing.T) {
	for _, metacopy := range []bool{false, true} {
		cfg, root := layers(t)
		l := filepath.Join(root, "l1")
		type file struct {
			name string
			mode uint32
			data string
		}
		files := []file{{"suid", 0o4751, "data"}, {"none", 0, "secret"}, {"empty", 0o640, ""}}
		for _, f := range files {
			p := filepath.Join(l, f.name)
			if err := os.WriteFile(p, []byte(f.data), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := unix.Setxattr(p, "user.k", []byte("v-"+f.name), 0); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, 1234, 5678); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, os.FileMode(f.mode&0o777)|modeBits(f.mode)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("target", filepath.Join(l, "link")); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lchown(filepath.Join(l, "link"), 1234, 5678); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mkfifo(filepath.Join(l, "fifo"), 0o620); err != nil {
			t.Fatal(err)
		}
		past := []unix.Timespec{{Sec: 1000000000, Nsec: 123}, {Sec: 1100000000, Nsec: 456}}
		for _, name := range []string{"suid", "none", "empty", "link", "fifo"} {
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(l, name), past, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
		}
		if metacopy {
			cfg.Metacopy = "on"
		}
		o, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"suid", "none", "empty", "link", "fifo"} {
			n := lookup(t, o.Root(), name)
			mode := copyAll
			if metacopy {
				mode = copyMeta
			}
			if err := n.copyUp(mode); err != nil {
				t.Fatalf("metacopy=%v: copy up %s: %v", metacopy, name, err)
			}
			var lst, ust unix.Stat_t
			if err := unix.Lstat(filepath.Join(l, name), &lst); err != nil {
				t.Fatal(err)
			}
			up := filepath.Join(root, "u", name)
			if err := unix.Lstat(up, &ust); err != nil {
				t.Fatalf("metacopy=%v: %s not in the upper: %v", metacopy, name, err)
			}
			if ust.Mode != lst.Mode || ust.Uid != lst.Uid || ust.Gid != lst.Gid || ust.Size != lst.Size ||
				ust.Mtim != lst.Mtim || ust.Atim != lst.Atim {
				t.Errorf("metacopy=%v: %s: upper mode %o uid %d gid %d size %d mtime %v atime %v, lower %o %d %d %d %v %v",
					metacopy, name, ust.Mode, ust.Uid, ust.Gid, ust.Size, ust.Mtim, ust.Atim,
					lst.Mode, lst.Uid, lst.Gid, lst.Size, lst.Mtim, lst.Atim)
			}
			if v, err := lgetxattr(up, format.TrustedPrefix+format.Origin); err != nil || v == nil {
				t.Errorf("metacopy=%v: %s: no origin (%v)", metacopy, name, err)
			}
			if ust.Mode&unix.S_IFMT != unix.S_IFREG {
				continue
			}
			if v, _ := lgetxattr(up, "user.k"); string(v) != "v-"+name {
				t.Errorf("metacopy=%v: %s: user.k = %q", metacopy, name, v)
			}
			_, err := lgetxattr(up, format.TrustedPrefix+format.Metacopy)
			mc, _ := lgetxattr(up, format.TrustedPrefix+format.Metacopy)
			if metacopy != (mc != nil) || err != nil {
				t.Errorf("metacopy=%v: %s: metacopy xattr %q (%v)", metacopy, name, mc, err)
			}
			b, err := os.ReadFile(up)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(filepath.Join(l, name))
			if metacopy {
				want = make([]byte, len(want)) // a sparse file of the lower's size
			}
			if !bytes.Equal(b, want) {
				t.Errorf("metacopy=%v: %s: upper data %q, want %q", metacopy, name, b, want)
			}
		}
		o.Close()
	}
}

func modeBits(m uint32) os.FileMode {
	var f os.FileMode
	if m&0o4000 != 0 {
		f |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		f |= os.ModeSetgid
	}
	return f
}

func lgetxattr(path, name string) ([]byte, error) {
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(path, name, buf)
	if err == unix.ENODATA {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}
