package format

import (
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/mountinfo"
)

// DirID names a directory by its device and inode number, so that two
// paths to one directory (through a symlink, a bind mount, a detached
// clone) compare equal, as the kernel compares inodes.
type DirID struct{ Dev, Ino uint64 }

func (id DirID) String() string { return fmt.Sprintf("%d:%d", id.Dev, id.Ino) }

// IDOf returns the identity of what fd refers to.
func IDOf(fd int) (DirID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return DirID{}, err
	}
	return DirID{st.Dev, st.Ino}, nil
}

// StatID returns the identity of st.
func StatID(st *unix.Stat_t) DirID { return DirID{st.Dev, st.Ino} }

// Ancestry resolves path (symlinks followed, as the kernel's kern_path with
// LOOKUP_FOLLOW) to a directory and returns its identity and those of its
// ancestors in its own filesystem, nearest first, up to the filesystem's
// root: the dentries the kernel's ovl_check_layer walks with dget_parent.
//
// The walk never follows ".." out of a mount into the filesystem it is
// mounted on (the kernel's dentry parents stay in one filesystem). Above
// the root of a bind mount, whose own parents are not reachable through it,
// it continues in another mount of the same filesystem whose root is
// higher, found in /proc/self/mountinfo; where no such mount is visible,
// the ancestry ends at the bind mount's root. Errors are those of opening
// path (ENOENT, ENOTDIR, EACCES, ...).
func Ancestry(path string) (self DirID, ancestors []DirID, err error) {
	cur, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return DirID{}, nil, err
	}
	defer func() { unix.Close(cur) }()
	if self, err = IDOf(cur); err != nil {
		return DirID{}, nil, err
	}
	var mounts []mountinfo.Entry // read once, when a bind mount's root is met
	last := self
	for range 4096 { // no filesystem is that deep; guards against a cycle
		var stx unix.Statx_t
		if err := unix.Statx(cur, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &stx); err != nil {
			return self, ancestors, nil
		}
		if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 {
			if mounts == nil {
				mounts = readMountinfo()
			}
			alt := higherMount(mounts, stx.Mnt_id, last)
			if alt < 0 {
				return self, ancestors, nil // the filesystem's root, or nothing higher is visible
			}
			unix.Close(cur)
			cur = alt
		}
		parent, err := unix.Openat(cur, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			return self, ancestors, nil
		}
		unix.Close(cur)
		cur = parent
		id, err := IDOf(cur)
		if err != nil || id == last {
			return self, ancestors, nil
		}
		ancestors = append(ancestors, id)
		last = id
	}
	return self, ancestors, nil
}

// readMountinfo reads the mount table; nil on any error, which only
// shortens the ancestry of directories under bind mounts.
func readMountinfo() []mountinfo.Entry {
	es, err := mountinfo.Read()
	if err != nil {
		return nil
	}
	return es
}

// higherMount returns an O_PATH fd of the directory want, the root of the
// mount mntID, reached in another mount of the same filesystem whose root
// is an ancestor of it, so that ".." from it walks on in the filesystem.
// It returns -1 when mntID is the filesystem's root or no such mount is
// reachable.
func higherMount(mounts []mountinfo.Entry, mntID uint64, want DirID) int {
	var m *mountinfo.Entry
	for i := range mounts {
		if mounts[i].ID == mntID {
			m = &mounts[i]
		}
	}
	if m == nil || m.Root == "/" {
		return -1
	}
	var cands []*mountinfo.Entry
	for i := range mounts {
		c := &mounts[i]
		if c.ID != m.ID && c.Dev == m.Dev && (c.Root == "/" || strings.HasPrefix(m.Root, c.Root+"/")) {
			cands = append(cands, c)
		}
	}
	// The highest root first: most often the filesystem's own mount.
	sort.SliceStable(cands, func(i, j int) bool { return len(cands[i].Root) < len(cands[j].Root) })
	for _, c := range cands {
		rel := strings.TrimPrefix(strings.TrimPrefix(m.Root, c.Root), "/")
		fd := openInMount(c, rel)
		if fd < 0 {
			continue
		}
		if id, err := IDOf(fd); err == nil && id == want {
			return fd
		}
		unix.Close(fd)
	}
	return -1
}

// openInMount opens rel beneath the root of mount c without leaving it
// (RESOLVE_NO_XDEV): a mount stacked on the way, or on c's mountpoint,
// makes it fail rather than land elsewhere.
func openInMount(c *mountinfo.Entry, rel string) int {
	root, err := unix.Open(c.MountPoint, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	defer unix.Close(root)
	var stx unix.Statx_t
	if unix.Statx(root, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx) != nil || stx.Mnt_id != c.ID {
		return -1 // c is hidden under another mount
	}
	if rel == "" {
		rel = "."
	}
	// The layer rules (RESOLVE_NO_XDEV among them): a mount stacked on
	// the way fails the open rather than landing elsewhere.
	fd, err := OpenAt(root, rel, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1
	}
	return fd
}

// IDMapped reports whether the directory path (symlinks followed) is on an
// idmapped mount (mount_setattr MOUNT_ATTR_IDMAP; mountinfo lists such a
// mount with the flag "idmapped"): the owners read through it are mapped
// by the kernel already. Callers ask before they clone the mount, whose
// detached copy no mount table lists.
func IDMapped(path string) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID, &stx); err != nil {
		return false, fmt.Errorf("statx %s: %w", path, err)
	}
	es, err := mountinfo.Read()
	if err != nil {
		return false, fmt.Errorf("read the mount table: %w", err)
	}
	for i := range es {
		if es[i].ID == stx.Mnt_id {
			return es[i].HasOption("idmapped"), nil
		}
	}
	return false, nil
}
