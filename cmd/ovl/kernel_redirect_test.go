package main

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
)

// TestKernelRedirects renames directories that have lower parts, with
// redirect_dir=on on both sides: within a parent (relative redirect), to
// another parent (absolute), twice, into a new directory, by exchange, and
// back. Views, uppers (redirect values included) and the interchange must
// agree with the kernel.
func TestKernelRedirects(t *testing.T) {
	opts := k.DefaultOptions()
	opts.RedirectDir = "on"
	l0 := k.Layer{
		k.Dir("d1"), k.Dir("d1/d2"), k.File("d1/d2/f", "f@l0"), k.Dir("d1/d3"), k.File("d1/d3/g", "g"),
		k.Dir("x"), k.File("x/in-x", "x"), k.Dir("y"), k.File("y/in-y", "y"),
		k.Dir("m"), k.File("m/low", "low"),
	}
	l1 := k.Layer{k.Dir("d1"), k.File("d1/top", "top"), k.Dir("m"), k.File("m/high", "high")}
	p := kcPair(t, opts, k.Layers{Lowers: []k.Layer{l1, l0}})
	p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		k.Op{Op: "rename", Path: "m", Path2: "m2"},           // merged dir, same parent: "m"
		k.Op{Op: "mkdir", Path: "new", Mode: 0o755},          // pure upper, opaque
		k.Op{Op: "rename", Path: "d1/d2", Path2: "new/d2"},   // lower dir to another parent: "/d1/d2"
		k.Op{Op: "rename", Path: "d1", Path2: "d1x"},         // merged dir: "d1"
		k.Op{Op: "rename", Path: "d1x/d3", Path2: "d3"},      // through a redirected parent: "/d1/d3"
		k.Op{Op: "rename", Path: "x", Path2: "y", Flags: 2},  // RENAME_EXCHANGE of two lower dirs
		k.Op{Op: "rename", Path: "new/d2", Path2: "new/d2b"}, // absolute stays
		k.Op{Op: "rename", Path: "m2", Path2: "m"},           // back to its name: redirect stays
		k.Op{Op: "create", Path: "d3/made", Mode: 0o644},     // a new entry in a redirected dir
		k.Op{Op: "write", Path: "new/d2b/f", Data: "F"},      // copy-up inside a redirected dir
		k.Op{Op: "unlink", Path: "d3/g"},                     // whiteout inside a redirected dir
	)
	p.OpsExpect(nil, []syscall.Errno{syscall.ENOENT, syscall.ENOENT, syscall.ENOENT},
		kcOp("lstat", "d1"), kcOp("lstat", "d1x/d3"), kcOp("lstat", "m2"))
	p.Ops(nil, kcOp("readdir", ""), kcOp("readdir", "m"), kcOp("readdir", "d1x"), kcOp("readdir", "d3"),
		kcOp("readdir", "new/d2b"), kcOp("readdir", "x"), kcOp("readdir", "y"), kcOp("read", "new/d2b/f"))
	redirect := func(want string) func(n *k.Node) error {
		return func(n *k.Node) error {
			if got := n.Ovl["redirect"]; got != want {
				return fmt.Errorf("overlay.redirect=%q, want %q", got, want)
			}
			return nil
		}
	}
	kcCheckUpper(p, "m", "dir", redirect("m"))
	kcCheckUpper(p, "m2", "")
	kcCheckUpper(p, "d1x", "dir", redirect("d1"))
	kcCheckUpper(p, "d1", "whiteout")
	kcCheckUpper(p, "new/d2b", "dir", redirect("/d1/d2"))
	kcCheckUpper(p, "d3", "dir", redirect("/d1/d3"))
	kcCheckUpper(p, "x", "dir", redirect("y"))
	kcCheckUpper(p, "y", "dir", redirect("x"))
	p.Finish()
}

// TestRedirectBigTree moves a lower directory of 50,000 files: the upper
// gets one directory with a redirect and a whiteout, nothing per entry,
// and the moved tree lists in full (kernel and ovl alike).
func TestRedirectBigTree(t *testing.T) {
	const n = 50000
	opts := k.DefaultOptions()
	opts.RedirectDir = "on"
	l0 := k.Layer{k.Dir("tree")}
	for i := 0; i < n; i++ {
		l0 = append(l0, k.File(fmt.Sprintf("tree/f%05d", i), ""))
	}
	p := kcPairCfg(t, k.Config{Options: opts, Tmpfs: true, NoHash: true}, k.Layers{Lowers: []k.Layer{l0}})
	p.OpsExpect(nil, []syscall.Errno{0}, k.Op{Op: "rename", Path: "tree", Path2: "moved"})
	for _, s := range p.Sides() {
		ents, err := os.ReadDir(s.UpperPath(""))
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 2 {
			t.Errorf("%s: upper holds %d entries, want 2 (moved, whiteout tree)", s.Name, len(ents))
		}
		inside, err := os.ReadDir(s.UpperPath("moved"))
		if err != nil || len(inside) != 0 {
			t.Errorf("%s: upper moved/ holds %d entries (%v), want none", s.Name, len(inside), err)
		}
		all, err := os.ReadDir(s.Path("moved"))
		if err != nil || len(all) != n {
			t.Errorf("%s: moved lists %d entries (%v), want %d", s.Name, len(all), err, n)
		}
	}
	kcCheckUpper(p, "moved", "dir", func(nd *k.Node) error {
		if nd.Ovl["redirect"] != "tree" {
			return fmt.Errorf("overlay.redirect=%q, want tree", nd.Ovl["redirect"])
		}
		return nil
	})
	p.Finish()
}
