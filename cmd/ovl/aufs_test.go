package main

// AUFS whiteouts in layers (issue 18, item 1): ".wh.NAME" files and
// ".wh..wh..opq" markers, as containers-storage applies image layers for a
// mount program, and the opaque xattrs of other implementations. ovl is
// compared with fuse-overlayfs on the same layers, and with the kernel's
// overlayfs on the kernel's form of them (kernelcmp.ToKernelForm).

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"golang.org/x/sys/unix"
)

// aufsLayers covers each AUFS marker in a middle layer, the bottom one and
// the upper.
func aufsLayers() k.Layers {
	notEmpty := k.AUFSWhiteout("d/a")
	notEmpty.Data = "a whiteout file need not be empty"
	return k.Layers{
		Lowers: []k.Layer{{
			k.AUFSWhiteout("f"),   // a file
			k.AUFSWhiteout("hd"),  // a directory
			k.AUFSWhiteout("sym"), // a symlink
			k.AUFSOpaqueDir("od", k.AUFSFile), k.File("od/new", "new"),
			k.AUFSOpaqueDir("fo", k.AUFSFuseXattr), k.File("fo/new", "new"),
			k.Dir("xo/.wh..wh..opq"), k.File("xo/new", "new"), // a marker of any type
			k.Dir("d"), notEmpty,
			k.AUFSWhiteout("d/b"), k.File("d/b", "beside its whiteout: hidden too"),
			k.File("d/m", "m"),
		}, {
			k.File("f", "f"), k.File("hd/x", "x"), k.Symlink("sym", "f"),
			k.File("od/old", "old"), k.File("fo/old", "old"), k.File("xo/old", "old"),
			k.File("d/a", "a"), k.File("d/b", "b"), k.File("d/c", "c"), k.File("d/g", "g"),
			k.File("rr", "rr"), k.File("mid/m1", "m1"),
			k.File("ren/r1", "r1"), k.File("ren/r2", "r2"),
			k.File("rd/x", "x"), k.File("rd/sub/y", "y"),
			k.File(".wh..wh..opq", "an AUFS name in the bottom layer: never shown"),
		}},
		Upper: k.Layer{
			k.AUFSWhiteout("rr"),
			k.Dir("d"), k.AUFSWhiteout("d/c"),
			k.Dir("mid"), k.AUFSWhiteout("mid/m1"), // lists empty, holds a marker
			k.Dir("ren"), k.AUFSWhiteout("ren/r1"),
			k.AUFSOpaqueDir("rd", k.AUFSFile), k.File("rd/z", "z"),
		},
	}
}

// aufsView is what the merged view of aufsLayers shows.
var aufsView = map[string]string{
	"od/new": "file:new", "fo/new": "file:new", "xo/new": "file:new",
	"d/m": "file:m", "d/g": "file:g", "mid": "dir", "ren/r2": "file:r2", "rd/z": "file:z",
}

// aufsHidden are the names aufsLayers hides.
var aufsHidden = []string{"f", "hd", "hd/x", "sym", "od/old", "fo/old", "xo/old", "d/a", "d/b", "d/c", "rr",
	"mid/m1", "ren/r1", "rd/x", "rd/sub"}

// aufsOps recreate and rename onto hidden names and remove directories
// that hold markers; both sides must answer alike.
func aufsOps() ([]k.Op, []syscall.Errno) {
	ops := []k.Op{
		{Op: "write", Path: "rr", Data: "new rr", Flags: unix.O_CREAT}, // hidden by ".wh.rr" in the upper
		{Op: "mkdir", Path: "d/c", Mode: 0o755},                        // hidden by ".wh.c" in the upper
		{Op: "create", Path: "d/c/in", Mode: 0o644},
		{Op: "rename", Path: "d/g", Path2: "d/a"},       // onto a name hidden in a lower
		{Op: "rename", Path: "ren/r2", Path2: "ren/r1"}, // onto a name hidden in the upper
		{Op: "symlink", Path: "sym", Data: "d/m"},       // a symlink again
		{Op: "link", Path: "d/m", Path2: "hd"},          // a hard link onto a hidden directory's name
		{Op: "mkdir", Path: "f", Mode: 0o700},           // a directory where a file was
		{Op: "rmdir", Path: "mid"},                      // shows empty, holds a marker
		{Op: "rmrf", Path: "rd"},                        // opaque by a marker in the upper
		{Op: "mkdir", Path: "rd", Mode: 0o755},
		{Op: "readdir", Path: ""}, {Op: "readdir", Path: "d"}, {Op: "readdir", Path: "ren"},
		{Op: "readdir", Path: "od"}, {Op: "readdir", Path: "rd"}, {Op: "readdir", Path: "d/c"},
		{Op: "read", Path: "rr"}, {Op: "read", Path: "ren/r1"}, {Op: "read", Path: "d/a"}, {Op: "readlink", Path: "sym"},
		{Op: "lstat", Path: "ren/r2"}, {Op: "lstat", Path: "d/g"}, {Op: "lstat", Path: "rd/z"}, {Op: "lstat", Path: "mid"},
	}
	want := make([]syscall.Errno, len(ops))
	for i, op := range ops {
		if op.Op == "lstat" {
			want[i] = syscall.ENOENT
		}
	}
	return ops, want
}

// aufsNoMarkers fails on any AUFS name in a view.
func aufsNoMarkers(t *testing.T, label string, view *k.Tree) {
	t.Helper()
	for p := range view.Nodes {
		for _, c := range strings.Split(p, "/") {
			if strings.HasPrefix(c, ".wh.") {
				t.Errorf("%s: the view shows %s", label, p)
			}
		}
	}
}

// TestAUFSKernel: ovl over AUFS layers against the kernel over their
// kernel form, in both xattr modes; Finish compares the upper layers (ovl's
// in the kernel's form) and has each side read the other's.
func TestAUFSKernel(t *testing.T) {
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, aufsLayers())
		view, _ := p.Views("initial")
		kcExpectView(t, p, view, aufsView, aufsHidden...)
		aufsNoMarkers(t, "initial", view)
		ops, want := aufsOps()
		p.OpsExpect(nil, want, ops...)
		// The upper says what the view shows: the AUFS whiteouts of names
		// made again are gone (a kernel or fuse-overlayfs mount of it
		// would hide them otherwise).
		for _, rel := range []string{".wh.rr", "d/.wh.c", "ren/.wh.r1"} {
			if _, err := os.Lstat(p.Cand.UpperPath(rel)); !os.IsNotExist(err) {
				t.Errorf("ovl's upper still holds %s (%v)", rel, err)
			}
		}
		kcCheckUpper(p, "d/c", "dir", kcOpaque)
		p.Remount()
		view, _ = p.Views("after ops and remount")
		aufsNoMarkers(t, "after ops", view)
		p.Finish()
	})
}

// TestAUFSFuseOverlayfs: ovl and fuse-overlayfs over the same AUFS layers
// show the same view before and after the same ops; then each mounts the
// other's upper (the storage switched between the two programs, both ways)
// and shows what its writer showed. fuse-overlayfs writes AUFS whiteouts in
// its upper here, as where it may not mknod.
func TestAUFSFuseOverlayfs(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/usr/bin/fuse-overlayfs"); err != nil {
		testutil.Skip(t, "fuse-overlayfs is not installed: %v", err)
	}
	p := k.NewPair(t, k.Config{Options: k.DefaultOptions(), Reference: k.FuseOverlayfs{NoMknod: true},
		Candidate: k.Ovl{Bin: testutil.Binary(t)}}, aufsLayers())
	view, _ := p.Views("initial")
	kcExpectView(t, p, view, aufsView, aufsHidden...)
	aufsNoMarkers(t, "initial", view)
	ops, want := aufsOps()
	// Removals that leave AUFS whiteouts in fuse-overlayfs's upper.
	ops = append(ops, k.Op{Op: "unlink", Path: "od/new"}, k.Op{Op: "rmrf", Path: "fo"}, k.Op{Op: "unlink", Path: "d/m"},
		k.Op{Op: "rename", Path: "xo/new", Path2: "moved"}, k.Op{Op: "readdir", Path: "xo"})
	want = append(want, 0, 0, 0, 0, 0)
	p.OpsExpect(nil, want, ops...)
	ref, cand := p.Views("after ops")
	aufsNoMarkers(t, "after ops", cand)
	if entries, err := filepath.Glob(filepath.Join(p.Ref.Layout.Upper, ".wh.*")); err != nil || len(entries) == 0 {
		t.Errorf("fuse-overlayfs wrote no AUFS whiteout in its upper (%v): the switch below checks nothing of them", err)
	}
	p.Unmount()
	p.Interchange(ref, cand)
}

// TestAUFSNamesRefused: a ".wh." name can be neither looked up nor made
// through the mount (EINVAL), readdir never shows one, and the name length
// limit stays 255 (fuse-overlayfs reports 251).
func TestAUFSNamesRefused(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), aufsLayers())
	mnt := p.Cand.Layout.Mnt
	for _, op := range []k.Op{
		{Op: "lstat", Path: ".wh.f"}, {Op: "lstat", Path: "d/.wh.a"}, {Op: "lstat", Path: "od/.wh..wh..opq"},
		{Op: "lstat", Path: ".wh.nothing"}, {Op: "read", Path: ".wh.rr"},
		{Op: "create", Path: ".wh.x", Mode: 0o644}, {Op: "create", Path: "d/.wh..wh..opq", Mode: 0o644},
		{Op: "open", Path: ".wh.y", Flags: unix.O_WRONLY | unix.O_CREAT, Mode: 0o644},
		{Op: "mkdir", Path: ".wh.x", Mode: 0o755}, {Op: "mknod", Path: ".wh.x", Mode: unix.S_IFIFO | 0o644},
		{Op: "symlink", Path: ".wh.x", Data: "d/m"}, {Op: "link", Path: "d/m", Path2: "d/.wh.m"},
		{Op: "rename", Path: "d/g", Path2: "d/.wh.g"}, {Op: "rename", Path: "d/.wh.b", Path2: "d/b2"},
		{Op: "unlink", Path: ".wh.rr"}, {Op: "rmdir", Path: ".wh.hd"},
	} {
		r := op.Apply(mnt)
		if r.Errno != syscall.EINVAL {
			t.Errorf("ovl: %s: %s, want EINVAL", op, k.ErrnoName(r.Errno))
		}
	}
	view, err := k.Snapshot(mnt, k.SnapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aufsNoMarkers(t, "view", view)
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Namelen != 255 {
		t.Errorf("f_namelen %d, want 255", st.Namelen)
	}
	// Nothing was made in the upper.
	if m, _ := filepath.Glob(filepath.Join(p.Cand.Layout.Upper, ".wh.[xy]")); len(m) > 0 {
		t.Errorf("the upper holds %v", m)
	}
}
