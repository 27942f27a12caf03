package main

import (
	"fmt"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// specialModes are the permission modes the mode tests create objects
// with: none, each special bit alone and together, and the usual ones.
var specialModes = []uint32{0, 0o4000, 0o2000, 0o1000, 0o6000, 0o7000, 0o7777, 0o0644, 0o4755, 0o2710, 0o1777}

// TestSemanticsModesRoundTrip: every permission mode a create, mkdir or
// mknod can set comes back as the kernel's overlayfs reports it, 0 and
// each setuid/setgid/sticky combination included, as root and as a user,
// under several umasks. go-fuse's bridge reported mode 0 as 0644 (0755 for
// directories) unless NullPermissions is set.
func TestSemanticsModesRoundTrip(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), k.Layers{Lowers: []k.Layer{{
		k.Dir("pub").Mode(0o777),
		k.Dir("sg").Mode(0o2777).Owner(0, 2000),
	}}})
	for _, c := range []*k.Cred{{UID: 0, GID: 0}, kcNobody} {
		for _, umask := range []uint32{0, 0o022, 0o777} {
			ops := []k.Op{{Op: "umask", Mode: umask}}
			for _, dir := range []string{"pub", "sg"} {
				for _, m := range specialModes {
					base := fmt.Sprintf("%s/u%d-m%03o-%04o", dir, c.UID, umask, m)
					ops = append(ops,
						k.Op{Op: "create", Path: base + "-f", Mode: m},
						kcOp("lstat", base+"-f"),
						k.Op{Op: "mkdir", Path: base + "-d", Mode: m},
						kcOp("lstat", base+"-d"),
						k.Op{Op: "mknod", Path: base + "-r", Mode: unix.S_IFREG | m},
						kcOp("lstat", base+"-r"),
						k.Op{Op: "mknod", Path: base + "-p", Mode: unix.S_IFIFO | m},
						kcOp("lstat", base+"-p"),
					)
				}
			}
			p.Ops(c, ops...)
		}
	}
	// Absolute checks, so that a difference shared by both sides shows.
	res := p.Ops(&k.Cred{UID: 0, GID: 0},
		k.Op{Op: "umask", Mode: 0},
		k.Op{Op: "create", Path: "pub/zero", Mode: 0},
		kcOp("lstat", "pub/zero"),
		k.Op{Op: "mkdir", Path: "pub/zerod", Mode: 0},
		kcOp("lstat", "pub/zerod"),
		k.Op{Op: "mkdir", Path: "pub/suidd", Mode: 0o4000},
		kcOp("lstat", "pub/suidd"),
		k.Op{Op: "mknod", Path: "pub/zeror", Mode: unix.S_IFREG},
		kcOp("lstat", "pub/zeror"),
	)
	want := map[int]string{
		2: "file 0000 0:0 size=0 nlink=1",
		4: "dir 0000 0:0",
		6: "dir 0000 0:0",
		8: "file 0000 0:0 size=0 nlink=1",
	}
	for i, w := range want {
		if res[i].Out != w {
			t.Errorf("op %d: %s, want %s", i, res[i].Out, w)
		}
	}
}

// TestSemanticsModeZeroLower: a lower file stored with mode 0 (/etc/shadow
// in Fedora images) shows mode 0 and is unreadable to a user, before and
// after a copy-up; so are new objects made with mode 0 through the mount.
func TestSemanticsModeZeroLower(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{Lowers: []k.Layer{{
			k.Dir("etc").Mode(0o755),
			k.File("etc/shadow", "root:secret").Mode(0),
			k.File("etc/other", "root:secret").Mode(0),
			k.Dir("etc/priv").Mode(0),
			k.File("etc/priv/key", "k").Mode(0o644),
			k.Dir("pub").Mode(0o777),
		}}})
		res := p.OpsExpect(kcNobody, []syscall.Errno{0, syscall.EACCES, syscall.EACCES, syscall.EACCES, 0, 0, 0, syscall.EACCES, 0},
			kcOp("lstat", "etc/shadow"),
			kcOp("read", "etc/shadow"),
			k.Op{Op: "append", Path: "etc/shadow", Data: "x"},
			kcOp("read", "etc/priv/key"),
			kcOp("lstat", "etc/priv"),
			k.Op{Op: "umask", Mode: 0},
			k.Op{Op: "create", Path: "pub/mine", Mode: 0},
			kcOp("read", "pub/mine"),
			kcOp("lstat", "pub/mine"),
		)
		if w := "file 0000 0:0 size=11 nlink=1"; res[0].Out != w {
			t.Errorf("lstat etc/shadow: %s, want %s", res[0].Out, w)
		}
		if w := "dir 0000 0:0"; res[4].Out != w {
			t.Errorf("lstat etc/priv: %s, want %s", res[4].Out, w)
		}
		if w := "file 0000 1000:1000 size=0 nlink=1"; res[8].Out != w {
			t.Errorf("lstat pub/mine: %s, want %s", res[8].Out, w)
		}
		// A copy-up keeps mode 0; root (CAP_DAC_OVERRIDE) still reads it.
		res = p.OpsExpect(&k.Cred{UID: 0, GID: 0}, []syscall.Errno{0, 0, 0, 0, 0},
			k.Op{Op: "append", Path: "etc/other", Data: "x"},
			k.Op{Op: "chown", Path: "etc/shadow", UID: 0, GID: 42},
			kcOp("lstat", "etc/other"),
			kcOp("lstat", "etc/shadow"),
			kcOp("read", "etc/other"),
		)
		if w := "file 0000 0:0 size=12 nlink=1"; res[2].Out != w {
			t.Errorf("lstat etc/other after append: %s, want %s", res[2].Out, w)
		}
		if w := "file 0000 0:42 size=11 nlink=1"; res[3].Out != w {
			t.Errorf("lstat etc/shadow after chown: %s, want %s", res[3].Out, w)
		}
		p.OpsExpect(kcNobody, []syscall.Errno{syscall.EACCES, syscall.EACCES},
			kcOp("read", "etc/other"),
			kcOp("read", "etc/shadow"),
		)
	})
}
