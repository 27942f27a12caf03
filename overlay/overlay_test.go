package overlay

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/internal/testutil"
)

// layers makes lower1 over lower2, an empty upper and a work dir.
//
//	lower1: a (file "a1"), d/ (y), od/ opaque (o), wh = whiteout of lower2's wh
//	lower2: a ("a2"), d/ (x), od/ (hidden), wh ("hidden"), only2
func layers(t *testing.T) (Config, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Skip(t, "needs root: whiteouts and trusted.overlay xattrs")
	}
	root := t.TempDir()
	mk := func(p, data string) {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("l1/a", "a1")
	mk("l1/d/y", "y")
	mk("l1/od/o", "o")
	mk("l2/a", "a2")
	mk("l2/d/x", "x")
	mk("l2/od/hidden", "h")
	mk("l2/wh", "hidden")
	mk("l2/only2", "2")
	if err := unix.Mknod(filepath.Join(root, "l1/wh"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(root, "l1/od"), format.TrustedPrefix+format.Opaque, []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"u", "w"} {
		os.Mkdir(filepath.Join(root, d), 0o755)
	}
	return Config{Lowers: []string{filepath.Join(root, "l1"), filepath.Join(root, "l2")},
		Upper: filepath.Join(root, "u"), Work: filepath.Join(root, "w")}, root
}

func names(t *testing.T, n *Node) []string {
	t.Helper()
	ents, err := n.ReadDir()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name)
	}
	sort.Strings(out)
	return out
}

func read(t *testing.T, n *Node) string {
	t.Helper()
	fd, err := n.Open(unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 100)
	k, _ := unix.Read(fd, buf)
	return string(buf[:k])
}

func lookup(t *testing.T, dir *Node, name string) *Node {
	t.Helper()
	n, err := dir.Lookup(name)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	return n
}

func TestMergedView(t *testing.T) {
	cfg, _ := layers(t)
	o, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	root := o.Root()
	if got, want := names(t, root), []string{"a", "d", "od", "only2"}; !equal(got, want) {
		t.Errorf("root lists %v, want %v (whiteout hides wh)", got, want)
	}
	if _, err := root.Lookup("wh"); err != unix.ENOENT {
		t.Errorf("lookup of a whited-out name: %v, want ENOENT", err)
	}
	if got := read(t, lookup(t, root, "a")); got != "a1" {
		t.Errorf("a reads %q, want the top layer's a1", got)
	}
	if got, want := names(t, lookup(t, root, "d")), []string{"x", "y"}; !equal(got, want) {
		t.Errorf("merged d lists %v, want %v", got, want)
	}
	if got, want := names(t, lookup(t, root, "od")), []string{"o"}; !equal(got, want) {
		t.Errorf("opaque od lists %v, want %v", got, want)
	}
}

func TestCopyUpAndWhiteouts(t *testing.T) {
	cfg, root := layers(t)
	o, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	r := o.Root()
	d := lookup(t, r, "d")
	x := lookup(t, d, "x")
	fd, err := x.Open(unix.O_WRONLY | unix.O_APPEND)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(fd, []byte("!"))
	unix.Close(fd)
	if b, _ := os.ReadFile(filepath.Join(root, "u/d/x")); string(b) != "x!" {
		t.Errorf("upper d/x = %q, want x!", b)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "l2/d/x")); string(b) != "x" {
		t.Errorf("lower changed: %q", b)
	}
	if o.Stats().CopyUps != 2 { // d, then d/x
		t.Errorf("copy-ups = %d, want 2", o.Stats().CopyUps)
	}
	if err := r.Unlink("only2"); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(root, "u/only2"), &st); err != nil || !format.IsWhiteoutStat(&st) {
		t.Errorf("unlink of a lower file left no whiteout: %v %o", err, st.Mode)
	}
	if err := r.Rmdir("d"); err != unix.ENOTEMPTY {
		t.Errorf("rmdir of non-empty merged dir: %v, want ENOTEMPTY", err)
	}
	// A directory with a lower part moves by a redirect to its old name,
	// and its old name is whited out.
	if err := r.Rename("d", nil, r, "d2", nil, 0); err != nil {
		t.Errorf("rename of merged dir: %v", err)
	}
	buf := make([]byte, 64)
	if n, err := unix.Getxattr(filepath.Join(root, "u/d2"), format.TrustedPrefix+format.Redirect, buf); err != nil || string(buf[:n]) != "d" {
		t.Errorf("redirect of renamed dir = %q, %v; want \"d\"", buf[:max(n, 0)], err)
	}
	if err := unix.Lstat(filepath.Join(root, "u/d"), &st); err != nil || !format.IsWhiteoutStat(&st) {
		t.Errorf("rename of a merged dir left no whiteout")
	}
	if d2, err := r.Lookup("d2"); err != nil {
		t.Errorf("lookup of renamed dir: %v", err)
	} else if ents, err := d2.ReadDir(); err != nil || len(ents) == 0 {
		t.Errorf("renamed dir lost its lower entries: %v %v", ents, err)
	}
	// mkdir over a whiteout makes an opaque directory.
	if _, err := r.Mkdir("only2", 0o755, Cred{}); err != nil {
		t.Fatal(err)
	}
	if v, _ := unix.Getxattr(filepath.Join(root, "u/only2"), format.TrustedPrefix+format.Opaque, make([]byte, 4)); v != 1 {
		t.Errorf("mkdir over whiteout is not opaque")
	}
	// Renaming a lower file leaves a whiteout where it was.
	if err := r.Rename("a", nil, r, "b", nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(root, "u/a"), &st); err != nil || !format.IsWhiteoutStat(&st) {
		t.Errorf("rename of a lower file left no whiteout")
	}
	if got, want := names(t, r), []string{"b", "d2", "od", "only2"}; !equal(got, want) {
		t.Errorf("root lists %v, want %v", got, want)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
