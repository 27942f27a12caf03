package merge

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/overlay"
)

// attrs gives the object fd (O_PATH), written for n at rel, the owner,
// xattrs, mode and mtime the merged view shows (st, from n). The order
// matters: chown clears security.capability and setuid bits, so it goes
// first; chmod after the xattrs, so a POSIX ACL's mask agrees with the
// mode; times last, as nothing after them may touch the object.
func (m *merger) attrs(n *overlay.Node, fd int, rel string, st *unix.Stat_t) error {
	fail := func(op string, err error) error { return &os.PathError{Op: op, Path: show(rel), Err: err} }
	if err := unix.Fchownat(fd, "", int(st.Uid), int(st.Gid), unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail("chown", err)
	}
	names, err := n.Listxattr()
	if err != nil {
		return fail("listxattr", err)
	}
	for _, name := range names {
		v, err := n.Getxattr(name)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return fail("getxattr "+name, err)
		}
		// As the layers of the stack store it: escaped in the overlay's
		// own namespace, so a mount of the result shows name again.
		if err := format.Setxattr(fd, m.names.Escape(name), v, 0); err != nil {
			return fail("setxattr "+name, err)
		}
	}
	kind := st.Mode & unix.S_IFMT
	if kind != unix.S_IFLNK {
		// Through /proc: the magic link reaches the inode fd holds.
		if err := unix.Chmod(format.ProcPath(fd), st.Mode&0o7777); err != nil {
			return fail("chmod", err)
		}
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(unix.TimespecToNsec(st.Mtim))}
	if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail("utimes", err)
	}
	return nil
}

// show names a path of the merged view for an error.
func show(rel string) string {
	if rel == "" {
		return "/"
	}
	return rel
}
