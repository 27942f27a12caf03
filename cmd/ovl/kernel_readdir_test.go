package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestKernelReaddirTypes: each name once, whiteouts hidden, d_type right,
// . and .. present (Views reports walk problems), in a merged dir with
// every type.
func TestKernelReaddirTypes(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{
			Lowers: []k.Layer{{
				k.File("m/file", "f"), k.Dir("m/dir"), k.Symlink("m/link", "file"), k.FIFO("m/fifo"),
				k.Socket("m/sock"), k.CharDev("m/chr", 1, 3), k.BlockDev("m/blk", 7, 1),
				k.Whiteout("m/wh"), k.File("m/dup", "top"),
			}, {
				k.File("m/wh", "hidden"), k.File("m/dup", "bottom"), k.Dir("m/dir/sub"), k.File("m/low", "l"),
			}},
			Upper: k.Layer{k.Whiteout("m/low"), k.File("m/up", "u"), k.File("m/dup", "upper")},
		})
		res := p.Ops(nil, kcOp("readdir", "m"))
		want := "blk:block,chr:char,dir:dir,dup:file,fifo:fifo,file:file,link:symlink,sock:socket,up:file"
		if res[0].Out != want {
			t.Errorf("readdir m: %q, want %q", res[0].Out, want)
		}
		p.Check("dot entries", func(s *k.Side) error {
			ents, err := k.ReadDir(s.Path("m"))
			if err != nil {
				return err
			}
			n := 0
			for _, e := range ents {
				if e.Name == "." || e.Name == ".." {
					n++
				}
			}
			if n != 2 || len(ents) != 11 {
				return fmt.Errorf("%d dot entries, %d entries: %v", n, len(ents), ents)
			}
			return nil
		})
		p.Finish()
	})
}

// TestKernelReaddirHuge lists a merged directory of 100000 entries split
// over two lowers and the upper, with whiteouts: complete, no duplicates,
// and fast (a quadratic merge would not finish in time).
func TestKernelReaddirHuge(t *testing.T) {
	testutil.RequireRoot(t)
	name := func(i int) string { return fmt.Sprintf("big/f%06d", i) }
	var l0, l1, up k.Layer
	for i := 0; i < 40000; i++ {
		l0 = append(l0, k.File(name(i), ""))
	}
	for i := 30000; i < 70000; i++ {
		l1 = append(l1, k.File(name(i), ""))
	}
	for i := 70000; i < 101000; i++ {
		up = append(up, k.File(name(i), ""))
	}
	for i := 0; i < 1000; i++ {
		up = append(up, k.Whiteout(name(i)))
	}
	start := time.Now()
	// On tmpfs: creating 100k files in one ext4 directory here takes
	// minutes.
	p := kcPairCfg(t, k.Config{Options: k.DefaultOptions(), Tmpfs: true, NoHash: true},
		k.Layers{Lowers: []k.Layer{l0, l1}, Upper: up})
	t.Logf("layers built and mounted in %v", time.Since(start))
	var lists [2][]string
	for i, s := range p.Sides() {
		start := time.Now()
		ents, err := k.ReadDir(s.Path("big"))
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		d := time.Since(start)
		t.Logf("%s: listed %d entries in %v", s.Name, len(ents), d)
		// A bound for a quadratic listing (minutes), not a benchmark:
		// CI runs on a loaded two-core machine.
		if d > 120*time.Second {
			t.Errorf("%s: listing 100k entries took %v", s.Name, d)
		}
		seen := map[string]bool{}
		for _, e := range ents {
			if seen[e.Name] {
				t.Errorf("%s: %s listed twice", s.Name, e.Name)
			}
			seen[e.Name] = true
			if e.Name != "." && e.Name != ".." {
				lists[i] = append(lists[i], e.Name)
				if e.Type != unix.DT_REG {
					t.Errorf("%s: %s has d_type %d", s.Name, e.Name, e.Type)
				}
			}
		}
		if !seen["."] || !seen[".."] {
			t.Errorf("%s: no . or ..", s.Name)
		}
		sort.Strings(lists[i])
		if len(lists[i]) != 100000 || lists[i][0] != "f001000" || lists[i][99999] != "f100999" {
			t.Errorf("%s: %d entries (%v .. %v), want 100000 f001000..f100999", s.Name, len(lists[i]),
				lists[i][:min(1, len(lists[i]))], lists[i][max(0, len(lists[i])-1):])
		}
	}
	if !slices.Equal(lists[0], lists[1]) {
		t.Errorf("the two listings differ")
	}
	// A second listing (cached or not) is complete too.
	p.Check("second listing", func(s *k.Side) error {
		ents, err := k.ReadDir(s.Path("big"))
		if err != nil || len(ents) != 100002 {
			return fmt.Errorf("%d entries (%v)", len(ents), err)
		}
		return nil
	})
}

// TestKernelSeekdir: telldir/seekdir/rewinddir through lseek on the
// directory fd and the d_off of getdents64 entries.
func TestKernelSeekdir(t *testing.T) {
	var l0, l1, up k.Layer
	for i := 0; i < 300; i++ {
		switch i % 3 {
		case 0:
			l0 = append(l0, k.File(fmt.Sprintf("d/name-with-some-length-%03d", i), ""))
		case 1:
			l1 = append(l1, k.File(fmt.Sprintf("d/name-with-some-length-%03d", i), ""))
		default:
			up = append(up, k.File(fmt.Sprintf("d/name-with-some-length-%03d", i), ""))
		}
	}
	l1 = append(l1, k.File("d/name-with-some-length-000", "dup"))
	p := kcPair(t, k.DefaultOptions(), k.Layers{Lowers: []k.Layer{l0, l1}, Upper: up})
	p.Check("seekdir", func(s *k.Side) error {
		fd, err := unix.Open(s.Path("d"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		all, err := k.ReadDirFd(fd, 1024) // many getdents calls
		if err != nil {
			return err
		}
		if len(all) != 302 {
			return fmt.Errorf("%d entries, want 302", len(all))
		}
		names := func(es []k.Dirent) []string {
			var out []string
			for _, e := range es {
				out = append(out, e.Name)
			}
			return out
		}
		for _, i := range []int{1, 2, 37, 150, 299, 301} {
			if _, err := unix.Seek(fd, all[i-1].Off, 0); err != nil {
				return fmt.Errorf("seekdir: %v", err)
			}
			rest, err := k.ReadDirFd(fd, 1024)
			if err != nil {
				return err
			}
			if !slices.Equal(names(rest), names(all[i:])) {
				return fmt.Errorf("after seekdir to entry %d: got %d entries starting %v, want %d starting %v",
					i, len(rest), names(rest)[:min(2, len(rest))], len(all)-i, all[i].Name)
			}
		}
		if _, err := unix.Seek(fd, 0, 0); err != nil {
			return fmt.Errorf("rewinddir: %v", err)
		}
		again, err := k.ReadDirFd(fd, 4096)
		if err != nil {
			return err
		}
		if !slices.Equal(names(again), names(all)) {
			return fmt.Errorf("rewinddir: listing differs (%d vs %d entries)", len(again), len(all))
		}
		return nil
	})
	p.Finish()
}

// TestKernelReaddirStatBetween lists a merged directory with small
// getdents buffers and, every other call, an lstat of the entries just
// listed: the kernel then switches the open directory between READDIR and
// READDIRPLUS (READDIRPLUS_AUTO) and re-reads the part of each batch that
// did not fit the caller's buffer, in the other format. Every name must come
// once, with the d_type and the lstat type of the kernel's overlayfs.
func TestKernelReaddirStatBetween(t *testing.T) {
	var l0, l1, up k.Layer
	want := map[string]string{}
	for i := 0; i < 3000; i++ {
		name := fmt.Sprintf("d/entry-with-a-longer-name-%04d", i)
		switch i % 5 {
		case 0:
			l0 = append(l0, k.File(name, ""))
		case 1:
			l1 = append(l1, k.Dir(name))
		case 2:
			l1 = append(l1, k.Symlink(name, "x"))
		case 3:
			up = append(up, k.File(name, "u"))
		default:
			l0 = append(l0, k.File(name, "hidden"))
			up = append(up, k.Whiteout(name))
		}
	}
	p := kcPair(t, k.DefaultOptions(), k.Layers{Lowers: []k.Layer{l0, l1}, Upper: up})
	for _, s := range p.Sides() {
		fd, err := unix.Open(s.Path("d"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		buf := make([]byte, 600) // a few entries of each kernel batch
		for call := 0; ; call++ {
			n, err := unix.Getdents(fd, buf)
			if err != nil {
				t.Fatalf("%s: getdents: %v", s.Name, err)
			}
			if n == 0 {
				break
			}
			for _, e := range k.ParseDirents(buf[:n]) {
				if e.Name == "." || e.Name == ".." {
					continue
				}
				if _, dup := got[e.Name]; dup {
					t.Errorf("%s: %s listed twice", s.Name, e.Name)
				}
				typ := fmt.Sprint(e.Type)
				if call%2 == 0 {
					var st unix.Stat_t
					if err := unix.Fstatat(fd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
						t.Errorf("%s: lstat %s: %v", s.Name, e.Name, err)
					}
					typ += fmt.Sprintf("/%o", st.Mode&unix.S_IFMT)
				}
				got[e.Name] = typ
			}
		}
		unix.Close(fd)
		if s == p.Ref {
			want = got
			if len(want) != 2400 {
				t.Fatalf("kernel listed %d names, want 2400", len(want))
			}
			continue
		}
		if len(got) != len(want) {
			t.Errorf("%s: %d names, kernel %d", s.Name, len(got), len(want))
		}
		for name, typ := range want {
			if g, ok := got[name]; !ok {
				t.Errorf("%s: %s missing", s.Name, name)
			} else if !sameDirType(g, typ) {
				t.Errorf("%s: %s is %s, kernel %s", s.Name, name, g, typ)
			}
		}
	}
	p.Finish()
}

// sameDirType compares "d_type" or "d_type/lstat type" records: the d_types
// must be equal, and the lstat types where both sides took one (the calls
// that stat may fall on other entries when the two list in other orders).
func sameDirType(a, b string) bool {
	ad, as, _ := strings.Cut(a, "/")
	bd, bs, _ := strings.Cut(b, "/")
	return ad == bd && (as == "" || bs == "" || as == bs)
}
