package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// TestCrashENOSPC (issue 19): the upper on a small tmpfs. A copy-up that
// does not fit fails with ENOSPC, leaves the file as it was in the view,
// nothing of it in the upper and nothing in work/; a write that fills the
// upper fails with ENOSPC; once space is freed through the mount, the same
// copy-up succeeds.
func TestCrashENOSPC(t *testing.T) {
	testutil.RequireRoot(t)
	r := rand.New(rand.NewPCG(1, 2))
	big := selfChecked(r, 8<<20)
	l, lowerBefore := smallUpperMount(t, k.Layer{k.File("big", string(big)), k.File("small", "s\n")}, "size=12m")
	lowerDir := l.Lowers[0]
	m := func(p string) string { return filepath.Join(l.Mnt, p) }

	// 6 MiB taken: the 8 MiB copy-up does not fit.
	if err := os.WriteFile(m("filler"), make([]byte, 6<<20), 0o644); err != nil {
		t.Fatalf("filler: %v", err)
	}
	before := crashView(t, "before", l.Mnt)
	appendBig := func() error {
		f, err := os.OpenFile(m("big"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		if _, err := f.Write([]byte("+")); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if err := appendBig(); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("copy-up of 8 MiB into 6 MiB free: %v, want ENOSPC", err)
	}
	crashSameView(t, t.Errorf, "the view after the failed copy-up", before, crashView(t, "after", l.Mnt))
	if b, err := os.ReadFile(m("big")); err != nil || !bytes.Equal(b, big) {
		t.Errorf("big after the failed copy-up: %d bytes (%v), want the lower's %d", len(b), err, len(big))
	}
	if _, err := os.Lstat(filepath.Join(l.Upper, "big")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the upper holds big after the failed copy-up (%v)", err)
	}
	if names, err := crashWorkEntries(l.Work); err != nil || len(names) > 0 {
		t.Errorf("work/ after the failed copy-up holds %v (%v), want nothing", names, err)
	}

	// A write that fills the upper.
	f, err := os.OpenFile(m("fill2"), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	var werr error
	for i := 0; i < 64 && werr == nil; i++ {
		_, werr = f.Write(chunk)
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if !errors.Is(werr, unix.ENOSPC) {
		t.Errorf("writing 64 MiB into a 12 MiB upper: %v, want ENOSPC", werr)
	}

	// Space freed: the same copy-up succeeds.
	for _, p := range []string{"filler", "fill2"} {
		if err := os.Remove(m(p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := appendBig(); err != nil {
		t.Fatalf("copy-up once space is free: %v", err)
	}
	if b, err := os.ReadFile(m("big")); err != nil || !bytes.Equal(b, append(big, '+')) {
		t.Errorf("big after the copy-up: %d bytes (%v), want %d", len(b), err, len(big)+1)
	}
	if names, err := crashWorkEntries(l.Work); err != nil || len(names) > 0 {
		t.Errorf("work/ after the copy-up holds %v (%v), want nothing", names, err)
	}
	crashCheckLower(t, "ENOSPC", lowerDir, lowerBefore)
}

// TestCrashFaultEIO (issue 19): an I/O error of the upper (injected with
// OVL_FAULT) in the data copy or the rename of a copy-up, or in the rename
// of a mv, fails the call with EIO and leaves the view, the lower layer and
// work/ as they were; the mount goes on working.
func TestCrashFaultEIO(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	cases := []struct {
		fault string
		op    func(root string) error
	}{
		{"copyup.data:EIO", func(root string) error {
			return os.WriteFile(filepath.Join(root, "f"), []byte("new"), 0)
		}},
		{"copyup.rename:EIO", func(root string) error {
			return os.WriteFile(filepath.Join(root, "d/sub/c"), []byte("new"), 0)
		}},
		{"rename.whiteout:EIO", func(root string) error {
			return unix.Rename(filepath.Join(root, "d/a"), filepath.Join(root, "e/a2"))
		}},
	}
	for _, c := range cases {
		t.Run(c.fault, func(t *testing.T) {
			base := t.TempDir()
			lowerDir := filepath.Join(base, "l")
			if err := k.Build(lowerDir, k.OverlayPrefix(false), crashLower()); err != nil {
				t.Fatal(err)
			}
			lowerBefore := crashLowerSums(t, lowerDir)
			l := k.Layout{Lowers: []string{lowerDir}, Upper: base + "/u", Work: base + "/w", Mnt: base + "/m"}
			for _, p := range []string{l.Upper, l.Work, l.Mnt} {
				if err := os.MkdirAll(p, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			cliCleanupMount(t, l.Mnt)
			if err := crashMount(bin, l, k.DefaultOptions(), []string{"OVL_FAULT=" + c.fault}); err != nil {
				t.Fatal(err)
			}
			before := crashView(t, "before", l.Mnt)
			if err := c.op(l.Mnt); !errors.Is(err, unix.EIO) {
				t.Errorf("%v, want EIO", err)
			}
			crashSameView(t, t.Errorf, "the view after the failure", before, crashView(t, "after", l.Mnt))
			if names, err := crashWorkEntries(l.Work); err != nil || len(names) > 0 {
				t.Errorf("work/ after the failure holds %v (%v), want nothing", names, err)
			}
			// Still usable: a change that needs no failing step works.
			if err := os.WriteFile(filepath.Join(l.Mnt, "new"), []byte("n"), 0o644); err != nil {
				t.Errorf("create after the failure: %v", err)
			}
			if err := (k.Ovl{Bin: bin}).Unmount(l.Mnt); err != nil {
				t.Fatal(err)
			}
			crashCheckLower(t, c.fault, lowerDir, lowerBefore)
		})
	}
}

// TestCrashENOSPCInodes (issue 19): the upper on a tmpfs out of inodes. A
// remove that needs a whiteout, and a copy-up, fail with ENOSPC and leave
// the view and work/ as they were; once inodes are freed both work, and a
// whiteout link that failed for want of space (tmpfs counts links as
// inodes) does not stop later whiteouts from sharing one inode.
func TestCrashENOSPCInodes(t *testing.T) {
	testutil.RequireRoot(t)
	l, lowerBefore := smallUpperMount(t, crashLower(), "size=64m,nr_inodes=64")
	lowerDir := l.Lowers[0]
	m := func(p string) string { return filepath.Join(l.Mnt, p) }
	for _, d := range []string{"d", "e"} { // copied up: only the leaves need inodes below
		if err := os.Chmod(m(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var fills []string
	for i := 0; i < 100; i++ {
		p := m(fmt.Sprintf("fill%02d", i))
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("filling the upper's inodes: %v, want ENOSPC at last", err)
			}
			break
		}
		fills = append(fills, p)
	}
	free := func(n int) {
		t.Helper()
		for ; n > 0; n-- {
			if err := os.Remove(fills[len(fills)-1]); err != nil {
				t.Fatal(err)
			}
			fills = fills[:len(fills)-1]
		}
	}
	before := crashView(t, "before", l.Mnt)
	if err := os.Remove(m("d/a")); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("rm of a lower file with no inode left: %v, want ENOSPC", err)
	}
	if err := os.WriteFile(m("e/x"), []byte("new"), 0); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("copy-up with no inode left: %v, want ENOSPC", err)
	}
	crashSameView(t, t.Errorf, "the view after the failures", before, crashView(t, "after", l.Mnt))
	if names, err := crashWorkEntries(l.Work); err != nil || len(names) > 0 {
		t.Errorf("work/ after the failures holds %v (%v), want nothing", names, err)
	}
	// One inode: the whiteout is made, its link fails.
	free(1)
	if err := os.Remove(m("d/a")); err != nil {
		t.Errorf("rm with one inode free: %v", err)
	}
	free(4)
	for _, p := range []string{"d/b", "f"} {
		if err := os.Remove(m(p)); err != nil {
			t.Errorf("rm once inodes are free: %v", err)
		}
	}
	var st1, st2 unix.Stat_t
	if err := unix.Lstat(filepath.Join(l.Upper, "d/b"), &st1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(l.Upper, "f"), &st2); err != nil {
		t.Fatal(err)
	}
	if st1.Ino != st2.Ino {
		t.Errorf("the whiteouts made once space was free do not share an inode (%d, %d): an ENOSPC stopped sharing for good", st1.Ino, st2.Ino)
	}
	if err := os.WriteFile(m("e/x"), []byte("new"), 0); err != nil {
		t.Errorf("copy-up once inodes are free: %v", err)
	}
	crashCheckLower(t, "ENOSPC inodes", lowerDir, lowerBefore)
}

// smallUpperMount mounts ovl (default options) over a lower built from
// lower, with its upper and workdir on a tmpfs of tmpfsOpts (a small one,
// to fill); it returns the layout and the lower's checksums. The mount
// and the tmpfs go with the test.
func smallUpperMount(t *testing.T, lower k.Layer, tmpfsOpts string) (k.Layout, map[string]string) {
	t.Helper()
	bin := testutil.Binary(t)
	base := t.TempDir()
	lowerDir := filepath.Join(base, "l")
	if err := k.Build(lowerDir, k.OverlayPrefix(false), lower); err != nil {
		t.Fatal(err)
	}
	lowerBefore := crashLowerSums(t, lowerDir)
	fsDir := filepath.Join(base, "fs")
	if err := os.Mkdir(fsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", fsDir, "tmpfs", 0, tmpfsOpts); err != nil {
		testutil.Skip(t, "mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(fsDir, unix.MNT_DETACH) })
	l := k.Layout{Lowers: []string{lowerDir}, Upper: fsDir + "/u", Work: fsDir + "/w", Mnt: base + "/m"}
	for _, p := range []string{l.Upper, l.Work, l.Mnt} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cliCleanupMount(t, l.Mnt)
	if err := crashMount(bin, l, k.DefaultOptions(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { (k.Ovl{Bin: bin}).Unmount(l.Mnt) })
	return l, lowerBefore
}
