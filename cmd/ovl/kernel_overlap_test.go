package main

// Overlapping layers (issue 17, item 2), each case compared with the
// kernel's overlayfs on the same layout: which overlaps refuse the mount,
// and, where an upper or workdir inside a lower is allowed, that no path
// through the mount reaches a layer directory and the lower stays as it
// was.

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// overlapTree makes a fresh layout for the overlap cases: lowers A (with
// A/sub) and B, upper U and workdir W (each with a subdirectory x), and L,
// a lower holding an upper L/up and a workdir L/w, with a file, a directory
// and a symlink of its own; mountpoint m.
func overlapTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"A/sub/x", "B", "U/x", "W/x", "L/up", "L/w", "L/d/e", "m"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range map[string]string{"A/f": "a", "A/sub/g": "g", "L/f": "lower f", "L/d/df": "in d", "L/d/e/ef": "in e"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("f", filepath.Join(dir, "L/link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// overlapBind bind-mounts dir/src at dir/dst (made here), unmounted when
// the test ends.
func overlapBind(t *testing.T, dir, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Join(dir, src), filepath.Join(dir, dst), "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s on %s: %v", src, dst, err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(dir, dst), unix.MNT_DETACH) })
}

// overlapCase is one layout: lowers, upper and work relative to the tree.
type overlapCase struct {
	name         string
	lowers       []string
	upper, work  string
	setup        func(t *testing.T, dir string) // binds, symlinks, mounts
	accept       bool                           // what the kernel does
	words        []string                       // in ovl's refusal; "DIR/" stands for the tree
	kernelReason string                         // the kernel's log line, for the reader
}

func (c overlapCase) layout(dir string) k.Layout {
	l := k.Layout{Mnt: filepath.Join(dir, "m")}
	for _, p := range c.lowers {
		l.Lowers = append(l.Lowers, filepath.Join(dir, p))
	}
	if c.upper != "" {
		l.Upper, l.Work = filepath.Join(dir, c.upper), filepath.Join(dir, c.work)
	}
	return l
}

func (c overlapCase) tree(t *testing.T) string {
	dir := overlapTree(t)
	if c.setup != nil {
		c.setup(t, dir)
	}
	return dir
}

func symlinkSetup(target, name string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func bindSetup(src, dst string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) { overlapBind(t, dir, src, dst) }
}

// Every overlap the kernel refuses, ovl refuses with one line that names
// both layers (as given); every one it accepts, ovl mounts.
func TestOverlapRefused(t *testing.T) {
	testutil.RequireRoot(t)
	tmpfsSetup := func(t *testing.T, dir string) {
		p := filepath.Join(dir, "A/sub")
		if err := unix.Mount("tmpfs", p, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatalf("mount tmpfs: %v", err)
		}
		t.Cleanup(func() { unix.Unmount(p, unix.MNT_DETACH) })
		os.Mkdir(filepath.Join(p, "y"), 0o755)
	}
	cases := []overlapCase{
		{name: "same lower twice", lowers: []string{"A", "A"},
			words: []string{"lowerdir DIR/A and lowerdir DIR/A are the same directory"}, kernelReason: "conflicting lowerdir path"},
		{name: "same lower through a symlink", lowers: []string{"symA", "A"}, setup: symlinkSetup("A", "symA"),
			words: []string{"lowerdir DIR/symA and lowerdir DIR/A are the same directory"}, kernelReason: "conflicting lowerdir path"},
		{name: "same lower through a bind mount", lowers: []string{"A", "bindA"}, setup: bindSetup("A", "bindA"),
			words: []string{"lowerdir DIR/A and lowerdir DIR/bindA are the same directory"}, kernelReason: "conflicting lowerdir path"},
		{name: "lower inside a lower below", lowers: []string{"A/sub", "A"},
			words: []string{"lowerdir DIR/A/sub is inside lowerdir DIR/A"}, kernelReason: "overlapping lowerdir path"},
		{name: "lower inside a lower above", lowers: []string{"B", "A", "A/sub/x"},
			words: []string{"lowerdir DIR/A/sub/x is inside lowerdir DIR/A"}, kernelReason: "overlapping lowerdir path"},
		{name: "lower inside a lower through a symlink", lowers: []string{"A", "symSub"}, setup: symlinkSetup("A/sub", "symSub"),
			words: []string{"lowerdir DIR/symSub is inside lowerdir DIR/A"}, kernelReason: "overlapping lowerdir path"},
		{name: "lower inside a lower through a bind mount", lowers: []string{"bindSub", "A"}, setup: bindSetup("A/sub", "bindSub"),
			words: []string{"lowerdir DIR/bindSub is inside lowerdir DIR/A"}, kernelReason: "overlapping lowerdir path"},
		{name: "lower holding a lower through a bind mount", lowers: []string{"bindA", "A/sub"}, setup: bindSetup("A", "bindA"),
			words: []string{"lowerdir DIR/A/sub is inside lowerdir DIR/bindA"}, kernelReason: "overlapping lowerdir path"},
		{name: "lower inside the upper", lowers: []string{"A", "U/x"}, upper: "U", work: "W",
			words: []string{"lowerdir DIR/U/x is inside upperdir DIR/U"}, kernelReason: "overlapping lowerdir path"},
		{name: "lower inside the workdir", lowers: []string{"W/x"}, upper: "U", work: "W",
			words: []string{"lowerdir DIR/W/x is inside workdir DIR/W"}, kernelReason: "overlapping lowerdir path"},
		{name: "lower is the upper", lowers: []string{"U"}, upper: "U", work: "W",
			words: []string{"upperdir DIR/U and lowerdir DIR/U are the same directory"}, kernelReason: "conflicting lowerdir path"},
		{name: "lower is the upper through a symlink", lowers: []string{"symU"}, upper: "U", work: "W", setup: symlinkSetup("U", "symU"),
			words: []string{"upperdir DIR/U and lowerdir DIR/symU are the same directory"}, kernelReason: "conflicting lowerdir path"},
		{name: "lower is the workdir", lowers: []string{"W"}, upper: "U", work: "W",
			words: []string{"workdir DIR/W and lowerdir DIR/W are the same directory"}, kernelReason: "conflicting lowerdir path"},
		{name: "workdir inside the upper", lowers: []string{"A"}, upper: "U", work: "U/x",
			words: []string{"workdir DIR/U/x is inside upperdir DIR/U"}, kernelReason: "workdir and upperdir must be separate subtrees"},
		{name: "upper inside the workdir", lowers: []string{"A"}, upper: "W/x", work: "W",
			words: []string{"upperdir DIR/W/x is inside workdir DIR/W"}, kernelReason: "workdir and upperdir must be separate subtrees"},
		{name: "upper is the workdir", lowers: []string{"A"}, upper: "U", work: "U",
			words: []string{"upperdir DIR/U and workdir DIR/U are the same directory"}, kernelReason: "workdir and upperdir must be separate subtrees"},
		{name: "upper inside the workdir through a symlink", lowers: []string{"A"}, upper: "symWx", work: "W", setup: symlinkSetup("W/x", "symWx"),
			words: []string{"upperdir DIR/symWx is inside workdir DIR/W"}, kernelReason: "workdir and upperdir must be separate subtrees"},

		{name: "upper and workdir inside the lower", lowers: []string{"L"}, upper: "L/up", work: "L/w", accept: true},
		{name: "workdir inside a lower", lowers: []string{"B", "L"}, upper: "U", work: "L/w", accept: true},
		{name: "upper inside a lower", lowers: []string{"L", "B"}, upper: "L/up", work: "W", accept: true},
		{name: "lower holding the upper's parent", lowers: []string{"B"}, upper: "U/x", work: "W", accept: true},
		// Another filesystem mounted inside a lower is not part of it: the
		// kernel's layers are dentry trees, one filesystem each.
		{name: "lower on a filesystem mounted inside a lower", lowers: []string{"A", "A/sub/y"}, setup: tmpfsSetup, accept: true},
	}
	opts := k.DefaultOptions()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// The kernel, on its own copy of the layout.
			kdir := c.tree(t)
			kl := c.layout(kdir)
			kerr := k.Kernel{}.Mount(kl, opts)
			if kerr == nil {
				if err := (k.Kernel{}).Unmount(kl.Mnt); err != nil {
					t.Fatal(err)
				}
			}
			if (kerr == nil) != c.accept {
				t.Fatalf("the kernel's decision changed: mount error %v, want accepted=%v (%s)", kerr, c.accept, c.kernelReason)
			}

			dir := c.tree(t)
			l := c.layout(dir)
			mnt := l.Mnt
			cliCleanupMount(t, mnt)
			r := runOvl(t, dir, "mount", "-o", opts.OvlOptions(l), mnt)
			if c.accept {
				if r.code != 0 {
					t.Fatalf("the kernel mounts it, ovl refuses: %s", r.stderr)
				}
				if r := runOvl(t, dir, "umount", mnt); r.code != 0 {
					t.Fatalf("umount: %s", r.stderr)
				}
				return
			}
			var words []string
			for _, w := range c.words {
				words = append(words, strings.ReplaceAll(w, "DIR/", dir+"/"))
			}
			cliCheckError(t, r, words...)
			if cliMountAt(t, mnt) != nil {
				t.Errorf("the kernel refuses it (%s), ovl mounted it", c.kernelReason)
			}
		})
	}
}

// overlapSide is one mount of the upper-inside-lower layout.
type overlapSide struct {
	name string
	m    k.Mounter
	dir  string
	l    k.Layout
}

// lowerSnap snapshots the lower L without the upper and workdir inside it.
func (s *overlapSide) lowerSnap(t *testing.T) *k.Tree {
	t.Helper()
	tr, err := k.Snapshot(filepath.Join(s.dir, "L"), k.SnapOptions{Upper: true, Prefix: k.OverlayPrefix(false)})
	if err != nil {
		t.Fatalf("%s: snapshot of the lower: %v", s.name, err)
	}
	return tr
}

// upperList lists the upper as sorted "path:type" lines.
func (s *overlapSide) upperList(t *testing.T) string {
	t.Helper()
	tr, err := k.Snapshot(s.l.Upper, k.SnapOptions{Upper: true, Prefix: k.OverlayPrefix(false), NoHash: true})
	if err != nil {
		t.Fatalf("%s: snapshot of the upper: %v", s.name, err)
	}
	var out []string
	for p, n := range tr.Nodes {
		out = append(out, p+":"+n.Type)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// With the upper and workdir inside the lower (allowed, as by the kernel),
// every lookup through the mount that reaches a layer root or the work
// directory answers ELOOP; readdir lists the names; renames and links into
// them fail; the lower outside the upper and workdir never changes, and the
// upper ends as the kernel's does. With the lower given through a symlink
// and the upper and workdir through a bind mount, the same.
func TestOverlapUpperInsideLower(t *testing.T) {
	testutil.RequireRoot(t)
	variants := []struct {
		name  string
		setup func(t *testing.T, dir string)
		lower string
		upper string
		work  string
	}{
		{name: "plain", lower: "L", upper: "L/up", work: "L/w"},
		{name: "symlinked lower, bind-mounted upper and workdir", lower: "Lsym", upper: "Lbind/up", work: "Lbind/w",
			setup: func(t *testing.T, dir string) {
				if err := os.Symlink("L", filepath.Join(dir, "Lsym")); err != nil {
					t.Fatal(err)
				}
				overlapBind(t, dir, "L", "Lbind")
			}},
	}
	opts := k.DefaultOptions()
	E := syscall.ELOOP
	probe := []k.Op{
		{Op: "lstat", Path: "up"}, {Op: "lstat", Path: "w"}, {Op: "lstat", Path: "w/work"},
		{Op: "stat", Path: "up/."}, {Op: "readdir", Path: "up"}, {Op: "readdir", Path: "w"},
	}
	ops := []struct {
		op   k.Op
		want syscall.Errno // what the kernel answers (checked, so the case stays meaningful)
	}{
		{k.Op{Op: "readdir", Path: ""}, 0},
		{k.Op{Op: "create", Path: "up/zz", Mode: 0o644}, E},
		{k.Op{Op: "mkdir", Path: "up/q", Mode: 0o755}, E},
		{k.Op{Op: "mkdir", Path: "w/q", Mode: 0o755}, E},
		{k.Op{Op: "create", Path: "w/work/zz", Mode: 0o644}, E},
		{k.Op{Op: "rename", Path: "f", Path2: "up/f"}, E},
		{k.Op{Op: "rename", Path: "d", Path2: "w/d"}, E},
		{k.Op{Op: "rename", Path: "up", Path2: "up2"}, E},
		{k.Op{Op: "rename", Path: "f", Path2: "up"}, E},
		{k.Op{Op: "link", Path: "f", Path2: "up/g"}, E},
		{k.Op{Op: "symlink", Path: "up/s", Data: "f"}, E},
		{k.Op{Op: "rmdir", Path: "up"}, E},
		{k.Op{Op: "unlink", Path: "w"}, E},
		{k.Op{Op: "chmod", Path: "up", Mode: 0o700}, E},
		{k.Op{Op: "setxattr", Path: "w", Name: "user.x", Data: "1"}, E},
		// An ordinary workload around them.
		{k.Op{Op: "create", Path: "new", Mode: 0o644}, 0},
		{k.Op{Op: "write", Path: "new", Data: "new data"}, 0},
		{k.Op{Op: "write", Path: "d/df", Data: "changed"}, 0},
		{k.Op{Op: "mkdir", Path: "d/e/nd", Mode: 0o755}, 0},
		{k.Op{Op: "create", Path: "d/e/nd/x", Mode: 0o600}, 0},
		{k.Op{Op: "rename", Path: "f", Path2: "f2"}, 0},
		{k.Op{Op: "rename", Path: "d", Path2: "d2"}, 0},
		{k.Op{Op: "mkdir", Path: "d2/sub", Mode: 0o755}, 0},
		{k.Op{Op: "rename", Path: "new", Path2: "d2/sub/new"}, 0},
		{k.Op{Op: "unlink", Path: "link"}, 0},
		{k.Op{Op: "chmod", Path: "d2/e/ef", Mode: 0o600}, 0},
		{k.Op{Op: "readdir", Path: ""}, 0},
		{k.Op{Op: "readdir", Path: "d2"}, 0},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			var sides []*overlapSide
			for _, m := range []k.Mounter{k.Kernel{}, k.Ovl{Bin: testutil.Binary(t)}} {
				dir := overlapTree(t)
				if v.setup != nil {
					v.setup(t, dir)
				}
				s := &overlapSide{name: m.Name(), m: m, dir: dir, l: k.Layout{
					Lowers: []string{filepath.Join(dir, v.lower)},
					Upper:  filepath.Join(dir, v.upper), Work: filepath.Join(dir, v.work),
					Mnt: filepath.Join(dir, "m"),
				}}
				sides = append(sides, s)
			}
			before := map[string]*k.Tree{}
			for _, s := range sides {
				before[s.name] = s.lowerSnap(t)
				cliCleanupMount(t, s.l.Mnt)
				if err := s.m.Mount(s.l, opts); err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				mounted := s
				t.Cleanup(func() { unix.Unmount(mounted.l.Mnt, unix.MNT_DETACH) })
			}
			run := func(op k.Op, want syscall.Errno) {
				t.Helper()
				var res []k.Result
				for _, s := range sides {
					res = append(res, op.Apply(s.l.Mnt))
				}
				if res[0].Errno != res[1].Errno || res[0].Err != "" || res[1].Err != "" ||
					(op.Op == "readdir" && res[0].Out != res[1].Out) {
					t.Errorf("%v: kernel %v, ovl %v", op, res[0], res[1])
				}
				if res[0].Errno != want {
					t.Errorf("%v: the kernel says %v, the test expects %v", op, res[0], k.ErrnoName(want))
				}
			}
			for _, op := range probe {
				run(op, E)
			}
			for _, o := range ops {
				run(o.op, o.want)
			}
			for _, op := range probe {
				run(op, E)
			}
			for _, s := range sides {
				if err := s.m.Unmount(s.l.Mnt); err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
			}
			for _, s := range sides {
				after := s.lowerSnap(t)
				cmp := k.CompareOptions{Ignore: []k.Difference{}, Times: true, Ino: true, IgnorePaths: []string{"up", "w"}}
				if ds := k.Compare(before[s.name], after, cmp); len(ds) > 0 {
					t.Errorf("%s: the lower changed outside its upper and workdir:\n%s", s.name, k.FormatDiffs("before", "after", ds))
				}
			}
			if ku, ou := sides[0].upperList(t), sides[1].upperList(t); ku != ou {
				t.Errorf("the uppers differ:\nkernel: %s\novl:    %s", ku, ou)
			}
		})
	}
}
