package fsck_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ovl-project/ovl/fsck"
	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"github.com/ovl-project/ovl/overlay"
)

// Uppers that the kernel's overlayfs or ovl wrote through a mount, and
// that nobody damaged, must be clean: fsck reports no problem there (notes,
// metadata without effect that the kernel leaves itself, are allowed).

// writtenSeeds are the random cases (env FSCK_SEEDS: "1-40,77"; FSCK_OPS:
// ops per case).
func writtenSeeds(t *testing.T) (seeds []int64, ops int) {
	ops = 150
	if v := os.Getenv("FSCK_OPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("FSCK_OPS=%q: %v", v, err)
		}
		ops = n
	}
	spec := os.Getenv("FSCK_SEEDS")
	if spec == "" {
		// 11: ovl leaves an index entry no name uses (a note); 66, 80,
		// 109: a copied-up file moved after a remount, 135: linked after
		// one (ovl left the new parent without overlay.impure).
		spec = "1-8,11,66,80,109,135"
	}
	seeds, err := k.ParseSeeds(spec)
	if err != nil {
		t.Fatalf("FSCK_SEEDS: %v", err)
	}
	return seeds, ops
}

// caseOptions: the generator's options, with metacopy=on for one trusted
// seed in two and index=on for the other half.
func caseOptions(c k.Case) k.Options {
	o := c.Options()
	switch {
	case c.UserXattr:
	case c.Seed%4 == 1:
		o.Metacopy = "on"
	case c.Seed%4 == 3:
		o.Index = "on"
	}
	return o
}

// TestWrittenRandom runs the differential tester's random ops (copy-up,
// renames of directories with redirects, rm -rf, links with index=on,
// chown with metacopy=on, ...) on a mount of the kernel and of ovl, each
// over an empty upper, and checks the upper each wrote.
func TestWrittenRandom(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	if _, err := k.Helper(); err != nil {
		t.Fatal(err)
	}
	seeds, nOps := writtenSeeds(t)
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			c := k.RandomCase(seed, nOps)
			c.Overlap = ""
			c.Layers = c.Layers.WithoutAUFS()
			c.Layers.Upper = nil // all the upper holds is what the mount wrote
			for _, writer := range []k.Mounter{k.Kernel{}, k.Ovl{Bin: bin}} {
				t.Run("written-by-"+writer.Name(), func(t *testing.T) {
					o := caseOptions(c)
					l := layout(t, c, o.Prefix())
					if err := writer.Mount(l, o); err != nil {
						t.Fatalf("%s: %v", writer.Name(), err)
					}
					runOps(t, l.Mnt, c.Ops)
					if err := writer.Unmount(l.Mnt); err != nil {
						t.Fatalf("%s: %v", writer.Name(), err)
					}
					expectClean(t, l, o)
				})
			}
		})
	}
}

// TestWrittenOps runs chosen ops of each kind fsck looks at, on the
// kernel and on ovl, with redirect_dir=on and metacopy=on, then with
// index=on.
func TestWrittenOps(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	lower := k.Layer{
		k.Dir("a"), k.File("a/f", "1"), k.Dir("a/b"), k.File("a/b/g", "2"), k.Dir("c"),
		k.Hardlink("c/hl", "a/f"), k.Dir("e"), k.File("e/x", "3"), k.FIFO("p"), k.File("big", strings.Repeat("z", 1<<16)),
		k.Dir("m"), k.Dir("m/n"), k.File("m/n/o", "4"), k.Dir("q"), k.File("q/r", "5"), k.Dir("s"), k.Dir("m2"),
	}
	ops := []k.Op{
		{Op: "rename", Path: "a", Path2: "a2"},
		{Op: "write", Path: "c/hl", Data: "x"},
		{Op: "unlink", Path: "e/x"},
		{Op: "mkdir", Path: "e/x", Mode: 0o755},
		{Op: "chown", Path: "a2/b/g", UID: 5, GID: 5},
		{Op: "chown", Path: "big", UID: 7, GID: 7},
		{Op: "rename", Path: "a2/b", Path2: "c/bb"},
		{Op: "mkdir", Path: "nd", Mode: 0o755},
		{Op: "rename", Path: "nd", Path2: "c/nd"},
		{Op: "link", Path: "a2/f", Path2: "a2/f2"},
		{Op: "rmrf", Path: "m/n"},
		{Op: "rename", Path: "m", Path2: "c/m"},
		{Op: "create", Path: "m", Mode: 0o644},
		{Op: "unlink", Path: "p"},
		{Op: "append", Path: "q/r", Data: "+"},
		{Op: "rename", Path: "q/r", Path2: "q/r2"},
	}
	// After a remount: the copied-up file moved within its directory
	// gets a link in another directory and moves to a third one, which
	// must both become impure (found by fsck in ovl: a link or move of an
	// object whose lower part the mount did not find left the new parent
	// without overlay.impure).
	again := []k.Op{
		{Op: "link", Path: "q/r2", Path2: "m2/r3"},
		{Op: "rename", Path: "q/r2", Path2: "s/r2"},
	}
	for _, opt := range []k.Options{
		{RedirectDir: "on", Metacopy: "on", Xino: "off", UUID: "off"},
		{RedirectDir: "on", Index: "on", Metacopy: "off", Xino: "off", UUID: "off"},
	} {
		for _, writer := range []k.Mounter{k.Kernel{}, k.Ovl{Bin: bin}} {
			t.Run(fmt.Sprintf("%s-metacopy=%s-index=%s", writer.Name(), opt.Metacopy, opt.IndexMode()), func(t *testing.T) {
				c := k.Case{NLowers: 1, Layers: k.Layers{Lowers: []k.Layer{lower}}}
				l := layout(t, c, opt.Prefix())
				if err := writer.Mount(l, opt); err != nil {
					t.Fatalf("%s: %v", writer.Name(), err)
				}
				for phase, ops := range [][]k.Op{ops, again} {
					if phase > 0 {
						if err := writer.Mount(l, opt); err != nil {
							t.Fatalf("%s: %v", writer.Name(), err)
						}
					}
					for i, op := range ops {
						if r := op.Apply(l.Mnt); r.Err != "" || r.Errno != 0 {
							writer.Unmount(l.Mnt)
							t.Fatalf("phase %d op %d %s: %s", phase, i, op, r)
						}
					}
					if err := writer.Unmount(l.Mnt); err != nil {
						t.Fatalf("%s: %v", writer.Name(), err)
					}
				}
				expectClean(t, l, opt)
			})
		}
	}
}

// expectClean runs fsck -n on l and fails on any problem.
func expectClean(t *testing.T, l k.Layout, o k.Options) {
	t.Helper()
	var out strings.Builder
	cfg := overlay.Config{Lowers: l.Lowers, Upper: l.Upper, Work: l.Work, UserXattr: o.UserXattr, RedirectDir: o.RedirectDir, Metacopy: o.Metacopy, Index: o.Index}
	rep, err := fsck.Run(fsck.Options{Config: cfg, Mode: fsck.Check, Out: &out})
	if err != nil {
		t.Fatalf("fsck: %v", err)
	}
	if found, _ := rep.Problems(); found > 0 || rep.ExitCode() != fsck.ExitClean {
		t.Errorf("fsck -n: exit %d on an upper the mount wrote:\n%s", rep.ExitCode(), out.String())
	} else if out.Len() > 0 {
		t.Logf("fsck -n: clean, with notes:\n%s", out.String())
	}
}

func layout(t *testing.T, c k.Case, prefix string) k.Layout {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755) // unprivileged callers of the ops walk through it
	var l k.Layout
	for i, layer := range c.Layers.Lowers {
		d := filepath.Join(dir, fmt.Sprintf("l%d", i))
		if err := k.Build(d, prefix, layer); err != nil {
			t.Fatalf("build lower %d: %v", i, err)
		}
		l.Lowers = append(l.Lowers, d)
	}
	l.Upper, l.Work, l.Mnt = filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "mnt")
	if err := k.Build(l.Upper, prefix, c.Layers.Upper); err != nil {
		t.Fatalf("build upper: %v", err)
	}
	for _, d := range []string{l.Work, l.Mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// runOps applies ops on mnt as the random tester does.
func runOps(t *testing.T, mnt string, ops []k.Op) {
	t.Helper()
	if err := k.ApplyOps(mnt, ops); err != nil {
		t.Fatal(err)
	}
}

// TestFuseOverlayfsAUFS: fuse-overlayfs, where it may not mknod, writes
// AUFS whiteouts (.wh.NAME) and opaque markers (.wh..wh..opq) into the
// upper, which the kernel shows as files. fsck -p turns them into the
// kernel's forms (exit 1, a second run clean), and the kernel's overlayfs
// then shows what fuse-overlayfs showed.
func TestFuseOverlayfsAUFS(t *testing.T) {
	testutil.RequireRoot(t)
	c := k.Case{NLowers: 1, Layers: k.Layers{Lowers: []k.Layer{{
		k.File("f", "1"), k.File("g", "2"), k.Dir("d"), k.File("d/x", "3"), k.File("d/y", "4"),
		k.Dir("e"), k.File("e/z", "5"), k.Symlink("s", "f"),
	}}}}
	o := k.Options{RedirectDir: "off", Metacopy: "off", Xino: "off", UUID: "off"}
	l := layout(t, c, o.Prefix())
	m := k.FuseOverlayfs{NoMknod: true}
	if err := m.Mount(l, o); err != nil {
		testutil.Skip(t, "fuse-overlayfs: %v", err)
	}
	ops := []k.Op{
		{Op: "unlink", Path: "f"},
		{Op: "unlink", Path: "d/x"},
		{Op: "rmrf", Path: "e"},
		{Op: "mkdir", Path: "e", Mode: 0o755},
		{Op: "create", Path: "e/new", Mode: 0o644},
		{Op: "unlink", Path: "s"},
		{Op: "create", Path: "h", Mode: 0o644},
		{Op: "unlink", Path: "h"},
	}
	for i, op := range ops {
		if r := op.Apply(l.Mnt); r.Err != "" || r.Errno != 0 {
			m.Unmount(l.Mnt)
			t.Fatalf("op %d %s: %s", i, op, r)
		}
	}
	want, err := k.Snapshot(l.Mnt, k.SnapOptions{})
	if uerr := m.Unmount(l.Mnt); uerr != nil {
		t.Fatal(uerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	var aufs []string
	filepath.Walk(l.Upper, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(fi.Name(), ".wh.") {
			aufs = append(aufs, p)
		}
		return nil
	})
	if len(aufs) == 0 {
		t.Fatal("fuse-overlayfs wrote no AUFS entry: the test proves nothing")
	}
	t.Logf("AUFS entries in the upper: %v", aufs)
	cfg := overlay.Config{Lowers: l.Lowers, Upper: l.Upper, Work: l.Work}
	var out strings.Builder
	rep, err := fsck.Run(fsck.Options{Config: cfg, Mode: fsck.Preen, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fsck -p:\n%s", out.String())
	if rep.ExitCode() != fsck.ExitRepaired {
		t.Errorf("fsck -p: exit %d, want 1", rep.ExitCode())
	}
	out.Reset()
	if rep, err = fsck.Run(fsck.Options{Config: cfg, Mode: fsck.Check, Out: &out}); err != nil || rep.ExitCode() != fsck.ExitClean {
		t.Errorf("second run: exit %d, %v:\n%s", rep.ExitCode(), err, out.String())
	}
	// fuse-overlayfs's work directory holds its own entries; the
	// kernel gets a fresh one.
	l.Work = filepath.Join(filepath.Dir(l.Work), "work2")
	if err := os.Mkdir(l.Work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (k.Kernel{}).Mount(l, o); err != nil {
		t.Fatal(err)
	}
	got, err := k.Snapshot(l.Mnt, k.SnapOptions{})
	if uerr := (k.Kernel{}).Unmount(l.Mnt); uerr != nil {
		t.Fatal(uerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if ds := k.Compare(want, got, k.CompareOptions{Scope: k.ScopeMerged}); len(ds) > 0 {
		t.Errorf("after fsck -p the kernel shows another view than fuse-overlayfs did:\n%s", k.FormatDiffs("fuse-overlayfs", "kernel", ds))
	}
}
