package merge_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"github.com/ovl-project/ovl/merge"
	"github.com/ovl-project/ovl/overlay"
)

// mergeSeeds are the seeds TestMergeRandom goes through (env MERGE_SEEDS:
// "1-40,77").
func mergeSeeds(t *testing.T) []int64 {
	spec := os.Getenv("MERGE_SEEDS")
	if spec == "" {
		spec = "1-12"
	}
	seeds, err := k.ParseSeeds(spec)
	if err != nil {
		t.Fatalf("MERGE_SEEDS: %v", err)
	}
	return seeds
}

// caseOptions: the generator's options, with metacopy=on for one trusted
// seed in two and index=on for the other half, so that merge meets
// metacopy files and indexed hard links.
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

// TestMergeRandom: random layers and random ops (the differential tester's
// generator) on a mount, by the kernel and by ovl; then the stack merged
// into one directory, which the kernel's overlayfs mounts as its only
// lower: that view must equal the kernel's view of the original stack
// (content, owner, mode, mtime, xattrs, hard-link groups).
func TestMergeRandom(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	if _, err := k.Helper(); err != nil {
		t.Fatal(err)
	}
	for _, seed := range mergeSeeds(t) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			c := k.RandomCase(seed, 200)
			c.Overlap = ""
			// The kernel reads only its own form; AUFS layers are ovl's
			// extension (cmd/ovl TestAUFS*).
			c.Layers = c.Layers.WithoutAUFS()
			for _, writer := range []k.Mounter{k.Kernel{}, k.Ovl{Bin: bin}} {
				t.Run("written-by-"+writer.Name(), func(t *testing.T) {
					mergeCase(t, c, caseOptions(c), writer)
				})
			}
		})
	}
}

func mergeCase(t *testing.T, c k.Case, o k.Options, writer k.Mounter) {
	mergeCaseRef(t, c, o, writer, k.Kernel{})
}

// mergeCaseRef is mergeCase with the view of the stack taken by ref.
func mergeCaseRef(t *testing.T, c k.Case, o k.Options, writer, ref k.Mounter) {
	l := layout(t, c, o.Prefix())
	if err := writer.Mount(l, o); err != nil {
		t.Fatalf("%s: %v", writer.Name(), err)
	}
	runOps(t, l.Mnt, c.Ops)
	if err := writer.Unmount(l.Mnt); err != nil {
		t.Fatal(err)
	}
	// The reference: the view of the stack the ops left.
	orig := mountView(t, ref, l, o)

	cfg := overlay.Config{Lowers: l.Lowers, Upper: l.Upper, UserXattr: o.UserXattr, RedirectDir: o.RedirectDir,
		Metacopy: o.Metacopy, Index: o.Index}
	if o.Index == "on" {
		cfg.Work = l.Work
	}
	dst := filepath.Join(t.TempDir(), "merged")
	res, err := merge.Layers(dst, cfg, merge.Options{KeepGoing: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range res.Refused {
		refusedToo(t, err, ref, l, o)
	}
	t.Logf("%s: %+v", c, *res)
	checkPlain(t, dst)

	// The merged directory alone: the kernel wants two lowers or an
	// upper, so it gets an empty upper.
	nd := t.TempDir()
	nl := k.Layout{Lowers: []string{dst}, Upper: filepath.Join(nd, "upper"), Work: filepath.Join(nd, "work"), Mnt: filepath.Join(nd, "mnt")}
	for _, d := range []string{nl.Upper, nl.Work, nl.Mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyRootAttrs(t, l.Upper, nl.Upper)
	view := mountView(t, k.Kernel{}, nl, k.Options{UserXattr: o.UserXattr, Metacopy: "off", Xino: "off", UUID: "off"})
	ds := k.Compare(orig, view, k.CompareOptions{Scope: k.ScopeMerged, Times: true, IgnorePaths: orig.ErrorPaths()})
	ds = hiddenNames(t, ds, orig, view)
	if len(ds) > 0 {
		t.Errorf("the kernel's view of the merged directory differs from its view of the stack:\n%s",
			k.FormatDiffs("stack", "merged", ds))
	}
	if len(view.Problems) > 0 {
		t.Errorf("merged: %s", strings.Join(view.Problems, "\n"))
	}
}

// TestMergeRandomAUFS: the generator's stacks that hold AUFS whiteouts
// and opaque markers (.wh.NAME, .wh..wh..opq), which ovl reads in every
// layer and the kernel does not: the reference is ovl's view of the stack,
// and the kernel's view of the merged directory must equal it (the result
// holds no AUFS name either).
func TestMergeRandomAUFS(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	if _, err := k.Helper(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, seed := range mergeSeeds(t) {
		c := k.RandomCase(seed, 200)
		c.Overlap = ""
		if !c.Layers.HasAUFS() {
			continue
		}
		n++
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			mergeCaseRef(t, c, caseOptions(c), k.Ovl{Bin: bin}, k.Ovl{Bin: bin})
		})
	}
	if n == 0 {
		t.Fatal("no seed made AUFS layers: the test checks nothing")
	}
}

// checkPlain checks that dir holds no whiteout and no overlay xattr.
func checkPlain(t *testing.T, dir string) {
	t.Helper()
	for _, prefix := range []string{k.OverlayPrefix(false), k.OverlayPrefix(true)} {
		tree, err := k.Snapshot(dir, k.SnapOptions{Upper: true, Prefix: prefix, NoHash: true})
		if err != nil {
			t.Fatalf("snapshot %s: %v", dir, err)
		}
		for p, n := range tree.Nodes {
			if n.Type == "whiteout" || strings.HasPrefix(filepath.Base(p), ".wh.") {
				t.Errorf("merged %s: a whiteout", p)
			}
			for name, v := range n.Ovl {
				// An escaped user xattr (overlay.X stored as
				// overlay.overlay.X) is what users of the stack saw.
				if !strings.HasPrefix(name, "overlay.") {
					t.Errorf("merged %s: overlay xattr %s%s=%q", p, prefix, name, v)
				}
			}
		}
	}
}

// refusedToo checks that the object merge refused is refused by the
// kernel's mount of the stack too.
func refusedToo(t *testing.T, err error, m k.Mounter, l k.Layout, o k.Options) {
	t.Helper()
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		t.Fatalf("merge: %v (names no object)", err)
	}
	if err := m.Mount(l, o); err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(l.Mnt)
	p := filepath.Join(l.Mnt, pe.Path)
	fi, serr := os.Lstat(p)
	switch {
	case serr != nil:
	case fi.IsDir():
		_, serr = os.ReadDir(p)
	case fi.Mode().IsRegular():
		_, serr = os.ReadFile(p)
	}
	if serr == nil {
		t.Errorf("merge refused %s, which %s serves: %v", pe.Path, m.Name(), err)
	}
	t.Logf("merge refuses what %s refuses: %v (%s: %v)", m.Name(), err, m.Name(), serr)
}

func layout(t *testing.T, c k.Case, prefix string) k.Layout {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
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

func mountView(t *testing.T, m k.Mounter, l k.Layout, o k.Options) *k.Tree {
	t.Helper()
	view, err := k.MountedView(m, l, o)
	if err != nil {
		t.Fatal(err)
	}
	return view
}

// runOps applies ops on mnt as the random tester does.
func runOps(t *testing.T, mnt string, ops []k.Op) {
	t.Helper()
	if err := k.ApplyOps(mnt, ops); err != nil {
		t.Fatal(err)
	}
}

func copyRootAttrs(t *testing.T, src, dst string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
		t.Fatal(err)
	}
}

// hiddenNames drops the link counts of files whose count in the stack
// includes names the view does not show (a lower hard link whose other
// name a whiteout hides, or an index entry's count): a plain directory
// holds names, so each merged file must count exactly the names it has,
// which is checked for each count dropped.
func hiddenNames(t *testing.T, ds []k.Diff, orig, view *k.Tree) []k.Diff {
	t.Helper()
	names := func(v *k.Tree, p string) uint64 {
		n := v.Nodes[p]
		c := uint64(0)
		for _, o := range v.Nodes {
			if o.Ino == n.Ino && o.Dev == n.Dev && o.Type == n.Type {
				c++
			}
		}
		return c
	}
	var out []k.Diff
	for _, d := range ds {
		if d.Field == "nlink" && d.Type != "dir" && view.Nodes[d.Path] != nil && orig.Nodes[d.Path] != nil &&
			orig.Nodes[d.Path].Nlink != names(orig, d.Path) && view.Nodes[d.Path].Nlink == names(view, d.Path) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// TestMergeReflink merges on a loop-mounted xfs and btrfs, where the
// result must share its file data with the layers (FIEMAP's shared flag,
// through filefrag), and on ext4, which cannot share: the data is copied.
// It runs the command, so its progress and summary are checked too.
func TestMergeReflink(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	for _, fsType := range []string{"xfs", "btrfs", "ext4"} {
		t.Run(fsType, func(t *testing.T) {
			mkfs := "mkfs." + fsType
			if _, err := exec.LookPath(mkfs); err != nil {
				testutil.Skip(t, "needs %s (apt-get install xfsprogs btrfs-progs e2fsprogs): %v", mkfs, err)
			}
			if _, err := exec.LookPath("filefrag"); err != nil {
				testutil.Skip(t, "needs filefrag (e2fsprogs): %v", err)
			}
			dir := loopFS(t, fsType)
			lower, upper := filepath.Join(dir, "lower"), filepath.Join(dir, "upper")
			data := make([]byte, 1<<20)
			for i := range data {
				data[i] = byte(i * 7 % 251)
			}
			for _, d := range []string{lower, upper, filepath.Join(lower, "d")} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			files := map[string]string{"lower/big": "big", "lower/d/other": "d/other", "upper/new": "new"}
			for src := range files {
				if err := os.WriteFile(filepath.Join(dir, src), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// A whiteout in the upper: the merged directory must not hold it.
			if err := unix.Mknod(filepath.Join(upper, "gone"), unix.S_IFCHR, 0); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(lower, "gone"), []byte("hidden"), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("sync").CombinedOutput(); err != nil {
				t.Fatalf("sync: %v %s", err, out)
			}
			dst := filepath.Join(dir, "merged")
			out, err := exec.Command(bin, "merge", "-o", "lowerdir="+lower+",upperdir="+upper, dst).CombinedOutput()
			if err != nil {
				t.Fatalf("ovl merge: %v\n%s", err, out)
			}
			if _, err := os.Lstat(filepath.Join(dst, "gone")); !os.IsNotExist(err) {
				t.Errorf("merged/gone: %v, want it absent (whited out in the upper)", err)
			}
			reflink := fsType != "ext4"
			want := "reflinked: 0\n"
			if reflink {
				want = fmt.Sprintf("reflinked: %d\n", 3<<20)
			}
			if !strings.Contains(string(out), want) {
				t.Errorf("ovl merge printed %q, want %q in it", out, want)
			}
			for _, name := range files {
				p := filepath.Join(dst, name)
				b, err := os.ReadFile(p)
				if err != nil || string(b) != string(data) {
					t.Fatalf("%s: %d bytes, %v: want the layer's data", name, len(b), err)
				}
				frag, err := exec.Command("filefrag", "-v", p).CombinedOutput()
				if err != nil {
					t.Fatalf("filefrag: %v\n%s", err, frag)
				}
				if shared := strings.Contains(string(frag), "shared"); shared != reflink {
					t.Errorf("%s on %s: extents shared: %v, want %v\n%s", name, fsType, shared, reflink, frag)
				}
			}
		})
	}
}

// loopFS makes a filesystem of type fsType in a file and mounts it; the
// mount goes at cleanup.
func loopFS(t *testing.T, fsType string) string {
	t.Helper()
	tmp := t.TempDir()
	img, mnt := filepath.Join(tmp, "fs.img"), filepath.Join(tmp, "mnt")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	// xfs wants 300 MiB at least; the file is sparse.
	err = f.Truncate(320 << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	args := map[string][]string{"xfs": {"-q", "-f"}, "btrfs": {"-q", "-f"}, "ext4": {"-q", "-F"}}[fsType]
	if out, err := exec.Command("mkfs."+fsType, append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s: %v\n%s", fsType, err, out)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}

// TestMergeRefuses: a target that is not empty, or inside a layer (which
// the merge would read while writing it), is refused before anything is
// written.
func TestMergeRefuses(t *testing.T) {
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	if err := os.MkdirAll(filepath.Join(lower, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	full := filepath.Join(dir, "full")
	if err := os.MkdirAll(filepath.Join(full, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{full, filepath.Join(lower, "out"), lower, dir} {
		if _, err := merge.Layers(dst, overlay.Config{Lowers: []string{lower}}, merge.Options{}); err == nil {
			t.Errorf("merge into %s: no error", dst)
		}
	}
	if _, err := os.Lstat(filepath.Join(lower, "out")); !os.IsNotExist(err) {
		t.Errorf("lower/out: %v, want nothing made", err)
	}
}
