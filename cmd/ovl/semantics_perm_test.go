package main

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// TestSemanticsNewObjectOwner: new objects belong to the caller's
// fsuid/fsgid, a setgid directory passes its group (and S_ISGID to
// subdirectories), and the caller's umask applies.
func TestSemanticsNewObjectOwner(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{Lowers: []k.Layer{{
			k.Dir("pub").Mode(0o777),
			k.Dir("sg").Mode(0o2777).Owner(0, 2000),
			k.Dir("sticky").Mode(0o1777),
			k.File("sticky/roots", "r").Mode(0o666),
		}}})
		res := p.OpsExpect(kcNobody, []syscall.Errno{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, syscall.EPERM},
			k.Op{Op: "umask", Mode: 0o022},
			k.Op{Op: "create", Path: "pub/f", Mode: 0o666},
			k.Op{Op: "mkdir", Path: "pub/d", Mode: 0o777},
			k.Op{Op: "symlink", Path: "pub/s", Data: "f"},
			k.Op{Op: "mknod", Path: "pub/p", Mode: unix.S_IFIFO | 0o666},
			kcOp("lstat", "pub/f"),
			kcOp("lstat", "pub/d"),
			kcOp("lstat", "pub/s"),
			kcOp("lstat", "pub/p"),
			k.Op{Op: "create", Path: "sg/f", Mode: 0o666},
			k.Op{Op: "mkdir", Path: "sg/d", Mode: 0o777},
			kcOp("lstat", "sg/f"),
			kcOp("lstat", "sg/d"),
			k.Op{Op: "umask", Mode: 0o077},
			k.Op{Op: "create", Path: "pub/f077", Mode: 0o666},
			k.Op{Op: "mkdir", Path: "pub/d077", Mode: 0o777},
			kcOp("lstat", "pub/f077"),
			kcOp("lstat", "pub/d077"),
			k.Op{Op: "umask", Mode: 0},
			k.Op{Op: "create", Path: "sticky/mine", Mode: 0o666},
			kcOp("lstat", "sticky/mine"),
			kcOp("unlink", "sticky/roots"),
		)
		want := map[int]string{
			5:  "file 0644 1000:1000 size=0 nlink=1",
			6:  "dir 0755 1000:1000",
			7:  "symlink 0777 1000:1000 size=1 nlink=1",
			8:  "fifo 0644 1000:1000 size=0 nlink=1",
			11: "file 0644 1000:2000 size=0 nlink=1",
			12: "dir 2755 1000:2000",
			16: "file 0600 1000:1000 size=0 nlink=1",
			17: "dir 0700 1000:1000",
			20: "file 0666 1000:1000 size=0 nlink=1",
		}
		for i, w := range want {
			if res[i].Out != w {
				t.Errorf("op %d: got %q, want %q", i, res[i].Out, w)
			}
		}
		kcCheckUpper(p, "pub/f", "file", kcAttrs(0o644, 1000, 1000))
		kcCheckUpper(p, "sg/d", "dir", kcAttrs(0o2755, 1000, 2000))
		kcCheckUpper(p, "pub", "dir", kcAttrs(0o777, 0, 0))
		p.Finish()
	})
}

// TestSemanticsPermissions: another uid gets EACCES/EPERM where the modes
// say so and succeeds where they allow; failed attempts copy nothing up.
func TestSemanticsPermissions(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{Lowers: []k.Layer{{
			k.File("secret", "s").Mode(0o600),
			k.File("pubread", "r").Mode(0o644),
			k.File("pubwrite", "w").Mode(0o666),
			k.File("mine", "m").Mode(0o600).Owner(1000, 1000),
			k.File("group", "g").Mode(0o060).Owner(0, 1000),
			k.Dir("closed").Mode(0o700), k.File("closed/x", "x").Mode(0o644),
			k.Dir("noexec").Mode(0o644), k.File("noexec/x", "x"),
			k.Dir("mydir").Mode(0o755).Owner(1000, 1000), k.File("mydir/rootfile", "r").Mode(0o644),
			k.File("exec.sh", "#!/bin/sh\n").Mode(0o755),
		}}})
		A, P, O := syscall.EACCES, syscall.EPERM, syscall.Errno(0)
		p.OpsExpect(kcNobody, []syscall.Errno{A, O, A, A, O, O, O, O, A, A, O, A, A, P, P, P, O, O, O, A, O, O, A},
			kcOp("read", "secret"),
			kcOp("read", "pubread"),
			k.Op{Op: "write", Path: "pubread", Data: "x"},
			k.Op{Op: "open", Path: "secret", Flags: unix.O_WRONLY},
			k.Op{Op: "write", Path: "pubwrite", Data: "W"},
			kcOp("read", "mine"),
			k.Op{Op: "write", Path: "mine", Data: "M"},
			kcOp("read", "group"),
			kcOp("lstat", "closed/x"),
			kcOp("readdir", "closed"),
			kcOp("readdir", "noexec"),
			kcOp("lstat", "noexec/x"),
			k.Op{Op: "create", Path: "newfile", Mode: 0o644},
			k.Op{Op: "chmod", Path: "pubread", Mode: 0o777},
			k.Op{Op: "chown", Path: "mine", UID: 0, GID: 0},
			k.Op{Op: "utimes", Path: "pubread", Off: 1},
			k.Op{Op: "chmod", Path: "mine", Mode: 0o640},
			k.Op{Op: "unlink", Path: "mydir/rootfile"},
			k.Op{Op: "access", Path: "exec.sh", Mode: unix.X_OK},
			k.Op{Op: "access", Path: "secret", Mode: unix.R_OK},
			k.Op{Op: "access", Path: "pubwrite", Mode: unix.W_OK},
			k.Op{Op: "setxattr", Path: "mine", Name: "user.x", Data: "1"},
			k.Op{Op: "setxattr", Path: "pubread", Name: "user.x", Data: "1"},
		)
		for _, name := range []string{"secret", "pubread", "closed", "noexec", "newfile"} {
			kcCheckUpper(p, name, "")
		}
		kcCheckUpper(p, "pubwrite", "file", kcAttrs(0o666, 0, 0))
		kcCheckUpper(p, "mine", "file", kcAttrs(0o640, 1000, 1000))
		kcCheckUpper(p, "mydir/rootfile", "whiteout")
		p.Finish()
	})
}

// TestSemanticsStatfsFsync: statfs agrees with the upper filesystem;
// fsync and fdatasync succeed on files and directories, lower and upper.
func TestSemanticsStatfsFsync(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), k.Layers{
		Lowers: []k.Layer{{k.File("low", "l"), k.Dir("lowdir")}},
		Upper:  k.Layer{k.File("up", "u")},
	})
	st := p.Statfs()
	for i, s := range p.Sides() {
		var ust unix.Statfs_t
		if err := unix.Statfs(s.Layout.Upper, &ust); err != nil {
			t.Fatal(err)
		}
		if st[i].Bsize != ust.Bsize || st[i].Blocks != ust.Blocks {
			t.Errorf("%s: statfs bsize %d blocks %d, upper fs has %d %d", s.Name, st[i].Bsize, st[i].Blocks, ust.Bsize, ust.Blocks)
		}
		if st[i].Type == 0 {
			t.Errorf("%s: f_type 0", s.Name)
		}
	}
	for _, name := range []string{"low", "up", "lowdir", "."} {
		for _, data := range []bool{false, true} {
			p.DoExpect(fmt.Sprintf("fsync %s data=%v", name, data), 0, func(root string) error {
				flags := os.O_RDONLY
				fi, err := os.Stat(root + "/" + name)
				if err != nil {
					return err
				}
				if !fi.IsDir() {
					flags = os.O_RDWR
				}
				f, err := os.OpenFile(root+"/"+name, flags, 0)
				if err != nil {
					return err
				}
				defer f.Close()
				if data {
					return unix.Fdatasync(int(f.Fd()))
				}
				return unix.Fsync(int(f.Fd()))
			})
		}
	}
	p.DoExpect("syncfs", 0, func(root string) error {
		fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Syncfs(fd)
	})
	kcCheckUpper(p, "low", "file")
	p.Finish()
}
