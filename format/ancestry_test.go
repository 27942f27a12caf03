package format

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

func mustID(t *testing.T, p string) DirID {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return StatID(&st)
}

func has(ids []DirID, id DirID) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// Ancestry follows a symlink to the directory, walks its filesystem's
// parents, goes on above a bind mount's root in the filesystem it shows,
// and stops at another filesystem's root.
func TestAncestry(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"a/b/c", "bind", "fs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("a/b", filepath.Join(dir, "sym"))
	a, b, c := mustID(t, filepath.Join(dir, "a")), mustID(t, filepath.Join(dir, "a/b")), mustID(t, filepath.Join(dir, "a/b/c"))

	self, anc, err := Ancestry(filepath.Join(dir, "sym"))
	if err != nil || self != b || len(anc) == 0 || anc[0] != a || !has(anc, mustID(t, dir)) {
		t.Fatalf("Ancestry(sym) = %v %v %v, want %v then %v and %v", self, anc, err, b, a, mustID(t, dir))
	}
	if _, _, err := Ancestry(filepath.Join(dir, "nope")); err != unix.ENOENT {
		t.Errorf("missing: %v, want ENOENT", err)
	}
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	if _, _, err := Ancestry(filepath.Join(dir, "file")); err != unix.ENOTDIR {
		t.Errorf("file: %v, want ENOTDIR", err)
	}

	if os.Geteuid() != 0 {
		testutil.Skip(t, "needs root: bind and tmpfs mounts")
	}
	bind := filepath.Join(dir, "bind")
	if err := unix.Mount(filepath.Join(dir, "a/b"), bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(bind, unix.MNT_DETACH)
	self, anc, err = Ancestry(filepath.Join(bind, "c"))
	if err != nil || self != c || len(anc) < 2 || anc[0] != b || anc[1] != a {
		t.Errorf("Ancestry(bind/c) = %v %v %v, want %v then %v, %v", self, anc, err, c, b, a)
	}
	fs := filepath.Join(dir, "fs")
	if err := unix.Mount("tmpfs", fs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(fs, unix.MNT_DETACH)
	os.Mkdir(filepath.Join(fs, "x"), 0o755)
	self, anc, err = Ancestry(filepath.Join(fs, "x"))
	if err != nil || len(anc) != 1 || anc[0] != mustID(t, fs) || has(anc, mustID(t, dir)) {
		t.Errorf("Ancestry(fs/x) = %v %v %v, want only the tmpfs root", self, anc, err)
	}
}
