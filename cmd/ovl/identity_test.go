package main

// Identity of overlay objects (issue 4, items 1, 2 and 6): one st_dev for the
// whole mount, st_ino unique and stable across copy-up and remount, d_ino
// equal to st_ino, and open files that follow their object across copy-up.
// Each test runs the same steps on the kernel's overlayfs and on ovl and
// states what each must show; where the kernel is worse, its expected
// result says so (see docs/semantics.md).

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"golang.org/x/sys/unix"
)

// kinds are the classes of violations a check found, each with examples.
type kinds map[string][]string

func (v kinds) add(kind, format string, args ...any) {
	if len(v[kind]) < 8 {
		v[kind] = append(v[kind], fmt.Sprintf(format, args...))
	} else if len(v[kind]) == 8 {
		v[kind] = append(v[kind], "...")
	}
}

func (v kinds) names() []string {
	var out []string
	for n := range v {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (v kinds) String() string {
	var b strings.Builder
	for _, n := range v.names() {
		fmt.Fprintf(&b, "\n  %s: %s", n, strings.Join(v[n], "; "))
	}
	return b.String()
}

// expectKinds checks that a side showed exactly the violation kinds in want:
// none for ovl, and for the kernel what it is known to do (a kernel that
// gets better is reported too, so that the record stays true).
func expectKinds(t *testing.T, label, side string, got kinds, want ...string) {
	t.Helper()
	sort.Strings(want)
	if strings.Join(got.names(), ",") == strings.Join(want, ",") {
		if len(got) > 0 {
			t.Logf("%s: %s shows, as expected:%s", label, side, got)
		}
		return
	}
	if side == "kernel" {
		t.Errorf("%s: the kernel's behaviour changed: want violations %v, got %v:%s", label, want, got.names(), got)
		return
	}
	t.Errorf("%s: %s: want violations %v, got %v:%s", label, side, want, got.names(), got)
}

// devInoViolations checks one st_dev for every object and a st_ino (and
// st_dev, st_ino pair) that no two objects share. The layers hold no hard
// links, so every path is its own object.
func devInoViolations(ids map[string]*k.ID) kinds {
	v := kinds{}
	devs := map[uint64][]string{}
	inos := map[uint64][]string{}
	pairs := map[[2]uint64][]string{}
	for _, p := range k.SortedIDPaths(ids) {
		id := ids[p]
		devs[id.Dev] = append(devs[id.Dev], "/"+p)
		inos[id.Ino] = append(inos[id.Ino], "/"+p)
		pairs[[2]uint64{id.Dev, id.Ino}] = append(pairs[[2]uint64{id.Dev, id.Ino}], "/"+p)
	}
	if len(devs) > 1 {
		for d, ps := range devs {
			v.add("st_dev", "%d:%d on %d objects (%s ...)", unix.Major(d), unix.Minor(d), len(ps), ps[0])
		}
	}
	for ino, ps := range inos {
		if len(ps) > 1 {
			v.add("st_ino", "%d shared by %v", ino, ps)
		}
	}
	for pr, ps := range pairs {
		if len(ps) > 1 {
			v.add("st_dev+st_ino", "%d:%d shared by %v", pr[0], pr[1], ps)
		}
	}
	return v
}

func walkIDs(t *testing.T, s *k.Side) map[string]*k.ID {
	t.Helper()
	ids, err := k.WalkIDs(s.Layout.Mnt)
	if err != nil {
		t.Fatalf("%s: %v", s.Name, err)
	}
	return ids
}

// devLayers have files at the same paths-to-be on both lowers, enough of
// them that fresh filesystems give colliding inode numbers.
func devLayers() k.Layers {
	l0 := k.Layer{k.File("m/a", "a0"), k.File("m/sub0/f", "f"), k.File("d0/f", "f"), k.Symlink("s0", "m/a"), k.FIFO("p0")}
	l1 := k.Layer{k.File("m/a", "hidden"), k.File("m/b", "b"), k.File("m/c", "c"), k.File("m/sub1/f", "f"),
		k.File("d1/f", "f"), k.Symlink("s1", "m/b"), k.Dir("e1")}
	for i := 0; i < 16; i++ {
		l0 = append(l0, k.File(fmt.Sprintf("t0/f%02d", i), "x"))
		l1 = append(l1, k.File(fmt.Sprintf("t1/f%02d", i), "y"))
	}
	return k.Layers{Lowers: []k.Layer{l0, l1}, Upper: k.Layer{k.File("u", "u"), k.File("m/uu", "uu"), k.File("ud/f", "f")}}
}

// copyUpEverything are operations that copy up files from both lowers, a
// symlink and directories from both lowers.
var copyUpEverything = []k.Op{
	{Op: "write", Path: "m/a", Data: "A"},
	{Op: "chmod", Path: "m/c", Mode: 0o600},
	{Op: "create", Path: "d1/new", Mode: 0o644},
	{Op: "mkdir", Path: "m/sub1/x", Mode: 0o755},
	{Op: "lchown", Path: "s0", UID: 7, GID: 7},
	{Op: "utimes", Path: "t1/f03", Off: 1e18},
	{Op: "chmod", Path: "e1", Mode: 0o700},
}

// TestIdentityStDevIno (item 1): every object of the mount has the mount's
// st_dev, and st_ino is unique within the mount, even with one lower on a
// tmpfs and one on an ext4 image whose inode numbers collide; before and
// after copy-up. The kernel with xino=off reports the lower filesystems'
// pseudo devices for non-directories (st_ino alone collides); with xino=on
// it puts the layer in the high bits of st_ino.
func TestIdentityStDevIno(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		testutil.Skip(t, "needs mkfs.ext4 for a lower on its own ext4: %v", err)
	}
	for _, xino := range []string{"off", "on"} {
		t.Run("kernel_xino="+xino, func(t *testing.T) {
			opts := k.DefaultOptions()
			opts.Xino = xino // the kernel's only: ovl always does its own xino
			p := kcPairCfg(t, k.Config{Options: opts, Ignore: xinoIgnore(xino)}, devLayers())
			p.PutLowerOn(0, "tmpfs")
			p.PutLowerOn(1, "ext4")
			checkLowerCollisions(t, p)
			want := map[string][]string{"kernel": nil, "ovl": nil}
			if xino == "off" {
				want["kernel"] = []string{"st_dev", "st_ino"}
			}
			check := func(label string) {
				for _, s := range p.Sides() {
					ids := walkIDs(t, s)
					expectKinds(t, label, s.Name, devInoViolations(ids), want[s.Name]...)
				}
			}
			check("initial")
			p.OpsExpect(nil, make([]syscall.Errno, len(copyUpEverything)), copyUpEverything...)
			check("after copy-up")
			p.Remount()
			check("after remount")
			p.Finish()
		})
	}
}

// xinoIgnore adds to the intended differences what the kernel does only
// because xino=on is one of its "new features".
func xinoIgnore(xino string) []k.Difference {
	if xino != "on" {
		return nil
	}
	return append(append([]k.Difference(nil), k.IntendedDifferences...), k.Difference{
		Scope: k.ScopeUpper, Field: "ovl:opaque", Types: []string{"dir"},
		Reason: "with xino=on (ovl_allow_offline_changes false) the kernel marks directories made in merged ones opaque, an optimisation",
	})
}

// checkLowerCollisions makes sure the setup does what the test needs: a
// file of the tmpfs lower and a file of the ext4 lower, both visible, with
// the same inode number.
func checkLowerCollisions(t *testing.T, p *k.Pair) {
	t.Helper()
	for _, s := range p.Sides() {
		var devs [2]uint64
		inos := [2]map[uint64]string{{}, {}}
		for i := 0; i < 2; i++ {
			ids, err := k.WalkIDs(s.Layout.Lowers[i])
			if err != nil {
				t.Fatal(err)
			}
			devs[i] = ids[""].Dev
			for pth, id := range ids {
				if id.Type == "file" && !strings.HasPrefix(pth, "m/a") {
					inos[i][id.Ino] = pth
				}
			}
		}
		if devs[0] == devs[1] {
			t.Fatalf("%s: both lowers on one filesystem", s.Name)
		}
		n := 0
		for ino := range inos[0] {
			if _, ok := inos[1][ino]; ok {
				n++
			}
		}
		if n == 0 {
			t.Fatalf("%s: no inode number collides between the lowers: the test proves nothing", s.Name)
		}
		t.Logf("%s: %d inode numbers shared by files of the two lowers", s.Name, n)
	}
}

// inoViolations compares walks of one mount: before (the first walk) and
// after copy-up, after dropping caches, after remount. Kinds:
// copyup:TYPE and remount:TYPE (st_ino changed), d_ino:TYPE (readdir's
// d_ino differs from st_ino), dot and dotdot (d_ino of . and .. differ from
// the directory's and its parent's st_ino), st_ino (two objects share one).
func inoViolations(walks []map[string]*k.ID, labels []string) kinds {
	v := kinds{}
	for w, ids := range walks {
		for _, p := range k.SortedIDPaths(ids) {
			id := ids[p]
			if p != "" && id.DIno != id.Ino {
				v.add("d_ino:"+id.Type, "%s: /%s d_ino %d, st_ino %d", labels[w], p, id.DIno, id.Ino)
			}
			if id.Type == "dir" {
				if id.DotIno != id.Ino {
					v.add("dot", "%s: /%s/. d_ino %d, st_ino %d", labels[w], p, id.DotIno, id.Ino)
				}
				if parent := parentOf(p); p != "" && id.DotDotIno != ids[parent].Ino {
					v.add("dotdot", "%s: /%s/.. d_ino %d, parent st_ino %d", labels[w], p, id.DotDotIno, ids[parent].Ino)
				}
			}
			if w == 0 {
				continue
			}
			prev := walks[w-1][p]
			if prev == nil || prev.Ino == id.Ino {
				continue
			}
			kind := "copyup:"
			if strings.HasPrefix(labels[w], "remount") {
				kind = "remount:"
			}
			v.add(kind+id.Type, "/%s: %d %s, %d %s", p, prev.Ino, labels[w-1], id.Ino, labels[w])
		}
		for kind, ps := range devInoViolations(ids) {
			if kind == "st_ino" {
				v[kind] = append(v[kind], ps...)
			}
		}
	}
	return v
}

func parentOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

func inoLayers() k.Layers {
	return k.Layers{
		Lowers: []k.Layer{{
			k.File("f0", "f0"), k.File("d0/g", "g"), k.Symlink("sl0", "f0"), k.File("m/a", "a"),
			k.File("m/p", "pristine"), k.Dir("m/sub"), k.File("m/sub/x0", "x"),
		}, {
			k.File("f1", "f1"), k.File("d1/h", "h"), k.Symlink("sl1", "f1"), k.File("m/b", "b"),
			k.File("m/sub/y1", "y"), k.Dir("e"), k.File("m/pp", "pristine"),
		}},
		Upper: k.Layer{k.File("u", "u"), k.File("ud/v", "v"), k.File("m/uf", "uf")},
	}
}

var inoCopyUps = []k.Op{
	{Op: "chmod", Path: "f0", Mode: 0o600},
	{Op: "write", Path: "f1", Data: "F"},
	{Op: "lchown", Path: "sl0", UID: 3, GID: 3},
	{Op: "lchown", Path: "sl1", UID: 3, GID: 3},
	{Op: "create", Path: "d0/new", Mode: 0o644},
	{Op: "mkdir", Path: "m/sub/z", Mode: 0o755},
	{Op: "chmod", Path: "e", Mode: 0o700},
	{Op: "utimes", Path: "m/b", Off: 1e18},
	{Op: "write", Path: "d1/h", Data: "H"},
}

// TestIdentityInodeNumbers (item 6): st_ino of files, directories and
// symlinks is the same before and after copy-up (with the inodes cached and
// after the caches were dropped) and across unmount and remount; d_ino of
// every readdir entry, "." and ".." included, equals the st_ino of what it
// names, in merged, copied-up and pristine directories. Layers on one
// filesystem, and with the lowers on a tmpfs under an upper on disk, where
// the kernel is mounted with xino=off (its default here) and xino=on.
func TestIdentityInodeNumbers(t *testing.T) {
	cases := []struct {
		name       string
		xino       string
		tmpfsLower bool
		kernel     []string // the violations the kernel shows
	}{
		// The kernel lists a merged directory whose upper has no origin
		// with the upper's inode number until it was looked up.
		{"samefs", "off", false, []string{"d_ino:dir"}},
		// Without xino the kernel numbers directories itself, afresh at
		// each lookup, and reports real inode numbers for the rest.
		{"lowers_on_tmpfs/kernel_xino=off", "off", true, []string{"copyup:dir", "d_ino:dir", "d_ino:file", "d_ino:symlink", "dot", "dotdot", "remount:dir", "st_ino"}},
		{"lowers_on_tmpfs/kernel_xino=on", "on", true, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := k.DefaultOptions()
			opts.Xino = c.xino
			p := kcPairCfg(t, k.Config{Options: opts, Ignore: xinoIgnore(c.xino)}, inoLayers())
			if c.tmpfsLower {
				p.PutLowerOn(0, "tmpfs")
				p.PutLowerOn(1, "tmpfs")
			}
			labels := []string{"before copy-up", "after copy-up", "after drop_caches", "remounted"}
			walks := map[string][]map[string]*k.ID{}
			record := func() {
				for _, s := range p.Sides() {
					walks[s.Name] = append(walks[s.Name], walkIDs(t, s))
				}
			}
			record()
			p.OpsExpect(nil, make([]syscall.Errno, len(inoCopyUps)), inoCopyUps...)
			record()
			dropCaches(t)
			record()
			p.Remount()
			record()
			for _, s := range p.Sides() {
				want := []string(nil)
				if s.Name == "kernel" {
					want = c.kernel
				}
				expectKinds(t, "inode numbers", s.Name, inoViolations(walks[s.Name], labels), want...)
			}
			p.Finish()
		})
	}
}

// dropCaches makes the kernel forget unused dentries and inodes, so that
// the next lookups reach the filesystems (and ovl) afresh.
func dropCaches(t *testing.T) {
	t.Helper()
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		t.Fatalf("drop caches: %v", err)
	}
}

// TestIdentityOpenFileFollowsCopyUp (item 2): a file opened O_RDONLY while
// it is pristine in a lower layer reads what another process wrote after
// the write copied it up, fstat on it shows the new size, and it sees a
// truncation made through another fd, whether that truncation is the
// copy-up or comes after it. (The kernel's coherence here is ovl's with
// passthrough=off: kcCoherent.)
func TestIdentityOpenFileFollowsCopyUp(t *testing.T) {
	p := kcPair(t, kcCoherent(), k.Layers{Lowers: []k.Layer{{
		k.File("f", "0123456789"), k.File("g", "0123456789"), k.File("h", "0123456789"),
	}}})
	for _, s := range p.Sides() {
		openFileFollowsCopyUp(t, s)
	}
	p.Check("lower untouched", func(s *k.Side) error {
		for _, name := range []string{"f", "g", "h"} {
			b, err := os.ReadFile(s.LowerPath(0, name))
			if err != nil || string(b) != "0123456789" {
				return fmt.Errorf("lower %s now %q (%v)", name, b, err)
			}
		}
		return nil
	})
	p.Finish()
}

func openFileFollowsCopyUp(t *testing.T, s *k.Side) {
	t.Helper()
	fds := map[string]int{}
	for _, name := range []string{"f", "g", "h"} {
		fd, err := unix.Open(s.Path(name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		// Read through it first, so that the open is not idle.
		expectRead(t, s.Name+": "+name+" before copy-up", fd, -1, 4, "0123")
		expectSize(t, s.Name+": "+name+" before copy-up", fd, 10)
		fds[name] = fd
	}
	// Another process writes f: the copy-up.
	res, err := k.RunOps(s.Layout.Mnt, nil, []k.Op{{Op: "write", Path: "f", Data: "ABCDEFGHIJKLMNOP"}})
	if err != nil || res[0].Errno != 0 {
		t.Fatalf("%s: write by another process: %v %v", s.Name, res, err)
	}
	expectCopiedUp(t, s, "f")
	expectSize(t, s.Name+": f after another process's write", fds["f"], 16)
	expectRead(t, s.Name+": f after another process's write (pread)", fds["f"], 0, 64, "ABCDEFGHIJKLMNOP")
	expectRead(t, s.Name+": f after another process's write (read on)", fds["f"], -1, 64, "EFGHIJKLMNOP")
	// Then another fd truncates it.
	ftruncate(t, s.Path("f"), 5)
	expectSize(t, s.Name+": f after ftruncate by another fd", fds["f"], 5)
	expectRead(t, s.Name+": f after ftruncate by another fd", fds["f"], 0, 64, "ABCDE")

	// g: the truncation through another fd is the copy-up.
	ftruncate(t, s.Path("g"), 3)
	expectCopiedUp(t, s, "g")
	expectSize(t, s.Name+": g after ftruncate copy-up", fds["g"], 3)
	expectRead(t, s.Name+": g after ftruncate copy-up", fds["g"], 0, 64, "012")

	// h: another process truncates it by name (truncate(2)), growing it.
	res, err = k.RunOps(s.Layout.Mnt, nil, []k.Op{{Op: "truncate", Path: "h", Off: 12}})
	if err != nil || res[0].Errno != 0 {
		t.Fatalf("%s: truncate by another process: %v %v", s.Name, res, err)
	}
	expectCopiedUp(t, s, "h")
	expectSize(t, s.Name+": h after truncate(2) copy-up", fds["h"], 12)
	expectRead(t, s.Name+": h after truncate(2) copy-up", fds["h"], 0, 64, "0123456789\x00\x00")
}

func expectCopiedUp(t *testing.T, s *k.Side, name string) {
	t.Helper()
	if _, err := os.Lstat(s.UpperPath(name)); err != nil {
		t.Fatalf("%s: %s not copied up: %v", s.Name, name, err)
	}
}

// expectRead reads up to n bytes at off (off < 0: read(2) at the file
// position) and compares.
func expectRead(t *testing.T, label string, fd int, off int64, n int, want string) {
	t.Helper()
	buf := make([]byte, n)
	var got int
	var err error
	if off < 0 {
		got, err = unix.Read(fd, buf)
	} else {
		got, err = unix.Pread(fd, buf, off)
	}
	if err != nil {
		t.Errorf("%s: read: %v", label, err)
		return
	}
	if string(buf[:got]) != want {
		t.Errorf("%s: read %q, want %q", label, buf[:got], want)
	}
}

func expectSize(t *testing.T, label string, fd int, want int64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Errorf("%s: fstat: %v", label, err)
		return
	}
	if st.Size != want {
		t.Errorf("%s: fstat size %d, want %d", label, st.Size, want)
	}
}

func ftruncate(t *testing.T, path string, size int64) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatalf("ftruncate %s: %v", path, err)
	}
}

// TestIdentityMmapAcrossCopyUp (item 2, mmap): a MAP_SHARED read-only
// mapping of a pristine lower file, made before another process writes the
// file (the copy-up). ovl maps its own inode's pages, which the write
// updates, so the old mapping shows the new data, and so does a new mapping
// through the old fd. The kernel maps the real file the fd was opened on
// (ovl_mmap), the lower one: the old mapping keeps showing the lower data
// (overlayfs.rst, "Non-standard behavior"), and so does a new mapping made
// through the old fd after the copy-up, although read(2) on that fd returns
// the new data. Recorded in docs/semantics.md. (This is ovl with
// passthrough=off, kcCoherent: with passthrough the write waits for the
// fd to be closed, and a mapping maps the lower file, as in the kernel.)
func TestIdentityMmapAcrossCopyUp(t *testing.T) {
	page := bytes.Repeat([]byte("a"), 4096)
	p := kcPair(t, kcCoherent(), k.Layers{Lowers: []k.Layer{{k.File("mm", string(page))}}})
	want := map[string]string{"kernel": "aaaa", "ovl": "BBBB"}
	for _, s := range p.Sides() {
		old, fresh := mmapAcrossCopyUp(t, s)
		if old != want[s.Name] {
			t.Errorf("%s: MAP_SHARED mapping made before the copy-up shows %q after it, want %q", s.Name, old, want[s.Name])
		}
		if fresh != want[s.Name] {
			t.Errorf("%s: mapping made through the old fd after the copy-up shows %q, want %q", s.Name, fresh, want[s.Name])
		}
	}
	p.Check("new opens see the new data", func(s *k.Side) error {
		fd, err := unix.Open(s.Path("mm"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		defer unix.Munmap(m)
		if string(m[:5]) != "BBBBa" {
			return fmt.Errorf("a new mapping shows %q", m[:5])
		}
		return nil
	})
	p.Finish()
}

// mmapAcrossCopyUp maps mm read-only and shared, has another process write
// it, and returns what the old mapping and a new one through the same fd
// show.
func mmapAcrossCopyUp(t *testing.T, s *k.Side) (old, fresh string) {
	t.Helper()
	fd, err := unix.Open(s.Path("mm"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	m, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("%s: mmap: %v", s.Name, err)
	}
	defer unix.Munmap(m)
	if string(m[:4]) != "aaaa" { // also faults the page in
		t.Fatalf("%s: mapping before copy-up shows %q", s.Name, m[:4])
	}
	res, err := k.RunOps(s.Layout.Mnt, nil, []k.Op{{Op: "write", Path: "mm", Data: "BBBB"}})
	if err != nil || res[0].Errno != 0 {
		t.Fatalf("%s: write by another process: %v %v", s.Name, res, err)
	}
	expectCopiedUp(t, s, "mm")
	old = string(m[:4])
	expectRead(t, s.Name+": read(2) on the mapped fd", fd, 0, 4, "BBBB")
	m2, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("%s: second mmap: %v", s.Name, err)
	}
	defer unix.Munmap(m2)
	return old, string(m2[:4])
}
