package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// stressDurationEnv asks TestStressForget for its long form: run for that
// long (e.g. OVL_STRESS_DURATION=10m) over 10k lower files. Without it the
// test does a fixed number of operations, a few seconds of work.
const stressDurationEnv = "OVL_STRESS_DURATION"

// stressConfig sizes one run of TestStressForget.
type stressConfig struct {
	dirs, files int           // lower directories, and files in each
	workers     int           // goroutines doing I/O
	ops         int           // operations per worker (bounded form)
	minDrops    int           // forget storms that must overlap the work
	duration    time.Duration // long form: run this long instead of ops
}

// TestStressForget (issue 17, item 3): parallel readers, writers, stat-ers,
// listers and creators over many lower files while the kernel forgets the
// mount's inodes (drop_caches) over and over. No request may panic in the
// daemon, no caller may see an error for an object that exists (ENOENT,
// ESTALE, EIO: the symptoms of a node used after it was forgotten), and
// once the work is over and the caches are dropped, "ovl stats" counts no
// node but the root again, and never a negative number on the way.
//
// The bounded form runs in CI; OVL_STRESS_DURATION=10m runs the long one.
func TestStressForget(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := stressConfig{dirs: 20, files: 50, workers: 16, ops: 500, minDrops: 5}
	if v := os.Getenv(stressDurationEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", stressDurationEnv, v, err)
		}
		cfg = stressConfig{dirs: 100, files: 100, workers: 16, minDrops: 1, duration: d}
	}
	dir := cliTree(t)
	content := func(d, f int) []byte { return []byte(fmt.Sprintf("lower file d%03d/f%03d\n", d, f)) }
	for d := range cfg.dirs {
		sub := filepath.Join(dir, "l2/s", fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range cfg.files {
			if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d", f)), content(d, f), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	logPath := filepath.Join(dir, "daemon.log")
	cliMustMount(t, dir, "mount", "--log", logPath, "-o", cliLayerOpts, "m")
	defer runOvl(t, dir, "umount", "m")
	base := cliStats(t, dir, false)["nodes"]
	mnt := filepath.Join(dir, "m/s")

	var (
		mu      sync.Mutex
		errs    = map[string]int{} // "op errno" -> count
		samples []string
		ops     atomic.Int64
		drops   atomic.Int64
		minNode = base
	)
	fail := func(op, path string, err error) {
		key := op + " " + errText(err)
		mu.Lock()
		errs[key]++
		if len(samples) < 20 {
			samples = append(samples, fmt.Sprintf("%s %s: %v", op, path, err))
		}
		mu.Unlock()
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %+v", seed, cfg)
	start := time.Now()
	more := func(i int) bool {
		if cfg.duration > 0 {
			return time.Since(start) < cfg.duration
		}
		return i < cfg.ops || drops.Load() < int64(cfg.minDrops)
	}
	var wg sync.WaitGroup
	for w := range cfg.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			var mine []string // files this worker created and has not removed
			for i := 0; more(i); i++ {
				ops.Add(1)
				d, f := r.IntN(cfg.dirs), r.IntN(cfg.files)
				sub := filepath.Join(mnt, fmt.Sprintf("d%03d", d))
				p := filepath.Join(sub, fmt.Sprintf("f%03d", f))
				want := content(d, f)
				switch op := r.IntN(10); op {
				case 0, 1: // stat, as ls -l and find do
					st, err := os.Lstat(p)
					if err != nil {
						fail("lstat", p, err)
					} else if !st.Mode().IsRegular() || st.Size() < int64(len(want)) {
						fail("lstat", p, fmt.Errorf("mode %v size %d", st.Mode(), st.Size()))
					}
				case 2, 3: // read
					b, err := os.ReadFile(p)
					if err != nil {
						fail("read", p, err)
					} else if !bytes.HasPrefix(b, want) {
						fail("read", p, fmt.Errorf("content %q", b))
					}
				case 4: // ls -l: list, then stat every entry
					ents, err := os.ReadDir(sub)
					if err != nil {
						fail("readdir", sub, err)
						break
					}
					lower := 0
					for _, e := range ents {
						if strings.HasPrefix(e.Name(), "f") {
							lower++
						}
						if _, err := os.Lstat(filepath.Join(sub, e.Name())); err != nil &&
							!(errors.Is(err, unix.ENOENT) && strings.HasPrefix(e.Name(), "n-")) {
							// Only a file another worker created may
							// be gone by now.
							fail("readdir+lstat", filepath.Join(sub, e.Name()), err)
						}
					}
					if lower != cfg.files {
						fail("readdir", sub, fmt.Errorf("%d lower files listed, want %d", lower, cfg.files))
					}
				case 5: // append: copies up files in one dir out of four
					if d%4 != 0 {
						p = filepath.Join(mnt, fmt.Sprintf("d%03d", d&^3), fmt.Sprintf("f%03d", f))
						want = content(d&^3, f)
					}
					fd, err := unix.Open(p, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
					if err != nil {
						fail("open-append", p, err)
						break
					}
					if _, err := unix.Write(fd, []byte("+\n")); err != nil {
						fail("append", p, err)
					}
					unix.Close(fd)
					if b, err := os.ReadFile(p); err != nil {
						fail("read-appended", p, err)
					} else if !bytes.HasPrefix(b, want) {
						fail("read-appended", p, fmt.Errorf("content %q", b))
					}
				case 6, 7: // create, write, stat; remove some again
					np := filepath.Join(sub, fmt.Sprintf("n-%d-%d", w, i))
					if err := os.WriteFile(np, []byte(np), 0o644); err != nil {
						fail("create", np, err)
						break
					}
					mine = append(mine, np)
					if _, err := os.Lstat(np); err != nil {
						fail("lstat-new", np, err)
					}
					if len(mine) > 8 {
						k := r.IntN(len(mine))
						old := mine[k]
						mine = append(mine[:k], mine[k+1:]...)
						if err := os.Remove(old); err != nil {
							fail("unlink", old, err)
						}
					}
				case 8: // read back a file this worker made
					if len(mine) == 0 {
						break
					}
					np := mine[r.IntN(len(mine))]
					if b, err := os.ReadFile(np); err != nil {
						fail("read-new", np, err)
					} else if string(b) != np {
						fail("read-new", np, fmt.Errorf("content %q", b))
					}
				case 9: // a directory of its own: make, fill, rename, remove
					nd := filepath.Join(sub, fmt.Sprintf("n-dir-%d-%d", w, i))
					if err := os.Mkdir(nd, 0o755); err != nil {
						fail("mkdir", nd, err)
						break
					}
					if err := os.WriteFile(filepath.Join(nd, "x"), nil, 0o644); err != nil {
						fail("create-in-new-dir", nd, err)
					}
					nd2 := nd + "-moved"
					if err := os.Rename(nd, nd2); err != nil {
						fail("rename", nd, err)
						nd2 = nd
					}
					if err := os.RemoveAll(nd2); err != nil {
						fail("rmdir", nd2, err)
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	// The forget storm: drop the kernel's dentries and inodes while the
	// workers run, and check the node count never goes negative.
	for running := true; running; {
		select {
		case <-done:
			running = false
			continue
		default:
		}
		dropCaches(t)
		drops.Add(1)
		if n := cliStats(t, dir, false)["nodes"]; n < minNode {
			minNode = n
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(start)

	// Quiescence: nothing holds an inode of the mount any more, so after
	// drop_caches the daemon holds the root alone, as before the run.
	var end float64
	for i := 0; i < 300; i++ {
		dropCaches(t)
		if end = cliStats(t, dir, false)["nodes"]; end == base {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	logData, _ := os.ReadFile(logPath)
	panics := strings.Count(string(logData), "panic")

	var keys []string
	total := 0
	for k, n := range errs {
		keys = append(keys, fmt.Sprintf("%s: %d", k, n))
		total += n
	}
	sort.Strings(keys)
	t.Logf("%d ops by %d workers over %d lower files in %v, %d drop_caches; %d errors, %d panics; nodes: %v at the start, lowest %v, %v at the end",
		ops.Load(), cfg.workers, cfg.dirs*cfg.files, elapsed.Round(time.Millisecond), drops.Load(), total, panics, base, minNode, end)
	if total > 0 {
		t.Errorf("%d errors: %s\nfirst ones:\n%s", total, strings.Join(keys, ", "), strings.Join(samples, "\n"))
	}
	if panics > 0 {
		lines := strings.Split(string(logData), "\n")
		var shown []string
		for i, l := range lines {
			if strings.Contains(l, "panic") {
				shown = append(shown, strings.Join(lines[i:min(i+8, len(lines))], "\n"))
				if len(shown) == 2 {
					break
				}
			}
		}
		t.Errorf("the daemon logged %d panics:\n%s", panics, strings.Join(shown, "\n...\n"))
	}
	if minNode < 0 {
		t.Errorf("ovl stats counted %v nodes during the run", minNode)
	}
	if end != base {
		t.Errorf("ovl stats counts %v nodes after the run and drop_caches, want %v (the root) as before it", end, base)
	}
}

// errText names an error by its errno where it has one.
func errText(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		return unix.ErrnoName(en)
	}
	return "wrong result"
}

// TestStressReaddirCacheRefilled: an open directory read part-way, the
// directory changed (a create), then listed in full by another open, which
// refills the kernel's readdir cache (FOPEN_CACHE_DIR) with the new
// listing. The first open then goes on from the new cache at its offset
// (fs/fuse/readdir.c fuse_readdir_cached): every name that was there at
// opendir and stays must still be listed exactly once. It is how "ls -l"
// and a creator in one directory listed lower files twice or not at all.
func TestStressReaddirCacheRefilled(t *testing.T) {
	testutil.RequireRoot(t)
	dir := cliTree(t)
	const n = 300
	sub := filepath.Join(dir, "l2/r")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for i := range n {
		name := fmt.Sprintf("f%03d", i)
		want[name] = true
		if err := os.WriteFile(filepath.Join(sub, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cliMustMount(t, dir, "mount", "-o", cliLayerOpts, "m")
	defer runOvl(t, dir, "umount", "m")
	mr := filepath.Join(dir, "m/r")
	for round := range 20 {
		if _, err := os.ReadDir(mr); err != nil { // fills the kernel's cache
			t.Fatal(err)
		}
		fd, err := unix.Open(mr, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		count := map[string]int{}
		read := func() int {
			nr, err := unix.Getdents(fd, buf)
			if err != nil {
				t.Fatalf("getdents: %v", err)
			}
			for _, e := range k.ParseDirents(buf[:nr]) {
				count[e.Name]++
			}
			return nr
		}
		for i := 0; i < 3; i++ {
			read()
		}
		// Names that sort first and last in most orders.
		for _, nm := range []string{fmt.Sprintf("a-new-%d", round), fmt.Sprintf("z-new-%d", round)} {
			if err := os.WriteFile(filepath.Join(mr, nm), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := os.ReadDir(mr); err != nil { // refills the cache
			t.Fatal(err)
		}
		for read() > 0 {
		}
		unix.Close(fd)
		var probs []string
		for nm := range want {
			if count[nm] != 1 {
				probs = append(probs, fmt.Sprintf("%s listed %d times", nm, count[nm]))
			}
		}
		for nm, c := range count {
			if c > 1 && !want[nm] {
				probs = append(probs, fmt.Sprintf("%s listed %d times", nm, c))
			}
		}
		if len(probs) > 0 {
			sort.Strings(probs)
			t.Fatalf("round %d: %d problems: %v", round, len(probs), probs[:min(6, len(probs))])
		}
		for nm := range count {
			if strings.HasPrefix(nm, "a-new") || strings.HasPrefix(nm, "z-new") {
				want[nm] = true
			}
		}
	}
}
