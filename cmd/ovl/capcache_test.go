package main

import (
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// TestCapCacheCoherent: ovl answers the kernel's GETXATTRs of
// security.capability from what it knows (fusefs/capcache.go: absent
// after a read found none, or for a file it just made); a capability set
// or removed later, through the same name, another name of a hard link
// (one layer file for two objects with index=on) or by the kernel's own
// removal on write, shows at once, as on the kernel's overlayfs.
func TestCapCacheCoherent(t *testing.T) {
	testutil.RequireRoot(t)
	var lay k.Layers
	lay.Lowers = []k.Layer{{k.File("a", "data"), k.Hardlink("b", "a"), k.File("l", "data")}}
	lay.Upper = k.Layer{k.File("u", "data")}
	get := func(n string) k.Op { return k.Op{Op: "getxattr", Path: n, Name: "security.capability"} }
	set := func(n string, c uint) k.Op {
		return k.Op{Op: "setxattr", Path: n, Name: "security.capability", Data: capV2(c)}
	}
	names := []string{"a", "b", "l", "u", "n"}
	getAll := func() []k.Op {
		var ops []k.Op
		for _, n := range names {
			ops = append(ops, get(n))
		}
		return ops
	}
	for _, index := range []string{"off", "on"} {
		t.Run("index="+index, func(t *testing.T) {
			opts := k.DefaultOptions()
			opts.Index = index
			p := kcPair(t, opts, lay)
			p.Ops(nil, k.Op{Op: "create", Path: "n", Flags: unix.O_EXCL, Mode: 0o644},
				k.Op{Op: "write", Path: "n", Data: "x"}, k.Op{Op: "write", Path: "u", Data: "x"})
			p.OpsExpect(nil, []syscall.Errno{unix.ENODATA, unix.ENODATA, unix.ENODATA, unix.ENODATA, unix.ENODATA}, getAll()...)
			p.Ops(nil, set("a", unix.CAP_NET_RAW))
			p.Ops(nil, getAll()...)
			p.Ops(nil, set("n", unix.CAP_NET_ADMIN), set("u", unix.CAP_CHOWN), set("l", unix.CAP_KILL))
			res := p.Ops(nil, getAll()...)
			for i, r := range res {
				if r.Errno != 0 && names[i] != "b" { // b is another object with index=off
					t.Errorf("security.capability of %s after setxattr: %+v", names[i], r)
				}
			}
			// The kernel removes a capability at the next write (file_remove_privs).
			p.Ops(nil, k.Op{Op: "write", Path: "u", Data: "y"}, k.Op{Op: "write", Path: "a", Data: "y"})
			p.Ops(nil, getAll()...)
			p.Ops(nil, set("u", unix.CAP_NET_RAW))
			p.Ops(nil, getAll()...)
			p.Unmount()
			if index == "off" {
				// With index=on, ovl links up the name the object was last
				// looked up by (b), the kernel the one changed (a): a
				// difference in the upper's layout that this test is not
				// about (the view is the same).
				p.Uppers("final")
			}
		})
	}
}
