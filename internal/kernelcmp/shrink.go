package kernelcmp

import (
	"fmt"
	"time"
)

// ShrinkConfig says how to shrink a failing Case.
type ShrinkConfig struct {
	// Run runs a case on fresh layers (a Pair is made for every try).
	Run func(Case) Outcome
	// Class is the failure to keep (Outcome.Has).
	Class string
	// Upto, if positive, is how many ops led to the failure (Failure.Op+1
	// of the run that found it); the ops after are cut before anything
	// else, so that a failure seen by a periodic check mid-run is kept.
	Upto int
	// Budget bounds the time spent (0: no bound); when it runs out the
	// smallest case found so far is returned.
	Budget time.Duration
	// Logf, if set, reports progress.
	Logf func(format string, args ...any)
}

// ShrinkResult is the outcome of Shrink.
type ShrinkResult struct {
	Case    Case
	Outcome Outcome // of Case's last run
	Runs    int     // how many runs it took
	// Reproduced is false when the original case did not fail with the
	// class again (a flaky failure): Case is then the original.
	Reproduced bool
	// Complete is false when the budget ran out before a fixpoint.
	Complete bool
}

// Shrink reduces c to a small case that still fails with sc.Class, by
// delta debugging: first it cuts the ops after the failure, then drops
// chunks of ops (halves, quarters, ... single ops) as long as the failure
// stays, then does the same with the layer entries. Every try runs on
// fresh layers built from the case. Layer stacks that CheckLayers
// rejects are not tried.
func Shrink(c Case, sc ShrinkConfig) ShrinkResult {
	start := time.Now()
	res := ShrinkResult{Case: c}
	logf := sc.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	over := func() bool { return sc.Budget > 0 && time.Since(start) > sc.Budget }
	try := func(cand Case) bool {
		res.Runs++
		o := sc.Run(cand)
		if o.Has(sc.Class) {
			res.Case, res.Outcome = cand, o
			return true
		}
		return false
	}

	if sc.Upto > 0 && sc.Upto < len(c.Ops) {
		c.Ops = c.Ops[:sc.Upto]
		res.Case = c
	}
	// Without the periodic view walks if it fails so, else with a walk
	// after every op (they look up and read everything, which some
	// failures need; after every op, dropping ops does not move them),
	// else as found.
	every := c.Every
	c.Every = 0
	if !try(c) && !try(withEvery(c, 1)) && (every <= 1 || !try(withEvery(c, every))) {
		logf("shrink: %s: does not fail with %q again; not shrinking", c, sc.Class)
		return res
	}
	c = res.Case
	if c.Every > 0 {
		// Make the periodic view checks explicit ops, so that dropping
		// ops does not move them and unneeded ones can go.
		if explicit := explicitViews(c); !try(explicit) {
			logf("shrink: %s: explicit view ops do not reproduce; keeping every=%d", c, c.Every)
		}
		c = res.Case
	}
	// The first failure of the class says how many ops are needed.
	res.Reproduced = true
	if f, ok := res.Outcome.First(sc.Class); ok && f.Op+1 < len(c.Ops) {
		cut := c
		cut.Ops = c.Ops[:max(f.Op+1, 0)]
		try(cut)
	}
	logf("shrink: %s reproduces", res.Case)

	shrinkOps := func() {
		base := res.Case
		ddmin(len(base.Ops), func(idx []int) bool {
			cand := base
			cand.Ops = pick(base.Ops, idx)
			return try(cand)
		}, over, func(n int) { logf("shrink: %d ops", n) })
	}
	shrinkOps()
	// Layer entries (the same case with fewer of them).
	type ref struct{ layer, i int } // layer -1 is the upper
	var refs []ref
	for li, l := range res.Case.Layers.Lowers {
		for i := range l {
			refs = append(refs, ref{li, i})
		}
	}
	for i := range res.Case.Layers.Upper {
		refs = append(refs, ref{-1, i})
	}
	base := res.Case
	ddmin(len(refs), func(idx []int) bool {
		cand := base
		cand.Layers = Layers{Lowers: make([]Layer, len(base.Layers.Lowers))}
		for i := range cand.Layers.Lowers {
			cand.Layers.Lowers[i] = Layer{}
		}
		for _, k := range idx {
			r := refs[k]
			if r.layer < 0 {
				cand.Layers.Upper = append(cand.Layers.Upper, base.Layers.Upper[r.i])
			} else {
				cand.Layers.Lowers[r.layer] = append(cand.Layers.Lowers[r.layer], base.Layers.Lowers[r.layer][r.i])
			}
		}
		if CheckLayers(cand.Layers) != nil {
			return false // not a stack a real tool writes
		}
		return try(cand)
	}, over, func(n int) { logf("shrink: %d layer entries", n) })
	// Dropping entries can make more ops unneeded.
	shrinkOps()
	res.Complete = !over()
	logf("shrink: done after %d runs in %v: %s", res.Runs, time.Since(start).Round(time.Second), res.Case)
	return res
}

// explicitViews is c with a ViewsOp after every c.Every-th op (as Run
// compares the views when Every is set) and Every 0.
func explicitViews(c Case) Case {
	var ops []Op
	for i, op := range c.Ops {
		ops = append(ops, op)
		if (i+1)%c.Every == 0 && i+1 < len(c.Ops) {
			ops = append(ops, Op{Op: ViewsOp})
		}
	}
	c.Ops, c.Every = ops, 0
	return c
}

func withEvery(c Case, every int) Case {
	c.Every = every
	return c
}

func pick[T any](s []T, idx []int) []T {
	out := make([]T, 0, len(idx))
	for _, i := range idx {
		out = append(out, s[i])
	}
	return out
}

// ddmin finds a small subsequence of 0..n-1 for which test holds (it is
// known to hold for the whole). It removes chunks of decreasing size (n/2,
// n/4, ..., 1), keeping each removal after which test still holds, then
// repeats single removals until none helps, so the result is 1-minimal
// unless stop ends it early. test gets the indices to keep, in order.
func ddmin(n int, test func(keep []int) bool, stop func() bool, progress func(int)) []int {
	keep := make([]int, n)
	for i := range keep {
		keep[i] = i
	}
	try := func(cand []int) bool {
		if !test(cand) {
			return false
		}
		keep = cand
		if progress != nil {
			progress(len(keep))
		}
		return true
	}
	for chunk := len(keep) / 2; chunk >= 1; chunk /= 2 {
		for start := 0; start < len(keep); {
			if stop() {
				return keep
			}
			end := min(start+chunk, len(keep))
			cand := append(append([]int{}, keep[:start]...), keep[end:]...)
			if !try(cand) {
				start = end
			}
		}
	}
	for changed := true; changed; {
		changed = false
		for i := 0; i < len(keep); {
			if stop() {
				return keep
			}
			cand := append(append([]int{}, keep[:i]...), keep[i+1:]...)
			if try(cand) {
				changed = true
			} else {
				i++
			}
		}
	}
	return keep
}

// Describe is a multi-line report of a shrunk case: its size and its
// failures.
func (r ShrinkResult) Describe() string {
	s := fmt.Sprintf("%s after %d runs", r.Case, r.Runs)
	if !r.Reproduced {
		s += " (did not reproduce: not shrunk)"
	} else if !r.Complete {
		s += " (budget ran out: not minimal)"
	}
	return s
}
