package main

// The volatile marker (issue 17, item 6), compared with the kernel's
// overlayfs: a volatile mount makes WORKDIR/work/incompat/volatile/dirty,
// and any entry in work/incompat/ refuses later mounts of that workdir
// (ovl_create_volatile_dirty, ovl_workdir_cleanup_recurse). The kernel
// never removes the marker; ovl removes its own at a clean unmount, once
// the mount's changes are synced (issue 19, kernel_volatile_reuse_test.go).

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// volatileTree makes lower L (with a file), upper U, workdir W and
// mountpoint m in a fresh directory.
func volatileTree(t *testing.T) (string, k.Layout) {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"L", "U", "W", "m"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "L/f"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, k.Layout{Lowers: []string{filepath.Join(dir, "L")}, Upper: filepath.Join(dir, "U"),
		Work: filepath.Join(dir, "W"), Mnt: filepath.Join(dir, "m")}
}

var volatileMarker = []string{"work/incompat", "work/incompat/volatile", "work/incompat/volatile/dirty"}

// markerState describes the marker chain under workdir: "type perm
// owner" per element, or "missing".
func markerState(t *testing.T, workdir string) string {
	t.Helper()
	var out []string
	for _, p := range volatileMarker {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(workdir, p), &st); err != nil {
			out = append(out, p+": "+k.ErrnoName(err.(unix.Errno)))
			continue
		}
		out = append(out, fmt.Sprintf("%s: %s", p, k.StatString(&st)))
	}
	return strings.Join(out, "; ")
}

// kernelMount mounts the kernel's overlayfs on l (extra options appended)
// and unmounts it at once; it returns the mount error.
func kernelMount(t *testing.T, l k.Layout, extra string, use func()) error {
	t.Helper()
	data := k.DefaultOptions().KernelOptions(l) + extra
	if err := unix.Mount("overlay", l.Mnt, "overlay", 0, data); err != nil {
		return err
	}
	if use != nil {
		use()
	}
	if err := (k.Kernel{}).Unmount(l.Mnt); err != nil {
		t.Fatal(err)
	}
	return nil
}

// ovlMount mounts ovl on l (extra options appended); when it mounts, use
// runs and ovl is unmounted.
func ovlMount(t *testing.T, dir string, l k.Layout, extra string, use func()) cliResult {
	t.Helper()
	cliCleanupMount(t, l.Mnt)
	r := runOvl(t, dir, "mount", "-o", k.DefaultOptions().OvlOptions(l)+extra, l.Mnt)
	if r.code == 0 {
		if use != nil {
			use()
		}
		if u := runOvl(t, dir, "umount", l.Mnt); u.code != 0 {
			t.Fatalf("ovl umount: %s", u.stderr)
		}
	}
	return r
}

func TestVolatileMarker(t *testing.T) {
	testutil.RequireRoot(t)
	write := func(l k.Layout) func() {
		return func() {
			if err := os.WriteFile(filepath.Join(l.Mnt, "new"), []byte("volatile data"), 0o644); err != nil {
				t.Error(err)
			}
		}
	}

	// The kernel's volatile mount, on its own layers: the reference.
	kdir, kl := volatileTree(t)
	if err := kernelMount(t, kl, ",volatile", write(kl)); err != nil {
		t.Fatalf("kernel volatile mount: %v", err)
	}
	kernelMarker := markerState(t, kl.Work)
	if strings.Contains(kernelMarker, "ENOENT") {
		t.Fatalf("the kernel left no marker: %s", kernelMarker)
	}

	t.Run("a volatile ovl mount keeps the kernel's marker while mounted", func(t *testing.T) {
		dir, l := volatileTree(t)
		var during string
		if r := ovlMount(t, dir, l, ",volatile", func() {
			write(l)()
			during = markerState(t, l.Work)
			// While it is mounted, the kernel refuses the upper.
			if err := unix.Mount("overlay", kl.Mnt, "overlay", 0, k.DefaultOptions().KernelOptions(l)); err != unix.EINVAL {
				t.Errorf("the kernel mounting the upper of a mounted volatile ovl: %v, want EINVAL", err)
				if err == nil {
					(k.Kernel{}).Unmount(kl.Mnt)
				}
			}
		}); r.code != 0 {
			t.Fatalf("ovl volatile mount: %s", r.stderr)
		}
		if during != kernelMarker {
			t.Errorf("during a volatile ovl mount:\novl:    %s\nkernel: %s", during, kernelMarker)
		}
	})

	t.Run("the kernel's leftover is refused and kept", func(t *testing.T) {
		for _, extra := range []string{"", ",volatile"} {
			if err := kernelMount(t, kl, extra, nil); err != unix.EINVAL {
				t.Fatalf("the kernel mounting its own volatile leftover (%q): %v, want EINVAL", extra, err)
			}
			r := ovlMount(t, kdir, kl, extra, nil)
			cliCheckError(t, r, "workdir "+kl.Work, "overlay with incompat feature 'volatile' cannot be mounted")
			if cliMountAt(t, kl.Mnt) != nil {
				t.Errorf("ovl mounted it (%q)", extra)
			}
			if got := markerState(t, kl.Work); got != kernelMarker {
				t.Errorf("ovl (%q) changed the marker: %s, was %s", extra, got, kernelMarker)
			}
		}
		if b, err := os.ReadFile(filepath.Join(kl.Upper, "new")); err != nil || string(b) != "volatile data" {
			t.Errorf("the upper's file: %q, %v", b, err)
		}
	})

	// Any other entry names its feature; an empty work/, leftover
	// temporaries and an empty work/incompat still mount.
	t.Run("other incompat entries and clean leftovers", func(t *testing.T) {
		cases := []struct {
			name    string
			prepare func(w string)
			accept  bool
			feature string
		}{
			{name: "empty work", prepare: func(w string) { os.Mkdir(filepath.Join(w, "work"), 0) }, accept: true},
			{name: "temporaries and an empty incompat", accept: true, prepare: func(w string) {
				os.MkdirAll(filepath.Join(w, "work/incompat"), 0o700)
				os.WriteFile(filepath.Join(w, "work/#1f"), nil, 0o600)
				os.MkdirAll(filepath.Join(w, "work/#20/sub"), 0o700)
			}},
			{name: "incompat is a file", accept: true, prepare: func(w string) {
				os.MkdirAll(filepath.Join(w, "work"), 0o700)
				os.WriteFile(filepath.Join(w, "work/incompat"), nil, 0o600)
			}},
			{name: "another feature", feature: "future", prepare: func(w string) {
				os.MkdirAll(filepath.Join(w, "work/incompat/future"), 0o700)
			}},
			{name: "a file as feature", feature: "flag", prepare: func(w string) {
				os.MkdirAll(filepath.Join(w, "work/incompat"), 0o700)
				os.WriteFile(filepath.Join(w, "work/incompat/flag"), nil, 0o600)
			}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				_, kl := volatileTree(t)
				c.prepare(kl.Work)
				kerr := kernelMount(t, kl, "", nil)
				if (kerr == nil) != c.accept {
					t.Fatalf("the kernel's decision changed: %v, want accepted=%v", kerr, c.accept)
				}
				dir, l := volatileTree(t)
				c.prepare(l.Work)
				r := ovlMount(t, dir, l, "", write(l))
				if c.accept {
					if r.code != 0 {
						t.Fatalf("the kernel mounts it, ovl refuses: %s", r.stderr)
					}
					if got, want := markerState(t, l.Work), markerState(t, kl.Work); got != want {
						t.Errorf("work/ after the mount:\novl:    %s\nkernel: %s", got, want)
					}
					return
				}
				cliCheckError(t, r, fmt.Sprintf("overlay with incompat feature '%s' cannot be mounted", c.feature))
				if _, err := os.Lstat(filepath.Join(l.Work, "work/incompat", c.feature)); err != nil {
					t.Errorf("the entry is gone: %v", err)
				}
			})
		}
	})
}
