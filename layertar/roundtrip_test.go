package layertar_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"github.com/ovl-project/ovl/layertar"
	"github.com/ovl-project/ovl/overlay"
)

// The round trip: random layers and random ops (the differential tester's
// generator) run on a mount; then Diff of its upper, Apply of the tar to
// a fresh directory, and that directory mounted as the upper over the same
// lowers must show the merged view the first mount showed. Each seed runs
// twice, with the ops on ovl and on the kernel's overlayfs (so Diff reads
// uppers each of them wrote), and each resulting layer is mounted by both.

// roundTripSeeds are the seeds a plain test run goes through (env
// LAYERTAR_SEEDS: a list of seeds and ranges, "1-200,311"; LAYERTAR_OPS:
// ops per seed, before the ruleOps added to them).
func roundTripSeeds(t *testing.T) (seeds []int64, ops int) {
	ops = 200
	if v := os.Getenv("LAYERTAR_OPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("LAYERTAR_OPS=%q: %v", v, err)
		}
		ops = n
	}
	spec := os.Getenv("LAYERTAR_SEEDS")
	if spec == "" {
		// 35: a link count of index=on that names a covered lower name;
		// 123: an upper redirect to a name longer than NAME_MAX; 181: a
		// whiteout in an opaque upper directory.
		spec = "1-16,35,123,181"
	}
	seeds, err := k.ParseSeeds(spec)
	if err != nil {
		t.Fatalf("LAYERTAR_SEEDS: %v", err)
	}
	return seeds, ops
}

// caseOptions are the mount options of seed's case: the generator's, with
// metacopy=on for one trusted seed in two, so that Diff meets metacopy
// files (the kernel and ovl copy up metadata only for chmod, chown, ...),
// and index=on for the other half, so that it meets indexed hard links.
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

func TestRoundTripRandom(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	if _, err := k.Helper(); err != nil {
		t.Fatal(err)
	}
	seeds, nOps := roundTripSeeds(t)
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			c := k.RandomCase(seed, nOps)
			c.Overlap = "" // layers inside each other: not a layer tool's input
			// The layer tools read and write the kernel's form; AUFS layers
			// are the mount's business (cmd/ovl TestAUFS*).
			c.Layers = c.Layers.WithoutAUFS()
			c.Ops = append(c.Ops, ruleOps(seed, nOps/2)...)
			for _, writer := range []k.Mounter{k.Ovl{Bin: bin}, k.Kernel{}} {
				t.Run("written-by-"+writer.Name(), func(t *testing.T) {
					roundTrip(t, c, caseOptions(c), writer, []k.Mounter{k.Ovl{Bin: bin}, k.Kernel{}})
				})
			}
		})
	}
}

// TestRoundTripRules runs the round trip over a stack and ops chosen so
// that every rule of Diff applies: a directory renamed in its parent and
// one moved out of it (relative and absolute redirects, one inside the
// other), a directory made over the whiteout of a renamed one, a directory
// moved into an opaque one, metacopy files (also inside a renamed
// directory, and one moved, with a redirect of its own), upper hard links,
// lower hard links inside a renamed directory, copy-ups below a renamed
// directory, whiteouts.
func TestRoundTripRules(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	c := k.Case{NLowers: 2, Layers: k.Layers{Lowers: []k.Layer{
		{ // top
			k.File("a/top", "top"),
			k.File("e/q", "q"),
			k.File("a/b/w", "w over"),
		},
		{ // bottom
			k.File("a/f", "a/f data").Mode(0o640).Owner(1000, 1000).Xattr("user.x", "1"),
			k.Hardlink("a/l", "a/f"),
			k.File("a/g", "a/g data"),
			k.File("a/b/x", "x"),
			k.File("a/b/y", "y"),
			k.Symlink("a/b/s", "../f"),
			k.FIFO("a/b/p"),
			k.File("c/z", "z"),
			k.File("m", "metacopy data").Mode(0o644),
			k.File("d/k", "k"),
			k.File("h/one", "one").Mode(0o644),
			k.Hardlink("h/two", "h/one"),
			k.Hardlink("h/sub/three", "h/one"),
		},
	}}}
	c.Ops = []k.Op{
		{Op: "rename", Path: "a", Path2: "r0"},
		{Op: "rename", Path: "r0/b", Path2: "c/r1"},
		{Op: "mkdir", Path: "a", Mode: 0o750},
		{Op: "create", Path: "a/new", Mode: 0o644},
		{Op: "chmod", Path: "r0/f", Mode: 0o600},
		{Op: "chmod", Path: "m", Mode: 0o640},
		{Op: "rename", Path: "m", Path2: "c/m2"},
		{Op: "link", Path: "r0/g", Path2: "g2"},
		{Op: "unlink", Path: "r0/top"},
		{Op: "setxattr", Path: "c/r1/x", Name: "user.k", Data: "v"},
		{Op: "rename", Path: "e", Path2: "a/e2"},
		{Op: "utimes", Path: "c/z", Off: k.RandomTimes[1]},
		{Op: "rename", Path: "d", Path2: "d2"},
		{Op: "mkdir", Path: "d", Mode: 0o700},
		{Op: "write", Path: "d2/k", Data: "new k"},
		{Op: "unlink", Path: "c/r1/y"},
		{Op: "chmod", Path: "h/one", Mode: 0o600},
		{Op: "write", Path: "h/two", Data: "TWO", Off: 1},
	}
	for _, opt := range []struct {
		name string
		o    k.Options
	}{
		{"metacopy", k.Options{Metacopy: "on", Xino: "off", UUID: "off"}},
		{"index", k.Options{Metacopy: "off", Index: "on", Xino: "off", UUID: "off"}},
	} {
		for _, writer := range []k.Mounter{k.Ovl{Bin: bin}, k.Kernel{}} {
			t.Run(opt.name+"/written-by-"+writer.Name(), func(t *testing.T) {
				roundTrip(t, c, opt.o, writer, []k.Mounter{k.Ovl{Bin: bin}, k.Kernel{}})
			})
		}
	}
}

// ruleOps are n more ops for seed that make what Diff's rules are about
// more often than the generator's mix does: directories renamed (with
// redirect_dir=on, redirects, also of directories inside renamed ones),
// metadata changes of lower files (metacopy files with metacopy=on), hard
// links, and whiteouts.
func ruleOps(seed int64, n int) []k.Op {
	rng := rand.New(rand.NewSource(seed + 7919))
	// The generator's directories, and new names renames chain through.
	dirs := []string{"a", "a/b", "c", "c/b", "r0", "r1", "a/r0", "c/r1", "r0/b", "r1/b", "a/b/r2"}
	names := k.Names()
	pick := func(s []string) string { return s[rng.Intn(len(s))] }
	var ops []k.Op
	for len(ops) < n {
		switch rng.Intn(9) {
		case 0, 1, 2:
			ops = append(ops, k.Op{Op: "rename", Path: pick(dirs), Path2: pick(dirs)})
		case 3:
			ops = append(ops, k.Op{Op: "chmod", Path: pick(names), Mode: []uint32{0o640, 0o4755, 0o600}[rng.Intn(3)]})
		case 4:
			ops = append(ops, k.Op{Op: "utimes", Path: pick(names), Off: k.RandomTimes[rng.Intn(len(k.RandomTimes))]})
		case 5:
			ops = append(ops, k.Op{Op: "setxattr", Path: pick(names), Name: "user.m", Data: fmt.Sprint(rng.Intn(3))})
		case 6:
			ops = append(ops, k.Op{Op: "chown", Path: pick(names), UID: 1000, GID: 1000})
		case 7:
			ops = append(ops, k.Op{Op: "link", Path: pick(names), Path2: pick(names)})
		default:
			ops = append(ops, k.Op{Op: "unlink", Path: pick(names)})
		}
	}
	return ops
}

// layout builds c's layers in a new directory: the lowers, upper as the
// case starts it (initial: true) or empty, a work directory and a mount
// point.
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

// mountView mounts l with m, takes a snapshot of the merged view and
// unmounts.
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

// refusedToo checks that the object Diff refused (err names it) is one
// the overlay refuses too: mounted again, its lookup, listing or read fails.
func refusedToo(t *testing.T, err error, m k.Mounter, l k.Layout, o k.Options) {
	t.Helper()
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		t.Fatalf("diff: %v (names no object)", err)
	}
	if err := m.Mount(l, o); err != nil {
		t.Fatalf("%s: %v", m.Name(), err)
	}
	defer func() {
		if err := m.Unmount(l.Mnt); err != nil {
			t.Error(err)
		}
	}()
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
		t.Fatalf("diff refused %s, which %s serves: %v", pe.Path, m.Name(), err)
	}
	t.Logf("diff refuses what %s refuses: %v (%s: %v)", m.Name(), err, m.Name(), serr)
}

func roundTrip(t *testing.T, c k.Case, o k.Options, writer k.Mounter, readers []k.Mounter) {
	l := layout(t, c, o.Prefix())
	if err := writer.Mount(l, o); err != nil {
		t.Fatalf("%s: %v", writer.Name(), err)
	}
	runOps(t, l.Mnt, c.Ops)
	orig, err := k.Snapshot(l.Mnt, k.SnapOptions{})
	if uerr := writer.Unmount(l.Mnt); uerr != nil {
		t.Fatalf("%s: %v", writer.Name(), uerr)
	}
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}

	cfg := overlay.Config{Lowers: l.Lowers, Upper: l.Upper, Work: l.Work, UserXattr: o.UserXattr, RedirectDir: o.RedirectDir, Metacopy: o.Metacopy, Index: o.Index}
	var layer bytes.Buffer
	res, err := layertar.Diff(&layer, cfg, layertar.DiffOptions{})
	if err != nil {
		refusedToo(t, err, writer, l, o)
		return
	}
	applied := t.TempDir()
	os.Chmod(applied, 0o755)
	upper := filepath.Join(applied, "upper")
	if err := os.Mkdir(upper, 0o755); err != nil {
		t.Fatal(err)
	}
	// The layer root is no entry: the new upper's root must look like the old one.
	copyRootAttrs(t, l.Upper, upper)
	if _, err := layertar.Apply(bytes.NewReader(layer.Bytes()), upper, layertar.ApplyOptions{UserXattr: o.UserXattr}); err != nil {
		t.Fatalf("apply: %v", err)
	}
	kinds := upperKinds(t, l.Upper, o.Prefix())
	t.Logf("%s: %d entries, %d bytes; the upper holds %s", c, res.Entries, res.Size, kinds)
	for _, reader := range readers {
		nl := k.Layout{Lowers: l.Lowers, Upper: upper, Work: filepath.Join(applied, "work-"+reader.Name()), Mnt: filepath.Join(applied, "mnt")}
		for _, d := range []string{nl.Work, nl.Mnt} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		view := mountView(t, reader, nl, o)
		ds := k.Compare(orig, view, k.CompareOptions{Scope: k.ScopeMerged, Times: true, IgnorePaths: orig.ErrorPaths()})
		ds = hiddenNames(t, ds, orig, view)
		if len(ds) > 0 {
			t.Errorf("view of the applied layer on %s differs from the view %s gave:\n%s\nlayer:\n%s",
				reader.Name(), writer.Name(), k.FormatDiffs(writer.Name()+" (ops)", reader.Name()+" (applied)", ds), listTar(layer.Bytes()))
		}
		if len(view.Problems) > 0 {
			t.Errorf("%s (applied): %s\nlayer:\n%s", reader.Name(), strings.Join(view.Problems, "\n"), listTar(layer.Bytes()))
		}
		checkLinks(t, orig, view, writer.Name() == reader.Name() && writer.Name() == "kernel", orig.ErrorPaths())
	}
}

// copyRootAttrs gives dst the owner and mode of src.
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

// checkLinks checks that the names that are one object in the view the
// ops made are one object after the round trip; exact also checks the
// reverse. Only the kernel gets exact: ovl numbers each name of a lower
// hard link apart (overlay/ino.go), while the layer makes the names it
// writes of such a file links of one upper file.
func checkLinks(t *testing.T, orig, view *k.Tree, exact bool, ignore []string) {
	t.Helper()
	ignored := func(p string) bool {
		for _, ip := range ignore {
			if p == ip || strings.HasPrefix(p, ip+"/") {
				return true
			}
		}
		return false
	}
	groups := func(v *k.Tree) map[string]string {
		first := map[uint64]string{}
		var paths []string
		for p, n := range v.Nodes {
			if n.Type != "dir" && !strings.HasPrefix(n.Type, "error:") && !ignored(p) {
				paths = append(paths, p)
			}
		}
		sort.Strings(paths)
		g := map[string]string{}
		for _, p := range paths {
			ino := v.Nodes[p].Ino
			if _, ok := first[ino]; !ok {
				first[ino] = p
			}
			g[p] = first[ino]
		}
		return g
	}
	go1, gv := groups(orig), groups(view)
	for p, g := range go1 {
		if g != p && gv[p] != gv[g] {
			t.Errorf("%s and %s are one object in the original view, two after the round trip", g, p)
		}
	}
	if !exact {
		return
	}
	for p, g := range gv {
		if g != p && go1[p] != go1[g] {
			t.Errorf("%s and %s are one object after the round trip, two in the original view", g, p)
		}
	}
}

// listTar lists a layer's entries for a failure report.
func listTar(b []byte) string {
	ents, err := readEntries(bytes.NewReader(b))
	var s strings.Builder
	for _, e := range ents {
		fmt.Fprintf(&s, "  %s\n", e)
	}
	if err != nil {
		fmt.Fprintf(&s, "  (error: %v)\n", err)
	}
	return s.String()
}

// upperKinds counts what in an upper the rules of Diff are about, for the
// log: it shows which rules a seed exercised.
func upperKinds(t *testing.T, upper, prefix string) string {
	up, err := k.Snapshot(upper, k.SnapOptions{Upper: true, Prefix: prefix, NoHash: true})
	if err != nil {
		t.Fatalf("snapshot upper: %v", err)
	}
	var whiteouts, opaque, redirects, metacopy, links int
	for _, n := range up.Nodes {
		switch {
		case n.Type == "whiteout":
			whiteouts++
		case n.Type == "dir" && n.Ovl["opaque"] == "y":
			opaque++
		}
		if _, ok := n.Ovl["redirect"]; ok && n.Type == "dir" {
			redirects++
		}
		if _, ok := n.Ovl["metacopy"]; ok {
			metacopy++
		}
		if n.Type != "dir" && n.Type != "whiteout" && n.Nlink > 1 {
			links++
		}
	}
	return fmt.Sprintf("%d whiteouts, %d opaque dirs, %d redirected dirs, %d metacopy files, %d names with links",
		whiteouts, opaque, redirects, metacopy, links)
}

// hiddenNames drops from ds the link counts of files whose count in the
// view the ops made includes names that view does not show: a lower hard
// link's other names, covered by the upper or left behind by a renamed
// directory that Diff wrote in full, or counted in overlay.nlink (index=on)
// after the name went. A layer holds names, not counts: each file it holds
// counts exactly the names it holds (the package doc says so), which is
// checked for each count dropped.
func hiddenNames(t *testing.T, ds []k.Diff, orig, view *k.Tree) []k.Diff {
	t.Helper()
	names := func(v *k.Tree, p string) uint64 {
		n := v.Nodes[p]
		c := uint64(0)
		for _, o := range v.Nodes {
			if o.Ino == n.Ino && o.Type == n.Type {
				c++
			}
		}
		return c
	}
	var out []k.Diff
	for _, d := range ds {
		if d.Field == "nlink" && d.Type != "dir" && view.Nodes[d.Path] != nil && orig.Nodes[d.Path] != nil &&
			orig.Nodes[d.Path].Nlink > names(orig, d.Path) && view.Nodes[d.Path].Nlink == names(view, d.Path) {
			t.Logf("%s: %s links in the view the ops made, which shows %d of its names; %s (all its names) in the layer's",
				d.Path, d.A, names(orig, d.Path), d.B)
			continue
		}
		out = append(out, d)
	}
	return out
}
