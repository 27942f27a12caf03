package main

import (
	"fmt"
	"path"
	"path/filepath"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// Readdir's d_ino must be lstat's st_ino in ovl (ls -i, find -inum and
// tar's hard-link detection take one for the other), after any change and
// however the entries were looked up before. The kernel's overlayfs does
// not always manage it; its mismatches are logged, never required.

// kcDIno lists every directory of each side's view (after dropping the
// kernel's caches, so that listings and lookups start cold) and checks
// that each entry's d_ino equals its lstat st_ino, and that "." and ".."
// give the numbers of the directory and its parent: required of ovl,
// logged for the kernel.
func kcDIno(t *testing.T, p *k.Pair, label string) {
	t.Helper()
	for _, s := range p.Sides() {
		_, kernel := s.M.(k.Kernel)
		for _, pr := range dinoProblems(s.Layout.Mnt) {
			if kernel {
				t.Logf("%s: kernel (not required): %s", label, pr)
			} else {
				t.Errorf("%s: %s: %s", label, s.Name, pr)
			}
		}
	}
}

// dinoProblems walks the tree at root, listing each directory before its
// entries are stat'ed, and returns each disagreement of d_ino and st_ino.
func dinoProblems(root string) []string {
	var out []string
	var walk func(rel string)
	walk = func(rel string) {
		dir := filepath.Join(root, rel)
		ents, err := k.ReadDir(dir)
		if err != nil {
			out = append(out, fmt.Sprintf("/%s: readdir: %v", rel, err))
			return
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name)
			if e.Name == ".." && rel == "" {
				continue // the mount's parent: another filesystem
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				out = append(out, fmt.Sprintf("/%s: lstat: %v", path.Join(rel, e.Name), err))
				continue
			}
			if st.Ino != e.Ino {
				out = append(out, fmt.Sprintf("/%s: d_ino %d but lstat says st_ino %d", path.Join(rel, e.Name), e.Ino, st.Ino))
			}
			if e.Type == unix.DT_DIR && e.Name != "." && e.Name != ".." {
				walk(path.Join(rel, e.Name))
			}
		}
	}
	walk("")
	return out
}

// TestKernelDInoRenamedMergedDir: a merged directory renamed within its
// merged parent (a redirect; the parent is not marked impure) has its
// lower number, in the listing too.
func TestKernelDInoRenamedMergedDir(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), k.Layers{
		Lowers: []k.Layer{{k.File("a/b/c", "c")}},
		Upper:  k.Layer{k.Symlink("a/b/b", "../f")},
	})
	p.Ops(nil, k.Op{Op: "rename", Path: "a", Path2: "d"})
	kcDIno(t, p, "after rename")
	dropCaches(t)
	kcDIno(t, p, "after drop_caches")
	p.Finish()
}

// TestKernelDInoKeptNumberForgotten: a copied-up object that keeps its
// lower number only while its node lives (a symlink copied up with
// userxattr: user.* xattrs cannot go on a symlink, so it has no origin)
// has its upper number once the kernel forgot it; a listing of its
// directory that the kernel kept meanwhile (the directory held open) must
// not give the old number.
func TestKernelDInoKeptNumberForgotten(t *testing.T) {
	opts := k.DefaultOptions()
	opts.UserXattr = true
	p := kcPair(t, opts, k.Layers{
		Lowers: []k.Layer{{}, {k.Symlink("a/h", "../f"), k.File("a/f", "f")}},
	})
	p.Ops(nil, k.Op{Op: "utimes", Path: "a/h", Off: 978307200000000000})
	var fds []int
	for _, s := range p.Sides() {
		// a stays known to the kernel, with its listing.
		fd, err := unix.Open(s.Path("a"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	kcDIno(t, p, "after copy-up")
	dropCaches(t)
	kcDIno(t, p, "after drop_caches")
	for _, fd := range fds {
		unix.Close(fd)
	}
	p.Finish()
}

// TestKernelDInoDots: "." and ".." of lower, upper, merged, copied-up,
// renamed and moved directories, over two lowers, give the numbers of the
// directory and its parent (kcDIno), before and after drop_caches.
func TestKernelDInoDots(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), k.Layers{
		Lowers: []k.Layer{
			{k.File("m/f", "1"), k.Dir("m/l1"), k.File("top/x", "x")},
			{k.File("m/g", "2"), k.Dir("m/l2/d"), k.Dir("m/both/a"), k.Dir("low2/s/t")},
		},
		Upper: k.Layer{k.Dir("m/u/v"), k.Dir("m/both/b"), k.File("m/h", "3")},
	})
	p.Ops(nil,
		k.Op{Op: "chmod", Path: "m/l1", Mode: 0o700},       // copy-up of a lower dir
		k.Op{Op: "rename", Path: "m/l2", Path2: "m/r2"},    // a redirect, same parent
		k.Op{Op: "rename", Path: "low2/s", Path2: "m/u/s"}, // a redirect into an upper dir
		k.Op{Op: "mkdir", Path: "top/new", Mode: 0o755},
	)
	kcDIno(t, p, "after changes")
	dropCaches(t)
	kcDIno(t, p, "after drop_caches")
	p.Finish()
}
