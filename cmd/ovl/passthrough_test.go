package main

// FUSE passthrough (docs/passthrough.md), through real mounts: the lower
// layer is never written whatever the open sequence; each sequence sees
// what the document says, against the kernel's overlayfs where it should
// match (passthrough=off always, passthrough=on where the kernel's rules
// allow); locks stay with the object; page cache is shared with the lower
// file; fallbacks are logged once.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"golang.org/x/sys/unix"
)

const ptData = "0123456789abcdef"

// ptTranscript records the outcome of each step of a sequence.
type ptTranscript struct {
	root  string
	lines []string
}

func (tr *ptTranscript) add(format string, args ...any) {
	tr.lines = append(tr.lines, fmt.Sprintf(format, args...))
}

func (tr *ptTranscript) path(name string) string { return filepath.Join(tr.root, name) }

// open opens name and records "what: ok" or "what: ERRNO"; -1 on error.
func (tr *ptTranscript) open(what, name string, flags int) int {
	fd, err := unix.Open(tr.path(name), flags|unix.O_CLOEXEC, 0)
	tr.add("%s: %s", what, ptErrName(err))
	if err != nil {
		return -1
	}
	return fd
}

// read records the first bytes of fd.
func (tr *ptTranscript) read(what string, fd int) {
	if fd < 0 {
		tr.add("%s: no fd", what)
		return
	}
	b := make([]byte, 32)
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		tr.add("%s: %s", what, ptErrName(err))
		return
	}
	tr.add("%s: %q", what, b[:n])
}

// write writes "NEW" at 0 through fd.
func (tr *ptTranscript) write(what string, fd int) {
	if fd < 0 {
		return
	}
	_, err := unix.Pwrite(fd, []byte("NEW"), 0)
	tr.add("%s: %s", what, ptErrName(err))
}

// readAt records what fd reads at off.
func (tr *ptTranscript) readAt(what string, fd int, off int64) {
	if fd < 0 {
		tr.add("%s: no fd", what)
		return
	}
	b := make([]byte, 32)
	n, err := unix.Pread(fd, b, off)
	if err != nil {
		tr.add("%s: %s", what, ptErrName(err))
		return
	}
	tr.add("%s: %q", what, b[:n])
}

// size records fd's st_size.
func (tr *ptTranscript) size(what string, fd int) {
	var st unix.Stat_t
	if fd < 0 {
		tr.add("%s: no fd", what)
	} else if err := unix.Fstat(fd, &st); err != nil {
		tr.add("%s: %s", what, ptErrName(err))
	} else {
		tr.add("%s: %d", what, st.Size)
	}
}

// append appends "NEW" through fd.
func (tr *ptTranscript) append(what string, fd int) {
	if fd < 0 {
		return
	}
	_, err := unix.Write(fd, []byte("NEW"))
	tr.add("%s: %s", what, ptErrName(err))
}

// readNew records what a fresh read-only open reads.
func (tr *ptTranscript) readNew(what, name string) {
	b, err := os.ReadFile(tr.path(name))
	if err != nil {
		tr.add("%s: %s", what, ptErrName(err))
		return
	}
	tr.add("%s: %q", what, b)
}

func ptCloseFd(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

func ptErrName(err error) string {
	if err == nil {
		return "ok"
	}
	e, _ := k.Errno(err)
	return k.ErrnoName(e)
}

// ptSeq is one open sequence on file name under tr.root.
type ptSeq struct {
	name string
	run  func(tr *ptTranscript, name string)
	// on is the transcript with passthrough, where it differs from the
	// kernel's (nil: the same as the kernel's).
	on []string
	// off is the transcript with passthrough=off, where it differs from
	// the kernel's.
	off []string
}

const (
	ptOld = `"0123456789abcdef"`
	ptNew = `"NEW3456789abcdef"`
)

// With passthrough, a descriptor opened read-only on a lower file before
// another one changes the data reads the lower file (its reads go straight
// to the lower backing: docs/passthrough.md, "A writer while a lower file
// is open"); its fstat and every later open see the change.
var ptSeqs = []ptSeq{
	{
		name: "ro_then_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			ptCloseFd(b)
			tr.read("read A again", a)
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "read A: " + ptOld, "open B rw: ok", "write B: ok",
			"read A again: " + ptOld, "read new open: " + ptNew},
	},
	{
		name: "rw_then_ro",
		run: func(tr *ptTranscript, f string) {
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			ptCloseFd(b)
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
	},
	{
		name: "ro_chmod_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.add("chmod: %s", ptErrName(unix.Chmod(tr.path(f), 0o600)))
			c := tr.open("open C ro", f, unix.O_RDONLY)
			tr.read("read C", c)
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			ptCloseFd(b)
			tr.read("read A", a)
			tr.read("read C again", c)
			ptCloseFd(a)
			ptCloseFd(c)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "chmod: ok", "open C ro: ok", "read C: " + ptOld, "open B rw: ok", "write B: ok",
			"read A: " + ptOld, "read C again: " + ptOld, "read new open: " + ptNew},
	},
	{
		name: "ro_truncate",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.add("truncate: %s", ptErrName(unix.Truncate(tr.path(f), 4)))
			tr.size("fstat A", a)
			b := tr.open("open B ro|trunc", f, unix.O_RDONLY|unix.O_TRUNC)
			ptCloseFd(b)
			tr.size("fstat A again", a)
			tr.read("read A", a)
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "truncate: ok", "fstat A: 4", "open B ro|trunc: ok", "fstat A again: 0",
			"read A: " + ptOld, "read new open: \"\""},
	},
	{
		// open(O_RDONLY|O_TRUNC) of a lower file nobody has open copies
		// it up and truncates it (kernel: ovl_open, O_TRUNC), also with
		// O_CREAT and through a symlink.
		name: "ro_trunc",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open ro|trunc", f, unix.O_RDONLY|unix.O_TRUNC)
			tr.size("fstat", a)
			tr.read("read", a)
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
	},
	{
		name: "ro_trunc_creat",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open ro|trunc|creat", f, unix.O_RDONLY|unix.O_TRUNC|unix.O_CREAT)
			tr.size("fstat", a)
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
	},
	{
		name: "ro_trunc_symlink",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open link ro|trunc", f+".lnk", unix.O_RDONLY|unix.O_TRUNC)
			tr.size("fstat", a)
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
	},
	{
		// tail -f LOG while another process appends (echo NEW >> LOG).
		name: "ro_then_append",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			tr.size("fstat A", a)
			b := tr.open("open B wronly|append", f, unix.O_WRONLY|unix.O_APPEND)
			tr.append("append B", b)
			ptCloseFd(b)
			tr.size("fstat A again", a)
			tr.readAt("read A at 16", a, 16)
			b = tr.open("open B again", f, unix.O_WRONLY|unix.O_APPEND)
			tr.append("append B again", b)
			ptCloseFd(b)
			tr.size("fstat A at last", a)
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "read A: " + ptOld, "fstat A: 16", "open B wronly|append: ok", "append B: ok",
			"fstat A again: 19", `read A at 16: ""`, "open B again: ok", "append B again: ok", "fstat A at last: 22",
			`read new open: "0123456789abcdefNEWNEW"`},
	},
	{
		// A daemon keeps its configuration open while another process
		// rewrites it in place (cat new > conf).
		name: "config_rewrite",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			b := tr.open("open B wronly|trunc", f, unix.O_WRONLY|unix.O_TRUNC)
			tr.append("write B", b)
			ptCloseFd(b)
			tr.size("fstat A", a)
			tr.read("read A again", a)
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "read A: " + ptOld, "open B wronly|trunc: ok", "write B: ok", "fstat A: 3",
			"read A again: " + ptOld, `read new open: "NEW"`},
	},
	{
		// A mapping of a descriptor still open: it maps the lower file.
		name: "mmap_open_then_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			m, err := unix.Mmap(a, 0, len(ptData), unix.PROT_READ, unix.MAP_SHARED)
			tr.add("mmap A: %s", ptErrName(err))
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			ptCloseFd(b)
			if err == nil {
				tr.add("mapping: %q", m)
				unix.Munmap(m)
			}
			ptCloseFd(a)
			tr.readNew("read new open", f)
		},
		// One FUSE page cache: the write through the daemon updates it.
		off: []string{"open A ro: ok", "mmap A: ok", "open B rw: ok", "write B: ok", "mapping: " + ptNew, "read new open: " + ptNew},
	},
	{
		// A mapping whose descriptor was closed: it maps the lower file,
		// in the kernel's overlayfs as with passthrough, and stays so.
		name: "mmap_closed_then_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			m, err := unix.Mmap(a, 0, len(ptData), unix.PROT_READ, unix.MAP_SHARED)
			tr.add("mmap A: %s", ptErrName(err))
			ptCloseFd(a)
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			ptCloseFd(b)
			if err == nil {
				tr.add("mapping: %q", m)
				unix.Munmap(m)
			}
			tr.readNew("read new open", f)
		},
		off: []string{"open A ro: ok", "mmap A: ok", "open B rw: ok", "write B: ok", "mapping: " + ptNew, "read new open: " + ptNew},
	},
	{
		// A shared writable mapping of a writer lands in the upper.
		name: "rw_mmap_write",
		run: func(tr *ptTranscript, f string) {
			b := tr.open("open B rw", f, unix.O_RDWR)
			m, err := unix.Mmap(b, 0, len(ptData), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			tr.add("mmap B: %s", ptErrName(err))
			if err == nil {
				copy(m, "MAP")
				tr.add("msync: %s", ptErrName(unix.Msync(m, unix.MS_SYNC)))
				unix.Munmap(m)
			}
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			ptCloseFd(a)
			ptCloseFd(b)
			tr.readNew("read new open", f)
		},
	},
	{
		// fcntl (OFD) and flock locks belong to the object: taken before a
		// copy-up, they conflict with handles opened after it.
		name: "locks",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.add("A ofd rdlck: %s", ptErrName(ptOFDLock(a, unix.F_RDLCK)))
			tr.add("A flock sh: %s", ptErrName(unix.Flock(a, unix.LOCK_SH|unix.LOCK_NB)))
			tr.add("chmod: %s", ptErrName(unix.Chmod(tr.path(f), 0o600)))
			c := tr.open("open C ro", f, unix.O_RDONLY)
			tr.add("C ofd getlk wrlck: %s", ptOFDGetlk(c, unix.F_WRLCK))
			tr.add("C flock ex: %s", ptErrName(unix.Flock(c, unix.LOCK_EX|unix.LOCK_NB)))
			b := tr.open("open B rw", f, unix.O_RDWR)
			if b >= 0 {
				tr.add("B ofd wrlck: %s", ptErrName(ptOFDLock(b, unix.F_WRLCK)))
				tr.add("B flock ex: %s", ptErrName(unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB)))
			}
			tr.add("A ofd unlck: %s", ptErrName(ptOFDLock(a, unix.F_UNLCK)))
			ptCloseFd(a)
			ptCloseFd(b)
			ptCloseFd(c)
			d := tr.open("open D rw", f, unix.O_RDWR)
			tr.add("D ofd wrlck: %s", ptErrName(ptOFDLock(d, unix.F_WRLCK)))
			tr.add("D flock ex: %s", ptErrName(unix.Flock(d, unix.LOCK_EX|unix.LOCK_NB)))
			e := tr.open("open E ro", f, unix.O_RDONLY)
			tr.add("E ofd getlk rdlck: %s", ptOFDGetlk(e, unix.F_RDLCK))
			tr.add("E flock sh: %s", ptErrName(unix.Flock(e, unix.LOCK_SH|unix.LOCK_NB)))
			ptCloseFd(d)
			ptCloseFd(e)
		},
	},
	{
		// Close then write at once: the RELEASE may still be on its way.
		name: "ro_close_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			ptCloseFd(a)
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			ptCloseFd(b)
			tr.readNew("read new open", f)
		},
	},
}

// ptLayers is one lower layer with a file per sequence.
func ptLayers() k.Layers {
	var l k.Layer
	for _, s := range ptSeqs {
		l = append(l, k.File(s.name, ptData), k.Symlink(s.name+".lnk", s.name))
	}
	return k.Layers{Lowers: []k.Layer{l}}
}

// kcCoherent is k.DefaultOptions with passthrough=off for ovl: the kernel's
// coherence for a descriptor opened read-only before another one writes
// (the copy-up). With passthrough that descriptor goes on reading the
// lower file (docs/passthrough.md; TestPassthroughOpenSequences checks
// both modes).
func kcCoherent() k.Options {
	o := k.DefaultOptions()
	o.OvlExtra = append(o.OvlExtra, "passthrough=off")
	return o
}

// ptPair mounts the kernel's overlayfs and ovl with passthrough=mode; with
// "on", it makes sure passthrough really is on.
func ptPair(t *testing.T, mode string, layers k.Layers) *k.Pair {
	t.Helper()
	opts := k.DefaultOptions()
	log := filepath.Join(t.TempDir(), "ovl.log")
	opts.OvlExtra = []string{"passthrough=" + mode, "log=" + log}
	p := kcPair(t, opts, layers)
	if mode == "on" {
		ptRequireOn(t, log)
	}
	return p
}

// ptRequireOn fails (skips outside CI) when ovl's log says passthrough is
// off: the passthrough expectations would not be tested.
func ptRequireOn(t *testing.T, log string) {
	t.Helper()
	b, _ := os.ReadFile(log)
	if i := bytes.Index(b, []byte("passthrough: off")); i >= 0 {
		testutil.Skip(t, "passthrough is not available here: %s", b[i:])
	}
}

// ptLowerSums hashes every regular file of every lower layer of a side.
func ptLowerSums(t *testing.T, s *k.Side) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	for i, l := range s.Layout.Lowers {
		filepath.Walk(l, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				sums[fmt.Sprintf("l%d/%s", i, strings.TrimPrefix(p, l+"/"))] = sha256.Sum256(b)
			}
			return nil
		})
	}
	return sums
}

func ptSameSums(t *testing.T, label string, before, after map[string][32]byte) {
	t.Helper()
	if len(before) != len(after) {
		t.Errorf("%s: lower files %d, were %d", label, len(after), len(before))
	}
	for p, sum := range before {
		if after[p] != sum {
			t.Errorf("%s: lower file %s changed", label, p)
		}
	}
}

// TestPassthroughOpenSequences runs every sequence on the kernel's overlayfs
// and on ovl with passthrough on and off: transcripts must be the kernel's
// or the documented difference, and no lower file may change.
func TestPassthroughOpenSequences(t *testing.T) {
	for _, mode := range []string{"on", "off"} {
		t.Run(mode, func(t *testing.T) {
			p := ptPair(t, mode, ptLayers())
			before := ptLowerSums(t, p.Cand)
			for _, seq := range ptSeqs {
				var got [2][]string
				for i, s := range p.Sides() {
					tr := &ptTranscript{root: s.Layout.Mnt}
					seq.run(tr, seq.name)
					got[i] = tr.lines
				}
				want := got[0]
				switch {
				case mode == "on" && seq.on != nil:
					want = seq.on
				case mode == "off" && seq.off != nil:
					want = seq.off
				}
				if strings.Join(got[1], "\n") != strings.Join(want, "\n") {
					t.Errorf("%s: ovl (passthrough=%s):\n\t%s\nwant:\n\t%s\nkernel:\n\t%s", seq.name, mode,
						strings.Join(got[1], "\n\t"), strings.Join(want, "\n\t"), strings.Join(got[0], "\n\t"))
				}
			}
			ptSameSums(t, "mounted", before, ptLowerSums(t, p.Cand))
			p.Unmount()
			ptSameSums(t, "unmounted", before, ptLowerSums(t, p.Cand))
		})
	}
}

// ptOFDLock takes (or drops) a whole-file OFD lock without waiting.
func ptOFDLock(fd int, typ int16) error {
	if fd < 0 {
		return unix.EBADF
	}
	return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &unix.Flock_t{Type: typ})
}

// ptOFDGetlk names the lock that would block a whole-file lock of typ.
func ptOFDGetlk(fd int, typ int16) string {
	if fd < 0 {
		return "no fd"
	}
	fl := unix.Flock_t{Type: typ}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &fl); err != nil {
		return ptErrName(err)
	}
	return map[int16]string{unix.F_RDLCK: "F_RDLCK", unix.F_WRLCK: "F_WRLCK", unix.F_UNLCK: "F_UNLCK"}[fl.Type]
}

// ptEnv is one lower layer l shared by several ovl mounts (upper uN, work
// wN, mountpoint mN, log logN).
type ptEnv struct {
	t    *testing.T
	base string
}

func newPTEnv(t *testing.T) *ptEnv {
	t.Helper()
	testutil.RequireRoot(t)
	e := &ptEnv{t: t, base: t.TempDir()}
	if err := os.Mkdir(e.path("l"), 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *ptEnv) path(rel string) string { return filepath.Join(e.base, rel) }

// bigFile writes a lower file of size bytes of varied data.
func (e *ptEnv) bigFile(name string, size int) {
	e.t.Helper()
	f, err := os.Create(e.path("l/" + name))
	if err != nil {
		e.t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := 0; i < size; i += len(chunk) {
		for j := range chunk {
			chunk[j] = byte(i>>20 + j*7)
		}
		if _, err := f.Write(chunk[:min(len(chunk), size-i)]); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		e.t.Fatal(err)
	}
}

// mount mounts ovl number i over l and returns its mountpoint.
func (e *ptEnv) mount(i int, opts ...string) string {
	e.t.Helper()
	return e.mountOver(i, "l", opts...)
}

// mountOver mounts ovl number i over lower (relative to the base).
func (e *ptEnv) mountOver(i int, lower string, opts ...string) string {
	e.t.Helper()
	n := fmt.Sprint(i)
	for _, d := range []string{"u" + n, "w" + n, "m" + n} {
		if err := os.Mkdir(e.path(d), 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	o := strings.Join(append([]string{"lowerdir=" + lower + ",upperdir=u" + n + ",workdir=w" + n}, opts...), ",")
	mnt := e.path("m" + n)
	cliCleanupMount(e.t, mnt)
	if r := runOvl(e.t, e.base, "mount", "-o", o, "--log", e.log(i), mnt); r.code != 0 {
		e.t.Fatalf("ovl mount -o %s: exit %d: %s", o, r.code, r.stderr)
	}
	e.t.Cleanup(func() { runOvl(e.t, e.base, "umount", mnt) })
	return mnt
}

func (e *ptEnv) log(i int) string { return e.path(fmt.Sprintf("log%d", i)) }

// logLines returns the lines of mount i's log that contain s.
func (e *ptEnv) logLines(i int, s string) []string {
	b, _ := os.ReadFile(e.log(i))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// ptCachedBytes is how much of fd's file is in the page cache of the inode
// fd is open on: for a FUSE file, the FUSE inode's own cache.
func ptCachedBytes(t *testing.T, fd int) int64 {
	t.Helper()
	var cs unix.Cachestat_t
	if err := unix.Cachestat(uint(fd), &unix.CachestatRange{}, &cs, 0); err != nil {
		t.Fatalf("cachestat: %v", err)
	}
	return int64(cs.Cache) * int64(os.Getpagesize())
}

// ptMeminfoCached is Cached in /proc/meminfo, in bytes.
func ptMeminfoCached(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		var kb int64
		if n, _ := fmt.Sscanf(l, "Cached: %d kB", &kb); n == 1 {
			return kb << 10
		}
	}
	t.Fatal("no Cached in /proc/meminfo")
	return 0
}

func ptDropPageCache(t testing.TB, fds ...int) {
	t.Helper()
	// Evict just these files' pages (each inode's own cache: the FUSE
	// inode's for a FUSE fd), not the whole machine's: others measure too.
	for _, fd := range fds {
		// Dirty pages are not dropped: write them first.
		if err := unix.Fdatasync(fd); err != nil {
			t.Fatalf("fdatasync: %v", err)
		}
		if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatalf("fadvise DONTNEED: %v", err)
		}
	}
}

// ptCacheGrowth is what reading name once through each mount did to the
// page cache: the FUSE inodes' own caches, the lower file's, and Cached.
type ptCacheGrowth struct {
	fuse    []int64
	lower   int64
	meminfo int64
}

func ptReadThrough(t *testing.T, e *ptEnv, name string, mnts []string) ptCacheGrowth {
	t.Helper()
	lower, err := unix.Open(e.path("l/"+name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lower)
	var fds []int
	for _, m := range mnts {
		fd, err := unix.Open(filepath.Join(m, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		fds = append(fds, fd)
	}
	ptDropPageCache(t, append([]int{lower}, fds...)...)
	if c := ptCachedBytes(t, lower); c > 1<<20 {
		t.Fatalf("lower file still has %d bytes cached after FADV_DONTNEED", c)
	}
	for _, fd := range fds {
		if c := ptCachedBytes(t, fd); c > 1<<20 {
			t.Fatalf("FUSE file still has %d bytes cached after FADV_DONTNEED", c)
		}
	}
	before := ptMeminfoCached(t)
	buf := make([]byte, 1<<20)
	for _, fd := range fds {
		for {
			n, err := unix.Read(fd, buf)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
	}
	g := ptCacheGrowth{lower: ptCachedBytes(t, lower), meminfo: ptMeminfoCached(t) - before}
	for _, fd := range fds {
		g.fuse = append(g.fuse, ptCachedBytes(t, fd))
	}
	return g
}

const ptMiB = 1 << 20

// TestPassthroughPageCache reads a 64 MiB lower file through one and two
// ovl mounts. With passthrough the data is cached once, in the lower
// file's page cache (this is also the check that passthrough is really on:
// go-fuse would silently serve through the daemon); without, every mount
// caches it again in its FUSE inode, on top of the lower file's cache
// filled by the daemon's reads.
func TestPassthroughPageCache(t *testing.T) {
	const size = 64 * ptMiB
	for _, c := range []struct {
		mode   string
		mounts int
	}{{"on", 1}, {"on", 2}, {"off", 2}} {
		t.Run(fmt.Sprintf("%s_%dmounts", c.mode, c.mounts), func(t *testing.T) {
			e := newPTEnv(t)
			e.bigFile("big", size)
			var mnts []string
			for i := 0; i < c.mounts; i++ {
				mnts = append(mnts, e.mount(i, "passthrough="+c.mode))
			}
			if c.mode == "on" {
				ptRequireOn(t, e.log(0))
			}
			// Cached is machine-wide: other processes add to it and free
			// from it while we read, and may drop caches. Only our reads
			// can put pages in our FUSE inodes: with passthrough there must
			// never be any. The other counts get a few tries.
			var why string
			for try := 0; try < 5; try++ {
				g := ptReadThrough(t, e, "big", mnts)
				t.Logf("try %d: FUSE caches %v MiB, lower file %d MiB, Cached +%d MiB",
					try, ptMiBs(g.fuse...), g.lower/ptMiB, g.meminfo/ptMiB)
				why = ""
				if g.lower < size*95/100 {
					why = fmt.Sprintf("lower file cached: %d MiB, want the whole %d MiB", g.lower/ptMiB, size/ptMiB)
				}
				for i, f := range g.fuse {
					switch {
					case c.mode == "on" && f != 0:
						t.Fatalf("mount %d: FUSE inode caches %d bytes: reads did not pass through", i, f)
					case c.mode == "off" && f < size*95/100:
						why = fmt.Sprintf("mount %d: FUSE inode caches %d MiB, want %d MiB", i, f/ptMiB, size/ptMiB)
					}
				}
				switch {
				case c.mode == "on" && g.meminfo > size*12/10:
					why = fmt.Sprintf("Cached grew by %d MiB, want at most 1.2x %d MiB: one copy, shared", g.meminfo/ptMiB, size/ptMiB)
				case c.mode == "off" && g.meminfo < 2*size:
					why = fmt.Sprintf("Cached grew by %d MiB, want at least 2x %d MiB: the lower's and each mount's", g.meminfo/ptMiB, size/ptMiB)
				}
				if why == "" {
					break
				}
			}
			if why != "" {
				t.Error(why)
			}
		})
	}
}

func ptMiBs(v ...int64) []int64 {
	var out []int64
	for _, x := range v {
		out = append(out, x/ptMiB)
	}
	return out
}

// ptReadAll opens path, reads it and returns the open fd and the data.
func ptReadAll(t *testing.T, path string) (int, string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	var out []byte
	buf := make([]byte, 1<<16)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return fd, string(out)
		}
		out = append(out, buf[:n]...)
	}
}

// TestPassthroughFallbackStacked puts the lower layer on the kernel's
// overlayfs: its files cannot be backing files at FUSE stack depth 1. They
// are served through the daemon (FUSE page cache), logged once for the
// device; files of the upper layer (ext4) still pass through.
func TestPassthroughFallbackStacked(t *testing.T) {
	e := newPTEnv(t)
	for _, d := range []string{"s1", "s2", "k"} {
		os.Mkdir(e.path(d), 0o755)
	}
	for _, f := range []string{"a", "b"} {
		os.WriteFile(e.path("s1/"+f), []byte("stacked "+f+"\n"), 0o644)
	}
	if err := unix.Mount("overlay", e.path("k"), "overlay", 0, "lowerdir="+e.path("s1")+":"+e.path("s2")); err != nil {
		testutil.Skip(t, "no kernel overlayfs to stack on: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(e.path("k"), unix.MNT_DETACH) })
	mnt := e.mountOver(0, "k")
	ptRequireOn(t, e.log(0))
	for _, f := range []string{"a", "b"} {
		fd, data := ptReadAll(t, filepath.Join(mnt, f))
		if data != "stacked "+f+"\n" {
			t.Errorf("%s reads %q", f, data)
		}
		if c := ptCachedBytes(t, fd); c == 0 {
			t.Errorf("%s: no FUSE page cache after a read: it did not fall back to the daemon", f)
		}
	}
	if err := os.WriteFile(filepath.Join(mnt, "c"), []byte("upper c\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fd, data := ptReadAll(t, filepath.Join(mnt, "c"))
	if data != "upper c\n" {
		t.Errorf("c reads %q", data)
	}
	if c := ptCachedBytes(t, fd); c != 0 {
		t.Errorf("upper file c: %d bytes in the FUSE page cache: no passthrough for the upper layer", c)
	}
	lines := e.logLines(0, "passthrough:")
	if len(lines) != 1 || !strings.Contains(lines[0], "served by the daemon") || !strings.Contains(lines[0], "stacked") {
		t.Errorf("log: want one line about the stacked filesystem, got %q", lines)
	}
}

// TestPassthroughFallbackUnprivileged mounts as an unprivileged user: the
// daemon has no CAP_SYS_ADMIN, so it cannot register backing files. It says
// so once in its log and serves every file through the daemon.
func TestPassthroughFallbackUnprivileged(t *testing.T) {
	testutil.RequireRoot(t)
	for _, prog := range []string{"fusermount3", "setpriv"} {
		if _, err := exec.LookPath(prog); err != nil {
			testutil.Skip(t, "no %s (scripts/test installs it)", prog)
		}
	}
	const name = "ovltest"
	u, err := user.Lookup(name)
	if err != nil {
		if out, err := exec.Command("useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd: %v: %s", err, out)
		}
		if u, err = user.Lookup(name); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	base, err := os.MkdirTemp("", "ovl-pt-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	bin := filepath.Join(base, "ovl")
	cliCopyFile(t, testutil.Binary(t), bin, 0o755)
	for _, d := range []string{"l", "u", "w", "m"} {
		os.Mkdir(filepath.Join(base, d), 0o755)
		os.Chown(filepath.Join(base, d), uid, gid)
	}
	os.Chown(base, uid, gid)
	for _, f := range []string{"a", "b"} {
		os.WriteFile(filepath.Join(base, "l", f), []byte("lower "+f+"\n"), 0o644)
		os.Chown(filepath.Join(base, "l", f), uid, gid) // cachestat wants the owner
	}
	mnt := filepath.Join(base, "m")
	cliCleanupMount(t, mnt)
	asUser := func(args ...string) (string, error) {
		full := append([]string{"--reuid=" + u.Uid, "--regid=" + u.Gid, "--init-groups", "--"}, args...)
		cmd := exec.Command("setpriv", full...)
		cmd.Dir = base
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + base}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := asUser(bin, "mount", "-o", "lowerdir=l,upperdir=u,workdir=w,userxattr", "--log", "log", "m"); err != nil {
		t.Fatalf("mount as %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { asUser(bin, "umount", "m") })
	if out, err := asUser("sh", "-c", "cat m/a m/b && echo new > m/c && cat m/c"); err != nil || out != "lower a\nlower b\nnew\n" {
		t.Errorf("reading and writing as %s: %q, %v", name, out, err)
	}
	b, _ := os.ReadFile(filepath.Join(base, "log"))
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "passthrough") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "passthrough: off") || !strings.Contains(lines[0], "CAP_SYS_ADMIN") {
		t.Errorf("log: want one line saying passthrough is off for want of CAP_SYS_ADMIN, got %q", lines)
	}
	// Served through the daemon: the FUSE inode caches what was read. Only
	// the user may enter the mount: ask this test binary, run as the user.
	self := filepath.Join(base, "ovl.test")
	cliCopyFile(t, os.Args[0], self, 0o755)
	out, err := asUser("env", ptCacheHelperEnv+"="+filepath.Join(mnt, "a"), self, "-test.run=^TestPTCacheHelperProcess$", "-test.count=1")
	if err != nil {
		t.Fatalf("cache helper: %v: %s", err, out)
	}
	var cached int64
	var data string
	if _, err := fmt.Sscanf(out, "cached %d %q", &cached, &data); err != nil || data != "lower a\n" {
		t.Fatalf("cache helper printed %q (%v)", out, err)
	}
	if cached == 0 {
		t.Error("no FUSE page cache after a read: not served by the daemon")
	}
}

const ptCacheHelperEnv = "OVL_PT_CACHE_HELPER"

// TestPTCacheHelperProcess is not a test: run with ptCacheHelperEnv set to
// a path, it reads the file and prints how much of it its inode caches.
func TestPTCacheHelperProcess(t *testing.T) {
	path := os.Getenv(ptCacheHelperEnv)
	if path == "" {
		return
	}
	fd, data := ptReadAll(t, path)
	fmt.Printf("cached %d %q\n", ptCachedBytes(t, fd), data)
	os.Exit(0)
}

// TestPassthroughCloseThenWrite closes a read-only descriptor of a lower
// file and at once opens it for writing, on many files: the RELEASE of the
// read-only open may reach the daemon after the write open, which must
// not fail (the write open then retires the FUSE inode).
func TestPassthroughCloseThenWrite(t *testing.T) {
	e := newPTEnv(t)
	const n = 50
	for i := 0; i < n; i++ {
		os.WriteFile(e.path(fmt.Sprintf("l/f%d", i)), []byte(ptData), 0o644)
	}
	mnt := e.mount(0)
	ptRequireOn(t, e.log(0))
	for i := 0; i < n; i++ {
		p := filepath.Join(mnt, fmt.Sprintf("f%d", i))
		a, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Read(a, make([]byte, 4))
		unix.Close(a)
		b, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("f%d: write open right after closing the read-only one: %v", i, err)
		}
		unix.Pwrite(b, []byte("NEW"), 0)
		unix.Close(b)
		if data, _ := os.ReadFile(p); string(data) != "NEW3456789abcdef" {
			t.Errorf("f%d reads %q", i, data)
		}
		if data, _ := os.ReadFile(e.path(fmt.Sprintf("l/f%d", i))); string(data) != ptData {
			t.Errorf("lower f%d changed: %q", i, data)
		}
	}
}

// TestPassthroughConcurrentOpens runs readers, writers, mappings, chmods,
// truncates and writers while a reader holds the file, on the same lower
// files from several goroutines at once.
// No operation may fail; a read returns the original data or one
// writer's; no lower file changes.
func TestPassthroughConcurrentOpens(t *testing.T) {
	e := newPTEnv(t)
	const files, workers, ops = 6, 4, 60
	for i := 0; i < files; i++ {
		os.WriteFile(e.path(fmt.Sprintf("l/f%d", i)), []byte(ptData), 0o644)
	}
	before := map[string][32]byte{}
	for i := 0; i < files; i++ {
		b, _ := os.ReadFile(e.path(fmt.Sprintf("l/f%d", i)))
		before[fmt.Sprint(i)] = sha256.Sum256(b)
	}
	mnt := e.mount(0)
	ptRequireOn(t, e.log(0))
	valid := func(b []byte) bool {
		s := string(b)
		if s == ptData {
			return true
		}
		// A writer puts "Wn" at 0; a truncate cuts to 8 bytes.
		return len(s) >= 8 && s[0] == 'W' && s[2:8] == ptData[2:8] || s == ptData[:8]
	}
	errs := make(chan string, workers*ops)
	done := make(chan struct{})
	for w := 0; w < workers; w++ {
		go func(w int) {
			defer func() { done <- struct{}{} }()
			seed := uint32(w*7919 + 1)
			next := func(n int) int {
				seed = seed*1664525 + 1013904223
				return int(seed>>8) % n
			}
			for o := 0; o < ops; o++ {
				p := filepath.Join(mnt, fmt.Sprintf("f%d", next(files)))
				var err error
				switch next(6) {
				case 0: // reader
					var fd int
					if fd, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
						b := make([]byte, 32)
						n, _ := unix.Pread(fd, b, 0)
						if !valid(b[:n]) {
							errs <- fmt.Sprintf("%s read %q", p, b[:n])
						}
						unix.Close(fd)
					}
				case 1: // writer
					var fd int
					if fd, err = unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
						unix.Pwrite(fd, []byte(fmt.Sprintf("W%d", w)), 0)
						unix.Close(fd)
					}
				case 2: // mapping
					var fd int
					if fd, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
						if m, merr := unix.Mmap(fd, 0, 8, unix.PROT_READ, unix.MAP_SHARED); merr == nil {
							if !valid(append(append([]byte{}, m...), ptData[8:]...)) {
								errs <- fmt.Sprintf("%s mapped %q", p, m)
							}
							unix.Munmap(m)
						}
						unix.Close(fd)
					}
				case 3:
					err = unix.Chmod(p, 0o600+uint32(next(2))*0o40)
				case 4:
					if next(4) == 0 {
						err = unix.Truncate(p, 8)
					}
				case 5: // a reader held across a writer of the same file
					var fd, wfd int
					if fd, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
						if wfd, err = unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
							unix.Pwrite(wfd, []byte(fmt.Sprintf("W%d", w)), 0)
							unix.Close(wfd)
						}
						b := make([]byte, 32)
						n, _ := unix.Pread(fd, b, 0)
						if !valid(b[:n]) {
							errs <- fmt.Sprintf("%s read %q through a held descriptor", p, b[:n])
						}
						unix.Close(fd)
					}
				}
				if err != nil {
					errs <- fmt.Sprintf("worker %d op %d on %s: %v", w, o, p, err)
				}
			}
		}(w)
	}
	for w := 0; w < workers; w++ {
		<-done
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	for i := 0; i < files; i++ {
		b, _ := os.ReadFile(e.path(fmt.Sprintf("l/f%d", i)))
		if sha256.Sum256(b) != before[fmt.Sprint(i)] {
			t.Errorf("lower f%d changed: %q", i, b)
		}
	}
}

// ptBenchSystems mounts the kernel's overlayfs and ovl with passthrough on
// and off over one lower directory (with a fresh upper each), and returns
// their mountpoints by name.
func ptBenchSystems(b *testing.B, base string) map[string]string {
	b.Helper()
	testutil.RequireRoot(b)
	bin := testutil.Binary(b)
	mnts := map[string]string{}
	for _, sys := range []string{"kernel", "ovl-on", "ovl-off"} {
		u, w, m := filepath.Join(base, "u-"+sys), filepath.Join(base, "w-"+sys), filepath.Join(base, "m-"+sys)
		for _, d := range []string{u, w, m} {
			if err := os.Mkdir(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		layers := "lowerdir=" + filepath.Join(base, "l") + ",upperdir=" + u + ",workdir=" + w
		if sys == "kernel" {
			if err := unix.Mount("overlay", m, "overlay", 0, layers+",redirect_dir=nofollow,index=off,metacopy=off,xino=off"); err != nil {
				b.Fatalf("mount -t overlay: %v", err)
			}
			b.Cleanup(func() { unix.Unmount(m, unix.MNT_DETACH) })
		} else {
			opt := layers + ",passthrough=" + strings.TrimPrefix(sys, "ovl-")
			log := filepath.Join(base, "log-"+sys)
			if out, err := exec.Command(bin, "mount", "-o", opt, "--log", log, m).CombinedOutput(); err != nil {
				b.Fatalf("ovl mount: %v: %s", err, out)
			}
			b.Cleanup(func() {
				if exec.Command(bin, "umount", m).Run() != nil {
					unix.Unmount(m, unix.MNT_DETACH)
				}
			})
			if data, _ := os.ReadFile(log); sys == "ovl-on" && bytes.Contains(data, []byte("passthrough: off")) {
				testutil.Skip(b, "passthrough is not available: %s", data)
			}
		}
		mnts[sys] = m
	}
	return mnts
}

func ptReadFile(b *testing.B, path string, buf []byte) int64 {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	var total int64
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 {
			return total
		}
		total += int64(n)
	}
}

// BenchmarkPassthroughSeqRead reads a 1 GiB lower file sequentially in
// 1 MiB reads, cold (the file's pages evicted before each read) and warm,
// through the kernel's overlayfs and ovl with passthrough on and off:
//
//	go test ./cmd/ovl -run '^$' -bench PassthroughSeqRead -benchtime 5x
func BenchmarkPassthroughSeqRead(b *testing.B) {
	const size = 1 << 30
	base := b.TempDir()
	os.Mkdir(filepath.Join(base, "l"), 0o755)
	f, err := os.Create(filepath.Join(base, "l", "big"))
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := 0; i < size>>20; i++ {
		for j := range chunk {
			chunk[j] = byte(i + j*7)
		}
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	mnts := ptBenchSystems(b, base)
	lower, err := unix.Open(filepath.Join(base, "l", "big"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(lower)
	buf := make([]byte, 1<<20)
	for _, sys := range []string{"kernel", "ovl-on", "ovl-off"} {
		for _, cache := range []string{"cold", "warm"} {
			b.Run(sys+"/"+cache, func(b *testing.B) {
				path := filepath.Join(mnts[sys], "big")
				if cache == "warm" {
					ptReadFile(b, path, buf)
				}
				b.SetBytes(size)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if cache == "cold" {
						// The lower file's pages, and the mount's own.
						b.StopTimer()
						fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
						if err != nil {
							b.Fatal(err)
						}
						ptDropPageCache(b, lower, fd)
						unix.Close(fd)
						b.StartTimer()
					}
					if n := ptReadFile(b, path, buf); n != size {
						b.Fatalf("read %d bytes, want %d", n, size)
					}
				}
			})
		}
	}
}

// BenchmarkPassthroughOpenSmall opens, reads (4 KiB) and closes 1000 lower
// files per iteration, warm: the cost of an open, which with passthrough
// includes registering a backing file (and a read-only clone for a lower
// file).
//
//	go test ./cmd/ovl -run '^$' -bench PassthroughOpenSmall
func BenchmarkPassthroughOpenSmall(b *testing.B) {
	const files = 1000
	base := b.TempDir()
	os.Mkdir(filepath.Join(base, "l"), 0o755)
	data := bytes.Repeat([]byte("x"), 4096)
	for i := 0; i < files; i++ {
		if err := os.WriteFile(filepath.Join(base, "l", fmt.Sprintf("f%04d", i)), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	mnts := ptBenchSystems(b, base)
	buf := make([]byte, 8192)
	for _, sys := range []string{"kernel", "ovl-on", "ovl-off"} {
		b.Run(sys, func(b *testing.B) {
			paths := make([]string, files)
			for i := range paths {
				paths[i] = filepath.Join(mnts[sys], fmt.Sprintf("f%04d", i))
				ptReadFile(b, paths[i], buf)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for _, p := range paths {
					ptReadFile(b, p, buf)
				}
			}
		})
	}
}

// TestPassthroughIdleBackings reads more lower files than ovl keeps lower
// backings registered for after their last close (1024), then writes some
// of the first and of the last ones read, and reads them again: every
// write lands in the upper and is what a new open reads, whether the
// file's kept backing was dropped for the limit or at the copy-up.
func TestPassthroughIdleBackings(t *testing.T) {
	e := newPTEnv(t)
	const n = 1100
	for i := 0; i < n; i++ {
		os.WriteFile(e.path(fmt.Sprintf("l/f%04d", i)), []byte(ptData), 0o644)
	}
	mnt := e.mount(0)
	ptRequireOn(t, e.log(0))
	for i := 0; i < n; i++ {
		if b, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("f%04d", i))); err != nil || string(b) != ptData {
			t.Fatalf("f%04d reads %q, %v", i, b, err)
		}
	}
	for _, i := range []int{0, 1, 500, n - 2, n - 1} {
		name := fmt.Sprintf("f%04d", i)
		p := filepath.Join(mnt, name)
		if err := os.WriteFile(p, []byte("NEW "+name), 0o644); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		if b, err := os.ReadFile(p); err != nil || string(b) != "NEW "+name {
			t.Errorf("%s reads %q after the write, %v", name, b, err)
		}
		if b, _ := os.ReadFile(e.path("u0/" + name)); string(b) != "NEW "+name {
			t.Errorf("upper %s holds %q", name, b)
		}
		if b, _ := os.ReadFile(e.path("l/" + name)); string(b) != ptData {
			t.Errorf("lower %s changed: %q", name, b)
		}
	}
}

// TestPassthroughLowerAtime reads a lower file whose access time is old:
// the kernel's overlayfs reads its lower layers through noatime clones, and
// ovl registers lower backings from such clones, so neither updates it
// (relatime would: the access time is older than the modification time).
func TestPassthroughLowerAtime(t *testing.T) {
	p := ptPair(t, "on", k.Layers{Lowers: []k.Layer{{k.File("f", ptData)}}})
	old := unix.NsecToTimespec(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	for _, s := range p.Sides() {
		if err := unix.UtimesNano(s.LowerPath(0, "f"), []unix.Timespec{old, {Nsec: unix.UTIME_OMIT}}); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(s.Path("f")); err != nil || string(b) != ptData {
			t.Fatalf("%s: read %q, %v", s.Name, b, err)
		}
	}
	p.Check("lower atime after a read", func(s *k.Side) error {
		var st unix.Stat_t
		if err := unix.Stat(s.LowerPath(0, "f"), &st); err != nil {
			return err
		}
		if st.Atim != old {
			return fmt.Errorf("lower access time now %v, was %v", time.Unix(st.Atim.Unix()), time.Unix(old.Unix()))
		}
		return nil
	})
}
