package main

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// crashLongEnv asks TestCrashMatrix for its long form: a crash at every
// hit of every point (OVL_CRASH_LONG=1), instead of the first and the last.
const crashLongEnv = "OVL_CRASH_LONG"

// crashScenario is one operation of the crash matrix: layers, a state of
// the upper made before it (by the kernel's overlayfs), the operation, and
// what the daemon's environment adds (a fault that forces a fallback).
type crashScenario struct {
	name  string
	opts  k.Options
	prep  func(root string) error // nil: an empty upper
	op    func(root string) error
	env   []string
	needs []string // points the operation must reach
	// windows are the points where a crash is known to leave a state
	// that is neither (the reason): reported in the log, not failed.
	windows map[string]string
}

// crashLower is the lower layer of every scenario: a file big enough that
// its copy takes many requests, nested directories, a symlink and a hard
// link pair (two names of one inode).
func crashLower() k.Layer {
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	return k.Layer{
		k.File("f", big).Mode(0o644),
		k.Dir("d"), k.File("d/a", "a\n"), k.File("d/b", "b\n"), k.Dir("d/sub"), k.File("d/sub/c", "c\n"),
		k.Dir("e"), k.File("e/x", "x\n"),
		k.Symlink("ln", "f"),
		k.File("h1", "hard\n"), k.Hardlink("h2", "h1"),
	}
}

func crashScenarios() []crashScenario {
	def := k.DefaultOptions()
	meta := k.DefaultOptions()
	meta.Metacopy = "on"
	idx := k.DefaultOptions()
	idx.Index = "on"
	appendTo := func(p, s string) func(string) error {
		return func(root string) error {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString(s)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		}
	}
	seq := func(fs ...func(string) error) func(string) error {
		return func(root string) error {
			for _, f := range fs {
				if err := f(root); err != nil {
					return err
				}
			}
			return nil
		}
	}
	in := func(root string, f func(...string) error, ps ...string) error {
		var abs []string
		for _, p := range ps {
			abs = append(abs, filepath.Join(root, p))
		}
		return f(abs...)
	}
	rename := func(a, b string) func(string) error {
		// unix.Rename: os.Rename refuses a directory target itself.
		return func(root string) error {
			return in(root, func(p ...string) error { return unix.Rename(p[0], p[1]) }, a, b)
		}
	}
	remove := func(p string) func(string) error {
		return func(root string) error { return os.Remove(filepath.Join(root, p)) }
	}
	removeAll := func(p string) func(string) error {
		return func(root string) error { return os.RemoveAll(filepath.Join(root, p)) }
	}
	mkdir := func(p string) func(string) error {
		return func(root string) error { return os.Mkdir(filepath.Join(root, p), 0o755) }
	}
	chmod := func(p string, m os.FileMode) func(string) error {
		return func(root string) error { return os.Chmod(filepath.Join(root, p), m) }
	}
	return []crashScenario{
		{name: "append", opts: def, op: appendTo("d/sub/c", "more\n"),
			needs: []string{"copyup.create", "copyup.data", "copyup.xattrs", "copyup.attrs", "copyup.rename", "copyup.renamed"}},
		{name: "append-big", opts: def, op: appendTo("f", "more\n")},
		{name: "metacopy", opts: meta, op: chmod("f", 0o600), needs: []string{"copyup.metacopy"}},
		{name: "metacopy-data", opts: meta, prep: chmod("f", 0o600), op: appendTo("f", "more\n"),
			needs: []string{"metacopy.data"}},
		{name: "rm", opts: def, op: remove("d/a"), needs: []string{"whiteout.temp"}},
		{name: "rm-copied", opts: def, prep: appendTo("d/b", "b2\n"), op: remove("d/b"), needs: []string{"whiteout.placed"}},
		{name: "rm-rf", opts: def, op: removeAll("d")},
		{name: "rmdir-upper", opts: def, prep: seq(rename("e", "e2"), remove("e2/x")), op: remove("e2"),
			needs: []string{"rmdir.aside"}},
		{name: "mv-file", opts: def, op: rename("d/a", "e/a2"),
			needs: []string{"rename.redirect", "rename.opaque", "rename.impure", "rename.whiteout"}},
		{name: "mv-file-fallback", opts: def, op: rename("d/a", "e/a2"), env: []string{"OVL_FAULT=rename.whiteout:EINVAL"},
			needs:   []string{"rename.fallback"},
			windows: map[string]string{"rename.fallback": "an upper without RENAME_WHITEOUT: the lower object shows at the old name until the whiteout is made"}},
		{name: "mv-dir", opts: def, op: rename("d", "e/d2")},
		{name: "mv-upper-dir", opts: def, prep: mkdir("n"), op: rename("n", "e/n")},
		{name: "mv-over-dir", opts: def, prep: seq(mkdir("n"), remove("e/x")), op: rename("n", "e"),
			needs: []string{"rename.cleared"}},
		{name: "mkdir-over-whiteout", opts: def, prep: removeAll("e"), op: mkdir("e"),
			needs: []string{"create.temp", "create.exchanged"}},
		{name: "index", opts: idx, op: appendTo("h1", "more\n"), needs: []string{"index.nlink", "index.published", "linkup.linked"},
			windows: map[string]string{"linkup.linked": "overlay.nlink counts the upper's links, so it is one too high until it is rewritten, as after the kernel's ovl_link_up"}},
		{name: "index-linkup", opts: idx, prep: appendTo("h1", "more\n"), op: chmod("h2", 0o600), needs: []string{"linkup.linked"},
			windows: map[string]string{"linkup.linked": "overlay.nlink counts the upper's links, so it is one too high until it is rewritten, as after the kernel's ovl_link_up"}},
	}
}

// TestCrashMatrix (issue 19, crash safety): each operation that changes
// the upper in several steps, run with the daemon killed (SIGKILL) at each
// named crash point it reaches (internal/fault), then remounted. After the
// remount each path of the merged view must be in its state before the
// operation or after it, as the kernel's overlayfs shows them (no partial
// file, no debris of work/, no lower object uncovered), work/ must be
// empty, the lower layer unchanged, and the kernel's overlayfs must show
// the same view of the upper.
//
// The bounded form (CI) crashes at the first and the last hit of each
// point; OVL_CRASH_LONG=1 at every hit.
func TestCrashMatrix(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	long := os.Getenv(crashLongEnv) != ""
	total, ran := 0, 0
	reached := map[string]bool{}
	scs := crashScenarios()
	for _, sc := range scs {
		t.Run(sc.name, func(t *testing.T) {
			ran++
			total += crashRunScenario(t, bin, sc, long, reached)
		})
	}
	t.Logf("%d crash runs", total)
	if ran < len(scs) {
		return // -run chose some: the points of the others are not reached
	}
	var missing []string
	for _, p := range crashAllPoints {
		if !reached[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		t.Errorf("no scenario reached the points %v", missing)
	}
}

// crashAllPoints are the points of internal/fault.
var crashAllPoints = []string{
	"copyup.create", "copyup.data", "copyup.xattrs", "copyup.attrs", "copyup.metacopy", "copyup.rename", "copyup.renamed",
	"index.nlink", "index.published", "linkup.linked", "metacopy.data",
	"whiteout.temp", "whiteout.placed", "rmdir.aside", "create.temp", "create.exchanged",
	"rename.redirect", "rename.opaque", "rename.impure", "rename.cleared", "rename.whiteout", "rename.fallback",
}

// crashRunScenario runs one scenario's matrix and returns its number of
// crash runs.
func crashRunScenario(t *testing.T, bin string, sc crashScenario, long bool, reached map[string]bool) int {
	base := t.TempDir()
	lowerDir := filepath.Join(base, "l")
	if err := k.Build(lowerDir, sc.opts.Prefix(), crashLower()); err != nil {
		t.Fatal(err)
	}
	lowerBefore := crashLowerSums(t, lowerDir)
	seq := 0
	fresh := func() k.Layout {
		seq++
		d := filepath.Join(base, fmt.Sprintf("run%d", seq))
		l := k.Layout{Lowers: []string{lowerDir}, Upper: d + "/u", Work: d + "/w", Mnt: d + "/m"}
		for _, p := range []string{l.Upper, l.Work, l.Mnt} {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		cliCleanupMount(t, l.Mnt)
		if sc.prep != nil {
			// The state before the operation, written by the kernel.
			if err := (k.Kernel{}).Mount(l, sc.opts); err != nil {
				t.Fatal(err)
			}
			err := sc.prep(l.Mnt)
			if uerr := (k.Kernel{}).Unmount(l.Mnt); uerr != nil {
				t.Fatal(uerr)
			}
			if err != nil {
				t.Fatalf("prep: %v", err)
			}
		}
		return l
	}
	done := func(l k.Layout) { os.RemoveAll(filepath.Dir(l.Upper)) }

	// The kernel's views before and after the operation.
	l := fresh()
	if err := (k.Kernel{}).Mount(l, sc.opts); err != nil {
		t.Fatal(err)
	}
	oldView := crashView(t, "kernel before", l.Mnt)
	if err := sc.op(l.Mnt); err != nil {
		(k.Kernel{}).Unmount(l.Mnt)
		t.Fatalf("kernel: the operation fails: %v", err)
	}
	newView := crashView(t, "kernel after", l.Mnt)
	if err := (k.Kernel{}).Unmount(l.Mnt); err != nil {
		t.Fatal(err)
	}
	done(l)

	// Which points the operation reaches in ovl, and how often.
	l = fresh()
	traceFile := filepath.Join(base, "trace")
	if err := crashMount(bin, l, sc.opts, append([]string{"OVL_CRASH_TRACE=" + traceFile}, sc.env...)); err != nil {
		t.Fatal(err)
	}
	if err := sc.op(l.Mnt); err != nil {
		t.Fatalf("ovl: the operation fails: %v", err)
	}
	if got := crashView(t, "ovl after", l.Mnt); !crashSameView(t, t.Errorf, "ovl after the operation vs the kernel", newView, got) {
		t.FailNow()
	}
	if err := (k.Ovl{Bin: bin}).Unmount(l.Mnt); err != nil {
		t.Fatal(err)
	}
	done(l)
	order, counts := crashTrace(t, traceFile)
	for _, p := range sc.needs {
		if counts[p] == 0 {
			t.Errorf("the operation never reaches %s (reached: %v)", p, order)
		}
	}
	t.Logf("points reached: %v", counts)

	runs := 0
	for _, p := range order {
		reached[p] = true
		hits := []int{1}
		if long {
			hits = hits[:0]
			for i := 1; i <= counts[p]; i++ {
				hits = append(hits, i)
			}
		} else if counts[p] > 1 {
			hits = append(hits, counts[p])
		}
		for _, n := range hits {
			runs++
			label := fmt.Sprintf("%s:%d", p, n)
			l := fresh()
			crashOnce(t, bin, sc, l, label, oldView, newView)
			crashCheckLower(t, label, lowerDir, lowerBefore)
			done(l)
		}
	}
	return runs
}

// crashOnce runs the operation with the daemon killed at point label,
// remounts, and checks the view against the states before and after.
func crashOnce(t *testing.T, bin string, sc crashScenario, l k.Layout, label string, oldView, newView map[string]string) {
	t.Helper()
	if err := crashMount(bin, l, sc.opts, append([]string{"OVL_CRASH=" + label}, sc.env...)); err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	pid, err := (k.Ovl{Bin: bin}).DaemonPid(l.Mnt)
	if err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("%s: pidfd_open: %v", label, err)
	}
	defer unix.Close(pfd)
	opErr := sc.op(l.Mnt)
	if !crashWaitExit(pfd, 60*time.Second) {
		t.Errorf("%s: the daemon did not die (the operation returned %v)", label, opErr)
		unix.Kill(pid, unix.SIGKILL)
		crashWaitExit(pfd, 60*time.Second)
	}
	if err := unix.Unmount(l.Mnt, unix.MNT_DETACH); err != nil {
		t.Fatalf("%s: umount -l: %v", label, err)
	}

	// Remount without the point: work/ is emptied, the view is old or new.
	if err := crashMount(bin, l, sc.opts, nil); err != nil {
		t.Fatalf("%s: remount: %v", label, err)
	}
	if names, err := crashWorkEntries(l.Work); err != nil || len(names) > 0 {
		t.Errorf("%s: work/ after the remount holds %v (%v), want nothing", label, names, err)
	}
	got := crashView(t, label+" remounted", l.Mnt)
	errf := t.Errorf
	if why, ok := sc.windows[strings.SplitN(label, ":", 2)[0]]; ok {
		errf = func(f string, a ...any) { t.Logf("known window (%s): "+f, append([]any{why}, a...)...) }
	}
	crashOldOrNew(t, errf, label, oldView, newView, got)
	if err := (k.Ovl{Bin: bin}).Unmount(l.Mnt); err != nil {
		t.Fatalf("%s: %v", label, err)
	}

	// The kernel takes the upper and shows the same.
	if err := (k.Kernel{}).Mount(l, sc.opts); err != nil {
		t.Errorf("%s: the kernel refuses the upper: %v", label, err)
		return
	}
	kv := crashView(t, label+" kernel", l.Mnt)
	if err := (k.Kernel{}).Unmount(l.Mnt); err != nil {
		t.Fatal(err)
	}
	crashSameView(t, errf, label+": the kernel's view of the upper vs ovl's", kv, got)
}

// crashMount mounts ovl with env added to the daemon's environment.
func crashMount(bin string, l k.Layout, o k.Options, env []string) error {
	args := []string{"mount", "-o", o.OvlOptions(l), l.Mnt}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ovl %s (env %v): %v\n%s", strings.Join(args, " "), env, err, out)
	}
	return nil
}

// crashWaitExit waits for the process of pidfd to exit.
func crashWaitExit(pidfd int, limit time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		n, err := unix.Poll(fds, 1000)
		if err == unix.EINTR {
			continue
		}
		if n > 0 {
			return true
		}
	}
	return false
}

// crashWorkEntries lists workdir/work.
func crashWorkEntries(workdir string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(workdir, "work"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}

// crashTrace reads a trace file: the points in order of first hit, and
// how often each was hit.
func crashTrace(t *testing.T, file string) ([]string, map[string]int) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("trace: %v", err)
	}
	counts := map[string]int{}
	var order []string
	for _, p := range strings.Fields(string(b)) {
		if counts[p] == 0 {
			order = append(order, p)
		}
		counts[p]++
	}
	return order, counts
}

// crashView snapshots a merged view as path -> signature (crashSig), and
// fails on walk problems (a whiteout shown, a name listed twice).
func crashView(t *testing.T, label, mnt string) map[string]string {
	t.Helper()
	tr, err := k.Snapshot(mnt, k.SnapOptions{})
	if err != nil {
		t.Fatalf("%s: snapshot: %v", label, err)
	}
	for _, p := range tr.Problems {
		t.Errorf("%s: %s", label, p)
	}
	v := map[string]string{}
	for p, n := range tr.Nodes {
		v[p] = crashSig(n)
		if n.Type == "dir" && n.ReadDir == "" {
			crashCheckDino(t, label, mnt, p, tr)
		}
	}
	return v
}

// crashCheckDino checks that readdir gives each entry of the directory rel
// the inode number lstat gives it (an impure marker lost to a crash would
// leave a copied-up file's d_ino the upper's).
func crashCheckDino(t *testing.T, label, mnt, rel string, tr *k.Tree) {
	t.Helper()
	ents, err := k.ReadDir(filepath.Join(mnt, rel))
	if err != nil {
		t.Errorf("%s: readdir /%s: %v", label, rel, err)
		return
	}
	for _, e := range ents {
		if e.Name == "." || e.Name == ".." {
			continue
		}
		if n := tr.Nodes[path.Join(rel, e.Name)]; n != nil && n.Ino != e.Ino {
			t.Errorf("%s: /%s: readdir gives inode %d, lstat %d", label, path.Join(rel, e.Name), e.Ino, n.Ino)
		}
	}
}

// crashSig is what the matrix compares of one object: type, mode, owner,
// content, link target, device, link count of non-directories, and xattrs
// (times and inode numbers change with any write, and directory sizes are
// the upper filesystem's business).
func crashSig(n *k.Node) string {
	s := fmt.Sprintf("%s %04o %d:%d", n.Type, n.Perm, n.UID, n.GID)
	switch n.Type {
	case "file":
		s += fmt.Sprintf(" size=%d sha=%s nlink=%d", n.Size, n.Hash, n.Nlink)
	case "symlink":
		s += " -> " + n.Target
	case "dir":
		if n.ReadDir != "" {
			s += " readdir=" + n.ReadDir
		}
	default:
		s += fmt.Sprintf(" rdev=%d nlink=%d", n.Rdev, n.Nlink)
	}
	var xs []string
	for name, v := range n.Xattrs {
		xs = append(xs, fmt.Sprintf("%s=%q", name, v))
	}
	sort.Strings(xs)
	if len(xs) > 0 {
		s += " xattrs[" + strings.Join(xs, " ") + "]"
	}
	return s
}

func crashShort(s string) string {
	if i := strings.Index(s, "sha="); i >= 0 && len(s) > i+16 {
		return s[:i+16] + "…" + s[min(len(s), i+68):]
	}
	return s
}

// crashOldOrNew checks that each path of got is as in old or as in new.
func crashOldOrNew(t *testing.T, errf func(string, ...any), label string, oldView, newView, got map[string]string) {
	t.Helper()
	paths := map[string]bool{}
	for _, m := range []map[string]string{oldView, newView, got} {
		for p := range m {
			paths[p] = true
		}
	}
	var bad []string
	for p := range paths {
		g, ok := got[p]
		if !ok {
			g = "absent"
		}
		o, ok := oldView[p]
		if !ok {
			o = "absent"
		}
		n, ok := newView[p]
		if !ok {
			n = "absent"
		}
		if g != o && g != n {
			bad = append(bad, fmt.Sprintf("/%s: %s, want %s (before) or %s (after)", p, crashShort(g), crashShort(o), crashShort(n)))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		errf("%s: the view after the crash is neither the old nor the new state:\n  %s", label, strings.Join(bad, "\n  "))
	}
}

// crashSameView compares two views, reports the differences, and says
// whether there were none.
func crashSameView(t *testing.T, errf func(string, ...any), label string, want, got map[string]string) bool {
	t.Helper()
	var bad []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			bad = append(bad, fmt.Sprintf("/%s: absent, want %s", p, crashShort(w)))
		} else if g != w {
			bad = append(bad, fmt.Sprintf("/%s: %s, want %s", p, crashShort(g), crashShort(w)))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			bad = append(bad, fmt.Sprintf("/%s: %s, want absent", p, crashShort(g)))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		errf("%s:\n  %s", label, strings.Join(bad, "\n  "))
	}
	return len(bad) == 0
}

// crashLowerSums records a lower layer: every object's content, mode,
// owner, xattrs, inode, mtime and ctime.
func crashLowerSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	tr, err := k.Snapshot(dir, k.SnapOptions{Upper: true})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for p, n := range tr.Nodes {
		m[p] = fmt.Sprintf("%s ino=%d mtime=%d ctime=%d", crashSig(n), n.Ino, n.Mtime, n.Ctime)
	}
	return m
}

// crashCheckLower checks that a lower layer is as it was.
func crashCheckLower(t *testing.T, label, dir string, before map[string]string) {
	t.Helper()
	crashSameView(t, t.Errorf, label+": the lower layer changed", before, crashLowerSums(t, dir))
}
