package overlay

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCopyUpRemembersNoClone: on an upper filesystem that cannot clone
// (ext4, tmpfs), the first copy-up's failed FICLONE is remembered and the
// next copy-ups copy without trying; where it can, copy-ups keep cloning.
// Either way the copies hold the lower data.
func TestCopyUpRemembersNoClone(t *testing.T) {
	cfg, root := layers(t)
	canClone := func() bool {
		a, err := os.Create(filepath.Join(root, "u", "probe-a"))
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		a.WriteString("x")
		b, err := os.Create(filepath.Join(root, "u", "probe-b"))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil
	}()
	os.Remove(filepath.Join(root, "u", "probe-a"))
	os.Remove(filepath.Join(root, "u", "probe-b"))
	o, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	for _, name := range []string{"a", "only2"} {
		n := lookup(t, o.Root(), name)
		if err := n.CopyUp(); err != nil {
			t.Fatal(err)
		}
		if o.noClone.Load() == canClone {
			t.Errorf("after the copy-up of %s: noClone %v, the upper can clone: %v", name, o.noClone.Load(), canClone)
		}
	}
	for name, want := range map[string]string{"a": "a1", "only2": "2"} {
		if b, err := os.ReadFile(filepath.Join(root, "u", name)); err != nil || string(b) != want {
			t.Errorf("upper %s = %q (%v), want %q", name, b, err, want)
		}
	}
}
