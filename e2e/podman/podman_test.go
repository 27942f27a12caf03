package podman

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// outcome is the result of one scenario on one program and mode.
type outcome struct {
	views    []view
	problems []string
	err      error
}

var programOrder = []string{progKernel, progFuse, progOvl}

// TestPodman runs every scenario on every program, rootful and rootless,
// each program after its reference, and logs a table of the results and of
// the time `podman run --rm` takes.
func TestPodman(t *testing.T) {
	s := newSuite(t)
	selected := programOrder
	if env := os.Getenv("OVL_PODMAN_PROGRAMS"); env != "" {
		selected = strings.Split(env, ",")
		for _, p := range selected {
			if !slices.Contains(programOrder, p) {
				t.Fatalf("OVL_PODMAN_PROGRAMS: unknown program %q (have %v)", p, programOrder)
			}
		}
	}
	for _, pn := range programOrder {
		if !slices.Contains(selected, pn) {
			continue
		}
		prog := s.progs[pn]
		t.Run(pn, func(t *testing.T) {
			for _, rootless := range []bool{false, true} {
				t.Run(modeName(rootless), func(t *testing.T) {
					for _, sc := range scenarios {
						key := tableKey(sc.name, pn, rootless)
						t.Run(sc.name, func(t *testing.T) {
							s.table[key] = "FAIL" // unless it returns
							s.table[key] = s.runScenario(t, sc, prog, rootless)
						})
					}
					t.Run("run-time", func(t *testing.T) { s.timeRun(t, prog, rootless) })
				})
			}
		})
	}
	s.logTable(t)
}

func tableKey(row, prog string, rootless bool) string {
	return row + "|" + prog + "|" + modeName(rootless)
}

// informational reports whether a program's differences from a
// scenario's reference are only logged: fuse-overlayfs is there for
// comparison (its own bugs are not ovl's to fix), and so is a scenario's
// also program; ovl and the reference must pass.
func informational(sc *scenario, prog string) bool { return prog == progFuse || prog == sc.also }

// runScenario is one subtest: it reports what check found, as failures or,
// for an informational program, as log lines, and returns the status the
// table shows: ref, PASS, FAIL or differs.
func (s *suite) runScenario(t *testing.T, sc *scenario, prog program, rootless bool) string {
	findings, isRef := s.check(t, sc, prog, rootless)
	for _, f := range findings {
		if informational(sc, prog.name) {
			t.Log("differs (for information): " + f)
		} else {
			t.Error(f)
		}
	}
	switch {
	case len(findings) > 0 && informational(sc, prog.name):
		return "differs"
	case len(findings) > 0:
		return "FAIL"
	case isRef:
		return "ref"
	}
	return "PASS"
}

// check runs a scenario and returns what is wrong with it: the run's own
// failure and problems, the reference's, and how its views differ from the
// reference's. isRef says the program is the scenario's reference.
func (s *suite) check(t *testing.T, sc *scenario, prog program, rootless bool) (findings []string, isRef bool) {
	got := s.outcome(t, sc, prog, rootless)
	findings = append(findings, got.problems...)
	if got.err != nil {
		return append(findings, got.err.Error()), prog.name == sc.ref
	}
	if prog.name == sc.ref {
		t.Logf("%s is the reference of %s", prog.name, sc.name)
		return findings, true
	}
	ref := s.outcome(t, sc, s.progs[sc.ref], rootless)
	if ref.err != nil {
		return append(findings, fmt.Sprintf("the reference run (%s) failed: %v", sc.ref, ref.err)), false
	}
	for _, p := range ref.problems {
		findings = append(findings, fmt.Sprintf("the reference run (%s) has a problem: %s", sc.ref, p))
	}
	compare := compareViews
	if sc.compare != nil {
		compare = func(ref, got []view) []string { return sc.compare(prog.name, ref, got) }
	}
	refViews := ref.views
	if sc.ref == progKernel && rootless {
		refViews = kernelRootlessLinks(ref.views, got.views)
	}
	findings = append(findings, compare(refViews, got.views)...)
	if sc.also != "" && prog.name != sc.also {
		if also := s.outcome(t, sc, s.progs[sc.also], rootless); also.err != nil {
			t.Logf("for information, %s failed: %v", sc.also, also.err)
		} else {
			for _, d := range compareViews(also.views, got.views) {
				t.Logf("for information, against %s: %s", sc.also, strings.ReplaceAll(d, "reference", sc.also))
			}
		}
	}
	return findings, false
}

// outcome runs a scenario on a program and mode once, and keeps the result.
func (s *suite) outcome(t *testing.T, sc *scenario, prog program, rootless bool) *outcome {
	key := tableKey(sc.name, prog.name, rootless)
	if o := s.results[key]; o != nil {
		return o
	}
	if !strings.HasPrefix(t.Name(), "TestPodman/"+prog.name+"/") {
		t.Logf("running %s with %s %s for the reference", sc.name, prog.name, modeName(rootless))
	}
	x := &run{s: s, prog: prog, rootless: rootless}
	views, err := sc.run(x)
	for _, v := range views {
		// A listing that failed is the same on both sides: it must not
		// pass as a match.
		if v.list && !strings.HasPrefix(v.text, ". directory ") {
			x.problem("listing %s has no root entry:\n%s", v.name, tail(v.text, 10))
		}
	}
	o := &outcome{views: views, problems: x.problems, err: err}
	s.results[key] = o
	if dir := os.Getenv("OVL_PODMAN_DUMP"); dir != "" {
		s.dump(t, dir, key, o)
	}
	return o
}

// dump writes an outcome's views to a file of dir, to read or diff by hand.
func (s *suite) dump(t *testing.T, dir, key string, o *outcome) {
	var b strings.Builder
	for _, v := range o.views {
		fmt.Fprintf(&b, "=== %s\n%s", v.name, v.text)
	}
	for _, p := range o.problems {
		fmt.Fprintf(&b, "=== problem\n%s\n", p)
	}
	if o.err != nil {
		fmt.Fprintf(&b, "=== error\n%v\n", o.err)
	}
	name := strings.ReplaceAll(key, "|", "-") + ".txt"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644); err != nil {
		t.Logf("OVL_PODMAN_DUMP: %v", err)
	}
}

// timeRun logs the median wall time of `podman run --rm IMG true`, a
// benchmark-like figure that is never asserted.
func (s *suite) timeRun(t *testing.T, prog program, rootless bool) {
	fail := t.Fatal
	if prog.name == progFuse {
		fail = t.Skip
	}
	st, err := s.store("main", prog, rootless)
	if err != nil {
		fail(err)
	}
	img, err := st.image("base")
	if err != nil {
		fail(err)
	}
	const runs = 5
	var times []time.Duration
	for i := range runs + 1 {
		start := time.Now()
		if _, err := st.podman("run", "--rm", img, "true"); err != nil {
			fail(err)
		}
		if i > 0 { // the first run warms the caches
			times = append(times, time.Since(start))
		}
	}
	slices.Sort(times)
	median := times[len(times)/2]
	t.Logf("median of %d runs of podman run --rm IMG true: %v (min %v, max %v)", runs, median.Round(time.Millisecond),
		times[0].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
	s.table[tableKey("run --rm (median)", prog.name, rootless)] = fmt.Sprintf("%.2fs", median.Seconds())
}

// logTable logs the status of every scenario: PASS, FAIL, ref (the
// reference run), differs (an informational program differs from the
// reference), blank (not run).
func (s *suite) logTable(t *testing.T) {
	if len(s.table) == 0 {
		return
	}
	var cols []string
	for _, p := range programOrder {
		for _, rootless := range []bool{false, true} {
			cols = append(cols, p+"|"+modeName(rootless))
		}
	}
	var rows []string
	for _, sc := range scenarios {
		rows = append(rows, sc.name)
	}
	rows = append(rows, "run --rm (median)")
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-18s", "scenario")
	for _, c := range cols {
		p, m, _ := strings.Cut(c, "|")
		fmt.Fprintf(&b, " %-17s", p+"/"+m)
	}
	for _, r := range rows {
		fmt.Fprintf(&b, "\n%-18s", r)
		for _, c := range cols {
			fmt.Fprintf(&b, " %-17s", s.table[r+"|"+c])
		}
	}
	b.WriteString("\n(force-mask: the kernel driver runs without the mask, which it does not allow)")
	t.Logf("results (columns: program/mode):%s", b.String())
}
