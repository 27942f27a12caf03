package overlay

import (
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// real returns the O_PATH descriptor of the object's topmost real object.
// It stays open until the node is forgotten, even after copy-up, so a
// caller may use it without holding any lock.
func (n *Node) real() (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if fd := n.realFd(); fd >= 0 {
		return fd, nil
	}
	return -1, unix.ESTALE
}

// Getattr stats the object (kernel: ovl_getattr): the topmost real object's
// attributes, with the overlay's inode number; a merged directory reports
// one link, as the kernel does, since counting its entries would cost a
// readdir of every layer.
func (n *Node) Getattr(st *unix.Stat_t) error {
	fd, err := n.real()
	if err != nil {
		return err
	}
	if err := unix.Fstatat(fd, "", st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	st.Ino = n.ino
	if n.IsDir() {
		n.mu.Lock()
		merged := n.upperFd >= 0 && len(n.lowers) > 0 || len(n.lowers) > 1
		n.mu.Unlock()
		if merged {
			st.Nlink = 1
		}
	}
	return nil
}

// SetAttr lists the attribute changes of a setattr; nil fields stay.
type SetAttr struct {
	Mode         *uint32
	Uid, Gid     *uint32
	Size         *uint64
	Atime, Mtime *unix.Timespec // may hold UTIME_NOW or UTIME_OMIT in Nsec
}

// Setattr changes attributes, after copy-up (kernel: ovl_setattr). fd, if
// not -1, is a descriptor the caller has open on the object and is used for
// a size change.
func (n *Node) Setattr(a SetAttr, fd int) error {
	if a.Size != nil && fd < 0 {
		if err := n.copyUp(*a.Size == 0); err != nil {
			return err
		}
	} else if err := n.copyUp(false); err != nil {
		return err
	}
	pathFd, err := n.real()
	if err != nil {
		return err
	}
	p := format.ProcPath(pathFd)
	if a.Uid != nil || a.Gid != nil {
		uid, gid := -1, -1
		if a.Uid != nil {
			uid = int(*a.Uid)
		}
		if a.Gid != nil {
			gid = int(*a.Gid)
		}
		if err := unix.Fchownat(pathFd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	if a.Mode != nil {
		if n.kind == unix.S_IFLNK {
			return unix.EOPNOTSUPP
		}
		if err := unix.Chmod(p, *a.Mode&0o7777); err != nil {
			return err
		}
	}
	if a.Size != nil {
		if n.kind != unix.S_IFREG {
			return unix.EINVAL
		}
		if fd >= 0 {
			if err := unix.Ftruncate(fd, int64(*a.Size)); err != nil {
				return err
			}
		} else if err := unix.Truncate(p, int64(*a.Size)); err != nil {
			return err
		}
	}
	if a.Atime != nil || a.Mtime != nil {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if a.Atime != nil {
			ts[0] = *a.Atime
		}
		if a.Mtime != nil {
			ts[1] = *a.Mtime
		}
		if err := unix.UtimesNanoAt(pathFd, "", ts, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			// AT_EMPTY_PATH for utimensat needs Linux 5.8+; fall back to /proc.
			if err2 := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0); err2 != nil {
				return err
			}
		}
	}
	return nil
}

// Open opens the object for I/O and returns the descriptor. Opening for
// write or with O_TRUNC copies the object up first (kernel: ovl_open); a
// read-only open reads the topmost layer in place.
func (n *Node) Open(flags int) (int, error) {
	if n.IsDir() {
		return -1, unix.EISDIR
	}
	write := flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
	if write {
		if n.o.upper == nil {
			return -1, unix.EROFS
		}
		if err := n.copyUp(flags&unix.O_TRUNC != 0); err != nil {
			return -1, err
		}
	}
	if n.kind != unix.S_IFREG {
		return -1, unix.EINVAL // FUSE opens only regular files
	}
	pfd, err := n.real()
	if err != nil {
		return -1, err
	}
	// Reopen the very inode the node holds: no name is resolved again, so
	// a rename or unlink in the layer cannot make this open another file.
	flags &^= unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_NOFOLLOW
	return unix.Open(format.ProcPath(pfd), flags|unix.O_CLOEXEC, 0)
}

// Readlink returns a symlink's target.
func (n *Node) Readlink() (string, error) {
	if n.kind != unix.S_IFLNK {
		return "", unix.EINVAL
	}
	fd, err := n.real()
	if err != nil {
		return "", err
	}
	return readlinkFd(fd)
}

// Getxattr reads an xattr; names in the overlay's own namespace are
// escaped, so users reach theirs, never the overlay's (kernel: ovl_xattr_get).
func (n *Node) Getxattr(name string) ([]byte, error) {
	name = n.o.names.Escape(name)
	fd, err := n.real()
	if err != nil {
		return nil, err
	}
	v, err := format.Getxattr(fd, name)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, unix.ENODATA
	}
	return v, nil
}

// Listxattr lists the xattr names, without the overlay's own.
func (n *Node) Listxattr() ([]string, error) {
	fd, err := n.real()
	if err != nil {
		return nil, err
	}
	names, err := format.Listxattr(fd)
	if err != nil {
		return nil, err
	}
	out := names[:0]
	for _, nm := range names {
		if shown, ok := n.o.names.Unescape(nm); ok {
			out = append(out, shown)
		}
	}
	return out, nil
}

// Setxattr sets an xattr after copy-up; names in the overlay's own
// namespace are escaped.
func (n *Node) Setxattr(name string, value []byte, flags int) error {
	name = n.o.names.Escape(name)
	if err := n.copyUp(false); err != nil {
		return err
	}
	fd, err := n.real()
	if err != nil {
		return err
	}
	return format.Setxattr(fd, name, value, flags)
}

// Removexattr removes an xattr after copy-up.
func (n *Node) Removexattr(name string) error {
	// Removing what is not there must not copy up.
	if _, err := n.Getxattr(name); err != nil {
		return err
	}
	name = n.o.names.Escape(name)
	if err := n.copyUp(false); err != nil {
		return err
	}
	fd, err := n.real()
	if err != nil {
		return err
	}
	return format.Removexattr(fd, name)
}

// Detach marks the node as no longer reachable by name (its last link was
// removed); operations by name then fail with ESTALE.
func (n *Node) Detach() {
	n.o.treeMu.Lock()
	if n.parent != nil {
		n.parent = nil
	}
	n.o.treeMu.Unlock()
}

// InUpper reports whether the object has been copied up (or was made) in
// the upper layer.
func (n *Node) InUpper() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.inUpper
}
