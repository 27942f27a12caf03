package main

import (
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// Knobs of the random differential tester. Each flag (after -args) has
// an environment variable of the same meaning, for ./scripts/test.
var (
	kcmpSeeds     = flag.String("kcmp.seeds", "", "comma-separated seeds to run instead of the CI set (env KCMP_SEEDS)")
	kcmpOps       = flag.Int("kcmp.ops", 0, "ops per seed (env KCMP_OPS; default 400)")
	kcmpDuration  = flag.Duration("kcmp.duration", 0, "long mode: run new seeds until this much time has passed (env KCMP_DURATION)")
	kcmpStart     = flag.Int64("kcmp.start", 0, "long mode: the first seed (env KCMP_START; default: from the clock)")
	kcmpEvery     = flag.Int("kcmp.every", 0, "also compare the merged views every N ops (env KCMP_EVERY; default 25)")
	kcmpShrink    = flag.Duration("kcmp.shrink", 0, "time to spend shrinking one mismatch (env KCMP_SHRINK; default 60s in the CI set, 5m in long mode; negative: do not shrink)")
	kcmpSave      = flag.String("kcmp.save", "", "directory to save shrunk reproductions in (env KCMP_SAVE)")
	kcmpOpTimeout = flag.Duration("kcmp.optimeout", 0, "per-op timeout (env KCMP_OPTIMEOUT; default kernelcmp.DefaultOpTimeout)")
)

// kcmpCISeeds are the seeds every test run goes through: 1 to 100, and
// the first seeds with the overlapping layouts 1..100 lacks
// (TestKernelRandomCISeedsCover checks that every class of generated
// input is in the set). A gen-5 seed costs about 2.4 times a gen-4 one
// (children for the unprivileged callers, the deep directories, the
// drops): kernel against kernel, 12 seeds took 53 s against gen 4's 22 s
// side by side at load average 20; the 300 gen-4 seeds of the CI set
// before took 67 s at load average 12.
var kcmpCISeeds = func() []int64 {
	var s []int64
	for i := int64(1); i <= 100; i++ {
		s = append(s, i)
	}
	return append(s, 132, 203)
}()

// kcmpReproDir holds the saved reproductions (kernel_regress_test.go).
var kcmpReproDir = filepath.Join("..", "..", "internal", "kernelcmp", "testdata", "repro")

// kcmpOpenDir holds reproductions of bugs found and not fixed yet: each
// must keep failing with its class (TestKernelOpenBugs), and the random
// tester stops a seed at one without failing, so that CI stays a check for
// anything new. Moving a case from here to repro/ is part of its fix.
var kcmpOpenDir = filepath.Join("..", "..", "internal", "kernelcmp", "testdata", "open")

type kcmpSettings struct {
	seeds    []int64
	ops      int
	duration time.Duration
	start    int64
	every    int
	shrink   time.Duration
	save     string
	timeout  time.Duration
}

func kcmpConfig(t *testing.T) kcmpSettings {
	t.Helper()
	s := kcmpSettings{ops: 400, every: 25, shrink: 60 * time.Second}
	str := func(f *string, env string) string {
		if *f != "" {
			return *f
		}
		return os.Getenv(env)
	}
	num := func(f int, env string, def int) int {
		if f != 0 {
			return f
		}
		if v := os.Getenv(env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s=%q: %v", env, v, err)
			}
			return n
		}
		return def
	}
	dur := func(f time.Duration, env string, def time.Duration) time.Duration {
		if f != 0 {
			return f
		}
		if v := os.Getenv(env); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("%s=%q: %v", env, v, err)
			}
			return d
		}
		return def
	}
	if v := str(kcmpSeeds, "KCMP_SEEDS"); v != "" {
		seeds, err := k.ParseSeeds(v)
		if err != nil {
			t.Fatal(err)
		}
		s.seeds = seeds
	} else {
		s.seeds = kcmpCISeeds
	}
	s.ops = num(*kcmpOps, "KCMP_OPS", s.ops)
	s.every = num(*kcmpEvery, "KCMP_EVERY", s.every)
	s.duration = dur(*kcmpDuration, "KCMP_DURATION", 0)
	if s.duration > 0 {
		s.shrink = 5 * time.Minute
	}
	s.shrink = dur(*kcmpShrink, "KCMP_SHRINK", s.shrink)
	s.timeout = dur(*kcmpOpTimeout, "KCMP_OPTIMEOUT", 0)
	s.save = str(kcmpSave, "KCMP_SAVE")
	s.start = *kcmpStart
	if v := os.Getenv("KCMP_START"); s.start == 0 && v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("KCMP_START=%q: %v", v, err)
		}
		s.start = n
	}
	if s.start == 0 {
		s.start = time.Now().Unix() % 1e6 * 1000
	}
	return s
}

// kcmpTester runs seeds and shrinks each new class of mismatch once.
type kcmpTester struct {
	t        *testing.T
	set      kcmpSettings
	cand     k.Mounter
	known    map[string]string // class -> saved reproduction
	intended map[string]string // class -> why the difference is kept
	// notIntendedWith: class -> ovl options under which it is a bug.
	notIntendedWith map[string][]string
	found           map[string]*kcmpFound
	order           []string // classes in the order found
	seeds           int
	ops             int
	// shrinkLeft bounds how many classes are shrunk (the CI set shrinks
	// one, so that a failing CI run stays short).
	shrinkLeft int
	// ovlExtra are ovl options added to every case (TestKernelRandomLowerCache).
	ovlExtra []string
}

type kcmpFound struct {
	class string
	seeds []int64
	repro string // JSON of the shrunk case, or the file it was saved in
	file  string
}

func newKcmpTester(t *testing.T, set kcmpSettings) *kcmpTester {
	testutil.RequireRoot(t)
	kt := &kcmpTester{t: t, set: set, cand: k.Ovl{Bin: testutil.Binary(t)}, known: map[string]string{}, intended: map[string]string{}, notIntendedWith: map[string][]string{}, found: map[string]*kcmpFound{}}
	cases, err := k.LoadCases(kcmpReproDir)
	if err != nil {
		t.Fatal(err)
	}
	// A class is known only while its reproduction still fails: once
	// fixed, the same class seen again is a new bug.
	open, err := k.LoadCases(kcmpOpenDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range open {
		for _, class := range append([]string{c.Class}, c.Also...) {
			if class != "" {
				kt.intended[class] = "open bug, reproduced by " + c.Name + ".json in " + kcmpOpenDir
			}
		}
	}
	for _, c := range cases {
		if o := k.Run(kt.runConfig(c)); !o.Has(c.Class) {
			t.Logf("%s: fixed (does not fail with %q)", c.Name, c.Class)
			continue
		}
		for _, class := range append([]string{c.Class}, c.Also...) {
			if class == "" {
				continue
			}
			kt.known[class] = c.Name
		}
		if c.Intended == "" {
			continue
		}
		// The differences themselves (an op's result), not the view
		// differences that follow from them; but the kernel hiding an
		// entry whose lookup fails is a difference of the views itself
		// (its classes are given only to what was checked to be that).
		for _, class := range append([]string{c.Class}, c.Also...) {
			if strings.HasPrefix(class, "op ") || k.IsHiddenClass(class) {
				kt.intended[class] = c.Intended
				kt.notIntendedWith[class] = c.NotIntendedWith
			}
		}
	}
	return kt
}

func (kt *kcmpTester) runConfig(c k.Case) k.RunConfig {
	rc := c.RunConfig(kt.cand)
	rc.OpTimeout = kt.set.timeout
	return rc
}

// seed runs one seed, reports its mismatches on t and shrinks the new ones.
func (kt *kcmpTester) seed(t *testing.T, seed int64) {
	c := k.RandomCase(seed, kt.set.ops)
	c.Every = kt.set.every
	c.OvlOptions = append(c.OvlOptions, kt.ovlExtra...)
	// KCMP_OVL_OPTS: extra ovl options for every seed (e.g.
	// fuse_uring=on, with the fuse module's enable_uring=Y).
	if e := os.Getenv("KCMP_OVL_OPTS"); e != "" {
		c.OvlOptions = append(c.OvlOptions, strings.Split(e, ",")...)
	}
	rc := kt.runConfig(c)
	rc.StopAtFirst = true
	// An op that failed on both sides (errnos differ) changed neither:
	// the run goes on, so that one such class does not hide the rest.
	// The kernel hiding an entry whose lookup fails leaves both sides
	// alike too.
	rc.Continue = func(f k.Failure) bool { return f.BothFailed || k.IsHiddenClass(f.Class) }
	o := k.Run(rc)
	kt.seeds++
	kt.ops += o.Ran
	// Differences kept on purpose, and open bugs, are logged; the run
	// stopped at one that is not an op failing on both sides (what
	// follows from it is not compared).
	var fails []k.Failure
	for _, f := range o.Failures {
		if why := kt.intended[f.Class]; why != "" && !anyIn(kt.notIntendedWith[f.Class], c.OvlOptions) {
			t.Logf("seed %d: [%s] after op %d: %s", seed, f.Class, f.Op, why)
			continue
		}
		fails = append(fails, f)
	}
	o.Failures = fails
	if !o.Failed() {
		return
	}
	first := o.Failures[0]
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %s: %d failures, first after op %d (rerun: -args -kcmp.seeds=%d -kcmp.ops=%d):\n",
		seed, c, len(o.Failures), first.Op, seed, kt.set.ops)
	// The op log only for a mismatch not seen before: a known one has
	// its reproduction already.
	fresh := false
	for _, class := range o.Classes() {
		fresh = fresh || (kt.found[class] == nil && kt.known[class] == "")
	}
	for i, f := range o.Failures {
		if i == 10 {
			fmt.Fprintf(&b, "... %d more\n", len(o.Failures)-i)
			break
		}
		if fresh {
			fmt.Fprintf(&b, "[%s] %s\n", f.Class, f.Text)
		} else {
			fmt.Fprintf(&b, "[%s] (seen before)\n", f.Class)
		}
	}
	if fresh {
		fmt.Fprintf(&b, "ops up to the first failure:\n%s", c.OpLog(first.Op+1))
	}
	t.Error(b.String())
	for _, class := range o.Classes() {
		if f := kt.found[class]; f != nil {
			f.seeds = append(f.seeds, seed)
			continue
		}
		f := &kcmpFound{class: class, seeds: []int64{seed}}
		kt.found[class] = f
		kt.order = append(kt.order, class)
		if name, ok := kt.known[class]; ok {
			f.file = name + ".json (known)"
			t.Errorf("[%s]: known mismatch, reproduced by %s.json in %s", class, name, kcmpReproDir)
			continue
		}
		if strings.HasPrefix(class, "harness") || kt.set.shrink < 0 || kt.shrinkLeft == 0 {
			continue
		}
		kt.shrinkLeft--
		fl, _ := o.First(class)
		kt.shrinkOne(t, c, class, fl.Op+1, f)
	}
}

func (kt *kcmpTester) shrinkOne(t *testing.T, c k.Case, class string, upto int, f *kcmpFound) {
	start := time.Now()
	res := k.Shrink(c, k.ShrinkConfig{
		Run:    func(c k.Case) k.Outcome { return k.Run(kt.runConfig(c)) },
		Class:  class,
		Upto:   upto,
		Budget: kt.set.shrink,
	})
	sc := res.Case
	sc.Class = class
	sc.Found = fmt.Sprintf("go test ./cmd/ovl -run TestKernelRandom -args -kcmp.seeds=%d -kcmp.ops=%d (gen %d)", c.Seed, kt.set.ops, k.Gen)
	if fl, ok := res.Outcome.First(class); ok {
		sc.Failure = fl.Text
	}
	js, err := sc.Format()
	if err != nil {
		t.Fatal(err)
	}
	f.repro = string(js)
	t.Errorf("[%s]: shrunk in %v: %s\n%s", class, time.Since(start).Round(time.Second), res.Describe(), js)
	if kt.set.save != "" && res.Reproduced {
		file, err := k.SaveCase(kt.set.save, sc)
		if err != nil {
			t.Fatal(err)
		}
		f.file = file
		t.Logf("saved %s", file)
	}
}

// summary lists what was found.
func (kt *kcmpTester) summary(elapsed time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kcmp: %d seeds, %d ops in %v; %d distinct mismatches\n", kt.seeds, kt.ops, elapsed.Round(time.Second), len(kt.order))
	for _, class := range kt.order {
		f := kt.found[class]
		seeds := f.seeds
		more := ""
		if len(seeds) > 8 {
			seeds, more = seeds[:8], fmt.Sprintf(" ... (%d seeds)", len(f.seeds))
		}
		where := f.file
		if where == "" && f.repro != "" {
			where = "shrunk (printed above)"
		}
		if where == "" {
			where = "not shrunk"
		}
		fmt.Fprintf(&b, "  [%s] seeds %v%s: %s\n", class, seeds, more, where)
	}
	return b.String()
}

// TestKernelRandom is the seeded differential test: random layers (several
// lowers, hard links, whiteouts of both forms, opaque dirs) and random ops
// on the kernel's overlayfs and on ovl, every op's errno and output, the
// merged views every few ops and at the end, the uppers and the layer
// interchange compared. A mismatch is shrunk to a short reproduction,
// printed as JSON for internal/kernelcmp/testdata/repro.
//
// By default it runs the CI seeds. Long mode runs new seeds for as long as
// asked, trusted and userxattr alternately:
//
//	go test ./cmd/ovl -run TestKernelRandom -timeout 0 -args -kcmp.duration=30m -kcmp.ops=500 -kcmp.save=/tmp/repros
//
// Environment variables KCMP_SEEDS, KCMP_OPS, KCMP_DURATION, KCMP_START,
// KCMP_EVERY, KCMP_SHRINK, KCMP_SAVE, KCMP_OPTIMEOUT do the same. Every
// walk of ovl's view also checks that readdir's d_ino equals lstat's st_ino
// (SnapOptions.DIno; not the kernel's: it fails that often).
func TestKernelRandom(t *testing.T) {
	set := kcmpConfig(t)
	kt := newKcmpTester(t, set)
	start := time.Now()
	if set.duration > 0 {
		kt.shrinkLeft = -1
		deadline := start.Add(set.duration)
		seed := set.start
		for time.Now().Before(deadline) {
			kt.seed(t, seed)
			seed++
		}
		t.Logf("seeds %d..%d\n%s", set.start, seed-1, kt.summary(time.Since(start)))
		return
	}
	kt.shrinkLeft = 1
	if os.Getenv("KCMP_SEEDS") != "" || *kcmpSeeds != "" {
		kt.shrinkLeft = -1
	}
	for _, seed := range set.seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { kt.seed(t, seed) })
	}
	t.Log(kt.summary(time.Since(start)))
}

// TestKernelRandomTimeout checks that a hung FUSE op fails the run with the
// op instead of hanging it: the ovl daemon is stopped before an op that
// needs it, so the op never gets an answer until the harness aborts the
// connection.
func TestKernelRandomTimeout(t *testing.T) {
	kt := newKcmpTester(t, kcmpSettings{})
	c := k.Case{Seed: 1, NLowers: 1, Layers: k.Layers{Lowers: []k.Layer{{k.File("f", "lower")}}},
		Ops: []k.Op{{Op: "lstat", Path: "f"}, {Op: "create", Path: "new", Mode: 0o644}, {Op: "lstat", Path: "new"}}}
	rc := kt.runConfig(c)
	// Long enough for the ops before the stop on a loaded machine; the
	// stopped daemon never answers, however long the wait.
	rc.OpTimeout = 15 * time.Second
	var pid int
	rc.BeforeOp = func(i int, p *k.Pair) {
		if i != 1 {
			return
		}
		var err error
		if pid, err = kt.cand.(k.Ovl).DaemonPid(p.Cand.Layout.Mnt); err != nil {
			t.Fatal(err)
		}
		if err := kcmpSignal(pid, true); err != nil {
			t.Fatal(err)
		}
		// kill(2) returns before every thread has stopped: a busy thread
		// could still answer the next request. Wait until all have.
		for deadline := time.Now().Add(60 * time.Second); !kcmpStopped(pid); {
			if time.Now().After(deadline) {
				t.Fatalf("ovl daemon %d not stopped 60s after SIGSTOP", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	o := k.Run(rc)
	if pid != 0 {
		kcmpSignal(pid, false) // let it see the abort and exit
	}
	if !o.TimedOut || len(o.Failures) != 1 || o.Failures[0].Op != 1 || o.Failures[0].Class != "timeout: op create on ovl" {
		t.Fatalf("want one timeout of op 1 (create) on ovl, got timed out=%v, %v", o.TimedOut, o.Failures)
	}
	if o.Ran != 1 {
		t.Errorf("ran %d ops, want 1", o.Ran)
	}
	t.Logf("%s", o.Failures[0])
	// The daemon must be gone (the abort ended its connection).
	for deadline := time.Now().Add(60 * time.Second); kcmpAlive(pid) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if kcmpAlive(pid) {
		t.Errorf("ovl daemon %d still running after its connection was aborted", pid)
	}
}

func kcmpSignal(pid int, stop bool) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	if stop {
		return p.Signal(sigStop)
	}
	return p.Signal(sigCont)
}

// kcmpStopped reports whether every thread of pid is stopped by a signal.
func kcmpStopped(pid int) bool {
	stats, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if len(stats) == 0 {
		return false
	}
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			return false
		}
		// The state follows the command name in parentheses.
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i < 0 || i+2 >= len(s) || s[i+2] != 'T' {
			return false
		}
	}
	return true
}

func kcmpAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie has exited.
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

const (
	sigStop = syscall.SIGSTOP
	sigCont = syscall.SIGCONT
)

// TestKernelRandomCISeedsCover checks that the CI seeds generate every
// class of input of issues 17 and 18 with the default options (passthrough
// on), and the kernel's index and metacopy features (gen 7),
// so that a generator change cannot silently drop one from CI.
func TestKernelRandomCISeedsCover(t *testing.T) {
	have := map[string]bool{}
	for _, seed := range kcmpCISeeds {
		c := k.RandomCase(seed, 400)
		if c.Overlap != "" {
			have["layers "+c.Overlap] = true
		}
		passthrough := len(c.OvlOptions) == 0
		// Gen 7: the kernel's index and metacopy features, with each
		// xattr namespace and with passthrough on.
		if c.Index == "on" {
			have[fmt.Sprintf("index=on, userxattr=%v", c.UserXattr)] = true
		}
		if c.Metacopy == "on" && passthrough {
			have["metacopy=on, passthrough on"] = true
		}
		if c.Metacopy == "on" && c.Index == "on" {
			have["index=on and metacopy=on"] = true
		}
		for i, l := range append(append([]k.Layer{}, c.Layers.Lowers...), c.Layers.Upper) {
			for _, e := range l {
				if e.AUFS != "" {
					// Issue 18: AUFS whiteouts and opaque marks, lower and upper.
					where := "lower"
					if i == len(c.Layers.Lowers) {
						where = "upper"
					}
					have[fmt.Sprintf("AUFS %s in the %s", e.AUFS, where)] = true
					if e.Kind == k.KindWhiteout && e.Data != "" {
						have["AUFS whiteout not empty"] = true
					}
				}
				if e.PermSet && e.Perm == 0 && e.Kind == k.KindFile {
					have["lower or upper file of mode 0"] = true
				}
				for name, v := range e.Xattrs {
					if strings.HasPrefix(name, "overlay.") && !(name == "overlay.opaque" && v == "y") {
						have["garbage "+name] = true
					}
				}
				if strings.Contains(e.Path, k.Name255) {
					have["layer name of 255 bytes"] = true
				}
			}
		}
		// d_ino: a lower or merged directory renamed within its parent
		// (a redirect, no parent marked impure), and a lower symlink
		// copied up under userxattr (no origin: its number holds only
		// while its node lives) before a drop_caches.
		lowerDir, lowerSymlink := map[string]bool{}, map[string]bool{}
		for _, l := range c.Layers.Lowers {
			for _, e := range l {
				for d := path.Dir(e.Path); d != "."; d = path.Dir(d) {
					lowerDir[d] = true
				}
				lowerDir[e.Path] = lowerDir[e.Path] || e.Kind == k.KindDir
				lowerSymlink[e.Path] = lowerSymlink[e.Path] || e.Kind == k.KindSymlink
			}
		}
		redirects := c.RedirectDir == "on" || c.RedirectDir == "" && !c.UserXattr
		symlinkUp := false
		heldPaths := map[string]bool{}
		for _, op := range c.Ops {
			if op.Op == "rename" && lowerDir[op.Path] && path.Dir(op.Path) == path.Dir(op.Path2) && redirects && passthrough {
				have["lower dir renamed within its parent, redirect_dir=on, passthrough on"] = true
			}
			if (op.Op == "utimes" || op.Op == "lchown") && lowerSymlink[op.Path] && c.UserXattr && passthrough {
				symlinkUp = true
			}
			if op.Op == "dropcaches" && symlinkUp {
				have["lower symlink copied up with userxattr, then drop_caches, passthrough on"] = true
			}
			p := op.Path + "\x00" + op.Path2
			switch {
			case op.Op == "dropcaches":
				have["drop_caches"] = true
			case op.Op == "umask" && op.Mode&0o777 == 0o777:
				have["umask 0777"] = true
			case op.Op == "hold" && passthrough:
				have["fd held, passthrough on"] = true
				heldPaths[op.Path] = true
			case op.Op == "writeheld":
				have["write through a held fd"] = true
			case (op.Op == "append" || op.Op == "truncate") && heldPaths[op.Path] && passthrough:
				have["write or truncate while a reader holds the file, passthrough on"] = true
			}
			if op.As != nil {
				have[fmt.Sprintf("op as uid %d", op.As.UID)] = true
			}
			if op.Op == "open" && op.Flags&unix.O_ACCMODE == unix.O_RDONLY && op.Flags&unix.O_TRUNC != 0 {
				have["open O_RDONLY|O_TRUNC"] = true
			}
			if op.Op == "open" && op.Flags&unix.O_APPEND != 0 {
				have["open O_APPEND"] = true
			}
			if (op.Op == "create" || op.Op == "mkdir") && op.Mode == 0 {
				have[op.Op+" mode 0"] = true
			}
			for _, m := range []uint32{0o4000, 0o2000, 0o1000, 0o7777} {
				if (op.Op == "create" || op.Op == "mkdir" || op.Op == "chmod") && op.Mode&0o7777 == m {
					have[fmt.Sprintf("%s mode %04o", op.Op, m)] = true
				}
			}
			if strings.Contains(p, k.Name256) {
				have["name of 256 bytes"] = true
			}
			if op.Op == "rename" && strings.Contains(op.Path2, k.Name256) {
				have["rename to a name of 256 bytes"] = true
			}
			if strings.HasPrefix(op.Path, k.DeepDir+"/"+k.Name255) {
				have["path near PATH_MAX"] = true
			}
		}
	}
	want := []string{"drop_caches", "umask 0777", "fd held, passthrough on", "write through a held fd",
		"write or truncate while a reader holds the file, passthrough on", "op as uid 1000", "op as uid 65534",
		"open O_RDONLY|O_TRUNC", "open O_APPEND", "create mode 0", "mkdir mode 0", "name of 256 bytes",
		"rename to a name of 256 bytes", "path near PATH_MAX", "lower or upper file of mode 0", "layer name of 255 bytes",
		"garbage overlay.opaque", "garbage overlay.redirect", "garbage overlay.metacopy", "garbage overlay.origin",
		"AUFS whiteout not empty", "index=on, userxattr=true", "index=on, userxattr=false",
		"metacopy=on, passthrough on", "index=on and metacopy=on",
		"lower dir renamed within its parent, redirect_dir=on, passthrough on",
		"lower symlink copied up with userxattr, then drop_caches, passthrough on"}
	for _, f := range k.AUFSForms {
		want = append(want, "AUFS "+f+" in the lower", "AUFS "+f+" in the upper")
	}
	for _, m := range []string{"create", "mkdir", "chmod"} {
		for _, b := range []string{"4000", "2000", "1000", "7777"} {
			want = append(want, m+" mode "+b)
		}
	}
	for _, o := range k.Overlaps {
		want = append(want, "layers "+o)
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("no CI seed generates %s", w)
		}
	}
}

// anyIn reports whether one of opts is in have.
func anyIn(opts, have []string) bool {
	for _, o := range opts {
		if slices.Contains(have, o) {
			return true
		}
	}
	return false
}
