package kernelcmp

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Layers are the layers of a scenario: Lowers topmost first, Upper the
// initial upper layer (may be empty).
type Layers struct {
	Lowers []Layer
	Upper  Layer
}

// Config configures a Pair.
type Config struct {
	Options Options
	// Reference is the oracle (nil: Kernel{}).
	Reference Mounter
	// Candidate is the side under test (Ovl{Bin: ...}, or Kernel{} to test
	// the harness).
	Candidate Mounter
	// Ignore are the accepted differences (nil: IntendedFor(Options)).
	Ignore []Difference
	// Times also compares mtimes of non-directories.
	Times bool
	// NoHash skips content hashes in snapshots (huge trees).
	NoHash bool
	// IgnorePaths are left out of view and upper comparisons.
	IgnorePaths []string
	// Tmpfs puts all layers on a fresh tmpfs instead of the temp dir's
	// filesystem (much faster for huge trees; KCMP_TMPFS=1 forces it).
	Tmpfs bool
	// Observe, when set, also receives every difference and problem the
	// Pair reports, as data (the random tester classifies them).
	Observe func(Finding)
	// Overlap puts layers inside each other (see Overlaps). A side that
	// refuses such a mount is not a Fatal: Side.MountErr says why.
	Overlap string
}

// Overlaps are the layer layouts Config.Overlap can ask for. The kernel
// mounts the first three and answers ELOOP to a lookup through the mount
// that reaches the upper or work directory; it refuses the others.
var Overlaps = []string{
	"upper-in-lower", // the upper is directory "u" of the bottom lower
	"work-in-lower",  // the work dir is directory "w" of the top lower
	"both-in-lower",  // both
	"lower-twice",    // the top lower is also the bottom one
	"lower-in-lower", // directory "lx" of the top lower is another lower
	"lower-in-upper", // directory "lx" of the upper is another lower
	"work-in-upper",  // the work dir is directory "w" of the upper
}

// Finding is one report of a Pair's comparisons, as data: either Diffs
// found under Label, or a Problem (walk problem, snapshot or mount error)
// seen on Side.
type Finding struct {
	Label   string
	Scope   Scope
	Side    string
	Diffs   []Diff
	Names   [2]string // what Diff.A and Diff.B are
	Problem string
	// Hidden are the indexes of Diffs that are the kernel hiding an entry
	// whose lookup fails (hidden.go), with what kind.
	Hidden map[int]string
}

func (p *Pair) observe(f Finding) {
	if p.Cfg.Observe != nil {
		p.Cfg.Observe(f)
	}
}

// Side is one of the two copies and its mount.
type Side struct {
	Name    string
	M       Mounter
	Dir     string // holds l0.., upper, work, mnt
	Layout  Layout
	mounted bool
	// MountErr is why the side refused to mount (Config.Overlap only).
	MountErr error
}

// Path is rel inside the mount.
func (s *Side) Path(rel string) string { return filepath.Join(s.Layout.Mnt, filepath.Clean("/"+rel)) }

// UpperPath is rel inside the upper layer.
func (s *Side) UpperPath(rel string) string {
	return filepath.Join(s.Layout.Upper, filepath.Clean("/"+rel))
}

// LowerPath is rel inside lower layer i (0 = topmost).
func (s *Side) LowerPath(i int, rel string) string {
	return filepath.Join(s.Layout.Lowers[i], filepath.Clean("/"+rel))
}

// Mounted reports whether the side is mounted.
func (s *Side) Mounted() bool { return s.mounted }

// Pair is a reference overlay (the kernel) and a candidate (ovl) over two
// copies of the same layers. Steps run on both and are compared.
type Pair struct {
	T     testing.TB
	Cfg   Config
	Ref   *Side
	Cand  *Side
	base  string
	tmpfs bool
	aufs  bool // the layers hold AUFS forms (aufs.go)
}

// NewPair builds the layers once, copies them with cp -a to both sides and
// mounts both. Everything is unmounted and removed at test cleanup.
func NewPair(t testing.TB, cfg Config, layers Layers) *Pair {
	t.Helper()
	if cfg.Reference == nil {
		cfg.Reference = Kernel{}
	}
	if cfg.Candidate == nil {
		t.Fatal("kernelcmp: Config.Candidate is nil")
	}
	if cfg.Ignore == nil {
		cfg.Ignore = IntendedFor(cfg.Options)
	}
	base, err := os.MkdirTemp("", "kcmp-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &Pair{T: t, Cfg: cfg, base: base, aufs: layers.HasAUFS()}
	t.Cleanup(p.cleanup)
	if cfg.Tmpfs || os.Getenv("KCMP_TMPFS") == "1" {
		if err := unix.Mount("tmpfs", base, "tmpfs", 0, "mode=0755"); err != nil {
			t.Fatalf("mount tmpfs: %v", err)
		}
		p.tmpfs = true
	}

	prefix := cfg.Options.Prefix()
	src := filepath.Join(base, "src")
	var srcLowers []string
	for i, l := range layers.Lowers {
		d := filepath.Join(src, fmt.Sprintf("l%d", i))
		if err := Build(d, prefix, l); err != nil {
			t.Fatalf("build lower %d: %v", i, err)
		}
		srcLowers = append(srcLowers, d)
	}
	if err := Build(filepath.Join(src, "upper"), prefix, layers.Upper); err != nil {
		t.Fatalf("build upper: %v", err)
	}

	names := [2]string{cfg.Reference.Name(), cfg.Candidate.Name()}
	if names[0] == names[1] {
		names[0], names[1] = names[0]+"-a", names[1]+"-b"
	}
	for i, m := range []Mounter{cfg.Reference, cfg.Candidate} {
		s := &Side{Name: names[i], M: m, Dir: filepath.Join(base, names[i])}
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for j := range srcLowers {
			d := filepath.Join(s.Dir, fmt.Sprintf("l%d", j))
			if out, err := exec.Command("cp", "-a", srcLowers[j], d).CombinedOutput(); err != nil {
				t.Fatalf("cp -a: %v\n%s", err, out)
			}
			s.Layout.Lowers = append(s.Layout.Lowers, d)
		}
		s.Layout.Mnt = filepath.Join(s.Dir, "mnt")
		if err := os.Mkdir(s.Layout.Mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		if !cfg.Options.ReadOnly {
			s.Layout.Upper = filepath.Join(s.Dir, "upper")
			s.Layout.Work = filepath.Join(s.Dir, "work")
			if out, err := exec.Command("cp", "-a", filepath.Join(src, "upper"), s.Layout.Upper).CombinedOutput(); err != nil {
				t.Fatalf("cp -a: %v\n%s", err, out)
			}
			if err := os.Mkdir(s.Layout.Work, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if p.aufs && !readsAUFS(m) {
			for _, d := range append([]string{s.Layout.Upper}, s.Layout.Lowers...) {
				if d == "" {
					continue
				}
				if err := ToKernelForm(d, prefix); err != nil {
					t.Fatalf("%s: kernel form: %v", s.Name, err)
				}
			}
		}
		if err := overlap(&s.Layout, cfg.Overlap); err != nil {
			t.Fatalf("overlap %s: %v", cfg.Overlap, err)
		}
		if i == 0 {
			p.Ref = s
		} else {
			p.Cand = s
		}
	}
	if err := os.RemoveAll(src); err != nil {
		t.Fatal(err)
	}
	p.Mount()
	return p
}

// overlap rearranges layout l as Config.Overlap asks.
func overlap(l *Layout, how string) error {
	if how == "" {
		return nil
	}
	if l.Upper == "" {
		return fmt.Errorf("a read-only mount has no upper")
	}
	top, bottom := l.Lowers[0], l.Lowers[len(l.Lowers)-1]
	move := func(from, to string) (string, error) {
		if err := os.RemoveAll(to); err != nil {
			return "", err
		}
		if out, err := exec.Command("mv", "-T", from, to).CombinedOutput(); err != nil {
			return "", fmt.Errorf("mv %s %s: %v: %s", from, to, err, out)
		}
		return to, nil
	}
	var err error
	switch how {
	case "upper-in-lower":
		l.Upper, err = move(l.Upper, filepath.Join(bottom, "u"))
	case "work-in-lower":
		l.Work, err = move(l.Work, filepath.Join(top, "w"))
	case "both-in-lower":
		if l.Upper, err = move(l.Upper, filepath.Join(bottom, "u")); err == nil {
			l.Work, err = move(l.Work, filepath.Join(top, "w"))
		}
	case "lower-twice":
		l.Lowers = append(l.Lowers, top)
	case "lower-in-lower":
		d := filepath.Join(top, "lx")
		l.Lowers = append(l.Lowers, d)
		err = os.MkdirAll(d, 0o755)
	case "lower-in-upper":
		d := filepath.Join(l.Upper, "lx")
		l.Lowers = append(l.Lowers, d)
		err = os.MkdirAll(d, 0o755)
	case "work-in-upper":
		l.Work, err = move(l.Work, filepath.Join(l.Upper, "w"))
	default:
		err = fmt.Errorf("unknown overlap")
	}
	return err
}

// Sides returns the reference and the candidate.
func (p *Pair) Sides() []*Side { return []*Side{p.Ref, p.Cand} }

func (p *Pair) cleanup() {
	ok := true
	for _, s := range p.Sides() {
		if s == nil {
			continue
		}
		for _, mnt := range []string{s.Layout.Mnt, filepath.Join(s.Dir, "mnt2")} {
			if mounted(mnt) {
				if err := s.M.Unmount(mnt); err != nil {
					p.T.Errorf("cleanup: %v", err)
					if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
						ok = false
					}
				}
			}
			if mounted(mnt) {
				ok = false
			}
		}
	}
	if ok && os.Getenv("KCMP_KEEP") == "" {
		if p.tmpfs {
			if err := unix.Unmount(p.base, unix.MNT_DETACH); err != nil {
				p.T.Errorf("cleanup: umount tmpfs: %v", err)
				return
			}
		}
		os.RemoveAll(p.base)
	} else {
		p.T.Logf("kernelcmp: left %s", p.base)
	}
}

// Mount mounts both sides (those not mounted).
func (p *Pair) Mount() {
	p.T.Helper()
	for _, s := range p.Sides() {
		if s.mounted {
			continue
		}
		if err := s.M.Mount(s.Layout, p.Cfg.Options); err != nil {
			if p.Cfg.Overlap != "" {
				s.MountErr = err
				continue
			}
			p.T.Fatalf("%s: %v", s.Name, err)
		}
		s.MountErr = nil
		s.mounted = true
		if err := checkFsType(s.M, s.Layout.Mnt); err != nil {
			p.T.Fatalf("%s: %v", s.Name, err)
		}
	}
}

// Unmount unmounts both sides.
func (p *Pair) Unmount() {
	p.T.Helper()
	for _, s := range p.Sides() {
		if !s.mounted {
			continue
		}
		if err := s.M.Unmount(s.Layout.Mnt); err != nil {
			p.T.Fatalf("%s: %v", s.Name, err)
		}
		s.mounted = false
	}
}

// Remount unmounts and mounts both sides again (checks persistence).
func (p *Pair) Remount() {
	p.T.Helper()
	p.Unmount()
	p.Mount()
}

// Do runs f on both mount roots and compares the errnos. It returns the
// reference's errno.
func (p *Pair) Do(name string, f func(root string) error) syscall.Errno {
	p.T.Helper()
	errs := [2]error{f(p.Ref.Layout.Mnt), f(p.Cand.Layout.Mnt)}
	var es [2]syscall.Errno
	for i, err := range errs {
		e, ok := Errno(err)
		if !ok {
			p.T.Errorf("%s: %s: error without errno: %v", name, p.Sides()[i].Name, err)
		}
		es[i] = e
	}
	if es[0] != es[1] {
		p.T.Errorf("%s: errno differs: %s %s, %s %s", name, p.Ref.Name, ErrnoName(es[0]), p.Cand.Name, ErrnoName(es[1]))
	}
	return es[0]
}

// DoExpect is Do, and also checks that each side got want.
func (p *Pair) DoExpect(name string, want syscall.Errno, f func(root string) error) {
	p.T.Helper()
	errs := [2]error{f(p.Ref.Layout.Mnt), f(p.Cand.Layout.Mnt)}
	var es [2]syscall.Errno
	for i, err := range errs {
		e, ok := Errno(err)
		if !ok {
			p.T.Errorf("%s: %s: error without errno: %v", name, p.Sides()[i].Name, err)
		}
		es[i] = e
	}
	if es[0] != es[1] {
		p.T.Errorf("%s: errno differs: %s %s, %s %s (want %s)", name, p.Ref.Name, ErrnoName(es[0]), p.Cand.Name, ErrnoName(es[1]), ErrnoName(want))
		return
	}
	if es[0] != want {
		p.T.Errorf("%s: both sides got %s, want %s", name, ErrnoName(es[0]), ErrnoName(want))
	}
}

// Ops runs ops on both sides, in process as the caller when cred is nil,
// else in a child process as cred, and compares every Result. It returns
// the reference's results.
func (p *Pair) Ops(cred *Cred, ops ...Op) []Result {
	p.T.Helper()
	var res [2][]Result
	for i, s := range p.Sides() {
		if cred == nil {
			for _, op := range ops {
				res[i] = append(res[i], op.Apply(s.Layout.Mnt))
			}
			continue
		}
		r, err := RunOps(s.Layout.Mnt, cred, ops)
		if err != nil {
			p.T.Fatalf("%s: %v", s.Name, err)
		}
		res[i] = r
	}
	for j, op := range ops {
		a, b := res[0][j], res[1][j]
		if a.Err != "" || b.Err != "" {
			p.T.Errorf("op %d %s: harness error: %s %s, %s %s", j, op, p.Ref.Name, a, p.Cand.Name, b)
		}
		if a != b {
			p.T.Errorf("op %d %s%s: %s %s, %s %s", j, op, credString(cred), p.Ref.Name, a, p.Cand.Name, b)
		}
	}
	return res[0]
}

// Expect checks the reference's (= both sides', after Ops compared them)
// errno of each op against want (one per op).
func (p *Pair) Expect(ops []Op, res []Result, want ...syscall.Errno) {
	p.T.Helper()
	for i := range ops {
		if i < len(want) && i < len(res) && res[i].Errno != want[i] {
			p.T.Errorf("op %d %s: got %s, want %s", i, ops[i], ErrnoName(res[i].Errno), ErrnoName(want[i]))
		}
	}
}

// OpsExpect runs Ops and checks each op's errno against want.
func (p *Pair) OpsExpect(cred *Cred, want []syscall.Errno, ops ...Op) []Result {
	p.T.Helper()
	res := p.Ops(cred, ops...)
	p.Expect(ops, res, want...)
	return res
}

func credString(c *Cred) string {
	if c == nil {
		return ""
	}
	return fmt.Sprintf(" as %d:%d", c.UID, c.GID)
}

// Check runs an absolute check on each side; an error fails the test with
// the side's name.
func (p *Pair) Check(name string, f func(s *Side) error) {
	p.T.Helper()
	for _, s := range p.Sides() {
		if err := f(s); err != nil {
			p.T.Errorf("%s: %s: %v", name, s.Name, err)
		}
	}
}

// Views snapshots both merged views, reports walk problems and diffs, and
// returns the snapshots.
func (p *Pair) Views(label string) (ref, cand *Tree) {
	p.T.Helper()
	var trees [2]*Tree
	for i, s := range p.Sides() {
		t, err := Snapshot(s.Layout.Mnt, SnapOptions{NoHash: p.Cfg.NoHash, DIno: promisesDIno(s.M)})
		if err != nil {
			p.T.Fatalf("%s: snapshot %s: %v", label, s.Name, err)
		}
		p.reportProblems(label, s.Name, t)
		trees[i] = t
	}
	p.report(label+": merged view", ScopeMerged, trees[0], trees[1])
	return trees[0], trees[1]
}

// Uppers snapshots both upper layers and reports diffs.
func (p *Pair) Uppers(label string) (ref, cand *Tree) {
	p.T.Helper()
	var trees [2]*Tree
	for i, s := range p.Sides() {
		t, err := Snapshot(s.Layout.Upper, SnapOptions{Upper: true, Prefix: p.Cfg.Options.Prefix(), NoHash: p.Cfg.NoHash})
		if err != nil {
			p.T.Fatalf("%s: snapshot upper %s: %v", label, s.Name, err)
		}
		p.reportProblems(label+" (upper)", s.Name, t)
		trees[i] = t
	}
	p.report(label+": upper layer", ScopeUpper, trees[0], trees[1])
	return trees[0], trees[1]
}

func (p *Pair) reportProblems(label, side string, t *Tree) {
	p.T.Helper()
	t.Problems = dropQuirks(side, t.Problems)
	for _, pr := range t.Problems {
		p.observe(Finding{Label: label, Side: side, Problem: pr})
	}
	for i, pr := range t.Problems {
		if i == 20 {
			p.T.Errorf("%s: %s: ... %d more problems", label, side, len(t.Problems)-i)
			break
		}
		p.T.Errorf("%s: %s: %s", label, side, pr)
	}
}

func (p *Pair) report(label string, scope Scope, a, b *Tree) {
	p.T.Helper()
	ds := Compare(a, b, CompareOptions{Scope: scope, Times: p.Cfg.Times, Ignore: p.Cfg.Ignore, IgnorePaths: p.Cfg.IgnorePaths})
	if len(ds) > 0 {
		p.observe(Finding{Label: label, Scope: scope, Diffs: ds, Names: [2]string{p.Ref.Name, p.Cand.Name}})
		p.T.Errorf("%s: %d differences:\n%s", label, len(ds), FormatDiffs(p.Ref.Name, p.Cand.Name, ds))
	}
}

// Finish compares the merged views, unmounts, compares the upper layers,
// and then interchanges the layers (Interchange).
func (p *Pair) Finish() {
	p.T.Helper()
	ref, cand := p.Views("final")
	p.Unmount()
	if p.Cfg.Options.ReadOnly {
		return
	}
	if err := p.KernelForm(); err != nil {
		p.T.Fatal(err)
	}
	p.Uppers("final")
	p.Interchange(ref, cand)
}

// Interchange mounts each side's layers (after Unmount) with the other
// side's mounter, on a fresh work dir (the same one with index=on), and checks that the view equals the
// one the writer saw (refView for the reference's layers, candView for the
// candidate's). The mounts are undone before it returns.
func (p *Pair) Interchange(refView, candView *Tree) {
	p.T.Helper()
	views := map[*Side]*Tree{p.Ref: refView, p.Cand: candView}
	for _, pair := range [][2]*Side{{p.Ref, p.Cand}, {p.Cand, p.Ref}} {
		owner, reader := pair[0], pair[1]
		l := owner.Layout
		if p.Cfg.Options.IndexMode() != "on" {
			// With an index the work dir belongs to the upper (its index/
			// holds the hard links); else start from an empty one (in
			// the same place when the layers overlap: where it is
			// matters to the view).
			if p.Cfg.Overlap == "" {
				l.Work = filepath.Join(owner.Dir, "work2")
			}
			os.RemoveAll(l.Work)
		}
		l.Mnt = filepath.Join(owner.Dir, "mnt2")
		for _, d := range []string{l.Work, l.Mnt} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				p.T.Fatal(err)
			}
		}
		label := fmt.Sprintf("interchange: %s mounting %s's upper", reader.Name, owner.Name)
		if err := reader.M.Mount(l, p.Cfg.Options); err != nil {
			p.observe(Finding{Label: label, Side: reader.Name, Problem: "mount: " + err.Error()})
			p.T.Errorf("%s: %v", label, err)
			continue
		}
		t, err := Snapshot(l.Mnt, SnapOptions{NoHash: p.Cfg.NoHash, DIno: promisesDIno(reader.M)})
		var ds []Diff
		var hidden map[int]string
		if err == nil {
			ds = Compare(views[owner], t, CompareOptions{Scope: ScopeMerged, Times: p.Cfg.Times, Ignore: p.Cfg.Ignore, IgnorePaths: p.Cfg.IgnorePaths})
			// Before the unmount: a kernel reader's own lookups are
			// checked while it is mounted.
			hidden = p.hiddenIn(ds, owner, reader, l)
		}
		if uerr := reader.M.Unmount(l.Mnt); uerr != nil {
			p.observe(Finding{Label: label, Side: reader.Name, Problem: "unmount: " + uerr.Error()})
			p.T.Errorf("%s: %v", label, uerr)
		}
		if err != nil {
			p.observe(Finding{Label: label, Side: reader.Name, Problem: "snapshot: " + err.Error()})
			p.T.Errorf("%s: snapshot: %v", label, err)
			continue
		}
		var prs []string
		for _, pr := range t.Problems {
			if !strayWhiteout(reader.M, l.Upper, pr) {
				prs = append(prs, pr)
			}
		}
		t.Problems = prs
		p.reportProblems(label, reader.Name, t)
		if len(ds) > 0 {
			p.observe(Finding{Label: label, Scope: ScopeMerged, Diffs: ds, Hidden: hidden, Names: [2]string{owner.Name + " (writer)", reader.Name + " (reader)"}})
			p.T.Errorf("%s: view differs from what %s showed: %d differences:\n%s", label, owner.Name, len(ds),
				FormatDiffs(owner.Name+" (writer)", reader.Name+" (reader)", ds))
		}
	}
}

// hiddenIn finds the diffs of an interchange view (owner's view as A,
// reader's mount at l as B) that are the kernel hiding entries whose
// lookup fails, when one side is the kernel and the other is not.
func (p *Pair) hiddenIn(ds []Diff, owner, reader *Side, l Layout) map[int]string {
	_, ko := owner.M.(Kernel)
	_, kr := reader.M.(Kernel)
	if ko == kr || len(ds) == 0 {
		return nil
	}
	h := hiddenCheck{kernelA: ko, upper: l.Upper, prefix: p.Cfg.Options.Prefix()}
	if kr {
		h.kernelMnt = l.Mnt
	}
	hidden, _ := h.split(ds)
	return hidden
}

// Statfs compares statfs(2) of the two mounts field by field (minus the
// intended differences) and returns both.
func (p *Pair) Statfs() [2]unix.Statfs_t {
	p.T.Helper()
	var st [2]unix.Statfs_t
	for i, s := range p.Sides() {
		if err := unix.Statfs(s.Layout.Mnt, &st[i]); err != nil {
			p.T.Errorf("statfs %s: %v", s.Name, err)
		}
	}
	fields := func(s unix.Statfs_t) map[string]string {
		return map[string]string{
			"f_type": fmt.Sprintf("%#x", s.Type), "f_bsize": fmt.Sprint(s.Bsize),
			"f_fsid": fmt.Sprint(s.Fsid), "f_namelen": fmt.Sprint(s.Namelen),
			"f_frsize": fmt.Sprint(s.Frsize),
		}
	}
	a, b := fields(st[0]), fields(st[1])
	var ds []Diff
	for _, k := range unionKeys(a, b) {
		d := Diff{Field: k, A: a[k], B: b[k]}
		if d.A == d.B {
			continue
		}
		ign := false
		for _, x := range p.Cfg.Ignore {
			ign = ign || x.Matches(ScopeStatfs, d)
		}
		if !ign {
			ds = append(ds, d)
		}
	}
	if len(ds) > 0 {
		p.T.Errorf("statfs differs:\n%s", FormatDiffs(p.Ref.Name, p.Cand.Name, ds))
	}
	return st
}

// Candidate mounter is ovl?
func (p *Pair) candidateOvl() (Ovl, bool) {
	o, ok := p.Cfg.Candidate.(Ovl)
	return o, ok
}

// OvlStats returns "ovl stats" of the candidate, and false when the
// candidate is not ovl (harness self-tests).
func (p *Pair) OvlStats() (map[string]any, bool) {
	p.T.Helper()
	o, ok := p.candidateOvl()
	if !ok {
		return nil, false
	}
	st, err := o.Stats(p.Cand.Layout.Mnt)
	if err != nil {
		p.T.Errorf("%v", err)
		return nil, false
	}
	return st, true
}

// Describe is a one-line description of the setup, for logs.
func (p *Pair) Describe() string {
	return fmt.Sprintf("%s: -o %s | %s: -o %s", p.Ref.Name, p.Cfg.Options.KernelOptions(p.Ref.Layout),
		p.Cand.Name, strings.TrimSpace(p.Cfg.Options.OvlOptions(p.Cand.Layout)))
}
