package kernelcmp

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/mountinfo"
)

// DefaultOpTimeout bounds one op, one snapshot or one final step of a Run.
// It is a safety net against a hung FUSE request, not a performance
// limit: it is far above what any op takes on a loaded machine.
const DefaultOpTimeout = 60 * time.Second

// RunConfig is one differential run: Ops applied to both sides of a Pair
// built from Layers, one op at a time, each op's Result compared.
type RunConfig struct {
	// Config are the Pair's options and mounters (Observe is Run's own).
	Config Config
	Layers Layers
	Ops    []Op
	// Every compares the merged views after every Every-th op too (0: at
	// the end only).
	Every int
	// OpTimeout bounds each op and each snapshot (0: DefaultOpTimeout).
	// On timeout the side's mount is aborted and the run ends.
	OpTimeout time.Duration
	// BeforeOp, if set, runs before op i on both sides (a test hook).
	BeforeOp func(i int, p *Pair)
	// StopAtFirst ends the run at the first op or periodic view that
	// differs: after it the sides' states differ and most later reports
	// are consequences.
	StopAtFirst bool
	// Continue, if set, names failures StopAtFirst goes on after (e.g. an
	// op that failed on both sides, with different errnos: it changed
	// neither side, so what follows is still comparable).
	Continue func(Failure) bool
}

// ViewsOp is an op that Run does itself: compare the merged views at this
// point of the sequence (a periodic view check made explicit, so that a
// shrinker can keep the checks a failure needs and drop the others).
const ViewsOp = "views"

// Failure is one mismatch (or harness failure) of a Run.
type Failure struct {
	// Op is the index of the last op applied when it was seen: Ops[:Op+1]
	// lead to it (-1: before the first op).
	Op int
	// Class is a coarse signature (op kind and errnos, or field and
	// object type of a diff, without paths), the same for the same bug
	// seen on different names; shrinking keeps it.
	Class string
	// Text is the full report.
	Text string
	// BothFailed is set for an op that failed on both sides, with
	// different errnos.
	BothFailed bool
}

func (f Failure) String() string { return fmt.Sprintf("after op %d: [%s] %s", f.Op, f.Class, f.Text) }

// Outcome is what a Run found.
type Outcome struct {
	Failures []Failure
	Ran      int  // ops applied on both sides
	TimedOut bool // a side did not answer and was aborted
	Elapsed  time.Duration
}

// Failed reports whether anything differed.
func (o Outcome) Failed() bool { return len(o.Failures) > 0 }

// Has reports whether a failure of class c was seen.
func (o Outcome) Has(c string) bool {
	for _, f := range o.Failures {
		if f.Class == c {
			return true
		}
	}
	return false
}

// First is the first failure of class c.
func (o Outcome) First(c string) (Failure, bool) {
	for _, f := range o.Failures {
		if f.Class == c {
			return f, true
		}
	}
	return Failure{}, false
}

// Classes are the distinct failure classes, in the order first seen.
func (o Outcome) Classes() []string {
	var out []string
	seen := map[string]bool{}
	for _, f := range o.Failures {
		if !seen[f.Class] {
			seen[f.Class] = true
			out = append(out, f.Class)
		}
	}
	return out
}

// Harness reports whether the run failed for a reason of the harness
// (setup, build, mount) rather than a mismatch.
func (o Outcome) Harness() bool {
	for _, f := range o.Failures {
		if strings.HasPrefix(f.Class, "harness") {
			return true
		}
	}
	return false
}

// Run runs rc and reports every mismatch instead of failing a test: it
// makes its own Pair (on a recording testing.TB) and removes it before it
// returns, so that a shrinker can call it hundreds of times.
func Run(rc RunConfig) Outcome {
	start := time.Now()
	r := &runner{rc: rc, rt: &recT{}, timeout: rc.OpTimeout}
	if r.timeout <= 0 {
		r.timeout = DefaultOpTimeout
	}
	r.times = knownTimes(rc)
	// "umask" ops change this process's umask: give every run the same
	// start and leave the process as it was. The helper for ops of other
	// callers is built before that.
	for _, op := range rc.Ops {
		if op.As != nil {
			if _, err := Helper(); err != nil {
				r.fail(-1, "harness: helper", err.Error())
				return r.out
			}
			break
		}
	}
	umask := unix.Umask(0o022)
	r.run()
	unix.Umask(umask)
	r.rt.runCleanups()
	for _, e := range r.rt.takeErrs() {
		if strings.HasPrefix(e, "cleanup") {
			r.fail(len(rc.Ops)-1, "harness: cleanup", e)
		}
	}
	r.out.Elapsed = time.Since(start)
	return r.out
}

type runner struct {
	rc      RunConfig
	rt      *recT
	p       *Pair
	timeout time.Duration
	times   map[int64]bool
	out     Outcome
	fds     [2]FDs
	last    int // index of the last op applied on both sides

	mu       sync.Mutex
	findings []Finding
}

func (r *runner) fail(op int, class, text string) {
	r.out.Failures = append(r.out.Failures, Failure{Op: op, Class: class, Text: text})
}

// guard runs f in this goroutine and turns a Fatal of the recording
// TB (or a panic) into a harness failure.
func (r *runner) guard(what string, f func()) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			msg := fmt.Sprint(v)
			if v == errFatal {
				msg = strings.Join(r.rt.takeErrs(), "; ")
			}
			r.fail(r.last, "harness: "+what, what+": "+msg)
			ok = false
		}
	}()
	f()
	return true
}

// timed runs f in a goroutine within the timeout. On timeout it aborts
// the mounts mnts (the FUSE connection, then a lazy unmount), waits a
// little for f to come back and reports false.
func (r *runner) timed(mnts []string, f func()) (ok bool, panicked any) {
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		f()
	}()
	timer := time.NewTimer(r.timeout)
	defer timer.Stop()
	select {
	case v := <-done:
		return true, v
	case <-timer.C:
	}
	for _, m := range mnts {
		AbortMount(m)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	return false, nil
}

func (r *runner) run() {
	rc := r.rc
	r.last = -1
	cfg := rc.Config
	cfg.Observe = func(f Finding) {
		r.mu.Lock()
		r.findings = append(r.findings, f)
		r.mu.Unlock()
	}
	if !r.guard("setup", func() { r.p = NewPair(r.rt, cfg, rc.Layers) }) {
		return
	}
	if ref, cand := r.p.Ref.MountErr, r.p.Cand.MountErr; ref != nil || cand != nil {
		// Overlapping layers: both sides must refuse, or neither.
		switch {
		case ref == nil:
			r.fail(-1, fmt.Sprintf("mount %s: ok vs refused", cfg.Overlap), fmt.Sprintf("%s mounted, %s refused: %v", r.p.Ref.Name, r.p.Cand.Name, cand))
		case cand == nil:
			r.fail(-1, fmt.Sprintf("mount %s: refused vs ok", cfg.Overlap), fmt.Sprintf("%s refused (%v), %s mounted", r.p.Ref.Name, ref, r.p.Cand.Name))
		}
		return
	}
	defer func() {
		for i := range r.fds {
			r.fds[i].Close()
		}
	}()
	sides := r.p.Sides()
	for i := 0; i < len(rc.Ops); {
		op := rc.Ops[i]
		if rc.BeforeOp != nil {
			rc.BeforeOp(i, r.p)
		}
		if op.Op == ViewsOp {
			r.last, r.out.Ran = i, i+1
			if _, ok := r.views(fmt.Sprintf("at op %d", i)); !ok || r.stop() {
				return
			}
			i++
			continue
		}
		// Ops of another caller run in one child process per side, as
		// many in a row as share the caller (up to the next periodic
		// view check).
		n := 1
		child := op.As != nil && !inProcessOnly(op.Op)
		if child {
			for i+n < len(rc.Ops) && sameCaller(op, rc.Ops[i+n]) && (rc.Every <= 0 || (i+n)%rc.Every != 0) {
				if rc.BeforeOp != nil {
					rc.BeforeOp(i+n, r.p)
				}
				n++
			}
		}
		batch := rc.Ops[i : i+n]
		var res [2][]Result
		for j, s := range sides {
			if op.Op == "dropcaches" && j == 1 {
				// One drop forgets the inodes of both mounts.
				res[1] = res[0]
				continue
			}
			var cerr error
			ok, pv := r.timed([]string{s.Layout.Mnt}, func() {
				if !child {
					res[j] = []Result{op.ApplyFDs(s.Layout.Mnt, &r.fds[j])}
					return
				}
				res[j], cerr = RunOps(s.Layout.Mnt, op.As, batch)
			})
			if pv != nil {
				r.fail(i, "harness: panic", fmt.Sprintf("op %d %s on %s: panic: %v", i, op, s.Name, pv))
				return
			}
			if !ok {
				r.out.TimedOut = true
				r.fail(i, fmt.Sprintf("timeout: op %s on %s", op.Op, s.Name),
					fmt.Sprintf("op %d %s: %s did not answer within %v; its mount was aborted", i, op, s.Name, r.timeout))
				return
			}
			if cerr == nil && len(res[j]) != n {
				cerr = fmt.Errorf("%d results for %d ops", len(res[j]), n)
			}
			if cerr != nil {
				r.fail(i, "harness: child", fmt.Sprintf("op %d %s on %s: %v", i, op, s.Name, cerr))
				return
			}
		}
		for k, op := range batch {
			r.last, r.out.Ran = i+k, i+k+1
			a, b := res[0][k], res[1][k]
			switch {
			case a.Err != "" || b.Err != "":
				r.fail(i+k, "harness: op "+op.Op, fmt.Sprintf("op %d %s: harness error: %s %s, %s %s", i+k, op, sides[0].Name, a, sides[1].Name, b))
			case a != b:
				class := opClass(op, a, b)
				if hc, ok := r.hiddenOp(op, a, b); ok {
					class = hc
				}
				r.fail(i+k, class, fmt.Sprintf("op %d %s: %s %s, %s %s", i+k, op, sides[0].Name, a, sides[1].Name, b))
				if a.Errno != 0 && b.Errno != 0 {
					r.out.Failures[len(r.out.Failures)-1].BothFailed = true
				}
			}
			if r.stop() {
				return
			}
		}
		i += n
		if rc.Every > 0 && i%rc.Every == 0 && i < len(rc.Ops) {
			if _, ok := r.views(fmt.Sprintf("after op %d", i-1)); !ok || r.stop() {
				return
			}
		}
	}
	r.finish()
}

// stop reports whether a StopAtFirst run ends here: a failure that
// Continue does not let pass was seen.
func (r *runner) stop() bool {
	if !r.rc.StopAtFirst {
		return false
	}
	for _, f := range r.out.Failures {
		if r.rc.Continue == nil || !r.rc.Continue(f) {
			return true
		}
	}
	return false
}

// sameCaller reports whether b can run in the same child process as a
// (a.As is set): the same credentials, and not an op the runner does
// itself or one that needs the held fds.
func sameCaller(a, b Op) bool {
	if b.As == nil || b.As.UID != a.As.UID || b.As.GID != a.As.GID || len(b.As.Groups) != len(a.As.Groups) {
		return false
	}
	for i := range a.As.Groups {
		if a.As.Groups[i] != b.As.Groups[i] {
			return false
		}
	}
	return !inProcessOnly(b.Op)
}

// inProcessOnly are the ops Run applies in its own process whatever
// their As says.
func inProcessOnly(op string) bool {
	switch op {
	case ViewsOp, "hold", "readheld", "writeheld", "unhold", "dropcaches", "umask":
		return true
	}
	return false
}

// opClass is the class of an op whose results differ: the op kind and
// both errnos ("op setxattr: ok vs EPERM"), or "output" when only the
// output differs.
func opClass(op Op, a, b Result) string {
	name := func(r Result) string {
		if r.Errno == 0 {
			return "ok"
		}
		return ErrnoName(r.Errno)
	}
	if a.Errno == b.Errno {
		return fmt.Sprintf("op %s: %s", op.Op, outputDiff(op.Op, a.Out, b.Out))
	}
	return fmt.Sprintf("op %s: %s vs %s", op.Op, name(a), name(b))
}

// outputDiff says what differs between two outputs of an op: the fields
// of a StatString, or the data and the fstat of a readheld.
func outputDiff(op, a, b string) string {
	switch op {
	case "stat", "lstat":
		return statDiff(a, b)
	case "readheld":
		da, sa := splitHeld(a)
		db, sb := splitHeld(b)
		var parts []string
		if da != db {
			if strings.HasPrefix(da, "read:") || strings.HasPrefix(db, "read:") {
				parts = append(parts, fmt.Sprintf("read %s vs %s", heldErr(da), heldErr(db)))
			} else {
				parts = append(parts, "data differs")
			}
		}
		if sa != sb {
			if strings.HasPrefix(sa, "fstat:") || strings.HasPrefix(sb, "fstat:") {
				parts = append(parts, fmt.Sprintf("fstat %s vs %s", heldErr(sa), heldErr(sb)))
			} else {
				parts = append(parts, "fstat "+statDiff(sa, sb))
			}
		}
		return strings.Join(parts, ", ")
	}
	return "output differs"
}

func heldErr(s string) string {
	if _, e, ok := strings.Cut(s, ":"); ok && !strings.Contains(s, " ") {
		return e
	}
	return "ok"
}

// splitHeld splits a readheld output into its data part (quoted, or
// read:ERRNO) and its stat part.
func splitHeld(s string) (data, st string) {
	if strings.HasPrefix(s, `"`) {
		if q, err := strconv.QuotedPrefix(s); err == nil {
			return q, strings.TrimPrefix(s[len(q):], " ")
		}
	}
	data, st, _ = strings.Cut(s, " ")
	return data, st
}

// statDiff names the StatString fields that differ ("nlink differs").
func statDiff(a, b string) string {
	fa, fb := strings.Fields(a), strings.Fields(b)
	names := []string{"type", "perm", "owner"}
	var diff []string
	for i := 0; i < max(len(fa), len(fb)); i++ {
		var x, y string
		if i < len(fa) {
			x = fa[i]
		}
		if i < len(fb) {
			y = fb[i]
		}
		if x == y {
			continue
		}
		n := fmt.Sprint("field", i)
		if i < len(names) {
			n = names[i]
		} else if k, _, ok := strings.Cut(x+y, "="); ok {
			n = k
		}
		diff = append(diff, n)
	}
	if len(diff) == 0 {
		return "output differs"
	}
	return strings.Join(diff, ",") + " differs"
}

// views snapshots both merged views (each within the timeout), records
// problems and diffs, and returns the trees. ok is false when the run
// must stop (a side hung or could not be walked).
func (r *runner) views(label string) (trees [2]*Tree, ok bool) {
	sides := r.p.Sides()
	for j, s := range sides {
		var t *Tree
		var err error
		done, pv := r.timed([]string{s.Layout.Mnt}, func() { t, err = Snapshot(s.Layout.Mnt, SnapOptions{NoHash: r.p.Cfg.NoHash, DIno: promisesDIno(s.M)}) })
		if pv != nil {
			r.fail(r.last, "harness: panic", fmt.Sprintf("%s: snapshot %s: panic: %v", label, s.Name, pv))
			return trees, false
		}
		if !done {
			r.out.TimedOut = true
			r.fail(r.last, "timeout: snapshot on "+s.Name, fmt.Sprintf("%s: snapshot of %s did not finish within %v; its mount was aborted", label, s.Name, r.timeout))
			return trees, false
		}
		if err != nil {
			r.fail(r.last, fmt.Sprintf("snapshot %s: %s", s.Name, errClass(err)), fmt.Sprintf("%s: snapshot %s: %v", label, s.Name, err))
			return trees, false
		}
		r.problems(label, s, t)
		trees[j] = t
	}
	r.diffs(label+": merged view", "view", ScopeMerged, trees[0], trees[1])
	return trees, true
}

func errClass(err error) string {
	if e, ok := Errno(err); ok && e != 0 {
		return ErrnoName(e)
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

var quoted, number = regexp.MustCompile(`"[^"]*"`), regexp.MustCompile(`[0-9]+`)

func problemClass(side, pr string) string {
	// Drop the leading path, quoted names and numbers: "a/b: readdir
	// lists "x" twice" is "readdir lists _ twice", and inode numbers
	// differ from run to run (shrinking reruns).
	if i := strings.Index(pr, ": "); i >= 0 {
		pr = pr[i+2:]
	}
	return fmt.Sprintf("problem %s: %s", side, number.ReplaceAllString(quoted.ReplaceAllString(pr, "_"), "N"))
}

func (r *runner) problems(label string, s *Side, t *Tree) {
	for _, pr := range t.Problems {
		if strayWhiteout(s.M, s.Layout.Upper, pr) {
			continue
		}
		r.fail(r.last, problemClass(s.Name, pr), fmt.Sprintf("%s: %s: %s", label, s.Name, pr))
	}
}

// strayWhiteout reports whether pr is the kernel listing a whiteout of its
// upper layer in a directory it merges with nothing (a "stray" whiteout,
// docs/differences.md): it reads such a directory as is (ovl_dir_is_real),
// so readdir lists the whiteout and its lookup is ENOENT. The generator puts
// no whiteouts there, but a directory whose redirect has a name longer than
// NAME_MAX merges with nothing on both sides (the kernel's lookup takes
// ENAMETOOLONG for "not found", ovl does the same). What the walk of the
// kernel's view keeps is still compared with ovl's.
func strayWhiteout(m Mounter, upper, pr string) bool {
	if _, ok := m.(Kernel); !ok || upper == "" {
		return false
	}
	rel, ok := strings.CutSuffix(pr, ": listed by readdir, but lstat fails with ENOENT")
	if !ok {
		return false
	}
	var st unix.Stat_t
	err := unix.Lstat(filepath.Join(upper, filepath.Clean("/"+rel)), &st)
	return err == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// diffs compares a and b with mtimes (only those the ops or the layers set
// are deterministic: see knownTimes) and records a failure per class.
func (r *runner) diffs(label, where string, scope Scope, a, b *Tree) {
	ds := r.filterTimes(Compare(a, b, CompareOptions{Scope: scope, Times: true, Ignore: r.p.Cfg.Ignore, IgnorePaths: r.p.Cfg.IgnorePaths}))
	if scope == ScopeUpper {
		ds = r.dropIndexAliases(ds)
	}
	if scope == ScopeMerged && r.kernelRef() {
		// Both mounts are still up: the kernel's lookups are checked.
		h := hiddenCheck{kernelA: true, kernelMnt: r.p.Ref.Layout.Mnt, upper: r.p.Ref.Layout.Upper, prefix: r.p.Cfg.Options.Prefix()}
		hidden, rest := h.split(ds)
		r.recordHidden(label, where, [2]string{r.p.Ref.Name, r.p.Cand.Name}, ds, hidden)
		ds = rest
	}
	r.recordDiffs(label, where, ds)
}

// dropIndexAliases leaves out the upper diffs that are the intended
// index=on difference (docs/differences.md, TestKernelIndexHardLinks): the
// kernel links the index entry of a lower hard link up at the name an op
// used, ovl changes the shared inode and links a name up only where it must
// be in the upper. So such a name may be in one upper and not in the
// other, and the upper link counts differ, where the side that has it holds
// a link of its index entry there. The views are compared in full.
func (r *runner) dropIndexAliases(ds []Diff) []Diff {
	if r.p.Cfg.Options.IndexMode() != "on" {
		return ds
	}
	sides := r.p.Sides()
	alias := func(j int, rel string) bool {
		l := sides[j].Layout
		p := filepath.Join(l.Upper, filepath.Clean("/"+rel))
		var st, ist unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink < 2 {
			return false
		}
		origin, err := lgetxattr(p, r.p.Cfg.Options.Prefix()+"origin")
		if err != nil || len(origin) == 0 {
			return false
		}
		in := filepath.Join(l.Work, "index", hex.EncodeToString(origin))
		return unix.Lstat(in, &ist) == nil && ist.Ino == st.Ino && ist.Dev == st.Dev
	}
	var out []Diff
	for _, d := range ds {
		switch {
		case d.Field == "exists" && d.A == "file" && d.B == "missing" && alias(0, d.Path),
			d.Field == "exists" && d.A == "missing" && d.B == "file" && alias(1, d.Path),
			d.Field == "nlink" && d.Type == "file" && (alias(0, d.Path) || alias(1, d.Path)):
			continue
		}
		out = append(out, d)
	}
	return out
}

// kernelRef reports whether the reference is the kernel and the candidate
// is not (the hidden-entry difference is between those two).
func (r *runner) kernelRef() bool {
	_, kr := r.p.Ref.M.(Kernel)
	_, kc := r.p.Cand.M.(Kernel)
	return kr && !kc
}

// hiddenOp checks an op whose results differ for the hidden-entry
// difference (hidden.go) on the live mounts.
func (r *runner) hiddenOp(op Op, a, b Result) (string, bool) {
	if !r.kernelRef() {
		return "", false
	}
	return hiddenOp(op, a, b, r.p.Ref.Layout.Mnt, r.p.Cand.Layout.Mnt, r.p.Ref.Layout.Upper, r.p.Cfg.Options.Prefix())
}

// recordHidden records the diffs of ds that hidden explains, one failure
// per kind, with classes of their own.
func (r *runner) recordHidden(label, where string, names [2]string, ds []Diff, hidden map[int]string) {
	byClass := map[string][]Diff{}
	var order []string
	for i, d := range ds {
		why, ok := hidden[i]
		if !ok {
			continue
		}
		c := fmt.Sprintf("%s %s: %s", where, HiddenMark, why)
		if byClass[c] == nil {
			order = append(order, c)
		}
		byClass[c] = append(byClass[c], d)
	}
	for _, c := range order {
		r.fail(r.last, c, fmt.Sprintf("%s: %d differences (the kernel hides entries whose lookup fails; intended, docs/differences.md):\n%s", label, len(byClass[c]), FormatDiffs(names[0], names[1], byClass[c])))
	}
}

func (r *runner) recordDiffs(label, where string, ds []Diff) {
	r.recordDiffsNamed(label, where, [2]string{r.p.Ref.Name, r.p.Cand.Name}, ds)
}

// recordDiffsNamed records diffs whose A and B sides are names[0] and
// names[1].
func (r *runner) recordDiffsNamed(label, where string, names [2]string, ds []Diff) {
	byClass := map[string][]Diff{}
	var order []string
	for _, d := range ds {
		c := diffClass(where, d)
		if byClass[c] == nil {
			order = append(order, c)
		}
		byClass[c] = append(byClass[c], d)
	}
	for _, c := range order {
		r.fail(r.last, c, fmt.Sprintf("%s: %d differences:\n%s", label, len(byClass[c]), FormatDiffs(names[0], names[1], byClass[c])))
	}
}

// diffClass names a diff without its path; values are kept where they
// are from a small set (existence, type, overlay xattrs).
func diffClass(where string, d Diff) string {
	switch {
	case d.Field == "exists" || d.Field == "type" || strings.HasPrefix(d.Field, "ovl:"):
		return fmt.Sprintf("%s %s %s: %s vs %s", where, d.Type, d.Field, d.A, d.B)
	case strings.HasPrefix(d.Field, "xattr:"):
		return fmt.Sprintf("%s %s %s: %s vs %s", where, d.Type, d.Field, presence(d.A), presence(d.B))
	}
	return fmt.Sprintf("%s %s %s", where, d.Type, d.Field)
}

func presence(v string) string {
	if v == "<absent>" {
		return v
	}
	return "set"
}

// filterTimes drops mtime diffs where neither side shows a time that is
// deterministic: one an op or a layer entry set. A write stamps "now",
// which differs between the sides; a lost or wrongly kept time does not.
func (r *runner) filterTimes(ds []Diff) []Diff {
	out := ds[:0:0]
	for _, d := range ds {
		if d.Field == "mtime" {
			a, _ := strconv.ParseInt(d.A, 10, 64)
			b, _ := strconv.ParseInt(d.B, 10, 64)
			if !r.times[a] && !r.times[b] {
				continue
			}
		}
		out = append(out, d)
	}
	return out
}

func knownTimes(rc RunConfig) map[int64]bool {
	m := map[int64]bool{DefaultTime.UnixNano(): true}
	for _, op := range rc.Ops {
		if op.Op == "utimes" {
			m[op.Off] = true
		}
	}
	for _, l := range append(append([]Layer{}, rc.Layers.Lowers...), rc.Layers.Upper) {
		for _, e := range l {
			if !e.Mtime.IsZero() {
				m[e.Mtime.UnixNano()] = true
			}
		}
	}
	return m
}

// finish compares the final views, closes the held fds, unmounts,
// compares the uppers and interchanges the layers.
func (r *runner) finish() {
	trees, ok := r.views("final")
	if !ok {
		return
	}
	// The interchange makes directories of its own.
	unix.Umask(0o022)
	for i := range r.fds {
		r.fds[i].Close()
	}
	if !r.guard("unmount", r.p.Unmount) {
		return
	}
	if r.p.Cfg.Options.ReadOnly {
		return
	}
	if err := r.p.KernelForm(); err != nil {
		r.fail(r.last, "harness: kernel form", err.Error())
		return
	}
	var ups [2]*Tree
	for j, s := range r.p.Sides() {
		t, err := Snapshot(s.Layout.Upper, SnapOptions{Upper: true, Prefix: r.p.Cfg.Options.Prefix(), NoHash: r.p.Cfg.NoHash})
		if err != nil {
			r.fail(r.last, "harness: snapshot upper", fmt.Sprintf("snapshot upper %s: %v", s.Name, err))
			return
		}
		for _, pr := range t.Problems {
			r.fail(r.last, problemClass(s.Name+" upper", pr), fmt.Sprintf("upper: %s: %s", s.Name, pr))
		}
		ups[j] = t
	}
	r.diffs("final: upper layer", "upper", ScopeUpper, ups[0], ups[1])

	r.mu.Lock()
	r.findings = nil
	r.mu.Unlock()
	var mnts []string
	for _, s := range r.p.Sides() {
		mnts = append(mnts, filepath.Join(s.Dir, "mnt2"))
	}
	fatal := false
	done, pv := r.timed(mnts, func() {
		defer func() {
			if v := recover(); v != nil {
				if v != errFatal {
					panic(v)
				}
				fatal = true
			}
		}()
		r.p.Interchange(trees[0], trees[1])
	})
	errs := r.rt.takeErrs() // the mismatches come through findings
	switch {
	case !done:
		r.out.TimedOut = true
		r.fail(r.last, "timeout: interchange", fmt.Sprintf("interchange did not finish within %v; its mounts were aborted", r.timeout))
		return
	case fatal:
		r.fail(r.last, "harness: interchange", "interchange: "+strings.Join(errs, "; "))
	case pv != nil:
		r.fail(r.last, "harness: panic", fmt.Sprintf("interchange: panic: %v", pv))
	}
	r.mu.Lock()
	fs := r.findings
	r.mu.Unlock()
	for _, f := range fs {
		where := "interchange"
		if i := strings.Index(f.Label, ": "); i >= 0 {
			// "interchange: kernel mounting ovl's upper"
			where = "interchange (" + f.Label[i+2:] + ")"
		}
		if f.Problem != "" {
			r.fail(r.last, problemClass(where+" "+f.Side, "x: "+f.Problem), f.Label+": "+f.Side+": "+f.Problem)
			continue
		}
		ds := f.Diffs
		if f.Hidden != nil {
			var rest []Diff
			for i, d := range ds {
				if _, ok := f.Hidden[i]; !ok {
					rest = append(rest, d)
				}
			}
			r.recordHidden(f.Label, where, f.Names, ds, f.Hidden)
			ds = rest
		}
		r.recordDiffsNamed(f.Label, where, f.Names, ds)
	}
}

// AbortMount ends a mount that does not answer: for a FUSE mount it
// writes to the connection's abort file in fusectl (mounting fusectl if
// needed), so that every request waiting on the daemon fails with
// ENOTCONN; then it detaches the mount (umount -l). It finds the mount in
// /proc/self/mountinfo, never by touching the mount itself.
func AbortMount(mnt string) error {
	dev, fstype, err := mountDev(mnt)
	if err != nil {
		return err
	}
	var errs []error
	if strings.HasPrefix(fstype, "fuse") {
		errs = append(errs, abortFuse(dev))
	}
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		errs = append(errs, fmt.Errorf("umount -l %s: %w", mnt, err))
	}
	return errors.Join(errs...)
}

const fusectl = "/sys/fs/fuse/connections"

// abortFuse aborts the FUSE connection of device dev. fusectl names a
// connection by the kernel's internal dev_t (major<<20 | minor).
func abortFuse(dev uint64) error {
	conn := filepath.Join(fusectl, fmt.Sprint(unix.Major(dev)<<20|unix.Minor(dev)))
	if _, err := os.Stat(conn); err != nil {
		if err := unix.Mount("fusectl", fusectl, "fusectl", 0, ""); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount fusectl: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(conn, "abort"), []byte("1"), 0); err != nil {
		return fmt.Errorf("abort FUSE connection: %w", err)
	}
	return nil
}

// mountDev finds mnt (the topmost mount there) in /proc/self/mountinfo.
func mountDev(mnt string) (dev uint64, fstype string, err error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return 0, "", err
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		m := mounts[i]
		var maj, min uint32
		if m.MountPoint != mnt {
			continue
		}
		if _, err := fmt.Sscanf(m.Dev, "%d:%d", &maj, &min); err != nil {
			return 0, "", fmt.Errorf("%s: device %q: %w", mnt, m.Dev, err)
		}
		return unix.Mkdev(maj, min), m.FSType, nil
	}
	return 0, "", fmt.Errorf("%s: not a mount point", mnt)
}

// errFatal is what recT panics with on Fatal.
var errFatal = errors.New("kernelcmp: fatal")

// recT is the testing.TB a Run hands to NewPair: it records errors
// instead of failing a test, and a Fatal panics with errFatal (recovered
// by the runner). The embedded TB is nil; only the methods below are
// used by Pair.
type recT struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	cleanups []func()
}

func (r *recT) Helper()      {}
func (r *recT) Name() string { return "kernelcmp.Run" }
func (r *recT) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recT) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }
func (r *recT) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	panic(errFatal)
}
func (r *recT) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *recT) FailNow()          { panic(errFatal) }
func (r *recT) Skipf(format string, args ...any) {
	r.Fatalf("skip: "+format, args...)
}
func (r *recT) Logf(string, ...any) {}
func (r *recT) Log(...any)          {}
func (r *recT) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs) > 0
}
func (r *recT) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *recT) takeErrs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.errs
	r.errs = nil
	return e
}

func (r *recT) runCleanups() {
	r.mu.Lock()
	cs := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if v := recover(); v != nil {
					r.Errorf("cleanup: panic: %v", v)
				}
			}()
			cs[i]()
		}()
	}
}
