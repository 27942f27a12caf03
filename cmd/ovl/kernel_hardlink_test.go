package main

// Lower hard links with index=off (issue 18, item 2). The kernel's
// overlayfs reports, for every name of a lower hard link, the lower file's
// real inode number (one filesystem, xino=off), in stat and in readdir,
// until copy-up of a name splits the link: the copy then has its upper
// inode's number and the other names keep the lower one. Tools that find
// hard links by st_dev and st_ino (find -inum, du, tar, cp -a, rsync -H,
// containers-storage's diff) see one file with several names. Each name is
// still its own object (writing one leaves the others alone). ovl must show
// the same numbers.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// hlNames are the names of the lower hard link in hlLayers: two in the
// root, one in a subdirectory; hlSym are those of a lower symlink's.
var (
	hlNames = []string{"a", "b", "d/c"}
	hlSym   = []string{"s1", "d/s2"}
)

const hlData = "lower data\n"

func hlLayers() k.Layers {
	return k.Layers{Lowers: []k.Layer{{
		k.File("a", hlData), k.Hardlink("b", "a"), k.Dir("d"), k.Hardlink("d/c", "a"),
		k.Symlink("s1", "a"), k.Hardlink("d/s2", "s1"),
		k.File("solo", "one link"), k.Dir("e"),
	}, {
		// A second lower: the kernel mounts no single lower without an
		// upper layer.
		k.File("e/below", "below"),
	}}}
}

// TestKernelLowerHardlinks checks, on the kernel and on ovl over the same
// layers, that the names of a lower hard link show its lower inode number
// in lstat and in readdir (ls -i), that find -inum, du, tar and cp -a take
// them for one file, and that appending to one name gives that name its
// upper inode's number while the others keep theirs and their data; also
// after a link through the mount, a remount, and without passthrough. A
// mount without an upper layer never splits the link.
func TestKernelLowerHardlinks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
		ro    bool
	}{
		{name: "default"},
		{name: "passthrough=off", extra: []string{"passthrough=off"}},
		{name: "readonly", ro: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := k.DefaultOptions()
			opts.OvlExtra, opts.ReadOnly = tc.extra, tc.ro
			p := kcPair(t, opts, hlLayers())
			hlCheckShared(t, p, "before copy-up", map[string]string{
				"a": "lower a", "b": "lower a", "d/c": "lower a", "s1": "lower s1", "d/s2": "lower s1",
			})
			hlCheckTools(t, p, "before copy-up", [][]string{hlNames, hlSym})
			p.Views("before copy-up")
			if tc.ro {
				p.Finish()
				return
			}

			// Appending to a copies it up: the link splits.
			p.OpsExpect(nil, []syscall.Errno{0}, k.Op{Op: "append", Path: "a", Data: "more\n"})
			hlCheckShared(t, p, "after appending to a", map[string]string{
				"a": "upper a", "b": "lower a", "d/c": "lower a",
			})
			hlCheckData(t, p, map[string]string{"a": hlData + "more\n", "b": hlData, "d/c": hlData})
			hlCheckTools(t, p, "after appending to a", [][]string{{"b", "d/c"}, hlSym})
			p.Views("after appending to a")

			// A link through the mount copies b up (another split) and
			// links its copy: b and d/e are one upper inode.
			p.OpsExpect(nil, []syscall.Errno{0}, k.Op{Op: "link", Path: "b", Path2: "d/e"})
			after := map[string]string{"a": "upper a", "b": "upper b", "d/e": "upper b", "d/c": "lower a", "s1": "lower s1"}
			hlCheckShared(t, p, "after link b d/e", after)
			hlCheckTools(t, p, "after link b d/e", [][]string{{"b", "d/e"}, hlSym})
			p.Views("after link b d/e")

			p.Remount()
			hlCheckShared(t, p, "after remount", after)
			hlCheckData(t, p, map[string]string{"a": hlData + "more\n", "b": hlData, "d/e": hlData, "d/c": hlData})
			p.Finish()
		})
	}
}

// hlCheckShared checks st_ino (lstat) and d_ino (getdents64, and ls -i)
// of each name on both sides: want gives, by name, the layer file ("lower
// NAME" or "upper NAME" in the side's own layers) whose inode number the
// name must show.
func hlCheckShared(t *testing.T, p *k.Pair, label string, want map[string]string) {
	t.Helper()
	for _, s := range p.Sides() {
		for _, name := range sortedKeys(want) {
			layer, rel, _ := strings.Cut(want[name], " ")
			lp := s.LowerPath(0, rel)
			if layer == "upper" {
				lp = s.UpperPath(rel)
			}
			var lst unix.Stat_t
			if err := unix.Lstat(lp, &lst); err != nil {
				t.Fatalf("%s: %s: layer file: %v", label, s.Name, err)
			}
			w := lst.Ino
			var st unix.Stat_t
			if err := unix.Lstat(s.Path(name), &st); err != nil {
				t.Errorf("%s: %s: lstat %s: %v", label, s.Name, name, err)
				continue
			}
			if st.Ino != w {
				t.Errorf("%s: %s: st_ino of %s is %d, want %d (%s)", label, s.Name, name, st.Ino, w, want[name])
			}
			dino, err := hlDino(s.Path(name))
			if err != nil || dino != w {
				t.Errorf("%s: %s: d_ino of %s is %d (%v), want %d (%s)", label, s.Name, name, dino, err, w, want[name])
			}
			lsIno, err := hlLsIno(s.Path(name))
			if err != nil || lsIno != w {
				t.Errorf("%s: %s: ls -i shows %s as %d (%v), want %d (%s)", label, s.Name, name, lsIno, err, w, want[name])
			}
		}
	}
}

// hlDino is the d_ino getdents64 lists for path in its directory.
func hlDino(path string) (uint64, error) {
	ents, err := k.ReadDir(filepath.Dir(path))
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if e.Name == filepath.Base(path) {
			return e.Ino, nil
		}
	}
	return 0, fmt.Errorf("%s not listed", path)
}

// hlLsIno is the number ls -i shows for path's entry in its directory.
func hlLsIno(path string) (uint64, error) {
	out, err := exec.Command("ls", "-i1a", filepath.Dir(path)).Output()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == filepath.Base(path) {
			return strconv.ParseUint(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("ls -i does not list %s", path)
}

// hlCheckData checks each name's content on both sides.
func hlCheckData(t *testing.T, p *k.Pair, want map[string]string) {
	t.Helper()
	for _, s := range p.Sides() {
		for name, w := range want {
			b, err := os.ReadFile(s.Path(name))
			if err != nil || string(b) != w {
				t.Errorf("%s: %s holds %q (%v), want %q", s.Name, name, b, err, w)
			}
		}
	}
}

// hlCheckTools runs find -inum, du, tar and cp -a on each side's mount,
// where groups are the names that must be one file (hard links); every
// other name is a file of its own.
func hlCheckTools(t *testing.T, p *k.Pair, label string, groups [][]string) {
	t.Helper()
	for _, s := range p.Sides() {
		root := s.Layout.Mnt
		fail := func(format string, args ...any) {
			t.Helper()
			t.Errorf("%s: %s: %s", label, s.Name, fmt.Sprintf(format, args...))
		}
		linked := map[string]bool{}
		for _, g := range groups {
			// find -inum N lists exactly the group.
			var st unix.Stat_t
			if err := unix.Lstat(s.Path(g[0]), &st); err != nil {
				fail("%v", err)
				continue
			}
			out, err := hlRun(root, "find", ".", "-inum", fmt.Sprint(st.Ino))
			if got, want := hlLines(out, "./"), hlSorted(g); err != nil || got != want {
				fail("find -inum %d lists %q (%v), want %q", st.Ino, got, err, want)
			}
			for _, n := range g {
				linked[n] = true
			}
		}

		// du -a lists a file with several names once.
		out, err := hlRun(root, "du", "-a", ".")
		if err != nil {
			fail("du: %v", err)
		} else {
			listed := map[string]bool{}
			for _, line := range strings.Split(string(out), "\n") {
				if f := strings.SplitN(line, "\t", 2); len(f) == 2 {
					listed[strings.TrimPrefix(f[1], "./")] = true
				}
			}
			for _, g := range groups {
				n := 0
				for _, name := range g {
					if listed[name] {
						n++
					}
				}
				if n != 1 {
					fail("du -a lists %d of the names %v, want 1 (one file)", n, g)
				}
			}
		}

		// tar records every name of a group after the first as a hard
		// link to an earlier one of the group.
		out, err = hlRun(root, "tar", "--format=gnu", "-cf", "-", ".")
		if err != nil {
			fail("tar: %v", err)
		} else {
			hlCheckTar(t, fail, out, groups, linked)
		}

		// cp -a keeps the groups as hard links.
		dst := filepath.Join(t.TempDir(), "copy")
		if out, err := exec.Command("cp", "-a", root, dst).CombinedOutput(); err != nil {
			fail("cp -a: %v: %s", err, out)
			continue
		}
		ids := map[string]uint64{}
		for _, name := range append(hlNames, append(hlSym, "solo", "d/e")...) {
			var st unix.Stat_t
			if unix.Lstat(filepath.Join(dst, name), &st) == nil {
				ids[name] = st.Ino
			}
		}
		for _, g := range groups {
			for _, n := range g[1:] {
				if ids[n] != ids[g[0]] {
					fail("cp -a: %s and %s are two files in the copy, want one", g[0], n)
				}
			}
		}
		for a, ia := range ids {
			for b, ib := range ids {
				if a < b && ia == ib && !hlSameGroup(groups, a, b) {
					fail("cp -a: %s and %s are one file in the copy, want two", a, b)
				}
			}
		}
	}
}

func hlSameGroup(groups [][]string, a, b string) bool {
	for _, g := range groups {
		ina, inb := false, false
		for _, n := range g {
			ina, inb = ina || n == a, inb || n == b
		}
		if ina && inb {
			return true
		}
	}
	return false
}

// hlCheckTar checks a tar stream's hard link entries: tar -tv shows
// "NAME link to OTHER" for a name whose file it stored before.
func hlCheckTar(t *testing.T, fail func(string, ...any), archive []byte, groups [][]string, linked map[string]bool) {
	t.Helper()
	cmd := exec.Command("tar", "-tvf", "-")
	cmd.Stdin = bytes.NewReader(archive)
	out, err := cmd.Output()
	if err != nil {
		fail("tar -t: %v", err)
		return
	}
	links := map[string]string{} // name -> the name it links to
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, " link to "); i >= 0 {
			f := strings.Fields(line[:i])
			links[strings.TrimPrefix(f[len(f)-1], "./")] = strings.TrimPrefix(line[i+len(" link to "):], "./")
		}
	}
	for _, g := range groups {
		n := 0
		for _, name := range g {
			if to, ok := links[name]; ok {
				n++
				if !hlSameGroup(groups, name, to) {
					fail("tar: %s recorded as a link to %s, another file", name, to)
				}
			}
		}
		if n != len(g)-1 {
			fail("tar records %d of the names %v as hard links, want %d", n, g, len(g)-1)
		}
	}
	for name, to := range links {
		if !linked[name] {
			fail("tar records %s as a link to %s, want a file of its own", name, to)
		}
	}
}

// hlRun runs a command in dir and returns its standard output.
func hlRun(dir, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %v: %w: %s", name, args, err, stderr.String())
	}
	return out, nil
}

// hlLines is out's lines without prefix, sorted and comma-joined.
func hlLines(out []byte, prefix string) string {
	var ls []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			ls = append(ls, strings.TrimPrefix(l, prefix))
		}
	}
	sort.Strings(ls)
	return strings.Join(ls, ",")
}

func hlSorted(names []string) string {
	s := append([]string(nil), names...)
	sort.Strings(s)
	return strings.Join(s, ",")
}
