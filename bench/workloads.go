package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A row is one figure a workload reports per system.
type row struct {
	name   string
	unit   string // "s", "ms", "MiB", "x file", "nodes"
	ratio  bool   // show the ratio to the reference system
	copyUp bool   // the reference is kernel-volatile when ovl does not fsync
	target string // issue 5's target, for the reader
	// only, if set, says why the row does not apply to s ("" if it does).
	only func(s *system) string
}

// A workload runs over one layer set and reports its rows, by name.
type workload struct {
	name string
	set  string
	// mutates: it changes the tree, so plain and loopback get a fresh copy
	// of the flattened layers every run (the overlays get a fresh upper).
	mutates bool
	rows    []row
	// run works on one fresh mount.
	run func(c *runCtx) (map[string]float64, error)
	// custom, instead of run, does its own mounting.
	custom func(e *env, s *system, setDir string) (map[string]float64, error)
}

// runCtx is what a workload run works on.
type runCtx struct {
	e      *env
	m      *mounted
	mnt    string // the mountpoint
	setDir string // the layer set: l0.., flat, files beside
}

// The counted phases (requests.go).
var (
	phaseStatCold = phase{"find+stat, cold", "name"}
	phaseStatWarm = phase{"find+stat, warm", "name"}
	phaseCopyUp   = phase{"copy-up of a small file", "file"}
	phaseUntar    = phase{"untar", "file"}
	phaseRm       = phase{"rm -rf", "name"}
	phaseCat      = phase{"xargs cat, warm", "file"}
)

func daemonsOnly(s *system) string {
	if !s.daemon {
		return "no daemon"
	}
	return ""
}

func ovlOnly(s *system) string {
	if !s.is("ovl") {
		return "ovl only"
	}
	return ""
}

var workloads = []*workload{
	{name: "find+stat", set: "tree",
		rows: append([]row{
			{name: "find+stat 100k files, 3 lowers, cold", unit: "s", ratio: true, target: "≤1.3×"},
			{name: "find+stat 100k files, 3 lowers, warm", unit: "s", ratio: true, target: "≤1.2×"},
		}, append(phaseStatCold.rows(), phaseStatWarm.rows()...)...),
		run: func(c *runCtx) (map[string]float64, error) {
			want, err := c.e.expect("walk "+c.setDir, func() (int, error) { return walk(filepath.Join(c.setDir, "flat", "tree")) })
			if err != nil {
				return nil, err
			}
			out := map[string]float64{}
			for _, r := range []string{"cold", "warm"} {
				var n int
				p := phaseStatWarm
				if r == "cold" {
					p = phaseStatCold
				}
				t, err := timed(r == "cold", func() error {
					return c.counted(p, want, out, func() (err error) {
						n, err = walk(filepath.Join(c.mnt, "tree"))
						return err
					})
				})
				if err != nil {
					return nil, err
				}
				if n != want {
					return nil, fmt.Errorf("walk found %d entries, the flattened layers have %d", n, want)
				}
				out["find+stat 100k files, 3 lowers, "+r] = t
			}
			return out, nil
		}},

	{name: "readdir", set: "bigdir",
		rows: []row{{name: "ls -f of a 50k-entry merged dir, cold", unit: "s", ratio: true, target: "≤1.5×"}},
		run: func(c *runCtx) (map[string]float64, error) {
			want, err := c.e.expect("ls "+c.setDir, func() (int, error) {
				names, err := readNames(filepath.Join(c.setDir, "flat", "big"))
				return len(names) + 2, err // and . and ..
			})
			if err != nil {
				return nil, err
			}
			var lines lineCounter
			t, err := timed(true, func() error {
				return runCmd(c.mnt, &lines, "ls", "-f", filepath.Join(c.mnt, "big"))
			})
			if err != nil {
				return nil, err
			}
			if int(lines) != want {
				return nil, fmt.Errorf("ls -f listed %d names, want %d", lines, want)
			}
			return map[string]float64{"ls -f of a 50k-entry merged dir, cold": t}, nil
		}},

	{name: "read", set: "bigfile",
		rows: []row{
			{name: "sequential read 1 GiB, cold", unit: "s", ratio: true, target: "≤1.1×"},
			{name: "sequential read 1 GiB, warm", unit: "s", ratio: true, target: "≤1.1×"},
			{name: "random 4 KiB reads, cold", unit: "s", ratio: true, target: "≤1.1×"},
		},
		run: func(c *runCtx) (map[string]float64, error) {
			want, err := fileSize(filepath.Join(c.setDir, "flat", "big.bin"))
			if err != nil {
				return nil, err
			}
			p := filepath.Join(c.mnt, "big.bin")
			out := map[string]float64{}
			for _, r := range []string{"cold", "warm"} {
				var n int64
				t, err := timed(r == "cold", func() (err error) {
					n, err = seqRead(p)
					return err
				})
				if err != nil {
					return nil, err
				}
				if n != want {
					return nil, fmt.Errorf("read %d bytes of %s, want %d", n, p, want)
				}
				out["sequential read 1 GiB, "+r] = t
			}
			count := scaleCount(c.e.scale, 16384, 64)
			t, err := timed(true, func() error { return randRead(p, want, count) })
			if err != nil {
				return nil, err
			}
			out["random 4 KiB reads, cold"] = t
			return out, nil
		}},

	{name: "write", set: "empty", mutates: true,
		rows: []row{
			{name: "sequential write of a new 1 GiB file", unit: "s", ratio: true, target: "≤1.1×"},
			{name: "sequential write of a new 1 GiB file + fsync", unit: "s", ratio: true, target: "≤1.1×"},
		},
		run: func(c *runCtx) (map[string]float64, error) {
			size := scaleSize(c.e.scale, 1<<30)
			out := map[string]float64{}
			for i, name := range []string{"sequential write of a new 1 GiB file", "sequential write of a new 1 GiB file + fsync"} {
				p := filepath.Join(c.mnt, fmt.Sprintf("new%d.bin", i))
				t, err := timed(false, func() error { return writeNew(p, size, i == 1) })
				if err != nil {
					return nil, err
				}
				if n, err := fileSize(p); err != nil || n != size {
					return nil, fmt.Errorf("wrote %s: size %d (%v), want %d", p, n, err, size)
				}
				out[name] = t
			}
			return out, nil
		}},

	{name: "copy-up", set: "bigfile", mutates: true,
		rows: append([]row{
			{name: "copy-up of a 1 GiB file (append 1 byte)", unit: "s", ratio: true, copyUp: true, target: "≤1.1×"},
			{name: "copy-up of 1000 small files (append 1 byte)", unit: "s", ratio: true, copyUp: true, target: "≤1.1×"},
		}, phaseCopyUp.rows()...),
		run: func(c *runCtx) (map[string]float64, error) {
			big := filepath.Join(c.mnt, "big.bin")
			want, err := fileSize(filepath.Join(c.setDir, "flat", "big.bin"))
			if err != nil {
				return nil, err
			}
			small, err := readNames(filepath.Join(c.setDir, "flat", "small"))
			if err != nil {
				return nil, err
			}
			out := map[string]float64{}
			t, err := timed(false, func() error { return appendByte(big) })
			if err != nil {
				return nil, err
			}
			if n, err := fileSize(big); err != nil || n != want+1 {
				return nil, fmt.Errorf("after append %s has %d bytes (%v), want %d", big, n, err, want+1)
			}
			out["copy-up of a 1 GiB file (append 1 byte)"] = t
			t, err = timed(false, func() error {
				return c.counted(phaseCopyUp, len(small), out, func() error {
					for _, name := range small {
						if err := appendByte(filepath.Join(c.mnt, "small", name)); err != nil {
							return err
						}
					}
					return nil
				})
			})
			if err != nil {
				return nil, err
			}
			out["copy-up of 1000 small files (append 1 byte)"] = t
			return out, nil
		}},

	{name: "untar+rm", set: "files", mutates: true,
		rows: append([]row{
			{name: "untar 20k small files", unit: "s", ratio: true, target: "≤2×"},
			{name: "rm -rf of a 20k-file lower tree", unit: "s", ratio: true, target: "≤2×"},
		}, append(phaseUntar.rows(), phaseRm.rows()...)...),
		run: func(c *runCtx) (map[string]float64, error) {
			tarball := filepath.Join(c.setDir, "untar.tar")
			want, err := c.e.expect("tar "+c.setDir, func() (int, error) { return tarEntries(tarball) })
			if err != nil {
				return nil, err
			}
			out := map[string]float64{}
			t, err := timed(false, func() error {
				return c.counted(phaseUntar, want, out, func() error { return runCmd(c.mnt, nil, "tar", "-xf", tarball, "-C", c.mnt) })
			})
			if err != nil {
				return nil, err
			}
			if n, err := walk(filepath.Join(c.mnt, "untar")); err != nil || n+1 != want {
				return nil, fmt.Errorf("untar left %d entries (%v), the tar has %d", n+1, err, want)
			}
			out["untar 20k small files"] = t
			unix.Sync()
			tree := filepath.Join(c.mnt, "rmtree")
			names, err := c.e.expect("rmtree "+c.setDir, func() (int, error) {
				n, err := walk(filepath.Join(c.setDir, "flat", "rmtree"))
				return n + 1, err
			})
			if err != nil {
				return nil, err
			}
			t, err = timed(false, func() error {
				return c.counted(phaseRm, names, out, func() error { return runCmd(c.mnt, nil, "rm", "-rf", tree) })
			})
			if err != nil {
				return nil, err
			}
			if _, err := os.Lstat(tree); !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("after rm -rf, %s: %v", tree, err)
			}
			out["rm -rf of a 20k-file lower tree"] = t
			return out, nil
		}},

	{name: "git", set: "git", mutates: true, // git status refreshes the index
		rows: append([]row{
			{name: "git status, 20k files, cold", unit: "s", ratio: true, target: "≤1.5×"},
			{name: "git status, 20k files, warm", unit: "s", ratio: true, target: "≤1.2×"},
			{name: "git ls-files | xargs cat, cold", unit: "s", ratio: true},
			{name: "git ls-files | xargs cat, warm", unit: "s", ratio: true},
		}, phaseCat.rows()...),
		run: func(c *runCtx) (map[string]float64, error) {
			repo := filepath.Join(c.mnt, "repo")
			out := map[string]float64{}
			for _, r := range []string{"cold", "warm"} {
				var status bytes.Buffer
				t, err := timed(r == "cold", func() error { return runCmd(repo, &status, "git", "status", "--porcelain") })
				if err != nil {
					return nil, err
				}
				if status.Len() != 0 {
					return nil, fmt.Errorf("git status of the unchanged repo: %s", oneLine(status.String()))
				}
				out["git status, 20k files, "+r] = t
			}
			files, err := c.e.expect("ls-files "+c.setDir, func() (int, error) {
				var l bytes.Buffer
				err := runCmd(filepath.Join(c.setDir, "flat", "repo"), &l, "git", "ls-files", "-z")
				return bytes.Count(l.Bytes(), []byte{0}), err
			})
			if err != nil {
				return nil, err
			}
			for _, r := range []string{"cold", "warm"} {
				t, err := timed(r == "cold", func() error {
					cat := func() error { return runCmd(repo, nil, "sh", "-c", "git ls-files -z | xargs -0 cat >/dev/null") }
					if r == "cold" {
						return cat()
					}
					return c.counted(phaseCat, files, out, cat)
				})
				if err != nil {
					return nil, err
				}
				out["git ls-files | xargs cat, "+r] = t
			}
			return out, nil
		}},

	{name: "make", set: "make", mutates: true,
		rows: []row{{name: "make -j2 of 200 C files", unit: "s", ratio: true, target: "≤1.05×"}},
		run: func(c *runCtx) (map[string]float64, error) {
			proj := filepath.Join(c.mnt, "proj")
			t, err := timed(false, func() error { return runCmd(proj, nil, "make", "-j2", "-s") })
			if err != nil {
				return nil, err
			}
			var got bytes.Buffer
			if err := runCmd(proj, &got, "./prog"); err != nil {
				return nil, err
			}
			if want := makeExpected(scaleCount(c.e.scale, 200, 4)); got.String() != want {
				return nil, fmt.Errorf("the built prog printed %q, want %q", got.String(), want)
			}
			return map[string]float64{"make -j2 of 200 C files": t}, nil
		}},

	{name: "mount", set: "lowers10",
		rows: []row{{name: "mount time, 10 lowers (exec to mounted and answering)", unit: "ms", ratio: true, target: "≤50 ms"}},
		run: func(c *runCtx) (map[string]float64, error) {
			if _, err := os.Stat(filepath.Join(c.mnt, "d", "l9-9")); err != nil {
				return nil, err
			}
			return map[string]float64{"mount time, 10 lowers (exec to mounted and answering)": float64(c.m.took) / float64(time.Millisecond)}, nil
		}},

	{name: "page-cache", set: "pagecache",
		rows: []row{
			{name: rowPageCache, unit: "x file", target: "≤1.2× file"},
			{name: rowMeminfo, unit: "x file"},
		},
		custom: pageCache},

	{name: "daemon-memory", set: "tree",
		rows: []row{
			{name: "daemon peak RSS after stat of 100k files", unit: "MiB", only: daemonsOnly, target: "≤64 MiB"},
			{name: "ovl nodes after stat of 100k files", unit: "nodes", only: ovlOnly},
			{name: "ovl nodes after drop_caches 2", unit: "nodes", only: ovlOnly},
			{name: "ovl live Go heap after stat of 100k files", unit: "MiB", only: ovlOnly},
			{name: "ovl live Go heap after drop_caches 2", unit: "MiB", only: ovlOnly},
			{name: "ovl live Go heap of the fresh mount", unit: "MiB", only: ovlOnly},
			{name: "ovl live heap per looked-up object", unit: "B", only: ovlOnly},
			{name: "ovl live heap after drop_caches 2 over the fresh mount's", unit: "%", only: ovlOnly},
		},
		run: func(c *runCtx) (map[string]float64, error) {
			var fresh map[string]float64
			if c.m.sys.is("ovl") {
				var err error
				if fresh, err = ovlStats(c.e, c.mnt, true); err != nil {
					return nil, err
				}
			}
			// The walk holds what it stat'ed (holdWalk) until the
			// figures are taken, so that another process's drop_caches
			// cannot make them those of fewer objects.
			if err := dropCaches(3); err != nil {
				return nil, err
			}
			_, release, err := holdWalk(c.e, filepath.Join(c.mnt, "tree"))
			if err != nil {
				return nil, err
			}
			hwm, err := procStatus(c.m.pid, "VmHWM")
			var st map[string]float64
			if err == nil && c.m.sys.is("ovl") {
				st, err = ovlStats(c.e, c.mnt, true)
			}
			if rerr := release(); err == nil {
				err = rerr
			}
			if err != nil {
				return nil, err
			}
			out := map[string]float64{"daemon peak RSS after stat of 100k files": float64(hwm) / (1 << 20)}
			if !c.m.sys.is("ovl") {
				return out, nil
			}
			if int(st["pid"]) != c.m.pid {
				// Another daemon holds the socket name (issue 17, item 8):
				// its figures are not this mount's.
				return nil, fmt.Errorf("ovl stats %s answered by daemon %v, not by %d, which serves the mount", c.mnt, st["pid"], c.m.pid)
			}
			out["ovl nodes after stat of 100k files"] = st["nodes"]
			out["ovl live Go heap after stat of 100k files"] = st["go_heap_live_bytes"] / (1 << 20)
			out["ovl live Go heap of the fresh mount"] = fresh["go_heap_live_bytes"] / (1 << 20)
			if objs := st["nodes"] - fresh["nodes"]; objs > 0 {
				out["ovl live heap per looked-up object"] = (st["go_heap_live_bytes"] - fresh["go_heap_live_bytes"]) / objs
			}
			if err = dropCaches(2); err != nil {
				return nil, err
			}
			// The kernel forgets inodes asynchronously: wait until the
			// count stops moving.
			last, still := st["nodes"], 0
			for i := 0; i < 100 && still < 5; i++ {
				time.Sleep(50 * time.Millisecond)
				if st, err = ovlStats(c.e, c.mnt, false); err != nil {
					return nil, err
				}
				if st["nodes"] == last {
					still++
				} else {
					last, still = st["nodes"], 0
				}
			}
			out["ovl nodes after drop_caches 2"] = last
			if st, err = ovlStats(c.e, c.mnt, true); err != nil {
				return nil, err
			}
			out["ovl live Go heap after drop_caches 2"] = st["go_heap_live_bytes"] / (1 << 20)
			out["ovl live heap after drop_caches 2 over the fresh mount's"] = 100 * (st["go_heap_live_bytes"]/fresh["go_heap_live_bytes"] - 1)
			return out, nil
		}},
}

const (
	rowPageCache = "page cache, 20 mounts read a 256 MiB file (mincore)"
	rowMeminfo   = "Cached+Buffers growth meanwhile (whole machine)"
)

// pageCache mounts s 20 times over one lower, drops the caches and reads
// the same file through every mount. It reports the pages cached for the
// file, as a multiple of its size: 1 when all mounts share the lower file's
// pages. It counts them with mincore, so that what else runs on the machine
// does not count: the lower file's pages, plus each mount's own copy. A
// mount's mapping may show the lower file's pages (the kernel's overlayfs,
// FUSE passthrough) or its own; to tell them apart, the lower file's pages
// are evicted and each mount's are counted again. The growth of Cached +
// Buffers in /proc/meminfo is reported beside it, as a check on a quiet
// machine.
func pageCache(e *env, s *system, setDir string) (map[string]float64, error) {
	const mounts = 20
	base := stack(setDir, layerSets["pagecache"])
	lowerFile := filepath.Join(base.lowers[0], "pc.bin")
	if s.flat {
		lowerFile = filepath.Join(base.flat, "pc.bin")
	}
	size, err := fileSize(lowerFile)
	if err != nil {
		return nil, err
	}
	var ms []*mounted
	defer func() {
		for _, m := range ms {
			m.unmount(e)
		}
	}()
	for i := range mounts {
		l := base
		d := filepath.Join(e.runDir, fmt.Sprintf("m%02d", i))
		l.upper, l.work, l.mnt = filepath.Join(d, "upper"), filepath.Join(d, "work"), filepath.Join(d, "mnt")
		m, err := mount(e, s, l)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	if err := dropCaches(3); err != nil {
		return nil, err
	}
	before, err := memCached()
	if err != nil {
		return nil, err
	}
	// Each mount's pages are counted through the descriptor that read them:
	// another open of the same file may take another path (passthrough or
	// not) and map other pages.
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, m := range ms {
		p := filepath.Join(m.l.mnt, "pc.bin")
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, make([]byte, 1<<20))
		if err != nil || n != size {
			return nil, fmt.Errorf("read %s: %d bytes (%v), want %d", p, n, err, size)
		}
	}
	after, err := memCached()
	if err != nil {
		return nil, err
	}
	lower, err := residentBytes(lowerFile)
	if err != nil {
		return nil, err
	}
	if err := evict(lowerFile); err != nil {
		return nil, err
	}
	if left, err := residentBytes(lowerFile); err != nil || left > size/100 {
		return nil, fmt.Errorf("%s: %d bytes still cached after FADV_DONTNEED (%v)", lowerFile, left, err)
	}
	total := lower
	for _, f := range files {
		own, err := resident(f, size)
		if err != nil {
			return nil, err
		}
		total += own
	}
	return map[string]float64{
		rowPageCache: float64(total) / float64(size),
		rowMeminfo:   float64(after-before) / float64(size),
	}, nil
}

// evict drops the page cache of file p.
func evict(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("fadvise %s: %w", p, err)
	}
	return nil
}

// timed times f, after "sync; echo 3 > drop_caches" when cold and after a
// sync otherwise, so that no earlier writeback runs during f.
func timed(cold bool, f func() error) (float64, error) {
	if cold {
		if err := dropCaches(3); err != nil {
			return 0, err
		}
	} else {
		unix.Sync()
	}
	start := time.Now()
	err := f()
	return time.Since(start).Seconds(), err
}

func dropCaches(level int) error {
	if ok, err := remoteDrop(level); ok {
		return err // a rootless worker: the bench drops them
	}
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte(strconv.Itoa(level)), 0)
}

// walk lstats every entry below dir, as find does, and counts them.
func walk(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	f := os.NewFile(uintptr(fd), dir)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return n, &os.PathError{Op: "lstat", Path: filepath.Join(dir, name), Err: err}
		}
		n++
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			k, err := walk(filepath.Join(dir, name))
			n += k
			if err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

func fileSize(p string) (int64, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func seqRead(p string) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, make([]byte, 1<<20))
}

// randRead reads count 4 KiB blocks at random (but fixed) offsets of p.
func randRead(p string, size int64, count int) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	rnd := rand.New(rand.NewPCG(seed, 4096))
	buf := make([]byte, 4096)
	for range count {
		off := rnd.Int64N(size/4096) * 4096
		if _, err := f.ReadAt(buf, off); err != nil {
			return fmt.Errorf("read %s at %d: %w", p, off, err)
		}
	}
	return nil
}

// writeNew writes size bytes to a new file p, in 1 MiB writes.
func writeNew(p string, size int64, fsync bool) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	for left := size; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			f.Close()
			return err
		}
	}
	if fsync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// appendByte opens p for append and writes one byte: a copy-up on an
// overlay.
func appendByte(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte{'!'}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// tarEntries counts the entries of a tar file.
func tarEntries(p string) (int, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	tr := tar.NewReader(bufio.NewReader(f))
	n := 0
	for {
		_, err := tr.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
	}
}

// toolEnv is the environment of the programs the workloads run: no user
// or system git configuration, the C locale.
func toolEnv(home string) []string {
	return append(os.Environ(), "HOME="+home, "LC_ALL=C", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null")
}

// runCmd runs a program in dir; stdout goes to out (nil: discarded).
func runCmd(dir string, out io.Writer, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = toolEnv(os.TempDir())
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, oneLine(stderr.String()))
	}
	return nil
}

// lineCounter counts the lines written to it.
type lineCounter int

func (c *lineCounter) Write(b []byte) (int, error) {
	*c += lineCounter(bytes.Count(b, []byte{'\n'}))
	return len(b), nil
}

// memCached is Cached + Buffers of /proc/meminfo, in bytes.
func memCached() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	var total int64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "Cached:" || f[0] == "Buffers:") {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, err
			}
			total += kb << 10
		}
	}
	return total, nil
}

// residentBytes is how much of p is in the page cache (mincore, as fincore).
func residentBytes(p string) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size, err := fileSize(p)
	if err != nil {
		return 0, err
	}
	return resident(f, size)
}

// resident is how much of the first size bytes of f is in the page cache
// that a mapping of f shows.
func resident(f *os.File, size int64) (int64, error) {
	if size == 0 {
		return 0, nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("mmap %s: %w", f.Name(), err)
	}
	defer unix.Munmap(mem)
	page := int64(os.Getpagesize())
	vec := make([]byte, (size+page-1)/page)
	// x/sys/unix has no wrapper for mincore.
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		return 0, fmt.Errorf("mincore %s: %w", f.Name(), errno)
	}
	var n int64
	for _, v := range vec {
		n += int64(v & 1)
	}
	return n * page, nil
}
