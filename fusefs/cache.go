package fusefs

import "github.com/hanwen/go-fuse/v2/fuse"

// cacheOptions turns on the kernel caches FUSE offers without privilege
// that stay coherent for an overlay (issue 21, goal 5: rootless mounts,
// which have no passthrough, serve every request through the daemon).
//
// Symlink targets (FUSE_CACHE_SYMLINKS): the kernel keeps a symlink's
// target in the inode's page cache instead of sending READLINK at every
// path walk through it (an image's /bin -> usr/bin, /lib -> usr/lib). A
// FUSE inode's target never changes: ovl never rewrites a symlink, a
// copy-up keeps the target, and a new symlink at a name is a new object
// with a new FUSE inode (generations, node.gone).
func cacheOptions(mo *fuse.MountOptions) {
	mo.EnableSymlinkCaching = true
}
