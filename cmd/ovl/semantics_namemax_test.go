package main

import (
	"strings"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// TestSemanticsNameMax: a name over NAME_MAX in any component of any
// path-taking call is ENAMETOOLONG, as in the kernel's overlayfs (ovl
// answered ENOENT and cached a negative entry for it), and a name of
// exactly NAME_MAX works, also deep in a tree.
func TestSemanticsNameMax(t *testing.T) {
	long := strings.Repeat("n", 256)
	max := strings.Repeat("m", 255)
	// A deep path, near PATH_MAX, of 255-byte components.
	deep := strings.Repeat(strings.Repeat("d", 200)+"/", 14)
	deep = strings.TrimSuffix(deep, "/")
	var deepEntries []k.Entry
	for p := deep; ; {
		deepEntries = append([]k.Entry{k.Dir(p)}, deepEntries...)
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			break
		}
		p = p[:i]
	}
	lower := k.Layer{k.Dir("dir"), k.File("dir/f", "x"), k.Dir("empty")}
	lower = append(lower, deepEntries...)
	lower = append(lower, k.File(deep+"/f", "deep"))
	p := kcPair(t, k.DefaultOptions(), k.Layers{Lowers: []k.Layer{lower}})

	tl := syscall.ENAMETOOLONG
	type tc struct {
		op   k.Op
		want syscall.Errno
	}
	var cases []tc
	for _, where := range []string{"", "dir/", long + "/", deep + "/"} {
		name := where + long
		if where == long+"/" {
			name = where + "x" // the long component is the parent
		}
		cases = append(cases,
			tc{kcOp("lstat", name), tl},
			tc{kcOp("stat", name), tl},
			tc{k.Op{Op: "chmod", Path: name, Mode: 0o600}, tl},
			tc{k.Op{Op: "chown", Path: name, UID: 1, GID: 1}, tl},
			tc{k.Op{Op: "lchown", Path: name, UID: 1, GID: 1}, tl},
			tc{k.Op{Op: "truncate", Path: name}, tl},
			tc{kcOp("unlink", name), tl},
			tc{kcOp("rmdir", name), tl},
			tc{k.Op{Op: "link", Path: "dir/f", Path2: name}, tl},
			tc{k.Op{Op: "link", Path: name, Path2: "dir/g"}, tl},
			tc{k.Op{Op: "rename", Path: "dir/f", Path2: name}, tl},
			tc{k.Op{Op: "rename", Path: name, Path2: "dir/g"}, tl},
			tc{k.Op{Op: "rename", Path: deep + "/f", Path2: name}, tl},
			tc{k.Op{Op: "getxattr", Path: name, Name: "user.x"}, tl},
			tc{k.Op{Op: "setxattr", Path: name, Name: "user.x", Data: "v"}, tl},
			tc{kcOp("listxattr", name), tl},
			tc{kcOp("readdir", name), tl},
			tc{kcOp("read", name), tl},
			tc{k.Op{Op: "open", Path: name, Flags: unix.O_RDONLY}, tl},
			tc{k.Op{Op: "create", Path: name, Mode: 0o644}, tl},
			tc{k.Op{Op: "mkdir", Path: name, Mode: 0o755}, tl},
			tc{k.Op{Op: "mknod", Path: name, Mode: unix.S_IFIFO | 0o644}, tl},
			tc{k.Op{Op: "symlink", Path: name, Data: "dir/f"}, tl},
			tc{k.Op{Op: "access", Path: name}, tl},
			tc{k.Op{Op: "utimes", Path: name, Off: 1e9}, tl},
		)
	}
	// The same name again after the failures: nothing negative was cached
	// under a shorter form, and a 255-byte name works everywhere.
	for _, where := range []string{"", "dir/", deep + "/"} {
		name := where + max
		cases = append(cases,
			tc{kcOp("lstat", name), syscall.ENOENT},
			tc{k.Op{Op: "create", Path: name, Mode: 0o644}, 0},
			tc{kcOp("lstat", name), 0},
			tc{k.Op{Op: "rename", Path: name, Path2: name[:len(name)-1] + "r"}, 0},
			tc{k.Op{Op: "link", Path: name[:len(name)-1] + "r", Path2: name}, 0},
			tc{kcOp("read", name), 0},
			tc{kcOp("lstat", where+long), tl},
		)
	}
	ops := make([]k.Op, len(cases))
	want := make([]syscall.Errno, len(cases))
	for i, c := range cases {
		ops[i], want[i] = c.op, c.want
	}
	p.OpsExpect(&k.Cred{UID: 0, GID: 0}, want, ops...)
}
