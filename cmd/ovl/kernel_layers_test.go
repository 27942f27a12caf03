package main

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
)

// threeLowers: files over dirs, dirs over files, merged dirs at depth,
// whiteouts and opaque dirs in the middle layer, and the xattr-whiteout form.
func threeLowers() k.Layers {
	return k.Layers{
		Lowers: []k.Layer{
			{ // L0, top
				k.File("a/top", "top"),
				k.File("fod", "file over dir"),
				k.Dir("dof"), k.File("dof/inner", "inner"),
				k.File("deep/x/y/z/t0", "t0"),
				k.Dir("deep").Mode(0o750).Owner(5, 6),
				k.File("resurrect", "back"),
			},
			{ // L1, middle
				k.File("a/mid", "mid"), k.File("a/shadow", "mid"),
				k.Dir("fod"), k.File("fod/c", "c"),
				k.File("dof", "file between dirs"),
				k.File("deep/x/y/z/t1", "t1"),
				k.Whiteout("a/wh"),
				k.Whiteout("gonedir"),
				k.OpaqueDir("opq"), k.File("opq/m1", "m1"),
				k.XWhiteout("xw/h"), k.File("xw/m", "m"),
				k.Whiteout("resurrect"),
			},
			{ // L2, bottom
				k.File("a/shadow", "bottom"), k.File("a/wh", "whited out"), k.File("a/bottom", "bottom"),
				k.File("fod/d2", "d2"),
				k.File("dof/l2", "below a file: never merged"),
				k.File("deep/x/y/z/t2", "t2"), k.File("deep/x/y/other", "other"),
				k.Dir("deep").Mode(0o755),
				k.File("gonedir/f", "f"),
				k.File("opq/l2", "hidden"),
				k.File("xw/h", "hidden by xwhiteout"), k.File("xw/keep", "keep"),
				k.File("resurrect/inside", "hidden"),
			},
		},
		Upper: k.Layer{k.File("a/up", "up")},
	}
}

func TestKernelThreeLowers(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, threeLowers())
		ref, _ := p.Views("initial")
		kcExpectView(t, p, ref, map[string]string{
			"a": "dir", "a/top": "file:top", "a/mid": "file:mid", "a/shadow": "file:mid",
			"a/bottom": "file:bottom", "a/up": "file:up",
			"fod": "file:file over dir", "dof": "dir", "dof/inner": "file:inner",
			"deep/x/y/z/t0": "file:t0", "deep/x/y/z/t1": "file:t1", "deep/x/y/z/t2": "file:t2",
			"deep/x/y/other": "file:other",
			"opq/m1":         "file:m1", "xw/m": "file:m", "xw/keep": "file:keep",
			"resurrect": "file:back",
		}, "fod/c", "fod/d2", "dof/l2", "a/wh", "gonedir", "gonedir/f", "opq/l2", "xw/h", "resurrect/inside")
		if n := ref.Nodes["deep"]; n == nil || n.Perm != 0o750 || n.UID != 5 || n.GID != 6 {
			t.Errorf("merged dir takes the topmost layer's attributes: %+v", n)
		}
		// Lookups of hidden names fail the same way.
		for _, name := range []string{"a/wh", "gonedir", "gonedir/f", "opq/l2", "xw/h", "dof/l2"} {
			p.OpsExpect(nil, []syscall.Errno{syscall.ENOENT}, kcOp("lstat", name))
		}
		for _, name := range []string{"fod/c", "resurrect/inside"} {
			p.OpsExpect(nil, []syscall.Errno{syscall.ENOTDIR}, kcOp("lstat", name))
		}

		// Writes at depth copy the parent chain up.
		p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0},
			k.Op{Op: "create", Path: "deep/x/y/z/new", Mode: 0o644},
			k.Op{Op: "write", Path: "deep/x/y/z/t2", Data: "T2"},
			k.Op{Op: "unlink", Path: "xw/keep"},
			k.Op{Op: "create", Path: "xw/h", Mode: 0o600},
			k.Op{Op: "mkdir", Path: "gonedir", Mode: 0o755},
		)
		kcCheckUpper(p, "deep", "dir", kcAttrs(0o750, 5, 6))
		kcCheckUpper(p, "deep/x/y/z/t2", "file")
		kcCheckUpper(p, "xw/keep", "whiteout")
		// The whiteout is in a lower layer, so without redirects the kernel
		// makes a plain directory (lookup stops at the lower whiteout
		// anyway); where redirects are followed, a new directory in a merged
		// parent is always opaque (ovl_create_upper).
		if p.Cfg.Options.Redirect() == "nofollow" {
			kcCheckUpper(p, "gonedir", "dir", kcNotOpaque)
		} else {
			kcCheckUpper(p, "gonedir", "dir", kcOpaque)
		}
		p.OpsExpect(nil, []syscall.Errno{syscall.ENOENT}, kcOp("lstat", "gonedir/f"))
		p.Finish()
	})
}

func TestKernelRmRfAndRecreate(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{
			Lowers: []k.Layer{
				{k.File("tree/a/b/c", "c"), k.File("tree/f1", "1"), k.File("tree/d/e/f2", "2"),
					k.Symlink("tree/l", "f1"), k.FIFO("tree/p"), k.File("keep", "k")},
				{k.File("tree/a/low", "low"), k.File("gone/x", "x"), k.File("gonefile", "gf"), k.File("tree2/y", "y")},
			},
			Upper: k.Layer{k.File("tree/upperfile", "u"), k.Dir("tree/a")},
		})
		for _, name := range []string{"tree", "gone", "gonefile", "tree2"} {
			p.DoExpect("rm -rf "+name, 0, func(root string) error { return os.RemoveAll(root + "/" + name) })
		}
		p.Views("after rm -rf")
		for _, name := range []string{"tree", "gone", "gonefile", "tree2"} {
			kcCheckUpper(p, name, "whiteout")
		}
		// Re-create: a dir over a whiteout is opaque; a file over a
		// whiteout is a plain file; content below stays hidden.
		p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0, 0, 0, 0, syscall.ENOENT, syscall.ENOENT},
			k.Op{Op: "mkdir", Path: "tree", Mode: 0o755},
			k.Op{Op: "mkdir", Path: "tree/a", Mode: 0o700},
			k.Op{Op: "create", Path: "tree/f1", Mode: 0o644},
			k.Op{Op: "write", Path: "tree/f1", Data: "new"},
			k.Op{Op: "create", Path: "gone", Mode: 0o644},
			k.Op{Op: "mkdir", Path: "gonefile", Mode: 0o755},
			k.Op{Op: "create", Path: "gonefile/inside", Mode: 0o644},
			k.Op{Op: "symlink", Path: "tree2", Data: "tree"},
			kcOp("lstat", "tree/a/b"),
			kcOp("lstat", "tree/d"),
		)
		view, _ := p.Views("after re-create")
		kcExpectView(t, p, view, map[string]string{
			"tree": "dir", "tree/a": "dir", "tree/f1": "file:new", "gone": "file:", "gonefile": "dir",
			"gonefile/inside": "file:", "tree2": "symlink", "keep": "file:k",
		}, "tree/a/b", "tree/a/low", "tree/d", "tree/l", "tree/p", "tree/upperfile", "gone/x", "tree2/y")
		kcCheckUpper(p, "tree", "dir", kcOpaque)
		kcCheckUpper(p, "gonefile", "dir", kcOpaque)
		kcCheckUpper(p, "gone", "file")
		kcCheckUpper(p, "tree2", "symlink")
		p.Check("readdir of the re-created dir", func(s *k.Side) error {
			r := k.Op{Op: "readdir", Path: "tree"}.Apply(s.Layout.Mnt)
			if r.Errno != 0 || r.Out != "a:dir,f1:file" {
				return fmt.Errorf("readdir tree: %v", r)
			}
			return nil
		})
		p.Remount()
		p.Finish()
	})
}
