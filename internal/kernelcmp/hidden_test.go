package kernelcmp

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHiddenSplitNarrow checks that only the kernel hiding an entry whose
// lookup fails is taken for the intended difference: anything else that
// is missing on the kernel's side stays a difference.
func TestHiddenSplitNarrow(t *testing.T) {
	upper := t.TempDir()
	if err := os.MkdirAll(filepath.Join(upper, "imp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(upper, "pure"), 0o755); err != nil {
		t.Fatal(err)
	}
	prefix := "user.overlay."
	for _, d := range []string{"imp", "imp3"} {
		if err := os.MkdirAll(filepath.Join(upper, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lsetxattr(filepath.Join(upper, d), prefix+"impure", []byte("y"), 0); err != nil {
			t.Fatalf("user xattrs on the temp dir: %v", err)
		}
	}
	ds := []Diff{
		{Path: "bad", Field: "exists", A: "missing", B: "error:EPERM"},
		{Path: "gone", Field: "exists", A: "missing", B: "file"},
		{Path: "extra", Field: "exists", A: "file", B: "missing"},
		{Path: "imp", Field: "readdir", A: "EINVAL", B: ""},
		{Path: "imp/bad", Field: "exists", A: "missing", B: "error:EINVAL"},
		{Path: "imp/x", Field: "exists", A: "missing", B: "symlink"},
		{Path: "imp/x/y", Field: "exists", A: "missing", B: "file"},
		{Path: "pure", Field: "readdir", A: "EINVAL", B: ""},
		{Path: "pure/bad", Field: "exists", A: "missing", B: "error:EINVAL"},
		{Path: "pure/x", Field: "exists", A: "missing", B: "file"},
		{Path: "imp3", Field: "readdir", A: "EINVAL", B: ""},
		{Path: "imp3/x", Field: "exists", A: "missing", B: "file"},
		{Path: "ovlfails", Field: "readdir", A: "", B: "EIO"},
		{Path: "imp2", Field: "exists", A: "missing", B: "error:EINVAL"},
		{Path: "f", Field: "perm", A: "0644", B: "0600"},
	}
	h := hiddenCheck{kernelA: true, upper: upper, prefix: prefix}
	hidden, rest := h.split(ds)
	// pure: not impure; imp3: nothing listed in it fails its lookup on ovl.
	want := map[int]string{0: "lookup fails", 3: "readdir of impure dir fails", 4: "in dir it cannot list", 5: "in dir it cannot list", 6: "in dir it cannot list", 8: "lookup fails", 13: "lookup fails"}
	if !reflect.DeepEqual(hidden, want) {
		t.Errorf("hidden = %v, want %v", hidden, want)
	}
	if len(rest) != len(ds)-len(want) {
		t.Errorf("rest = %v", rest)
	}
	// The kernel on the other side: the same diffs mirrored.
	var mirrored []Diff
	for _, d := range ds {
		d.A, d.B = d.B, d.A
		mirrored = append(mirrored, d)
	}
	h.kernelA = false
	if hidden, _ := h.split(mirrored); !reflect.DeepEqual(hidden, want) {
		t.Errorf("mirrored: hidden = %v, want %v", hidden, want)
	}
	// With the kernel mounted, its own lookup must fail with the same
	// errno: here it finds nothing (ENOENT), so nothing is hidden.
	h.kernelA, h.kernelMnt = true, t.TempDir()
	hidden, _ = h.split(ds[:1])
	if len(hidden) != 0 {
		t.Errorf("kernel lookup ENOENT: hidden = %v, want none", hidden)
	}
	if !IsHiddenClass("view "+HiddenMark+": lookup fails") || IsHiddenClass("view error:EPERM exists: missing vs error:EPERM") {
		t.Error("IsHiddenClass")
	}
}
