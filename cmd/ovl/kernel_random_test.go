package main

import (
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
)

// TestKernelRandom is a small seeded differential run: random layers,
// random ops, every op's result and the final views and uppers compared
// with the kernel. KCMP_SEEDS=a,b,... picks seeds; KCMP_OPS the op count.
func TestKernelRandom(t *testing.T) {
	seeds := []int64{1, 2, 3, 4, 5, 6}
	if s := os.Getenv("KCMP_SEEDS"); s != "" {
		seeds = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			seeds = append(seeds, n)
		}
	}
	nOps := 120
	if s := os.Getenv("KCMP_OPS"); s != "" {
		nOps, _ = strconv.Atoi(s)
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewSource(seed))
			opts := k.DefaultOptions()
			opts.UserXattr = seed%2 == 0
			p := kcPair(t, opts, k.RandomLayers(rng, 2))
			var ops []k.Op
			for i := 0; i < nOps; i++ {
				ops = append(ops, k.RandomOp(rng))
			}
			if os.Getenv("KCMP_PRINTOPS") != "" {
				for i, op := range ops {
					fmt.Fprintf(os.Stderr, "seed %d op %3d %s\n", seed, i, op)
				}
			}
			p.Ops(nil, ops...)
			if t.Failed() {
				var b strings.Builder
				for i, op := range ops {
					fmt.Fprintf(&b, "%3d %s\n", i, op)
				}
				t.Logf("seed %d ops:\n%s", seed, b.String())
			}
			p.Finish()
		})
	}
}
