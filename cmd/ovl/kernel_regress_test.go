package main

import (
	"os"
	"strings"
	"testing"
	"time"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// TestKernelRegress replays every reproduction the random tester saved in
// internal/kernelcmp/testdata/repro against the kernel's overlayfs: each
// op's result, the merged views after every op, the uppers and the
// interchange must agree. A file there is a bug found once; this test
// keeps it found until it is fixed, and fixed afterwards.
//
// KCMP_REPRO=DIR replays the reproductions in DIR instead (e.g. the
// -kcmp.save directory of TestKernelRandom). KCMP_RESHRINK=DIR shrinks each
// one that still fails with its class again (the code may have changed
// what is needed) and writes the result to DIR.
func TestKernelRegress(t *testing.T) {
	testutil.RequireRoot(t)
	dir := kcmpReproDir
	if d := os.Getenv("KCMP_REPRO"); d != "" {
		dir = d
	}
	cases, err := k.LoadCases(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) == 0 {
		t.Fatalf("no reproductions in %s", dir)
	}
	cand := k.Ovl{Bin: testutil.Binary(t)}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			// As shrunk (views compared at the end, or every c.Every
			// ops), and with the views compared after every op: the
			// extra walks may hide a stale cache, or show a difference
			// in between.
			if c.Intended != "" {
				// A kept difference: it must still show, and nothing else.
				o := k.Run(c.RunConfig(cand))
				if !o.Has(c.Class) {
					t.Errorf("%s: the intended difference [%s] no longer shows (the kernel changed?); update docs/differences.md", c.Name, c.Class)
				}
				allowed := map[string]bool{c.Class: true}
				for _, a := range c.Also {
					allowed[a] = true
				}
				for _, f := range o.Failures {
					if !allowed[f.Class] {
						t.Errorf("%s: [%s] %s", c.Name, f.Class, f.Text)
					}
				}
				return
			}
			for _, every := range []int{c.Every, 1} {
				rc := c.RunConfig(cand)
				rc.Every = every
				o := k.Run(rc)
				if !o.Failed() {
					continue
				}
				var b strings.Builder
				for _, f := range o.Failures {
					b.WriteString("[" + f.Class + "] " + f.Text + "\n")
				}
				t.Errorf("%s (%s), views compared every %d ops (0: at the end):\n%s\ndiagnosis guess: %s\nops:\n%s",
					c.Name, c, every, b.String(), c.Diagnosis, c.OpLog(len(c.Ops)))
				if out := os.Getenv("KCMP_RESHRINK"); out != "" && o.Has(c.Class) {
					res := k.Shrink(c, k.ShrinkConfig{Run: func(c k.Case) k.Outcome { return k.Run(c.RunConfig(cand)) }, Class: c.Class, Budget: 5 * time.Minute})
					sc := res.Case
					if f, ok := res.Outcome.First(c.Class); ok {
						sc.Failure = f.Text
					}
					file, err := k.SaveCase(out, sc)
					if err != nil {
						t.Fatal(err)
					}
					t.Logf("shrunk again: %s: %s", res.Describe(), file)
				}
				return
			}
		})
	}
}

// TestKernelOpenBugs replays the reproductions of bugs not fixed yet
// (testdata/open): each must still fail with its class. One that passes has
// been fixed: move it to testdata/repro, where it must keep passing.
func TestKernelOpenBugs(t *testing.T) {
	testutil.RequireRoot(t)
	cases, err := k.LoadCases(kcmpOpenDir)
	if err != nil {
		t.Fatal(err)
	}
	cand := k.Ovl{Bin: testutil.Binary(t)}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			o := k.Run(c.RunConfig(cand))
			if !o.Has(c.Class) {
				t.Errorf("%s no longer fails with [%s]: fixed? move it to %s", c.Name, c.Class, kcmpReproDir)
			}
		})
	}
}
