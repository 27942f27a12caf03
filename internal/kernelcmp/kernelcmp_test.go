package kernelcmp

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ovl-project/ovl/internal/testutil"
	"golang.org/x/sys/unix"
)

// recorder is a testing.TB that records Errorf instead of failing, so the
// self-tests can check that a difference is reported.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.errs
	r.errs = nil
	return e
}

func (r *recorder) mustReport(t *testing.T, what string, substr ...string) {
	t.Helper()
	errs := r.take()
	if len(errs) == 0 {
		t.Errorf("%s: no difference reported", what)
		return
	}
	all := strings.Join(errs, "\n")
	for _, s := range substr {
		if !strings.Contains(all, s) {
			t.Errorf("%s: report lacks %q:\n%s", what, s, all)
		}
	}
}

func (r *recorder) mustBeClean(t *testing.T, what string) {
	t.Helper()
	if errs := r.take(); len(errs) > 0 {
		t.Errorf("%s: unexpected reports:\n%s", what, strings.Join(errs, "\n"))
	}
}

// richLayers uses every kind of entry Build knows.
func richLayers() Layers {
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	return Layers{
		Lowers: []Layer{
			{ // top
				File("fd", "file over dir"),
				Dir("df"),
				File("df/x", "x"),
				File("m/a/top", "top").Mode(0o4755).Owner(1, 2).Xattr("user.k", "v1"),
				Whiteout("m/gone"),
				OpaqueDir("op"),
				File("op/own", "own"),
				XWhiteout("xw/hidden"),
			},
			{ // middle
				Dir("fd"),
				File("fd/child", "c"),
				File("df", "file under dir"),
				File("m/a/mid", "mid"),
				File("m/gone", "should be hidden"),
				File("op/below", "hidden by opaque"),
				File("xw/hidden", "hidden by xwhiteout"),
				File("xw/visible", "visible"),
				Symlink("m/link", "../fd"),
				Hardlink("m/a/mid2", "m/a/mid"),
				FIFO("fifo"),
				Socket("sock"),
				CharDev("null", 1, 3),
				BlockDev("blk", 7, 200),
				SparseFile("sparse", 64<<20, Extent{0, big}, Extent{63 << 20, big}),
				Dir("sticky").Mode(0o1777),
				Dir("sgid").Mode(0o2775).Owner(0, 100),
			},
		},
		Upper: Layer{
			File("up", "upper file").Mode(0o600).Owner(1000, 1000),
			Whiteout("fifo"),
		},
	}
}

func selfPair(t *testing.T, opts Options) (*Pair, *recorder) {
	testutil.RequireRoot(t)
	r := &recorder{TB: t}
	p := NewPair(r, Config{Options: opts, Candidate: Kernel{}}, richLayers())
	return p, r
}

func TestBuildAndCopyPreserveEverything(t *testing.T) {
	testutil.RequireRoot(t)
	for _, ux := range []bool{false, true} {
		prefix := OverlayPrefix(ux)
		dir := t.TempDir()
		for i, l := range richLayers().Lowers {
			src := filepath.Join(dir, fmt.Sprint("src", i))
			if err := Build(src, prefix, l); err != nil {
				t.Fatal(err)
			}
			a, err := Snapshot(src, SnapOptions{Upper: true, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(dir, fmt.Sprint("dst", i))
			if err := copyTree(src, dst); err != nil {
				t.Fatal(err)
			}
			b, err := Snapshot(dst, SnapOptions{Upper: true, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			if ds := Compare(a, b, CompareOptions{Scope: ScopeUpper, Times: true, Ignore: []Difference{}}); len(ds) > 0 {
				t.Errorf("cp -a changed layer %d:\n%s", i, FormatDiffs("src", "copy", ds))
			}
			if i == 0 {
				n := a.Nodes["m/a/top"]
				if n == nil || n.Perm != 0o4755 || n.UID != 1 || n.GID != 2 || n.Xattrs["user.k"] != "v1" || n.Mtime != DefaultTime.UnixNano() {
					t.Errorf("m/a/top built wrong: %+v", n)
				}
				if a.Nodes["m/gone"].Type != "whiteout" {
					t.Errorf("whiteout built wrong: %+v", a.Nodes["m/gone"])
				}
				if a.Nodes["op"].Ovl["opaque"] != "y" || a.Nodes["xw"].Ovl["opaque"] != "x" || a.Nodes["xw/hidden"].Ovl["whiteout"] == "" {
					t.Errorf("opaque/xwhiteout built wrong: %+v %+v %+v", a.Nodes["op"], a.Nodes["xw"], a.Nodes["xw/hidden"])
				}
			}
			if i == 1 {
				if n := b.Nodes["sparse"]; n == nil || n.Blocks*512 > 4<<20 || n.Size != 64<<20 {
					t.Errorf("sparse file not sparse after copy: %+v", n)
				}
				if n := b.Nodes["m/a/mid"]; n == nil || n.Nlink != 2 {
					t.Errorf("hard link lost: %+v", n)
				}
			}
		}
	}
}

func copyTree(src, dst string) error {
	out, err := exec.Command("cp", "-a", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func TestKernelVsKernelEqual(t *testing.T) {
	for _, ux := range []bool{false, true} {
		t.Run(fmt.Sprint("userxattr=", ux), func(t *testing.T) {
			opts := DefaultOptions()
			opts.UserXattr = ux
			p, r := selfPair(t, opts)
			ref, _ := p.Views("initial")
			r.mustBeClean(t, "initial views")
			// The view is what the layers say.
			for path, typ := range map[string]string{
				"fd": "file", "df": "dir", "df/x": "file", "m/a/top": "file", "m/a/mid": "file",
				"op/own": "file", "xw/visible": "file", "sock": "socket", "null": "char", "blk": "block",
			} {
				if n := ref.Nodes[path]; n == nil || n.Type != typ {
					t.Errorf("%s: got %+v, want a %s", path, n, typ)
				}
			}
			for _, path := range []string{"fd/child", "m/gone", "op/below", "xw/hidden", "fifo"} {
				if ref.Nodes[path] != nil {
					t.Errorf("%s visible", path)
				}
			}
			p.DoExpect("rmdir non-empty", syscall.ENOTEMPTY, func(root string) error { return unix.Rmdir(root + "/m") })
			p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0, syscall.EEXIST},
				Op{Op: "write", Path: "m/a/mid", Data: "X", Off: 1},
				Op{Op: "chmod", Path: "df/x", Mode: 0o600},
				Op{Op: "unlink", Path: "m/a/top"},
				Op{Op: "mkdir", Path: "m/gone", Mode: 0o755},
				Op{Op: "setxattr", Path: "up", Name: "user.a", Data: "b"},
				Op{Op: "mkdir", Path: "m/gone", Mode: 0o755},
			)
			res := p.Ops(&Cred{UID: 1000, GID: 1000}, Op{Op: "read", Path: "up"}, Op{Op: "create", Path: "m/new", Mode: 0o644})
			if res[0].Errno != 0 || res[1].Errno != syscall.EACCES {
				t.Errorf("as uid 1000: %v", res)
			}
			r.mustBeClean(t, "ops")
			p.Finish()
			r.mustBeClean(t, "finish")
		})
	}
}

func TestMutationsAreReported(t *testing.T) {
	p, r := selfPair(t, DefaultOptions())
	ref, cand := p.Views("initial")
	r.mustBeClean(t, "initial")

	// Field by field on snapshot copies: each must be reported.
	mutations := map[string]func(n *Node){
		"type":           func(n *Node) { n.Type = "dir" },
		"perm":           func(n *Node) { n.Perm ^= 0o4000 },
		"uid":            func(n *Node) { n.UID++ },
		"gid":            func(n *Node) { n.GID++ },
		"size":           func(n *Node) { n.Size++ },
		"nlink":          func(n *Node) { n.Nlink++ },
		"hash":           func(n *Node) { n.Hash = "x" },
		"xattr:user.k":   func(n *Node) { n.Xattrs["user.k"] = "other" },
		"xattr:user.new": func(n *Node) { n.Xattrs["user.new"] = "" },
	}
	for field, mut := range mutations {
		c := cloneTree(cand)
		mut(c.Nodes["m/a/top"])
		ds := Compare(ref, c, CompareOptions{Scope: ScopeMerged})
		if len(ds) != 1 || ds[0].Field != field || ds[0].Path != "m/a/top" {
			t.Errorf("mutating %s: got %v", field, ds)
		}
	}
	c := cloneTree(cand)
	delete(c.Nodes, "df/x")
	if ds := Compare(ref, c, CompareOptions{Scope: ScopeMerged}); len(ds) != 1 || ds[0].Field != "exists" {
		t.Errorf("missing node: %v", ds)
	}
	c = cloneTree(cand)
	c.Nodes["null"].Rdev = unix.Mkdev(1, 5)
	c.Nodes["m/link"].Target = "elsewhere"
	if ds := Compare(ref, c, CompareOptions{Scope: ScopeMerged}); len(ds) != 2 {
		t.Errorf("rdev+target: %v", ds)
	}
	// Which names share an inode (a lower hard link) is compared, though
	// inode numbers are not: the link split, and two files made one.
	c = cloneTree(cand)
	c.Nodes["m/a/mid2"].Ino = 1<<62 + 1
	if ds := Compare(cand, c, CompareOptions{Scope: ScopeMerged}); len(ds) != 2 || ds[0].Field != "links" ||
		ds[0].Path != "m/a/mid" || ds[0].A != "m/a/mid2" || ds[0].B != "<alone>" || ds[1].Path != "m/a/mid2" {
		t.Errorf("split hard link: %v", ds)
	}
	c = cloneTree(cand)
	c.Nodes["df/x"].Dev, c.Nodes["df/x"].Ino = c.Nodes["fd"].Dev, c.Nodes["fd"].Ino
	if ds := Compare(cand, c, CompareOptions{Scope: ScopeMerged}); len(ds) != 2 || ds[0].Field != "links" ||
		ds[0].Path != "df/x" || ds[0].B != "fd" || ds[1].Path != "fd" {
		t.Errorf("two files with one inode: %v", ds)
	}
	if ds := Compare(cand, c, CompareOptions{Scope: ScopeUpper}); len(ds) != 0 {
		t.Errorf("links compared in the upper: %v", ds)
	}
	c = cloneTree(cand)
	for _, n := range c.Nodes {
		n.Ino += 1 << 62
	}
	if ds := Compare(cand, c, CompareOptions{Scope: ScopeMerged}); len(ds) != 0 {
		t.Errorf("other inode numbers, the same links: %v", ds)
	}

	// Intended differences are dropped, and only they.
	c = cloneTree(ref)
	c.Nodes["m/a/top"].Ino = 1<<62 + 1 // shared with no other name
	c.Nodes["df"].Size++
	if ds := Compare(ref, c, CompareOptions{Scope: ScopeMerged, Ino: true}); len(ds) != 1 || ds[0].Field != "ino" {
		t.Errorf("ino (asked for) and dir size (intended): %v", ds)
	}

	// Live: change only the candidate, through its mount.
	if err := os.WriteFile(p.Cand.Path("df/x"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Views("after one-sided write")
	r.mustReport(t, "one-sided write", "df/x", "hash")
	if err := os.Remove(p.Ref.Path("up")); err != nil {
		t.Fatal(err)
	}
	p.Views("after one-sided unlink")
	r.mustReport(t, "one-sided unlink", "up", "exists")

	// Errno mismatch.
	p.Do("different errnos", func(root string) error {
		if root == p.Cand.Layout.Mnt {
			return syscall.EPERM
		}
		return nil
	})
	r.mustReport(t, "errno", "EPERM")
	p.DoExpect("wrong on both", syscall.EXDEV, func(root string) error { return nil })
	r.mustReport(t, "absolute", "EXDEV")
	p.Ops(nil, Op{Op: "read", Path: "df/x"})
	r.mustReport(t, "op output", "changed")

	// Upper layers: an extra whiteout, a missing opaque marker, a
	// redirect; a difference in origin is intended.
	p.Unmount()
	must(t, unix.Mknod(p.Cand.UpperPath("extra"), unix.S_IFCHR, 0))
	must(t, unix.Mkdir(p.Ref.UpperPath("od"), 0o755))
	must(t, unix.Mkdir(p.Cand.UpperPath("od"), 0o755))
	must(t, unix.Lsetxattr(p.Ref.UpperPath("od"), "trusted.overlay.opaque", []byte("y"), 0))
	must(t, unix.Lsetxattr(p.Ref.UpperPath("od"), "trusted.overlay.origin", []byte("abc"), 0))
	must(t, unix.Lsetxattr(p.Cand.UpperPath("od"), "trusted.overlay.redirect", []byte("/x"), 0))
	p.Uppers("mutated uppers")
	r.mustReport(t, "uppers", "extra", "ovl:opaque", "ovl:redirect")
	p.Uppers("again")
	errs := strings.Join(r.take(), "\n")
	if strings.Contains(errs, "origin") {
		t.Errorf("origin difference should be intended:\n%s", errs)
	}

	// Interchange: a view that does not match what the reader sees.
	must(t, os.Remove(p.Cand.UpperPath("extra")))
	must(t, os.Remove(p.Ref.UpperPath("od")))
	must(t, os.Remove(p.Cand.UpperPath("od")))
	refView, candView := cloneTree(ref), cloneTree(cand)
	candView.Nodes["df"].Perm = 0o700
	p.Interchange(refView, candView)
	r.mustReport(t, "interchange", "interchange", "df", "perm")
}

// TestOpsAsOtherUser checks that child ops really run with the credentials.
func TestOpsAsOtherUser(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	must(t, os.Chmod(filepath.Dir(dir), 0o755))
	must(t, os.Chmod(dir, 0o777))
	res, err := RunOps(dir, &Cred{UID: 1234, GID: 4321}, []Op{
		{Op: "umask", Mode: 0o077},
		{Op: "create", Path: "f", Mode: 0o666},
		{Op: "lstat", Path: "f"},
		{Op: "chown", Path: "f", UID: 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res[2].Out != "file 0600 1234:4321 size=0 nlink=1" || res[3].Errno != syscall.EPERM {
		t.Errorf("got %v", res)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func cloneTree(t *Tree) *Tree {
	c := &Tree{Nodes: map[string]*Node{}}
	for p, n := range t.Nodes {
		m := *n
		m.Xattrs = map[string]string{}
		for k, v := range n.Xattrs {
			m.Xattrs[k] = v
		}
		c.Nodes[p] = &m
	}
	return c
}
