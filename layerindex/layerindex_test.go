package layerindex

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func layer(t *testing.T) (string, int) {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"a/b", "c"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"f", "a/g", "a/b/victim", "c/h"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("f", filepath.Join(dir, "a/link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(dir, "a/g"), "user.overlay.metacopy", nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(dir, "a/g"), "user.other", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return dir, fd
}

// TestRoundTrip: every name, its lstat and its overlay xattrs come back;
// an absent name is absent; subdirectories match their real ones.
func TestRoundTrip(t *testing.T) {
	dir, fd := layer(t)
	data, err := Build(fd)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := IdentityOf(fd)
	ix, err := Parse(data, id)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ix.Root()
	if err != nil {
		t.Fatal(err)
	}
	var rst unix.Stat_t
	unix.Fstat(fd, &rst)
	if !root.Matches(&rst) {
		t.Fatal("root does not match its own directory")
	}
	a := root.Lookup("a")
	if a == nil || root.Lookup("nothere") != nil || len(root.Entries()) != 3 {
		t.Fatalf("root entries %v", root.Entries())
	}
	ad, err := root.Sub(a)
	if err != nil || ad == nil {
		t.Fatal(err)
	}
	g := ad.Lookup("g")
	var st unix.Stat_t
	unix.Lstat(filepath.Join(dir, "a/g"), &st)
	if g == nil || g.Stat != st {
		t.Fatalf("a/g: %+v, want %+v", g, st)
	}
	if v := g.Xattr("user.overlay.metacopy"); v == nil || len(v) != 0 {
		t.Errorf("metacopy xattr %q", v)
	}
	if g.Xattr("user.other") != nil {
		t.Error("an xattr outside Prefixes was recorded")
	}
	unix.Lstat(filepath.Join(dir, "a/b"), &st)
	bd, err := ad.Sub(ad.Lookup("b"))
	if err != nil || !bd.Matches(&st) || bd.Lookup("victim") == nil {
		t.Fatalf("a/b: %v", err)
	}
	if s, err := ad.Sub(ad.Lookup("link")); s != nil || err != nil {
		t.Error("a symlink has a directory")
	}
}

// TestRefused: a damaged, truncated, other-version or other-layer file is
// refused with the right error.
func TestRefused(t *testing.T) {
	_, fd := layer(t)
	data, err := Build(fd)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := IdentityOf(fd)
	i := bytes.Index(data, []byte("victim"))
	if i < 0 {
		t.Fatal("name not in the file")
	}
	bad := bytes.Clone(data)
	bad[i+5] = 'n'
	if _, err := Parse(bad, id); !errors.Is(err, ErrCorrupt) {
		t.Errorf("damaged: %v", err)
	}
	for _, n := range []int{0, 10, headerLen, len(data) / 2, len(data) - 1} {
		if _, err := Parse(data[:n], id); !errors.Is(err, ErrCorrupt) {
			t.Errorf("truncated to %d: %v", n, err)
		}
	}
	other := id
	other.Ctime.Nsec++
	if _, err := Parse(data, other); !errors.Is(err, ErrMismatch) {
		t.Errorf("other layer: %v", err)
	}
}
