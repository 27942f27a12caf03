package main

import (
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// TestCacheInvalCopyUp: the kernel keeps ovl's attributes for an hour
// (fusefs cacheTimeout), and a copy-up made by a request whose reply
// carries no attributes (an OPEN for writing, a SETXATTR) changes what a
// stat shows: a copied-up name of a lower hard link is a file of its own
// (st_nlink 1 with index=off). ovl drops the kernel's attributes of the
// object after such a copy-up (FUSE_NOTIFY_INVAL_INODE, afterCopyUp); the
// stats, made through the kernel's cache, match the kernel's overlayfs.
func TestCacheInvalCopyUp(t *testing.T) {
	testutil.RequireRoot(t)
	var lay k.Layers
	lay.Lowers = []k.Layer{{k.File("a", "data"), k.Hardlink("b", "a"), k.File("x", "data"), k.Hardlink("y", "x")}}
	stats := []k.Op{kcOp("lstat", "a"), kcOp("lstat", "b"), kcOp("lstat", "x"), kcOp("lstat", "y")}
	for _, index := range []string{"off", "on"} {
		t.Run("index="+index, func(t *testing.T) {
			opts := k.DefaultOptions()
			opts.Index = index
			p := kcPair(t, opts, lay)
			p.Ops(nil, stats...)
			p.Ops(nil, k.Op{Op: "open", Path: "a", Flags: unix.O_WRONLY},
				k.Op{Op: "setxattr", Path: "x", Name: "user.k", Data: "v"})
			p.Ops(nil, stats...)
			p.Unmount()
		})
	}
}
