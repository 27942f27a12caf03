package main

import (
	"fmt"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

func TestKernelUnlinkRmdir(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{
			Lowers: []k.Layer{{
				k.File("f", "f"), k.File("d/x", "x"), k.Dir("e"), k.File("m/l1", "l1"),
				k.File("n/l", "l"), k.Dir("n2"), k.File("n2/sub/f", "f"),
			}},
			Upper: k.Layer{k.File("up", "u"), k.File("m/u1", "u1"), k.Dir("updir"), k.File("n/u", "u")},
		})
		E := syscall.ENOTEMPTY
		p.OpsExpect(nil, []syscall.Errno{0, E, 0, 0, 0, E, 0, E, 0, 0, 0, 0, syscall.ENOENT, syscall.ENOTDIR, syscall.EISDIR, E},
			kcOp("unlink", "f"),
			kcOp("rmdir", "d"), // non-empty lower dir
			kcOp("unlink", "d/x"),
			kcOp("rmdir", "d"), // only a whiteout hides the lower content
			kcOp("rmdir", "e"), // empty lower dir
			kcOp("rmdir", "m"), // merged, non-empty
			kcOp("unlink", "m/l1"),
			kcOp("rmdir", "m"), // still has m/u1
			kcOp("unlink", "m/u1"),
			kcOp("rmdir", "m"),   // now only whiteouts
			kcOp("unlink", "up"), // upper-only: no whiteout
			kcOp("rmdir", "updir"),
			kcOp("unlink", "f"),
			kcOp("rmdir", "n/l"),
			kcOp("unlink", "n2"),
			kcOp("rmdir", "n2"),
		)
		for _, w := range []string{"f", "d", "e", "m"} {
			kcCheckUpper(p, w, "whiteout")
		}
		kcCheckUpper(p, "up", "")
		kcCheckUpper(p, "updir", "")
		p.OpsExpect(nil, []syscall.Errno{syscall.ENOENT, syscall.ENOENT, syscall.ENOENT},
			kcOp("lstat", "d/x"), kcOp("lstat", "m"), kcOp("lstat", "f"))
		p.Finish()
	})
}

func TestKernelRename(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{
			Lowers: []k.Layer{{
				k.File("a/f1", "f1"), k.File("a/f2", "f2"), k.Dir("b"),
				k.File("t/src1", "src1"), k.File("t/src2", "src2"), k.File("t/src3", "src3"),
				k.File("t/lowtarget", "lt"), k.File("t/lowtarget2", "lt2"),
				k.File("x/e1", "e1"), k.File("x/e2", "e2"),
				k.File("lowerdir/x", "x"),
				k.File("merged/l", "l"),
			}},
			Upper: k.Layer{
				k.File("upfile", "up"), k.File("updir/z", "z"), k.File("t/uptarget", "ut"),
				k.File("merged/u", "u"), k.File("x/u", "u"),
			},
		})
		dirErr := syscall.EXDEV
		if p.Cfg.Options.RedirectsEnabled() {
			dirErr = 0
		}
		ops := []k.Op{
			{Op: "rename", Path: "a/f1", Path2: "a/f1r"},
			{Op: "rename", Path: "a/f2", Path2: "b/f2"},
			{Op: "rename", Path: "upfile", Path2: "upfile2"},
			{Op: "rename", Path: "t/src1", Path2: "t/uptarget"},
			{Op: "rename", Path: "t/src2", Path2: "t/lowtarget"},
			{Op: "rename", Path: "t/src3", Path2: "t/lowtarget2", Flags: unix.RENAME_NOREPLACE},
			{Op: "rename", Path: "x/e1", Path2: "x/e2", Flags: unix.RENAME_EXCHANGE},
			{Op: "rename", Path: "x/u", Path2: "x/e2", Flags: unix.RENAME_EXCHANGE},
			{Op: "rename", Path: "x/nope", Path2: "x/e2", Flags: unix.RENAME_EXCHANGE},
			{Op: "rename", Path: "updir", Path2: "updir2"},
			{Op: "rename", Path: "lowerdir", Path2: "lowerdir2"},
			{Op: "rename", Path: "merged", Path2: "merged2"},
			{Op: "rename", Path: "b", Path2: "a/f1r"},
			{Op: "rename", Path: "a/f1r", Path2: "b"},
		}
		want := []syscall.Errno{0, 0, 0, 0, 0, syscall.EEXIST, 0, 0, syscall.ENOENT, 0, dirErr, dirErr, syscall.ENOTDIR, syscall.EISDIR}
		p.OpsExpect(nil, want, ops...)
		view, _ := p.Views("after renames")
		kcExpectView(t, p, view, map[string]string{
			"a/f1r": "file:f1", "b/f2": "file:f2", "upfile2": "file:up", "t/uptarget": "file:src1",
			"t/lowtarget": "file:src2", "t/src3": "file:src3", "t/lowtarget2": "file:lt2",
			"x/e1": "file:e2", "x/u": "file:e1", "x/e2": "file:u", "updir2/z": "file:z",
		}, "a/f1", "a/f2", "upfile", "t/src1", "t/src2", "updir")
		// A whiteout where a lower name would show through, none for
		// upper-only names.
		for _, w := range []string{"a/f1", "a/f2", "t/src1", "t/src2"} {
			kcCheckUpper(p, w, "whiteout")
		}
		kcCheckUpper(p, "upfile", "")
		kcCheckUpper(p, "updir", "")
		kcCheckUpper(p, "updir2", "dir")
		if p.Cfg.Options.RedirectsEnabled() {
			kcCheckUpper(p, "lowerdir2", "dir", func(n *k.Node) error {
				if n.Ovl["redirect"] == "" {
					return fmt.Errorf("no overlay.redirect")
				}
				return nil
			})
			kcCheckUpper(p, "lowerdir", "whiteout")
		} else {
			kcCheckUpper(p, "lowerdir2", "")
			kcCheckUpper(p, "merged2", "")
		}
		p.Finish()
	})
}

func TestKernelSpecialFiles(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{Lowers: []k.Layer{{
			k.File("h", "hard").Mode(0o640).Owner(7, 8),
			k.File("pair1", "p"), k.Hardlink("pair2", "pair1"),
			k.Symlink("lowlink", "h"),
		}}})
		p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0, 0, 0, 0, 0, syscall.EEXIST},
			k.Op{Op: "symlink", Path: "s", Data: "target/does/not/exist"},
			kcOp("readlink", "s"),
			k.Op{Op: "link", Path: "h", Path2: "h2"},
			k.Op{Op: "mknod", Path: "fifo", Mode: unix.S_IFIFO | 0o640},
			k.Op{Op: "mknod", Path: "sock", Mode: unix.S_IFSOCK | 0o600},
			k.Op{Op: "mknod", Path: "null", Mode: unix.S_IFCHR | 0o666, Dev: unix.Mkdev(1, 3)},
			k.Op{Op: "mknod", Path: "loop", Mode: unix.S_IFBLK | 0o660, Dev: unix.Mkdev(7, 0)},
			k.Op{Op: "write", Path: "pair1", Data: "P"},
			k.Op{Op: "lchown", Path: "lowlink", UID: 3, GID: 4},
			k.Op{Op: "symlink", Path: "lowlink", Data: "x"},
		)
		p.Ops(nil, kcOp("lstat", "h"), kcOp("lstat", "h2"), kcOp("lstat", "pair1"), kcOp("lstat", "pair2"),
			kcOp("read", "pair2"), kcOp("lstat", "null"), kcOp("lstat", "loop"), kcOp("lstat", "lowlink"))
		kcCheckUpper(p, "h", "file", kcAttrs(0o640, 7, 8), func(n *k.Node) error {
			if n.Nlink != 2 {
				return fmt.Errorf("nlink %d, want 2 (h and h2 in the upper)", n.Nlink)
			}
			return nil
		})
		kcCheckUpper(p, "fifo", "fifo", kcAttrs(0o640, 0, 0))
		kcCheckUpper(p, "sock", "socket")
		kcCheckUpper(p, "null", "char", func(n *k.Node) error {
			if n.Rdev != unix.Mkdev(1, 3) {
				return fmt.Errorf("rdev %d:%d", unix.Major(n.Rdev), unix.Minor(n.Rdev))
			}
			return nil
		})
		kcCheckUpper(p, "loop", "block")
		kcCheckUpper(p, "lowlink", "symlink", func(n *k.Node) error {
			if n.Target != "h" || n.UID != 3 || n.GID != 4 {
				return fmt.Errorf("target %q owner %d:%d", n.Target, n.UID, n.GID)
			}
			return nil
		})
		p.Finish()
	})
}

func TestKernelXattrs(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{
			Lowers: []k.Layer{{
				k.File("f", "f").Xattr("user.a", "1").Xattr("user.b", "2"),
				k.OpaqueDir("od"), k.File("od/x", "x"),
				k.XWhiteout("xd/gone"), k.File("xd/keep", "k"),
				k.File("plain", "p"),
			}, {
				k.File("xd/gone", "hidden by the xwhiteout above"),
			}},
			Upper: k.Layer{k.OpaqueDir("uod")},
		})
		pre := p.Cfg.Options.Prefix()
		other := k.OverlayPrefix(!p.Cfg.Options.UserXattr)
		p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0, 0, 0, syscall.ENODATA, 0, 0, syscall.ENODATA},
			kcOp("listxattr", "f"),
			k.Op{Op: "getxattr", Path: "f", Name: "user.a"},
			k.Op{Op: "setxattr", Path: "f", Name: "user.c", Data: "3"},
			k.Op{Op: "setxattr", Path: "f", Name: "user.a", Data: "one", Flags: unix.XATTR_REPLACE},
			kcOp("listxattr", "f"),
			k.Op{Op: "removexattr", Path: "f", Name: "user.b"},
			kcOp("listxattr", "f"),
			k.Op{Op: "getxattr", Path: "f", Name: "user.b"},
			kcOp("listxattr", "od"),
			kcOp("listxattr", "uod"),
			k.Op{Op: "getxattr", Path: "plain", Name: "user.none"},
		)
		p.Ops(nil,
			k.Op{Op: "setxattr", Path: "f", Name: "user.c", Data: "x", Flags: unix.XATTR_CREATE},
			k.Op{Op: "setxattr", Path: "f", Name: "user.none", Data: "x", Flags: unix.XATTR_REPLACE},
			k.Op{Op: "removexattr", Path: "f", Name: "user.none"},
			// Overlay-private names: hidden and refused.
			k.Op{Op: "getxattr", Path: "od", Name: pre + "opaque"},
			k.Op{Op: "getxattr", Path: "uod", Name: pre + "opaque"},
			k.Op{Op: "getxattr", Path: "xd", Name: pre + "opaque"},
			k.Op{Op: "setxattr", Path: "plain", Name: pre + "opaque", Data: "y"},
			k.Op{Op: "setxattr", Path: "plain", Name: pre + "foo", Data: "y"},
			k.Op{Op: "removexattr", Path: "od", Name: pre + "opaque"},
			k.Op{Op: "setxattr", Path: "plain", Name: other + "opaque", Data: "y"},
			k.Op{Op: "listxattr", Path: "xd"},
			k.Op{Op: "setxattr", Path: "plain", Name: "trusted.other", Data: "t"},
			k.Op{Op: "getxattr", Path: "plain", Name: "trusted.other"},
		)
		res := p.Ops(nil, kcOp("listxattr", "f"), kcOp("listxattr", "od"))
		if res[0].Out != "user.a,user.c" {
			t.Errorf("listxattr f: %v, want user.a,user.c", res[0])
		}
		if res[1].Out != "" || res[1].Errno != 0 {
			t.Errorf("listxattr of an opaque dir shows %v, want nothing", res[1])
		}
		kcCheckUpper(p, "f", "file", func(n *k.Node) error { return xattrsAre(n, map[string]string{"user.a": "one", "user.c": "3"}) })
		kcCheckUpper(p, "od", "")
		p.Finish()
	})
}

// TestKernelSharedWhiteouts: whiteouts are hard links of one whiteout inode
// in work/, as the kernel's (ovl_whiteout), so that removing lower files
// costs a directory entry each rather than an inode: the same inode and link
// count on both sides, before and after a remount (which empties work/ and
// so drops the shared name), and a fresh shared inode after it.
func TestKernelSharedWhiteouts(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), k.Layers{
		Lowers: []k.Layer{{k.File("f1", ""), k.File("f2", ""), k.File("d/x", ""), k.File("g1", ""), k.File("g2", "")}},
	})
	links := func(label string, names []string, wantNlink uint64) {
		t.Helper()
		for _, s := range p.Sides() {
			var first unix.Stat_t
			for i, nm := range names {
				var st unix.Stat_t
				if err := unix.Lstat(s.Layout.Upper+"/"+nm, &st); err != nil {
					t.Fatalf("%s: %s: upper %s: %v", label, s.Name, nm, err)
				}
				if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
					t.Errorf("%s: %s: upper %s is not a whiteout (mode %o rdev %d)", label, s.Name, nm, st.Mode, st.Rdev)
				}
				if i == 0 {
					first = st
				} else if st.Ino != first.Ino {
					t.Errorf("%s: %s: whiteouts %s and %s are different inodes (%d, %d)", label, s.Name, names[0], nm, first.Ino, st.Ino)
				}
				if uint64(st.Nlink) != wantNlink {
					t.Errorf("%s: %s: whiteout %s has %d links, want %d", label, s.Name, nm, st.Nlink, wantNlink)
				}
			}
		}
	}
	p.OpsExpect(nil, []syscall.Errno{0, 0, 0}, kcOp("unlink", "f1"), kcOp("unlink", "f2"), kcOp("unlink", "d/x"))
	links("after three unlinks", []string{"f1", "f2", "d/x"}, 4) // and the shared name in work/
	p.Remount()
	links("after remount", []string{"f1", "f2", "d/x"}, 3)
	p.OpsExpect(nil, []syscall.Errno{0, 0}, kcOp("unlink", "g1"), kcOp("unlink", "g2"))
	links("new whiteouts after remount", []string{"g1", "g2"}, 3)
	p.OpsExpect(nil, []syscall.Errno{syscall.ENOENT, syscall.ENOENT, syscall.ENOENT},
		kcOp("lstat", "f1"), kcOp("lstat", "d/x"), kcOp("lstat", "g2"))
	p.Finish()
}
