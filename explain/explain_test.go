package explain_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/explain"
	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"github.com/ovl-project/ovl/overlay"
)

// chain is one kind of lookup chain: layers built by hand, the path to
// explain, what the explanation must say, and the kernel's view of the
// same layers to check it against.
type chain struct {
	name   string
	lowers []k.Layer // topmost first
	upper  k.Layer
	opts   k.Options
	// ops run on a kernel mount before the explanation (copy-ups that
	// make origins and index entries); nil: none.
	ops  func(t *testing.T, mnt string)
	path string
	// exists, meta, data: the answer (layer names, "" for no data layer).
	exists     bool
	meta, data string
	// reason is a word the last step's reasons must hold.
	reason string
}

var chains = []chain{
	{
		name:   "upper whiteout",
		lowers: []k.Layer{{k.File("d/f", "lower")}},
		upper:  k.Layer{k.Dir("d"), k.Whiteout("d/f")},
		path:   "d/f", reason: "whiteout (character device 0/0) in upper",
	},
	{
		name:   "lower whiteout",
		lowers: []k.Layer{{k.Whiteout("f")}, {k.File("f", "bottom")}},
		path:   "f", reason: "whiteout (character device 0/0) in lower 1",
	},
	{
		name:   "xattr whiteout",
		lowers: []k.Layer{{k.XWhiteout("d/f")}, {k.File("d/f", "bottom"), k.File("d/g", "g")}},
		path:   "d/f", reason: "xattr whiteout",
	},
	{
		name:   "upper opaque",
		lowers: []k.Layer{{k.File("d/f", "lower"), k.File("d/g", "g")}},
		upper:  k.Layer{k.OpaqueDir("d"), k.File("d/h", "h")},
		path:   "d/f", reason: "merges no lower layer",
	},
	{
		name:   "opaque dir itself",
		lowers: []k.Layer{{k.File("d/f", "lower")}},
		upper:  k.Layer{k.OpaqueDir("d"), k.File("d/h", "h")},
		path:   "d", exists: true, meta: "upper", reason: "opaque in upper",
	},
	{
		name:   "lower opaque",
		lowers: []k.Layer{{k.OpaqueDir("d"), k.File("d/a", "a")}, {k.File("d/f", "bottom")}},
		path:   "d/f", reason: "no layer holds it",
	},
	{
		name:   "merged file from the bottom",
		lowers: []k.Layer{{k.File("d/a", "a")}, {k.File("d/f", "bottom")}},
		upper:  k.Layer{k.Dir("d")},
		path:   "d/f", exists: true, meta: "lower 2", reason: "lower 2 is the topmost",
	},
	{
		name:   "relative redirect",
		lowers: []k.Layer{{k.File("old/f", "renamed")}},
		upper:  k.Layer{k.Dir("new").Xattr("overlay.redirect", "old"), k.Whiteout("old")},
		opts:   k.Options{RedirectDir: "on"},
		path:   "new/f", exists: true, meta: "lower 1", reason: "topmost",
	},
	{
		name:   "absolute redirect",
		lowers: []k.Layer{{k.File("a/b/f", "moved")}},
		upper:  k.Layer{k.Dir("x/moved").Xattr("overlay.redirect", "/a/b"), k.Dir("a"), k.Whiteout("a/b")},
		opts:   k.Options{RedirectDir: "on"},
		path:   "x/moved/f", exists: true, meta: "lower 1", reason: "topmost",
	},
	{
		name:   "redirect step",
		lowers: []k.Layer{{k.File("a/b/f", "moved")}},
		upper:  k.Layer{k.Dir("x/moved").Xattr("overlay.redirect", "/a/b"), k.Dir("a"), k.Whiteout("a/b")},
		opts:   k.Options{RedirectDir: "on"},
		path:   "x/moved", exists: true, meta: "upper", reason: `redirect="/a/b"`,
	},
	{
		name:   "metacopy",
		lowers: []k.Layer{{k.File("m", "the data").Mode(0o644)}},
		upper:  k.Layer{k.File("m", "").Mode(0o600).Xattr("overlay.metacopy", "")},
		opts:   k.Options{RedirectDir: "on", Metacopy: "on"},
		path:   "m", exists: true, meta: "upper", data: "lower 1", reason: "lower 1 holds its data",
	},
	{
		name:   "metacopy redirect",
		lowers: []k.Layer{{k.File("d/m", "moved data")}, {k.File("d/m", "wrong")}},
		upper: k.Layer{k.File("n", "").Mode(0o640).Xattr("overlay.metacopy", "").Xattr("overlay.redirect", "/d/m"),
			k.Dir("d"), k.Whiteout("d/m")},
		opts: k.Options{RedirectDir: "on", Metacopy: "on"},
		path: "n", exists: true, meta: "upper", data: "lower 1", reason: `redirect="/d/m"`,
	},
	{
		name:   "origin",
		lowers: []k.Layer{{k.File("o", "origin data")}},
		opts:   k.Options{Index: "on"},
		ops: func(t *testing.T, mnt string) {
			if err := os.Chmod(filepath.Join(mnt, "o"), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		path: "o", exists: true, meta: "upper", reason: "copied up from lower 1",
	},
	{
		name:   "index",
		lowers: []k.Layer{{k.File("h/one", "linked"), k.Hardlink("h/two", "h/one")}},
		opts:   k.Options{Index: "on"},
		ops: func(t *testing.T, mnt string) {
			f, err := os.OpenFile(filepath.Join(mnt, "h/one"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(" and changed")
			f.Close()
		},
		path: "h/two", exists: true, meta: "index", reason: "index entry",
	},
}

// TestExplainChains explains each kind of chain and checks the answer
// against the kernel's overlayfs view of the same layers: a name the
// explanation calls hidden is absent there, and the layer it names holds
// the content (the data layer) and the mode (the metadata layer) that the
// kernel shows.
func TestExplainChains(t *testing.T) {
	testutil.RequireRoot(t)
	for _, c := range chains {
		t.Run(strings.ReplaceAll(c.name, " ", "-"), func(t *testing.T) {
			o := c.opts
			if o.Metacopy == "" {
				o.Metacopy = "off"
			}
			o.Xino, o.UUID = "off", "off"
			dir := t.TempDir()
			var l k.Layout
			for i, layer := range c.lowers {
				d := filepath.Join(dir, "l"+string(rune('1'+i)))
				if err := k.Build(d, o.Prefix(), layer); err != nil {
					t.Fatal(err)
				}
				l.Lowers = append(l.Lowers, d)
			}
			l.Upper, l.Work, l.Mnt = filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "mnt")
			if err := k.Build(l.Upper, o.Prefix(), c.upper); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{l.Work, l.Mnt} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := (k.Kernel{}).Mount(l, o); err != nil {
				t.Fatal(err)
			}
			unmounted := false
			unmount := func() {
				if !unmounted {
					unmounted = true
					if err := (k.Kernel{}).Unmount(l.Mnt); err != nil {
						t.Error(err)
					}
				}
			}
			defer unmount()
			if c.ops != nil {
				c.ops(t, l.Mnt)
				// Remount: the explanation reads the layers at rest.
				unmount()
				if err := (k.Kernel{}).Mount(l, o); err != nil {
					t.Fatal(err)
				}
				unmounted = false
			}
			cfg := overlay.Config{Lowers: l.Lowers, Upper: l.Upper, Work: l.Work, RedirectDir: o.RedirectDir, Metacopy: o.Metacopy, Index: o.Index}
			ex, err := explain.Path(cfg, c.path)
			if err != nil {
				t.Fatal(err)
			}
			text := ex.Text()
			t.Logf("\n%s", text)
			last := ex.Steps[len(ex.Steps)-1]
			if last.Path != "/"+c.path {
				t.Fatalf("last step is %s, want /%s", last.Path, c.path)
			}
			if !strings.Contains(strings.Join(last.Reasons, "\n"), c.reason) {
				t.Errorf("the reasons for /%s do not say %q", c.path, c.reason)
			}
			var kst unix.Stat_t
			kerr := unix.Lstat(filepath.Join(l.Mnt, c.path), &kst)
			if last.Exists != c.exists || (kerr == nil) != c.exists {
				t.Fatalf("/%s: explained as existing: %v, the kernel: %v, want %v", c.path, last.Exists, kerr, c.exists)
			}
			if !c.exists {
				return
			}
			if last.Meta == nil || last.Meta.Layer != c.meta {
				t.Fatalf("/%s: metadata from %+v, want %s", c.path, last.Meta, c.meta)
			}
			if (last.Data == nil) != (c.data == "") || (last.Data != nil && last.Data.Layer != c.data) {
				t.Fatalf("/%s: data from %+v, want %q", c.path, last.Data, c.data)
			}
			metaPath := filepath.Join(last.Meta.Dir, last.Meta.Path)
			var mst unix.Stat_t
			if err := unix.Lstat(metaPath, &mst); err != nil {
				t.Fatal(err)
			}
			if mst.Mode != kst.Mode || mst.Uid != kst.Uid || mst.Mtim != kst.Mtim {
				t.Errorf("/%s: the kernel shows mode %o, uid %d, mtime %v; the metadata layer's %s has %o, %d, %v",
					c.path, kst.Mode, kst.Uid, kst.Mtim, metaPath, mst.Mode, mst.Uid, mst.Mtim)
			}
			if kst.Mode&unix.S_IFMT != unix.S_IFREG {
				return
			}
			dataPath := metaPath
			if last.Data != nil {
				dataPath = filepath.Join(last.Data.Dir, last.Data.Path)
			}
			want, err := os.ReadFile(filepath.Join(l.Mnt, c.path))
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dataPath)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("/%s: the kernel shows %q; the data layer's %s holds %q (%v)", c.path, want, dataPath, got, err)
			}
		})
	}
}

// TestExplainMounted runs "ovl explain MNT/PATH" on an ovl mount: the
// layers come from the daemon. It checks the JSON form against the
// layers.
func TestExplainMounted(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	dir := t.TempDir()
	l := k.Layout{Lowers: []string{filepath.Join(dir, "l1"), filepath.Join(dir, "l2")},
		Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"), Mnt: filepath.Join(dir, "mnt")}
	o := k.DefaultOptions()
	for i, layer := range []k.Layer{{k.Whiteout("d/gone"), k.File("d/top", "top")}, {k.File("d/gone", "x"), k.File("d/f", "bottom")}} {
		if err := k.Build(l.Lowers[i], o.Prefix(), layer); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{l.Upper, l.Work, l.Mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m := k.Ovl{Bin: bin}
	if err := m.Mount(l, o); err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(l.Mnt)
	if err := os.WriteFile(filepath.Join(l.Mnt, "d", "new"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path   string
		exists bool
		meta   string
	}{{"d/f", true, "lower 2"}, {"d/top", true, "lower 1"}, {"d/new", true, "upper"}, {"d/gone", false, ""}} {
		out, err := exec.Command(bin, "explain", "--json", filepath.Join(l.Mnt, tc.path)).CombinedOutput()
		if err != nil {
			t.Fatalf("ovl explain %s: %v\n%s", tc.path, err, out)
		}
		var ex explain.Explanation
		if err := json.Unmarshal(out, &ex); err != nil {
			t.Fatalf("ovl explain --json: %v\n%s", err, out)
		}
		last := ex.Steps[len(ex.Steps)-1]
		if last.Exists != tc.exists || (tc.exists && (last.Meta == nil || last.Meta.Layer != tc.meta)) {
			t.Errorf("ovl explain %s: %s", tc.path, out)
		}
		if len(ex.Layers) != 3 || ex.Layers[0].Dir != l.Upper || ex.Layers[2].Dir != l.Lowers[1] {
			t.Errorf("ovl explain %s: layers %+v, want the mount's", tc.path, ex.Layers)
		}
	}
	out, err := exec.Command(bin, "explain", filepath.Join(l.Mnt, "d/gone")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "whiteout (character device 0/0) in lower 1") {
		t.Errorf("ovl explain d/gone: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "explain", dir).CombinedOutput(); err == nil {
		t.Errorf("ovl explain %s (no ovl mount): %s, want a refusal", dir, out)
	}
}

// TestExplainRandom: random layers and ops (the differential tester's
// generator) on the kernel's overlayfs; then every object of the kernel's
// view is explained: it must exist, with the type the kernel shows, and
// the layer the explanation names must hold the kernel's owner, mode and
// mtime (metadata) and content (data).
func TestExplainRandom(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := k.Helper(); err != nil {
		t.Fatal(err)
	}
	for _, seed := range explainSeeds(t) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			c := k.RandomCase(seed, 200)
			c.Overlap = ""
			c.Layers = c.Layers.WithoutAUFS()
			o := c.Options()
			switch {
			case c.UserXattr:
			case seed%4 == 1:
				o.Metacopy = "on"
			case seed%4 == 3:
				o.Index = "on"
			}
			dir := t.TempDir()
			os.Chmod(dir, 0o755)
			var l k.Layout
			for i, layer := range c.Layers.Lowers {
				d := filepath.Join(dir, fmt.Sprintf("l%d", i))
				if err := k.Build(d, o.Prefix(), layer); err != nil {
					t.Fatal(err)
				}
				l.Lowers = append(l.Lowers, d)
			}
			l.Upper, l.Work, l.Mnt = filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "mnt")
			if err := k.Build(l.Upper, o.Prefix(), c.Layers.Upper); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{l.Work, l.Mnt} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			m := k.Kernel{}
			if err := m.Mount(l, o); err != nil {
				t.Fatal(err)
			}
			runOps(t, l.Mnt, c.Ops)
			if err := m.Unmount(l.Mnt); err != nil {
				t.Fatal(err)
			}
			if err := m.Mount(l, o); err != nil {
				t.Fatal(err)
			}
			view, err := k.Snapshot(l.Mnt, k.SnapOptions{})
			if uerr := m.Unmount(l.Mnt); uerr != nil {
				t.Error(uerr)
			}
			if err != nil {
				t.Fatal(err)
			}
			cfg := overlay.Config{Lowers: l.Lowers, Upper: l.Upper, Work: l.Work, UserXattr: o.UserXattr,
				RedirectDir: o.RedirectDir, Metacopy: o.Metacopy, Index: o.Index}
			checked := 0
			for p, n := range view.Nodes {
				if p == "" || strings.HasPrefix(n.Type, "error:") || strings.HasPrefix(n.Hash, "<") {
					continue
				}
				ex, err := explain.Path(cfg, p)
				if err != nil {
					t.Fatalf("explain %s: %v", p, err)
				}
				last := ex.Steps[len(ex.Steps)-1]
				if !last.Exists || last.Error != "" || last.Meta == nil {
					t.Errorf("/%s: the kernel shows a %s; explained as absent:\n%s", p, n.Type, ex.Text())
					continue
				}
				var st unix.Stat_t
				meta := filepath.Join(last.Meta.Dir, last.Meta.Path)
				if err := unix.Lstat(meta, &st); err != nil {
					t.Errorf("/%s: %v\n%s", p, err, ex.Text())
					continue
				}
				if st.Mode&0o7777 != n.Perm || st.Uid != n.UID || st.Gid != n.GID || (n.Type != "dir" && unix.TimespecToNsec(st.Mtim) != n.Mtime) {
					t.Errorf("/%s: the kernel shows %o %d:%d mtime %d; %s has %o %d:%d mtime %d\n%s", p, n.Perm, n.UID, n.GID, n.Mtime,
						meta, st.Mode&0o7777, st.Uid, st.Gid, unix.TimespecToNsec(st.Mtim), ex.Text())
				}
				if n.Type == "file" {
					data := meta
					if last.Data != nil {
						data = filepath.Join(last.Data.Dir, last.Data.Path)
					}
					b, err := os.ReadFile(data)
					if err != nil || fmt.Sprintf("%x", sha256.Sum256(b)) != n.Hash {
						t.Errorf("/%s: %s does not hold the kernel's content (%v)\n%s", p, data, err, ex.Text())
					}
				}
				checked++
			}
			// Names the layers hold that the kernel does not show, in
			// directories it shows: each must be explained as absent.
			hidden := 0
			for _, root := range append([]string{l.Upper}, l.Lowers...) {
				filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
					if err != nil || path == root {
						return nil
					}
					p, _ := filepath.Rel(root, path)
					parent := filepath.Dir(p)
					if parent == "." {
						parent = ""
					}
					if pn := view.Nodes[parent]; pn == nil || pn.Type != "dir" || pn.ReadDir != "" || view.Nodes[p] != nil || strings.HasPrefix(d.Name(), ".wh.") {
						return nil
					}
					ex, err := explain.Path(cfg, p)
					if err != nil {
						t.Fatalf("explain %s: %v", p, err)
					}
					if last := ex.Steps[len(ex.Steps)-1]; last.Exists && last.Error == "" {
						t.Errorf("/%s: the kernel does not show it; explained as present:\n%s", p, ex.Text())
					}
					hidden++
					return nil
				})
			}
			t.Logf("%s: %d objects explained, %d hidden names", c, checked, hidden)
		})
	}
}

// runOps applies ops on mnt as the random tester does.
func runOps(t *testing.T, mnt string, ops []k.Op) {
	t.Helper()
	if err := k.ApplyOps(mnt, ops); err != nil {
		t.Fatal(err)
	}
}

// explainSeeds are the seeds of TestExplainRandom: 1 to 16, or
// EXPLAIN_SEEDS ("1-40,77").
func explainSeeds(t *testing.T) []int64 {
	spec := os.Getenv("EXPLAIN_SEEDS")
	if spec == "" {
		spec = "1-16"
	}
	seeds, err := k.ParseSeeds(spec)
	if err != nil {
		t.Fatalf("EXPLAIN_SEEDS: %v", err)
	}
	return seeds
}
