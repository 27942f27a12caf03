package overlay

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNodeRefs: a node lives while it has references, holds its parent
// meanwhile, and is counted in Stats.Nodes from its first reference to its
// last, whatever made it; a released node answers ESTALE and never panics
// (issue 17, items 3 and 8).
func TestNodeRefs(t *testing.T) {
	cfg, _ := layers(t)
	o, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	nodes := func() int64 { return o.Stats().Nodes }
	if n := nodes(); n != 1 {
		t.Fatalf("%d nodes with the root alone", n)
	}
	d, err := o.Root().Lookup("d")
	if err != nil {
		t.Fatal(err)
	}
	x, err := d.Lookup("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Lookup("missing"); err != unix.ENOENT {
		t.Fatalf("lookup of a missing name: %v", err)
	}
	if n := nodes(); n != 3 {
		t.Fatalf("%d nodes with root, d and d/x (a failed lookup makes none)", n)
	}
	// The directory's last holder goes; x still finds its data through it.
	d.Forget()
	var st unix.Stat_t
	if err := x.Getattr(&st); err != nil {
		t.Fatalf("getattr of d/x after its parent's node was let go: %v", err)
	}
	x.Ref() // a second holder
	x.Forget()
	if err := x.Getattr(&st); err != nil {
		t.Fatalf("getattr of d/x with one reference left: %v", err)
	}
	made := []func(*Node) (*Node, error){
		func(p *Node) (*Node, error) {
			n, fd, err := p.Create("new", unix.O_WRONLY, 0o644, Cred{})
			unix.Close(fd)
			return n, err
		},
		func(p *Node) (*Node, error) { return p.Mkdir("newdir", 0o755, Cred{}) },
		func(p *Node) (*Node, error) { return p.Symlink("x", "newlink", Cred{}) },
		func(p *Node) (*Node, error) { return p.Mknod("newfifo", unix.S_IFIFO|0o644, 0, Cred{}) },
	}
	var held []*Node
	for _, mk := range made {
		n, err := mk(o.Root())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, n)
	}
	if n := nodes(); n != 3+int64(len(made)) {
		t.Fatalf("%d nodes after %d creations, want %d", n, len(made), 3+len(made))
	}
	for _, n := range held {
		n.Forget()
	}
	x.Forget() // the last: d goes with it
	if n := nodes(); n != 1 {
		t.Fatalf("%d nodes after every reference was let go, want the root alone", n)
	}
	// A released node fails; it does not panic.
	if err := x.Getattr(&st); !errors.Is(err, unix.ESTALE) {
		t.Errorf("getattr of a released file: %v", err)
	}
	if _, err := d.Lookup("x"); !errors.Is(err, unix.ESTALE) {
		t.Errorf("lookup in a released directory: %v", err)
	}
	if _, err := d.ReadDir(); !errors.Is(err, unix.ESTALE) {
		t.Errorf("readdir of a released directory: %v", err)
	}
	if err := d.Getattr(&st); !errors.Is(err, unix.ESTALE) {
		t.Errorf("getattr of a released directory: %v", err)
	}
	if _, err := x.Open(unix.O_RDONLY); !errors.Is(err, unix.ESTALE) {
		t.Errorf("open of a released file: %v", err)
	}
}
