package main

import (
	"archive/tar"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// layersVersion changes whenever a generator changes, so that layers made
// by an older harness are made again.
const layersVersion = "1"

// seed fixes every generated name and byte.
const seed = 0x6f766c

// A layerSet is the lower layers one workload runs over, made once per
// scale and kept under the work dir. l0 is the topmost lower.
type layerSet struct {
	name   string
	lowers int
	make   func(g *gen) error
}

// gen writes one layer set deterministically.
type gen struct {
	dir   string // the set's directory: l0, l1, ... and files beside them
	scale float64
	rnd   *rand.Rand
}

// n scales a count, keeping at least min.
func (g *gen) n(full, min int) int { return scaleCount(g.scale, full, min) }

func scaleCount(scale float64, full, min int) int {
	return max(int(float64(full)*scale), min)
}

// size scales a byte size to whole 4 KiB pages, keeping at least 64 KiB.
func scaleSize(scale float64, full int64) int64 {
	return max(int64(float64(full)*scale)&^4095, 64<<10)
}

func (g *gen) layer(i int) string { return filepath.Join(g.dir, fmt.Sprintf("l%d", i)) }

// file writes size random bytes to the layer path rel.
func (g *gen) file(layer int, rel string, size int64) error {
	p := filepath.Join(g.layer(layer), rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	buf := make([]byte, min(size, 1<<20))
	for left := size; left > 0; {
		k := min(left, int64(len(buf)))
		g.fill(buf[:k])
		if _, err := f.Write(buf[:k]); err != nil {
			f.Close()
			return err
		}
		left -= k
	}
	return f.Close()
}

func (g *gen) fill(b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := g.rnd.Uint64()
		for j := i; j < min(i+8, len(b)); j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
}

// smallSize is the size of a small file: 0 to 4 KiB.
func (g *gen) smallSize() int64 { return g.rnd.Int64N(4097) }

// treePath names the i-th file of a tree of directories of 100 files each.
func treePath(top string, i int) string {
	d := i / 100
	return fmt.Sprintf("%s/a%02d/b%04d/f%02d", top, d%16, d, i%100)
}

var layerSets = map[string]*layerSet{
	// 100k files in directories merged from 3 layers; every 7th file is
	// in a second layer too, where the upper one hides it.
	"tree": {name: "tree", lowers: 3, make: func(g *gen) error {
		for i := range g.n(100000, 30) {
			if err := g.file(i%3, treePath("tree", i), g.smallSize()); err != nil {
				return err
			}
			if i%7 == 0 {
				if err := g.file((i+1)%3, treePath("tree", i), g.smallSize()); err != nil {
					return err
				}
			}
		}
		return nil
	}},
	// One directory of 50k empty files, alternating between 2 layers.
	"bigdir": {name: "bigdir", lowers: 2, make: func(g *gen) error {
		for i := range g.n(50000, 20) {
			if err := g.file(i%2, fmt.Sprintf("big/e%06d", i), 0); err != nil {
				return err
			}
		}
		return nil
	}},
	// A 1 GiB file and 1000 small files.
	"bigfile": {name: "bigfile", lowers: 1, make: func(g *gen) error {
		if err := g.file(0, "big.bin", scaleSize(g.scale, 1<<30)); err != nil {
			return err
		}
		for i := range g.n(1000, 10) {
			if err := g.file(0, fmt.Sprintf("small/s%04d", i), 1+g.smallSize()); err != nil {
				return err
			}
		}
		return nil
	}},
	// A 20k-file tree to remove, and beside the layers a tar of 20k files.
	"files": {name: "files", lowers: 1, make: func(g *gen) error {
		for i := range g.n(20000, 20) {
			if err := g.file(0, treePath("rmtree", i), g.smallSize()); err != nil {
				return err
			}
		}
		return g.tarball(filepath.Join(g.dir, "untar.tar"), g.n(20000, 20))
	}},
	// A git repository of 20k files, committed.
	"git": {name: "git", lowers: 1, make: func(g *gen) error {
		for i := range g.n(20000, 20) {
			if err := g.file(0, treePath("repo", i), g.smallSize()); err != nil {
				return err
			}
		}
		repo := filepath.Join(g.layer(0), "repo")
		for _, args := range [][]string{
			{"init", "-q"},
			{"add", "-A"},
			{"-c", "user.name=bench", "-c", "user.email=bench@invalid", "commit", "-q", "-m", "bench"},
		} {
			cmd := exec.Command("git", args...)
			cmd.Dir = repo
			cmd.Env = append(toolEnv(g.dir), "GIT_AUTHOR_DATE=2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE=2026-01-01T00:00:00Z")
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, oneLine(string(out)))
			}
		}
		return nil
	}},
	// 200 C files and a Makefile that links them into prog.
	"make": {name: "make", lowers: 1, make: func(g *gen) error {
		n := g.n(200, 4)
		var main strings.Builder
		main.WriteString("#include <stdio.h>\n")
		for i := range n {
			fmt.Fprintf(&main, "int f%03d(int);\n", i)
			src := fmt.Sprintf(cFile, i, g.rnd.IntN(1000), i)
			if err := writeText(filepath.Join(g.layer(0), "proj", fmt.Sprintf("f%03d.c", i)), src); err != nil {
				return err
			}
		}
		main.WriteString("int main(void) {\n\tlong s = 0;\n")
		for i := range n {
			fmt.Fprintf(&main, "\ts += f%03d(1);\n", i)
		}
		main.WriteString("\tprintf(\"%ld\\n\", s);\n\treturn 0;\n}\n")
		if err := writeText(filepath.Join(g.layer(0), "proj", "main.c"), main.String()); err != nil {
			return err
		}
		return writeText(filepath.Join(g.layer(0), "proj", "Makefile"), makefile)
	}},
	// 10 small lower layers, for the mount time.
	"lowers10": {name: "lowers10", lowers: 10, make: func(g *gen) error {
		for l := range 10 {
			for i := range 10 {
				if err := g.file(l, fmt.Sprintf("d/l%d-%d", l, i), g.smallSize()); err != nil {
					return err
				}
			}
		}
		return nil
	}},
	// Next to nothing, for writes of new files.
	"empty": {name: "empty", lowers: 1, make: func(g *gen) error {
		return g.file(0, "keep", 1)
	}},
	// A 256 MiB file, read through 20 mounts at once.
	"pagecache": {name: "pagecache", lowers: 1, make: func(g *gen) error {
		return g.file(0, "pc.bin", scaleSize(g.scale, 256<<20))
	}},
}

// cFile is one C file: f%03d returns x + %03d after a loop that keeps the
// compiler busy for a moment.
const cFile = `/* generated */
int f%03[1]d(int x) {
	int s = 0;
	for (int i = 0; i < %[2]d; i++)
		s += (i * 7) %% 13;
	return x + %[3]d + (s & 0);
}
`

// prog prints the sum of f_i(1) for i < n: n + n(n-1)/2.
const makefile = `SRCS := $(sort $(wildcard *.c))
OBJS := $(SRCS:.c=.o)
prog: $(OBJS)
	$(CC) -o $@ $(OBJS)
%.o: %.c
	$(CC) -O1 -c -o $@ $<
`

func makeExpected(n int) string { return fmt.Sprintf("%d\n", n+n*(n-1)/2) }

// tarball writes a tar of n small files in directories of 100.
func (g *gen) tarball(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	dirs := map[string]bool{}
	for i := range n {
		p := treePath("untar", i)
		for _, d := range parents(p) {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}); err != nil {
				return err
			}
		}
		data := make([]byte, g.smallSize())
		g.fill(data)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// parents lists the directories above p, outermost first.
func parents(p string) []string {
	var out []string
	for d := filepath.Dir(p); d != "."; d = filepath.Dir(d) {
		out = append([]string{d}, out...)
	}
	return out
}

func writeText(p, s string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(s), 0o644)
}

// prepare makes the layers of set s at the scale of e, unless an earlier
// run has, and returns the set's directory. The flattened copy "flat" is
// the layers copied bottom to top (the sets have no whiteouts).
func prepare(e *env, s *layerSet) (string, error) {
	dir := filepath.Join(e.workdir, fmt.Sprintf("layers-%g", e.scale), s.name)
	stamp := filepath.Join(dir, ".done")
	want := "v" + layersVersion
	if b, err := os.ReadFile(stamp); err == nil && string(b) == want {
		return dir, nil
	}
	e.logf("making layers %q at scale %g", s.name, e.scale)
	start := time.Now()
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	h := fnv.New64a()
	h.Write([]byte(s.name))
	g := &gen{dir: dir, scale: e.scale, rnd: rand.New(rand.NewPCG(seed, h.Sum64()))}
	for i := range s.lowers {
		if err := os.MkdirAll(g.layer(i), 0o755); err != nil {
			return "", err
		}
	}
	if err := s.make(g); err != nil {
		return "", fmt.Errorf("layers %s: %w", s.name, err)
	}
	flat := filepath.Join(dir, "flat")
	if err := os.Mkdir(flat, 0o755); err != nil {
		return "", err
	}
	for i := s.lowers - 1; i >= 0; i-- {
		if err := copyTree(g.layer(i), flat); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(stamp, []byte(want), 0o644); err != nil {
		return "", err
	}
	e.logf("made layers %q in %.1fs", s.name, time.Since(start).Seconds())
	return dir, nil
}

// stack returns the lowers and flattened copy of a prepared set.
func stack(dir string, s *layerSet) layout {
	var l layout
	for i := range s.lowers {
		l.lowers = append(l.lowers, filepath.Join(dir, fmt.Sprintf("l%d", i)))
	}
	l.flat = filepath.Join(dir, "flat")
	return l
}

// copyTree copies the contents of src over dst, keeping modes, owners and
// times.
func copyTree(src, dst string) error {
	out, err := exec.Command("cp", "-a", "--reflink=auto", src+"/.", dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, oneLine(string(out)))
	}
	return nil
}
