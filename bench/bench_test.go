package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ovl-project/ovl/internal/testutil"
)

// TestMain lets the test binary serve as the loopback server and as a
// rootless worker, as the bench binary does: the harness runs
// os.Executable() for them.
func TestMain(m *testing.M) {
	maybeServeLoopback()
	maybeServeWorker()
	// The test binary is the bench's helper too: without this a hold
	// helper would run the tests again, and its own helper them again.
	maybeHold()
	os.Exit(m.Run())
}

// ours are the systems whose failures are this project's: the harness's
// own (plain, loopback), the kernel's overlayfs, and ovl. A workload that
// fails on fuse-overlayfs is its business, and is only logged.
var ours = map[string]bool{"plain": true, "kernel": true, "kernel-volatile": true, "loopback": true, "ovl": true,
	"kernel-userns": true, "ovl-rootless": true}

// TestSmoke runs the whole harness at a tiny scale, one round, so that it
// cannot rot: every workload must give a value on every system that mounts,
// and the table must show every row.
func TestSmoke(t *testing.T) { smoke(t, nil, "kernel", "ovl") }

// TestSmokeRootless is TestSmoke for -rootless: every workload gives a
// value on ovl and fuse-overlayfs mounted through fusermount3 by the
// unprivileged user, and on the kernel's overlayfs in that user's
// namespace, and the table names the rootless systems and the user.
func TestSmokeRootless(t *testing.T) {
	out := smoke(t, []string{"-rootless"}, "kernel-userns", "ovl-rootless")
	for _, want := range []string{"| kernel-userns | fuse-overlayfs-rootless | ovl-rootless |", "Rootless systems (-rootless) run as " + defaultUser,
		"(ratio to kernel-userns)"} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q", want)
		}
	}
}

// smoke runs the bench with args at a tiny scale and checks the report;
// the systems in must have to mount. It returns the table.
func smoke(t *testing.T, args []string, must ...string) string {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	// Not t.TempDir(), whose parent is private: the rootless user's
	// workers work in it.
	dir, err := os.MkdirTemp("", "ovl-bench-smoke-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	js := filepath.Join(dir, "result.json")
	var out, log bytes.Buffer
	err = run(append([]string{"-scale", "0.002", "-rounds", "1", "-workdir", filepath.Join(dir, "w"),
		"-ovl", bin, "-install=false", "-json", js}, args...), &out, &log)
	t.Logf("table:\n%s", out.String())
	if err != nil {
		t.Fatalf("bench: %v\nlog:\n%s", err, log.String())
	}
	var rep report
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	avail := map[string]bool{}
	for _, s := range rep.Systems {
		switch {
		case s.NA == "":
			avail[s.Name] = true
		case slices.Contains(must, s.Name):
			testutil.Skip(t, "%s cannot mount: %s", s.Name, s.NA)
		default:
			t.Logf("%s not measured: %s", s.Name, s.NA)
		}
	}
	rows := 0
	for _, w := range workloads {
		rows += len(w.rows)
	}
	if len(rep.Rows) != rows {
		t.Errorf("the report has %d rows, the workloads %d", len(rep.Rows), rows)
	}
	for _, res := range rep.Rows {
		if !strings.Contains(out.String(), "| "+strings.ReplaceAll(res.Row, "|", `\|`)) {
			t.Errorf("the table has no row %q", res.Row)
		}
		for name := range avail {
			c := res.Cells[name]
			switch {
			case c == nil:
				t.Errorf("%s, %s: no cell", res.Row, name)
			case c.NA != "":
			case c.Err != "" && ours[name]:
				t.Errorf("%s, %s: %s", res.Row, name, c.Err)
			case c.Err != "":
				t.Logf("%s, %s: %s", res.Row, name, c.Err)
			case len(c.Values) != 1:
				t.Errorf("%s, %s: %d values for 1 round", res.Row, name, len(c.Values))
			case (res.Unit == "s" || res.Unit == "ms") && c.Values[0] <= 0:
				t.Errorf("%s, %s: time %v", res.Row, name, c.Values[0])
			}
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", log.String())
	}
	return out.String()
}

func TestRatios(t *testing.T) {
	ref := &cell{Values: []float64{2, 4, 3}}
	c := &cell{Values: []float64{3, 4, 6}}
	med, lo, hi, ok := ratios(c, ref)
	if !ok || med != 4.0/3 || lo != 1 || hi != 2 {
		t.Errorf("ratios = %v %v %v %v, want 1.333 1 2 true", med, lo, hi, ok)
	}
	if _, _, _, ok := ratios(&cell{Values: []float64{1}, Err: "x"}, ref); ok {
		t.Error("a cell with an error has a ratio")
	}
	if m := median([]float64{5, 1, 4, 2}); m != 3 {
		t.Errorf("median = %v, want 3", m)
	}
}

func TestTableMarksErrorsAndNA(t *testing.T) {
	rep := &report{Systems: []sysInfo{{Name: "kernel"}, {Name: "ovl"}, {Name: "fuse-overlayfs", NA: "not installed"}}}
	rep.Rows = []*result{{Row: "a | b", Unit: "s", Ref: "kernel", Cells: map[string]*cell{
		"kernel": {Values: []float64{2}},
		"ovl":    {Err: "boom"},
	}}}
	var b bytes.Buffer
	rep.writeTable(&b)
	for _, want := range []string{`| a \| b (ratio to kernel) |`, "| 2.00 s | error [1] | n/a |", "1. a | b, ovl: boom", "- fuse-overlayfs: not installed"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
