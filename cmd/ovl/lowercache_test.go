package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// cacheLayers builds two lowers with what a lower index must carry:
// nested and merged directories, whiteouts of both forms, an opaque
// directory, a symlink, a hard link, a FIFO, and a name, d/victim, that a
// test damages in the index file.
func cacheLayers(t *testing.T, prefix string) []string {
	t.Helper()
	dir := t.TempDir()
	layers := []k.Layer{
		{k.Dir("d"), k.File("d/top", "t"), k.Whiteout("d/gone"), k.XWhiteout("d/xgone"), k.OpaqueDir("o"),
			k.File("o/new", "n"), k.Symlink("d/link", "../f"), k.FIFO("fifo")},
		{k.Dir("d"), k.File("d/victim", "v"), k.File("d/gone", "g"), k.File("d/xgone", "x"), k.Dir("d/e"),
			k.File("d/e/deep", "deep"), k.Dir("o"), k.File("o/hidden", "h"), k.File("f", "f"), k.Hardlink("d/hl", "f")},
	}
	var out []string
	for i, l := range layers {
		p := filepath.Join(dir, "l"+string(rune('0'+i)))
		if err := k.Build(p, prefix, l); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// cacheViews mounts lowers read-only with the kernel and with ovl (extra
// options added) and returns the differences of ovl's view from the
// kernel's, inode numbers and times included, and ovl's log.
func cacheViews(t *testing.T, lowers []string, user bool, extra ...string) ([]k.Diff, string) {
	t.Helper()
	mnt := t.TempDir()
	logf := filepath.Join(t.TempDir(), "ovl.log")
	o := k.DefaultOptions()
	o.ReadOnly, o.UserXattr = true, user
	l := k.Layout{Lowers: lowers, Mnt: mnt}
	kv, err := k.MountedView(k.Kernel{}, l, o)
	if err != nil {
		t.Fatal(err)
	}
	o.OvlExtra = append(extra, "log="+logf)
	ov, err := k.MountedView(k.Ovl{Bin: testutil.Binary(t)}, l, o)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(logf)
	var diffs []k.Diff
	for _, d := range k.Compare(kv, ov, k.CompareOptions{Scope: k.ScopeMerged, Times: true, Ino: true}) {
		// The root's number is 1 in ovl, with or without a cache (as
		// fuse-overlayfs; docs/differences.md).
		if d.Path != "" || d.Field != "ino" {
			diffs = append(diffs, d)
		}
	}
	return diffs, string(log)
}

func requireSame(t *testing.T, what string, diffs []k.Diff, log string) {
	t.Helper()
	for _, d := range diffs {
		t.Errorf("%s: %s", what, d)
	}
	if len(diffs) > 0 {
		t.Logf("ovl log:\n%s", log)
	}
}

// TestLowerCacheView: with lowercache= the view equals the kernel's, at
// the mount that builds the index and at the next one, which reads it; and
// the index is what answers: a lower file changed in place behind it
// shows the indexed mode (documented) until the index is dropped.
func TestLowerCacheView(t *testing.T) {
	testutil.RequireRoot(t)
	for _, user := range []bool{false, true} {
		lowers := cacheLayers(t, k.OverlayPrefix(user))
		cache := t.TempDir()
		opts := []string{"lowercache=" + cache}
		d, log := cacheViews(t, lowers, user, opts...)
		requireSame(t, "building mount", d, log)
		idx, _ := filepath.Glob(filepath.Join(cache, "*.ovlidx"))
		if len(idx) != len(lowers) {
			t.Fatalf("%d index files for %d lowers", len(idx), len(lowers))
		}
		d, log = cacheViews(t, lowers, user, opts...)
		requireSame(t, "reading mount", d, log)
		if strings.Contains(log, "lowercache") {
			t.Errorf("valid indexes were not used:\n%s", log)
		}
		// A cache directory others may write is not used.
		if err := os.Chmod(cache, 0o777); err != nil {
			t.Fatal(err)
		}
		if _, log = cacheViews(t, lowers, user, opts...); !strings.Contains(log, "only this user can write") {
			t.Errorf("a world-writable cache directory was used:\n%s", log)
		}
		if err := os.Chmod(cache, 0o700); err != nil {
			t.Fatal(err)
		}

		// chmod changes the file's ctime only, not its directory's.
		if err := os.Chmod(filepath.Join(lowers[1], "d/e/deep"), 0o600); err != nil {
			t.Fatal(err)
		}
		d, _ = cacheViews(t, lowers, user, opts...)
		if len(d) != 1 || d[0].Path != "d/e/deep" || d[0].Field != "perm" {
			t.Errorf("a chmod behind the index: %v, want only d/e/deep's perm to differ", d)
		}
		d, log = cacheViews(t, lowers, user)
		requireSame(t, "without the cache", d, log)
	}
}

// TestLowerCacheDamaged: a damaged or truncated index file is ignored with
// a log line (and rebuilt): the view is the kernel's, not the file's.
func TestLowerCacheDamaged(t *testing.T) {
	testutil.RequireRoot(t)
	lowers := cacheLayers(t, k.OverlayPrefix(false))
	cache := t.TempDir()
	if d, log := cacheViews(t, lowers, false, "lowercache="+cache); len(d) > 0 {
		requireSame(t, "building mount", d, log)
	}
	var file string
	var data []byte
	idx, _ := filepath.Glob(filepath.Join(cache, "*.ovlidx"))
	for _, p := range idx {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("victim")) {
			file, data = p, b
		}
	}
	if file == "" {
		t.Fatalf("no index of %s among %v", lowers[1], idx)
	}
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"renamed entry", bytes.Replace(data, []byte("victim"), []byte("victin"), 1)},
		{"truncated", data[:len(data)*2/3]},
	} {
		if err := os.WriteFile(file, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		d, log := cacheViews(t, lowers, false, "lowercache="+cache)
		requireSame(t, c.name, d, log)
		if strings.Count(log, "ignored") != 1 {
			t.Errorf("%s: want one log line about the ignored index, got:\n%s", c.name, log)
		}
	}
}

// TestLowerCacheLayerChanged: an index built before its layer changed is
// not used for what changed: names added and removed in a subdirectory
// (its ctime moves, the root's does not), and a layer made again at the
// same path (another root).
func TestLowerCacheLayerChanged(t *testing.T) {
	testutil.RequireRoot(t)
	lowers := cacheLayers(t, k.OverlayPrefix(false))
	cache := t.TempDir()
	if d, log := cacheViews(t, lowers, false, "lowercache="+cache); len(d) > 0 {
		requireSame(t, "building mount", d, log)
	}
	var before unix.Stat_t
	unix.Stat(lowers[1], &before)
	if err := os.WriteFile(filepath.Join(lowers[1], "d/e/added"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(lowers[1], "d/e/deep")); err != nil {
		t.Fatal(err)
	}
	var after unix.Stat_t
	unix.Stat(lowers[1], &after)
	if after.Ctim != before.Ctim {
		t.Fatal("the layer root changed: the test needs a change below it")
	}
	d, log := cacheViews(t, lowers, false, "lowercache="+cache)
	requireSame(t, "changed subdirectory", d, log)
	if !strings.Contains(log, "changed since it was indexed") {
		t.Errorf("no log line about the changed layer:\n%s", log)
	}
	// That mount dropped the stale index; this one builds a new one.
	d, log = cacheViews(t, lowers, false, "lowercache="+cache)
	requireSame(t, "changed subdirectory, next mount", d, log)
	if !strings.Contains(log, "indexed "+lowers[1]) || strings.Contains(log, "changed since") {
		t.Errorf("the stale index was not built again:\n%s", log)
	}

	if err := os.RemoveAll(lowers[0]); err != nil {
		t.Fatal(err)
	}
	if err := k.Build(lowers[0], k.OverlayPrefix(false), k.Layer{k.Dir("d"), k.File("d/other", "o"), k.File("d/victim", "top")}); err != nil {
		t.Fatal(err)
	}
	d, log = cacheViews(t, lowers, false, "lowercache="+cache)
	requireSame(t, "layer made again", d, log)
}

// TestKernelRandomLowerCache runs the differential tester's cases with
// lowercache= on: every mount builds the indexes of its lowers and then
// answers lookups and listings from them, so any difference between the
// index and the layers shows as a difference from the kernel. The first
// 40 CI seeds by default; KCMP_SEEDS and the other settings as for
// TestKernelRandom.
func TestKernelRandomLowerCache(t *testing.T) {
	set := kcmpConfig(t)
	if os.Getenv("KCMP_SEEDS") == "" && *kcmpSeeds == "" && len(set.seeds) > 40 {
		set.seeds = set.seeds[:40]
	}
	start := time.Now()
	kt := newKcmpTester(t, set)
	kt.ovlExtra = []string{"lowercache=" + t.TempDir()}
	kt.shrinkLeft = 1
	for _, seed := range set.seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { kt.seed(t, seed) })
	}
	t.Log(kt.summary(time.Since(start)))
}
