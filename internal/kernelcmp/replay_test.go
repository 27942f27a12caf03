package kernelcmp

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ovl-project/ovl/internal/testutil"
)

const (
	reproDir = "testdata/repro"
	// openDir holds reproductions of bugs not fixed yet.
	openDir = "testdata/open"
)

// TestReprosKernelVsKernel replays every saved reproduction (fixed and
// open) with the kernel on both sides: each must run clean, or its
// mismatch would be the harness's or the case's own nondeterminism, not a
// bug of ovl.
func TestReprosKernelVsKernel(t *testing.T) {
	testutil.RequireRoot(t)
	cases, err := LoadCases(reproDir)
	if err != nil {
		t.Fatal(err)
	}
	open, err := LoadCases(openDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range append(cases, open...) {
		t.Run(c.Name, func(t *testing.T) {
			if c.Class == "" || c.Diagnosis == "" {
				t.Errorf("%s: a reproduction needs a class and a diagnosis", c.Name)
			}
			if err := CheckLayers(c.Layers); err != nil {
				t.Errorf("%s: layers no tool would write: %v", c.Name, err)
			}
			for _, every := range []int{c.Every, 1} {
				rc := c.RunConfig(Kernel{})
				rc.Every = every
				if o := Run(rc); o.Failed() {
					t.Errorf("kernel vs kernel, views every %d ops: %v", every, o.Failures)
				}
			}
		})
	}
}

// TestCheckLayers: generated stacks pass; stray whiteouts do not.
func TestCheckLayers(t *testing.T) {
	for seed := int64(1); seed <= 300; seed++ {
		if err := CheckLayers(RandomCase(seed, 0).Layers); err != nil {
			t.Errorf("seed %d: %v", seed, err)
		}
	}
	bad := map[string]Layers{
		"whiteout over nothing":        {Lowers: []Layer{{File("f", "")}}, Upper: Layer{Whiteout("d/x")}},
		"whiteout in opaque dir":       {Lowers: []Layer{{File("d/x", "")}}, Upper: Layer{OpaqueDir("d"), Whiteout("d/x")}},
		"xwhiteout in upper":           {Lowers: []Layer{{File("d/x", "")}}, Upper: Layer{XWhiteout("d/x")}},
		"xwhiteout in bottom lower":    {Lowers: []Layer{{File("d/y", "")}, {XWhiteout("d/x")}}},
		"xwhiteout in a layer root":    {Lowers: []Layer{{XWhiteout("x")}, {File("x", "")}}},
		"whiteout under a file below":  {Lowers: []Layer{{Whiteout("d/x")}, {File("d", "")}}},
		"whiteout under an opaque dir": {Lowers: []Layer{{OpaqueDir("a")}, {File("a/b/c", "")}}, Upper: Layer{Whiteout("a/b/f")}},
	}
	for name, ls := range bad {
		if CheckLayers(ls) == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	good := Layers{Lowers: []Layer{{XWhiteout("d/x"), Whiteout("d/y")}, {File("d/x", ""), File("d/y", "")}}, Upper: Layer{Whiteout("d/z"), Whiteout("r")}}
	if err := CheckLayers(good); err != nil {
		t.Errorf("good stack: %v", err)
	}
}

// TestRandomKernelVsKernel runs generated cases kernel against kernel: the
// generator and the runner must see no difference there, in both xattr
// modes and with the stateful ops.
func TestRandomKernelVsKernel(t *testing.T) {
	testutil.RequireRoot(t)
	for _, seed := range []int64{1, 2, 3, 4} {
		c := RandomCase(seed, 200)
		rc := c.RunConfig(Kernel{})
		rc.Every = 10
		o := Run(rc)
		if o.Failed() {
			t.Errorf("seed %d: %v", seed, o.Failures)
		}
		if o.Ran != len(c.Ops) {
			t.Errorf("seed %d: ran %d of %d ops", seed, o.Ran, len(c.Ops))
		}
	}
}

// TestRunReportsMismatch makes the two sides differ on purpose (one of
// them gets an extra op) and checks that the runner reports it with the
// right class and op, and that Shrink finds the one op that matters.
func TestRunReportsMismatch(t *testing.T) {
	testutil.RequireRoot(t)
	layers := Layers{Lowers: []Layer{{File("f", "lower"), Dir("d"), File("d/x", "x")}}}
	ops := []Op{
		{Op: "lstat", Path: "f"},
		{Op: "write", Path: "f", Data: "up", Off: 1},
		{Op: "mkdir", Path: "e", Mode: 0o755},
		{Op: "unlink", Path: "d/x"},
		{Op: "read", Path: "f"},
		{Op: "readdir", Path: "d"},
	}
	// The candidate's mount gets "e" and "s" created behind the harness's
	// back right after the mount, so op 2 fails there with EEXIST and the
	// views and uppers differ by s.
	cand := sabotage{Kernel{}}
	run := func(c Case) Outcome {
		rc := RunConfig{Config: Config{Options: c.Options(), Candidate: cand}, Layers: c.Layers, Ops: c.Ops}
		return Run(rc)
	}
	c := Case{NLowers: 1, Layers: layers, Ops: ops}
	o := run(c)
	want := "op mkdir: ok vs EEXIST"
	f, ok := o.First(want)
	if !ok || f.Op != 2 {
		t.Fatalf("want %q at op 2, got %v", want, o.Failures)
	}
	for _, class := range []string{"view dir exists: missing vs dir", "upper dir exists: missing vs dir"} {
		if f, ok := o.First(class); !ok || !strings.Contains(f.Text, "s ") {
			t.Errorf("the extra directory s is not reported as %q: %v", class, o.Failures)
		}
	}
	res := Shrink(c, ShrinkConfig{Run: run, Class: want, Upto: f.Op + 1})
	if !res.Reproduced || len(res.Case.Ops) != 1 || res.Case.Ops[0].Op != "mkdir" {
		t.Errorf("shrink: %s: ops %v", res.Describe(), res.Case.Ops)
	}
	if n := res.Case.entries(); n != 0 {
		t.Errorf("shrink kept %d layer entries, none is needed", n)
	}
}

// sabotage is a Mounter that mounts like M and then makes "e" in the
// mount, so the two sides differ.
type sabotage struct{ M Mounter }

func (s sabotage) Name() string { return "sabotaged" }
func (s sabotage) Mount(l Layout, o Options) error {
	if err := s.M.Mount(l, o); err != nil {
		return err
	}
	if !strings.HasSuffix(l.Mnt, "/mnt") {
		return nil // the interchange mount
	}
	for _, d := range []string{"e", "s"} {
		if err := (Op{Op: "mkdir", Path: d, Mode: 0o755}).Apply(l.Mnt).err(); err != nil {
			return err
		}
	}
	return nil
}
func (s sabotage) Unmount(mnt string) error { return s.M.Unmount(mnt) }

func (r Result) err() error {
	if r.Errno != 0 {
		return r.Errno
	}
	if r.Err != "" {
		return fmt.Errorf("%s", r.Err)
	}
	return nil
}

func TestDdmin(t *testing.T) {
	// The failure needs items 3 and 7 of 0..19, in order.
	runs := 0
	got := ddmin(20, func(keep []int) bool {
		runs++
		has3, has7 := false, false
		for _, k := range keep {
			has3 = has3 || k == 3
			has7 = has7 || (k == 7 && has3)
		}
		return has3 && has7
	}, func() bool { return false }, nil)
	if !reflect.DeepEqual(got, []int{3, 7}) {
		t.Errorf("ddmin = %v after %d runs, want [3 7]", got, runs)
	}
	// Stopping early returns what it has.
	n := 0
	got = ddmin(20, func(keep []int) bool { return true }, func() bool { n++; return n > 1 }, nil)
	if len(got) == 0 || len(got) == 20 {
		t.Errorf("stopped ddmin = %v", got)
	}
}

func TestCaseJSONRoundTrip(t *testing.T) {
	c := RandomCase(7, 50)
	c.Layers.Lowers[0] = append(c.Layers.Lowers[0],
		SparseFile("sparse", 1<<20, Extent{Off: 4096, Data: []byte("x")}),
		CharDev("null", 1, 3), XWhiteout("a/xw"),
		File("timed", "t").Time(time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)).Owner(5, 6).Mode(0o4711))
	c.Class, c.Also, c.Diagnosis = "op x: ok vs EPERM", []string{"y"}, "because"
	b, err := c.Format()
	if err != nil {
		t.Fatal(err)
	}
	var back Case
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !reflect.DeepEqual(c, back) {
		t.Errorf("round trip differs:\n%+v\n%+v\n%s", c, back, b)
	}
}

// TestUpperCompareByMeaning checks which overlay xattrs of an upper may
// differ: origin, uuid, impure, nlink and upper are byte-for-byte free;
// opaque (first byte), redirect, metacopy and whiteout must agree.
func TestUpperCompareByMeaning(t *testing.T) {
	base := func() *Tree {
		return &Tree{Nodes: map[string]*Node{
			"":  {Type: "dir", Perm: 0o755},
			"d": {Type: "dir", Perm: 0o755, Ovl: map[string]string{"opaque": "y", "origin": "AAA", "impure": "y"}},
			"f": {Type: "file", Perm: 0o644, Ovl: map[string]string{"origin": "BBB", "metacopy": "", "redirect": "/x"}},
		}}
	}
	free := map[string]func(t *Tree){
		"origin bytes":   func(t *Tree) { t.Nodes["d"].Ovl["origin"] = "other" },
		"origin absent":  func(t *Tree) { delete(t.Nodes["f"].Ovl, "origin") },
		"impure absent":  func(t *Tree) { delete(t.Nodes["d"].Ovl, "impure") },
		"uuid present":   func(t *Tree) { t.Nodes[""].Ovl = map[string]string{"uuid": "u"} },
		"nlink present":  func(t *Tree) { t.Nodes["f"].Ovl["nlink"] = "U+1" },
		"opaque y-bytes": func(t *Tree) { t.Nodes["d"].Ovl["opaque"] = "yes" },
	}
	for name, mut := range free {
		b := base()
		mut(b)
		if ds := Compare(base(), b, CompareOptions{Scope: ScopeUpper}); len(ds) != 0 {
			t.Errorf("%s: reported %v, want no difference", name, ds)
		}
	}
	meaningful := map[string]func(t *Tree){
		"ovl:opaque":   func(t *Tree) { delete(t.Nodes["d"].Ovl, "opaque") },
		"ovl:redirect": func(t *Tree) { t.Nodes["f"].Ovl["redirect"] = "/y" },
		"ovl:metacopy": func(t *Tree) { delete(t.Nodes["f"].Ovl, "metacopy") },
		"ovl:whiteout": func(t *Tree) { t.Nodes["f"].Ovl["whiteout"] = "y" },
	}
	for field, mut := range meaningful {
		b := base()
		mut(b)
		ds := Compare(base(), b, CompareOptions{Scope: ScopeUpper})
		if len(ds) != 1 || ds[0].Field != field {
			t.Errorf("%s: reported %v, want one %s difference", field, ds, field)
		}
	}
	b := base()
	b.Nodes["d"].Ovl["opaque"] = "x"
	if ds := Compare(base(), b, CompareOptions{Scope: ScopeUpper}); len(ds) != 1 {
		t.Errorf("opaque y vs x: reported %v", ds)
	}
}
