package overlay

import (
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/idmap"
)

// real returns an O_PATH descriptor of the object's topmost real object
// and a function that releases it. A directory holds its descriptors for
// its lifetime. A non-directory holds none (there may be far more of them
// than a process may open): it is opened by name in its parent's layer
// directory, and the inode found must be the one the node stands for, so a
// stale name gives ESTALE, never another object.
func (n *Node) real() (int, func(), error) {
	if n.IsDir() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if fd := n.realFd(); fd >= 0 {
			return fd, func() {}, nil
		}
		return -1, nil, unix.ESTALE
	}
	n.mu.Lock()
	if n.released {
		n.mu.Unlock()
		return -1, nil, unix.ESTALE
	}
	if n.pinned {
		fd := n.pinFd
		n.mu.Unlock()
		return fd, func() {}, nil
	}
	n.mu.Unlock()
	var err error
	for try := 0; try < 2; try++ { // again if a copy-up moved it meanwhile
		var dirfd, fd int
		var name string
		if dirfd, name, err = n.realAt(); err != nil {
			return -1, nil, err
		}
		if fd, err = format.OpenAt(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0); err != nil {
			if err != unix.ENOENT {
				return -1, nil, err
			}
			err = unix.ESTALE
			continue
		}
		var st unix.Stat_t
		if err = unix.Fstat(fd, &st); err == nil && n.isReal(&st) {
			return fd, func() { unix.Close(fd) }, nil
		}
		unix.Close(fd)
		err = unix.ESTALE
	}
	return -1, nil, err
}

// Pin makes a non-directory whose name is about to go away (unlink, or a
// rename over it) reachable without a name until Unpin or Forget: the kernel
// may still stat it through an open FIFO, socket or device, whose opens the
// daemon never sees, and a read-only handle of a regular file opened before
// its copy-up reopens the upper copy through the pin (Open). A caller need
// not pin a regular file that nobody has open.
func (n *Node) Pin() {
	switch n.kind {
	case unix.S_IFDIR, unix.S_IFLNK:
		// Directories hold their descriptors; a symlink cannot be open.
		return
	}
	fd, done, err := n.real()
	if err != nil {
		return
	}
	defer done()
	pfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pinned {
		unix.Close(pfd)
		return
	}
	n.pinFd, n.pinned = pfd, true
}

// Unpin undoes Pin: the object still has a name.
func (n *Node) Unpin() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pinned {
		unix.Close(n.pinFd)
		n.pinned = false
	}
}

func (n *Node) pinnedFd() (int, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pinFd, n.pinned
}

// isReal reports whether st is the node's real object.
func (n *Node) isReal(st *unix.Stat_t) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return st.Ino == n.realIno && st.Mode&unix.S_IFMT == n.kind
}

// realAt returns the layer directory and name where the non-directory n's
// topmost real object is.
func (n *Node) realAt() (int, string, error) {
	parent, name := n.location()
	if parent == nil {
		return -1, "", unix.ESTALE
	}
	n.mu.Lock()
	inUpper := n.inUpper
	if n.inIndex {
		// The index entry is the object whichever of its names are
		// linked up, and it does not move.
		in := n.indexName
		n.mu.Unlock()
		return n.o.index, in, nil
	}
	var l *layer
	if len(n.lowers) > 0 {
		l = n.lowers[0].layer
	}
	n.mu.Unlock()
	fd := -1
	if inUpper {
		parent.mu.Lock()
		fd = parent.upperFd
		parent.mu.Unlock()
	} else {
		fd = parent.lowerFd(l)
	}
	if fd < 0 {
		return -1, "", unix.ESTALE
	}
	return fd, name, nil
}

// Getattr stats the object (kernel: ovl_getattr): the topmost real object's
// attributes, with the overlay's inode number and the owner the mount shows
// (owner.go); a merged directory reports one link, as the kernel does,
// since counting its entries would cost a readdir of every layer.
func (n *Node) Getattr(st *unix.Stat_t) error {
	at, name := -1, ""
	if n.IsDir() {
		fd, _, err := n.real()
		if err != nil {
			return err
		}
		if err := unix.Fstatat(fd, "", st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		at = fd
	} else if fd, ok := n.pinnedFd(); ok {
		if err := unix.Fstatat(fd, "", st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		at = fd
	} else {
		// One stat by name, checked, instead of open, stat and close.
		dirfd, nm, err := n.realAt()
		if err != nil {
			return err
		}
		if err := unix.Fstatat(dirfd, nm, st, unix.AT_SYMLINK_NOFOLLOW); err != nil || !n.isReal(st) {
			return unix.ESTALE
		}
		at, name = dirfd, nm
	}
	if err := n.o.show(n.topLayer(), st, at, name); err != nil {
		return err
	}
	n.overlayAttr(st)
	return nil
}

// Fstat is Getattr through fd, an open descriptor of n's real object, for
// an object that may have lost its name. A metacopy object is statted as
// Getattr does where it can be: fd may be its lower data.
func (n *Node) Fstat(fd int, st *unix.Stat_t) error {
	n.mu.Lock()
	meta := n.metacopy
	n.mu.Unlock()
	if meta && n.Getattr(st) == nil {
		return nil
	}
	if err := unix.Fstat(fd, st); err != nil {
		return err
	}
	if err := n.o.show(n.topLayer(), st, fd, ""); err != nil {
		return err
	}
	n.overlayAttr(st)
	return nil
}

// topLayer is the layer of the object's topmost real object (the upper for
// an indexed one), nil for none.
func (n *Node) topLayer() *layer {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.inUpper || n.inIndex:
		return n.o.upper
	case len(n.lowers) > 0:
		return n.lowers[0].layer
	}
	return nil
}

// overlayAttr turns the real object's attributes st into n's: the overlay
// link count of an indexed hard link (overlay.nlink), the lower data's
// blocks under a metacopy (kernel: ovl_getattr), the overlay inode number,
// one link for a merged directory.
func (n *Node) overlayAttr(st *unix.Stat_t) {
	n.mu.Lock()
	in, meta := n.indexName, n.metacopy
	if !n.inIndex {
		in = ""
	}
	merged := n.IsDir() && (n.upperFd >= 0 && len(n.lowers) > 0 || len(n.lowers) > 1)
	n.mu.Unlock()
	if in != "" {
		storeNlink(&st.Nlink, n.o.overlayNlinkAt(n.o.index, in, st))
	}
	if meta {
		if fd, err := n.dataAt(); err == nil {
			var lst unix.Stat_t
			if unix.Fstat(fd, &lst) == nil {
				st.Blocks = lst.Blocks
			}
			unix.Close(fd)
		}
	}
	st.Ino = n.Ino()
	if merged {
		st.Nlink = 1
	}
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
		if err := n.copyUp(sizeMode(*a.Size)); err != nil {
			return err
		}
	} else if err := n.copyUp(copyMeta); err != nil {
		return err
	}
	pathFd, done, err := n.real()
	if err != nil {
		return err
	}
	defer done()
	n.noteUpper(pathFd)
	p := format.ProcPath(pathFd)
	if n.o.owners && (a.Uid != nil || a.Gid != nil || a.Mode != nil) {
		if err := n.setOwner(pathFd, a); err != nil {
			return err
		}
	} else {
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

// setOwner is the chown and chmod of Setattr where owners are mapped or
// kept in overrides (owner.go): the IDs given are the mount's, and the
// change goes where the upper object keeps its owner. fd is its O_PATH
// descriptor.
func (n *Node) setOwner(fd int, a SetAttr) error {
	o := n.o
	if a.Mode != nil && n.kind == unix.S_IFLNK && a.Uid == nil && a.Gid == nil {
		return unix.EOPNOTSUPP
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	cur, err := o.ownerOf(o.upper, &st, fd, "")
	if err != nil {
		return err
	}
	uid, gid, perm := cur.uid, cur.gid, cur.perm
	if a.Uid != nil {
		uid = o.ids.StoreUID(*a.Uid)
	}
	if a.Gid != nil {
		gid = o.ids.StoreGID(*a.Gid)
	}
	if a.Mode != nil {
		perm = *a.Mode & 0o7777
	}
	if err := o.setUpperOwner(fd, n.kind, cur, uid, gid, perm, a.Mode != nil); err != nil {
		return err
	}
	if a.Mode != nil && n.kind == unix.S_IFLNK {
		return unix.EOPNOTSUPP
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
		if err := n.copyUp(openMode(flags)); err != nil {
			return -1, err
		}
	}
	if n.kind != unix.S_IFREG {
		return -1, unix.EINVAL // FUSE opens only regular files
	}
	n.mu.Lock()
	meta := n.metacopy
	n.mu.Unlock()
	var pfd int
	var err error
	if meta && !write {
		// Read-only: the data is still the lower file's.
		if pfd, err = n.dataAt(); err != nil {
			return -1, err
		}
		defer unix.Close(pfd)
	} else {
		var done func()
		if pfd, done, err = n.real(); err != nil {
			return -1, err
		}
		defer done()
	}
	// Reopen the very inode the node holds: no name is resolved again, so
	// a rename or unlink in the layer cannot make this open another file.
	flags &^= unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_NOFOLLOW
	if write {
		// Written through this descriptor, or through passthrough
		// without the daemon seeing each write: recorded now.
		n.noteUpper(pfd)
	}
	return unix.Open(format.ProcPath(pfd), flags|unix.O_CLOEXEC, 0)
}

// Readlink returns a symlink's target.
func (n *Node) Readlink() (string, error) {
	if n.kind != unix.S_IFLNK {
		return "", unix.EINVAL
	}
	fd, done, err := n.real()
	if err != nil {
		return "", err
	}
	defer done()
	return readlinkFd(fd)
}

// Getxattr reads an xattr; names in the overlay's own namespace are
// escaped, so users reach theirs, never the overlay's (kernel: ovl_xattr_get).
// The override xattrs (owner.go) and the names private to other
// implementations (format.IsForeign) are hidden, as fuse-overlayfs
// hides them, and the IDs of a POSIX ACL are shown mapped.
func (n *Node) Getxattr(name string) ([]byte, error) {
	if idmap.IsOverride(name) || format.IsForeign(name) {
		return nil, unix.ENODATA
	}
	name = n.o.names.Escape(name)
	fd, done, err := n.real()
	if err != nil {
		return nil, err
	}
	defer done()
	get := format.Getxattr
	if !n.IsDir() {
		get = format.GetxattrFile
	}
	v, err := get(fd, name)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, unix.ENODATA
	}
	if ids := n.o.ids; ids != nil && isACL(name) {
		if l := n.topLayer(); l == nil || !l.mapped {
			v = mapACL(v, ids.MapUID, ids.MapGID)
		}
	}
	return v, nil
}

// Listxattr lists the xattr names, without the overlay's own.
func (n *Node) Listxattr() ([]string, error) {
	fd, done, err := n.real()
	if err != nil {
		return nil, err
	}
	defer done()
	names, err := format.Listxattr(fd)
	if err != nil {
		return nil, err
	}
	out := names[:0]
	for _, nm := range names {
		if shown, ok := n.o.names.Unescape(nm); ok && !idmap.IsOverride(nm) {
			out = append(out, shown)
		}
	}
	return out, nil
}

// Setxattr sets an xattr after copy-up; names in the overlay's own
// namespace are escaped, the override xattrs and the names private to
// other implementations refused (EPERM, as fuse-overlayfs answers), and
// the IDs of a POSIX ACL stored mapped back.
func (n *Node) Setxattr(name string, value []byte, flags int) error {
	if idmap.IsOverride(name) || format.IsForeign(name) {
		return unix.EPERM
	}
	name = n.o.names.Escape(name)
	if ids := n.o.ids; ids != nil && isACL(name) {
		value = mapACL(value, ids.StoreUID, ids.StoreGID)
	}
	return n.onUpper(func(fd int) error { return format.Setxattr(fd, name, value, flags) })
}

// Removexattr removes an xattr after copy-up.
func (n *Node) Removexattr(name string) error {
	if idmap.IsOverride(name) || format.IsForeign(name) {
		return unix.EPERM
	}
	// Removing what is not there must not copy up.
	if _, err := n.Getxattr(name); err != nil {
		return err
	}
	name = n.o.names.Escape(name)
	return n.onUpper(func(fd int) error { return format.Removexattr(fd, name) })
}

// onUpper copies up the object's metadata and runs f on its upper object.
func (n *Node) onUpper(f func(fd int) error) error {
	if err := n.copyUp(copyMeta); err != nil {
		return err
	}
	fd, done, err := n.real()
	if err != nil {
		return err
	}
	defer done()
	n.noteUpper(fd)
	return f(fd)
}

// Detach marks the node as no longer reachable by name (its last link was
// removed); operations by name then fail with ESTALE.
func (n *Node) Detach() {
	n.o.treeMu.Lock()
	parent := n.parent
	n.parent = nil
	n.o.treeMu.Unlock()
	n.o.unkeep(n)
	if parent != nil {
		parent.Forget()
	}
}

// InUpper reports whether the object has been copied up (or was made) in
// the upper layer.
func (n *Node) InUpper() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.inUpper
}
