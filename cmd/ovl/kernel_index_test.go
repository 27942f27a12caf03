package main

import (
	"os"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// TestKernelIndexHardLinks: with index=on, the names of a lower hard link
// stay one object across copy-up, in ovl as in the kernel: writing one name
// shows through the others, st_ino and st_nlink agree, unlinking a name
// that was never copied up lowers the count, and each side reads the
// other's upper (index entries, overlay.nlink) the same way.
//
// One difference is by design: a FUSE request on an inode does not say
// through which name it came, so where the kernel links the index entry
// up at the name used (chmod b), ovl changes the shared inode without
// linking b up. The uppers then differ in which names of the link exist
// and in the upper link count, never in what any name shows (the views
// and both interchanges are compared in full).
func TestKernelIndexHardLinks(t *testing.T) {
	opts := k.DefaultOptions()
	opts.Index, opts.UUID = "on", "on"
	ignore := append([]k.Difference{
		{Scope: k.ScopeUpper, Field: "exists", Types: []string{"file"}, Reason: "names of an indexed hard link are linked up by name in the kernel, by inode in ovl"},
		{Scope: k.ScopeUpper, Field: "nlink", Types: []string{"file"}, Reason: "follows from which names are linked up"},
	}, k.IntendedDifferences...)
	p := kcPairCfg(t, k.Config{Options: opts, Ignore: ignore}, k.Layers{Lowers: []k.Layer{{
		k.File("a", "lower data"), k.Hardlink("b", "a"), k.Dir("d"), k.Hardlink("d/c", "a"),
		k.File("solo", "one link"),
	}}})
	p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0, 0, 0},
		kcOp("lstat", "a"), kcOp("lstat", "b"),
		k.Op{Op: "write", Path: "a", Data: "NEW"}, // copy-up through the index
		kcOp("read", "b"), kcOp("read", "d/c"),    // the other names see it
		kcOp("lstat", "b"), kcOp("lstat", "d/c"),
	)
	p.OpsExpect(nil, []syscall.Errno{0, 0, 0, 0, 0},
		k.Op{Op: "chmod", Path: "b", Mode: 0o600}, // link-up, no data copy
		kcOp("unlink", "d/c"),                     // a name never linked up
		kcOp("lstat", "a"), kcOp("lstat", "b"),
		k.Op{Op: "link", Path: "b", Path2: "e"},
	)
	p.Ops(nil, kcOp("lstat", "e"), kcOp("read", "e"), kcOp("readdir", ""), kcOp("readdir", "d"))
	p.Finish()
}

// TestKernelIndexNlinkOpen: the link count of an indexed hard link is the
// overlay's (overlay.nlink) also while a name of it is open: go-fuse
// answers a GETATTR without a file handle through any open file of the
// inode, and that path once reported the upper inode's own count.
func TestKernelIndexNlinkOpen(t *testing.T) {
	opts := k.DefaultOptions()
	opts.Index, opts.UUID = "on", "on"
	ignore := append([]k.Difference{
		{Scope: k.ScopeUpper, Field: "exists", Types: []string{"file"}, Reason: "names of an indexed hard link are linked up by name in the kernel, by inode in ovl"},
		{Scope: k.ScopeUpper, Field: "nlink", Types: []string{"file"}, Reason: "follows from which names are linked up"},
	}, k.IntendedDifferences...)
	p := kcPairCfg(t, k.Config{Options: opts, Ignore: ignore}, k.Layers{Lowers: []k.Layer{{
		k.File("a", "lower data"), k.Hardlink("b", "a"), k.Dir("d"), k.Hardlink("d/c", "a"),
	}}})
	p.OpsExpect(nil, []syscall.Errno{0, 0}, kcOp("lstat", "b"), k.Op{Op: "write", Path: "a", Data: "NEW"})
	for _, s := range p.Sides() {
		f, err := os.Open(s.Path("b"))
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		// AT_STATX_FORCE_SYNC: the kernel asks the daemon, whatever it
		// has cached, once by name (no file handle) and once by fd.
		var byName, byFd unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, s.Path("d/c"), unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &byName); err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_STATX_FORCE_SYNC, unix.STATX_BASIC_STATS, &byFd); err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		f.Close()
		if byName.Nlink != 3 || byFd.Nlink != 3 {
			t.Errorf("%s: with b open, lstat d/c says %d links, fstat of b %d; want 3", s.Name, byName.Nlink, byFd.Nlink)
		}
	}
	p.Finish()
}
