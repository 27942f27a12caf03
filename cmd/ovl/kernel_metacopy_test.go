package main

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
)

// TestKernelMetacopy compares metacopy=on with the kernel's: metadata
// changes copy up no data (overlay.metacopy, the lower size, no blocks),
// reads keep coming from the lower file, a rename records where the data
// is, and the first write copies the data up and drops the marker. Both
// sides read each other's upper.
func TestKernelMetacopy(t *testing.T) {
	opts := k.DefaultOptions()
	opts.RedirectDir, opts.Metacopy = "on", "on"
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i % 251)
	}
	p := kcPair(t, opts, k.Layers{Lowers: []k.Layer{{
		k.File("big", string(big)), k.File("f", "lower f"), k.File("g", "lower g"),
		k.File("h", "lower h"), k.Dir("d"), k.File("d/x", "lower x"), k.Dir("e"),
	}}})
	p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0, 0},
		k.Op{Op: "chmod", Path: "big", Mode: 0o600},
		k.Op{Op: "chown", Path: "f", UID: 7, GID: 8},
		k.Op{Op: "setxattr", Path: "g", Name: "user.k", Data: "v"},
		k.Op{Op: "utimes", Path: "h", Off: 1_000_000_000_000_000_000},
		k.Op{Op: "chmod", Path: "d/x", Mode: 0o640},
		k.Op{Op: "rename", Path: "d/x", Path2: "e/moved"}, // absolute redirect
	)
	p.Ops(nil, kcOp("read", "big"), kcOp("read", "f"), kcOp("read", "e/moved"), kcOp("lstat", "big"))
	for _, name := range []string{"big", "f", "g", "h"} {
		kcCheckUpper(p, name, "file", func(n *k.Node) error {
			if _, ok := n.Ovl["metacopy"]; !ok {
				return fmt.Errorf("no overlay.metacopy")
			}
			return nil
		})
	}
	kcCheckUpper(p, "e/moved", "file", func(n *k.Node) error {
		if n.Ovl["redirect"] != "/d/x" {
			return fmt.Errorf("overlay.redirect=%q, want /d/x", n.Ovl["redirect"])
		}
		return nil
	})
	// No data blocks in the upper: chmod of 1 MiB copied nothing (a few
	// blocks may hold the xattrs).
	for _, s := range p.Sides() {
		fi, err := os.Stat(s.UpperPath("big"))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Blocks > 16 || st.Size != 1<<20 {
			t.Errorf("%s: upper big has %d blocks, size %d; want no data blocks, size %d", s.Name, st.Blocks, st.Size, 1<<20)
		}
	}
	// The first write brings the data up.
	p.OpsExpect(nil, []syscall.Errno{0, 0, 0},
		k.Op{Op: "write", Path: "big", Data: "W", Off: 5},
		k.Op{Op: "truncate", Path: "f", Off: 3},
		k.Op{Op: "append", Path: "e/moved", Data: "+"},
	)
	p.Ops(nil, kcOp("read", "big"), kcOp("read", "f"), kcOp("read", "e/moved"), kcOp("read", "g"))
	kcCheckUpper(p, "big", "file", func(n *k.Node) error {
		if _, ok := n.Ovl["metacopy"]; ok {
			return fmt.Errorf("overlay.metacopy still set after a write")
		}
		return nil
	})
	p.Finish()
}
