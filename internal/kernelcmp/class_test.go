package kernelcmp

import "testing"

func TestOpClass(t *testing.T) {
	for _, c := range []struct {
		op   string
		a, b Result
		want string
	}{
		{"setxattr", Result{}, Result{Errno: 1}, "op setxattr: ok vs EPERM"},
		{"lstat", Result{Out: "file 0644 0:0 size=6 nlink=1"}, Result{Out: "file 0644 0:0 size=6 nlink=2"}, "op lstat: nlink differs"},
		{"stat", Result{Out: "file 0644 0:0 size=6 nlink=1"}, Result{Out: "fifo 0777 0:0 size=0 nlink=1"}, "op stat: type,perm,size differs"},
		{"readheld", Result{Out: `read:ESPIPE fifo 0644 0:0 size=0 nlink=0`}, Result{Out: `read:ESPIPE fstat:ESTALE`}, "op readheld: fstat ok vs ESTALE"},
		{"readheld", Result{Out: `"a b" file 0644 0:0 size=3 nlink=1`}, Result{Out: `"a c" file 0644 0:0 size=3 nlink=1`}, "op readheld: data differs"},
		{"readheld", Result{Out: `"ab" file 0644 0:0 size=2 nlink=1`}, Result{Out: `read:EIO file 0600 0:0 size=2 nlink=1`}, "op readheld: read ok vs EIO, fstat perm differs"},
		{"readdir", Result{Out: "a:file"}, Result{Out: "b:file"}, "op readdir: output differs"},
	} {
		if got := opClass(Op{Op: c.op}, c.a, c.b); got != c.want {
			t.Errorf("%s %v %v: class %q, want %q", c.op, c.a, c.b, got, c.want)
		}
	}
}
