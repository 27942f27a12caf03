package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/idmap"
	"github.com/ovl-project/ovl/internal/fault"
)

// CopyUp makes sure n exists in the upper layer, copying its parents first
// (kernel: ovl_copy_up, ovl_copy_up_one). The copy is built in work/ with
// data, xattrs (not the overlay's own), owner, mode and times, then renamed
// into place, so no reader sees a half-made object. Concurrent callers wait
// for one copy-up.
func (n *Node) CopyUp() error { return n.copyUp(copyAll) }

// copyMode says what a copy-up must bring up.
type copyMode int

const (
	copyAll  copyMode = iota // data and metadata
	copyNone                 // metadata; the caller truncates the data to zero (O_TRUNC)
	copyMeta                 // metadata; with metacopy=on the data stays below
)

// copyUp is CopyUp with a mode. An object copied up with its data below
// (metacopy) gets its data when a later copy-up needs it.
func (n *Node) copyUp(mode copyMode) error {
	o := n.o
	if o.upper == nil {
		return unix.EROFS
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.released {
		return unix.ESTALE
	}
	if n.inUpper {
		if n.metacopy && mode != copyMeta {
			return n.copyUpData(mode == copyNone)
		}
		return nil
	}
	noData := mode == copyNone
	meta := mode == copyMeta && o.metacopyOn && n.kind == unix.S_IFREG && n.indexName == ""
	parent, name := n.location()
	if parent == nil {
		return fmt.Errorf("copy up root: %w", unix.EIO)
	}
	if err := parent.copyUp(copyAll); err != nil {
		return err
	}
	if n.inIndex {
		if err := o.linkUp(n, parent, name); err != nil || !n.metacopy || mode == copyMeta {
			return err
		}
		return n.copyUpData(noData)
	}
	if len(n.lowers) == 0 {
		return fmt.Errorf("copy up %s: no lower object: %w", name, unix.EIO)
	}
	src := n.lowers[0]
	srcRead := false // src.fd is open for reading, not O_PATH
	if !n.IsDir() {
		// n.mu is held: find the lower object the way real does.
		dirfd := parent.lowerFd(src.layer)
		if dirfd < 0 {
			return fmt.Errorf("copy up %s: parent lost its lower: %w", name, unix.EIO)
		}
		fd, err := openSrc(dirfd, name, n.kind == unix.S_IFREG && !noData && !meta)
		if err != nil {
			return fmt.Errorf("copy up %s: %w", name, err)
		}
		defer unix.Close(fd.fd)
		src.fd, srcRead = fd.fd, fd.read
	}

	var st unix.Stat_t
	if err := unix.Fstat(src.fd, &st); err != nil {
		return fmt.Errorf("copy up %s: %w", name, err)
	}
	if !n.IsDir() && (st.Ino != n.realIno || st.Mode&unix.S_IFMT != n.kind) {
		return fmt.Errorf("copy up %s: the lower layer changed: %w", name, unix.ESTALE)
	}
	tmp := format.TempName(o.tempSeq.Add(1))
	cleanup := func() { unix.Unlinkat(o.work, tmp, 0); unix.Unlinkat(o.work, tmp, unix.AT_REMOVEDIR) }
	copied, dst, err := o.makeCopy(src.fd, srcRead, &st, tmp, noData || meta)
	if dst >= 0 {
		defer unix.Close(dst)
	}
	if err == nil {
		err = fault.Hit("copyup.data")
	}
	if err != nil {
		cleanup()
		return fmt.Errorf("copy up %s: %w", name, err)
	}
	ow, err := o.ownerOf(src.layer, &st, src.fd, "")
	if err != nil {
		cleanup()
		return fmt.Errorf("copy up %s: %w", name, err)
	}
	if meta {
		// Before copyMeta: the truncate to the lower's size sets mtime,
		// which copyMeta then puts back to the lower's.
		if err := o.markMetacopy(dst, st.Size); err != nil {
			cleanup()
			return fmt.Errorf("copy up %s: %w", name, err)
		}
		fault.Hit("copyup.metacopy")
	}
	origin := o.encodeOrigin(src.layer, src.fd)
	if err := o.copyMeta(src.fd, srcRead, &st, ow, tmp, dst, origin); err != nil {
		cleanup()
		return fmt.Errorf("copy up %s: %w", name, err)
	}
	if o.cfg.FsyncStrict && (n.kind == unix.S_IFREG || n.kind == unix.S_IFDIR) {
		// fsync=strict: data and metadata on disk before the name
		// (kernel: ctx.metadata_fsync in ovl_copy_up_one).
		var err error
		if dst >= 0 {
			err = unix.Fsync(dst)
		} else {
			err = fsyncAt(o.work, tmp)
		}
		if err != nil {
			cleanup()
			return fmt.Errorf("copy up %s: fsync: %w", name, err)
		}
	}
	fault.Hit("copyup.attrs")
	if o.indexOn && !n.IsDir() && n.indexName != "" {
		return o.copyUpIndexed(n, parent, name, tmp, &st, copied)
	}

	// Publish: rename into the parent's upper directory, under its lock so
	// that a concurrent unlink or rename of the name is ordered with us.
	parent.dirMu.Lock()
	defer parent.dirMu.Unlock()
	if p, nm := n.location(); p != parent || nm != name {
		cleanup()
		return unix.ENOENT
	}
	parent.mu.Lock()
	pfd, impure := parent.upperFd, parent.impure
	parent.mu.Unlock()
	if !impure {
		// The parent is about to hold an entry with an origin; marked
		// first, as by the kernel (ovl_do_copy_up), so that no crash
		// leaves one in a directory whose listing does not look it up.
		o.markImpure(parent)
	}
	err = fault.Hit("copyup.rename")
	if err == nil {
		err = unix.Renameat2(o.work, tmp, pfd, name, unix.RENAME_NOREPLACE)
	}
	if err != nil {
		cleanup()
		if err == unix.EEXIST {
			// The name was removed (a whiteout now) or replaced meanwhile.
			return unix.ENOENT
		}
		return fmt.Errorf("copy up %s: rename into upper: %w", name, err)
	}
	parent.noteUpper(pfd)
	if o.cfg.FsyncStrict {
		// fsync=strict: the new name is on disk when the copy-up returns.
		if err := fsyncAt(pfd, "."); err != nil {
			return fmt.Errorf("copy up %s: fsync parent: %w", name, err)
		}
	}
	fault.Hit("copyup.renamed")
	if n.IsDir() {
		// The lower descriptor stays open until the node is forgotten:
		// another thread may be using it right now.
		fd, err := openReal(pfd, name, n.kind, &st)
		if err != nil {
			return fmt.Errorf("copy up %s: %w", name, err)
		}
		n.upperFd, n.upperAufs = fd, emptyAufsDir()
		n.noteUpper(fd)
	} else {
		o.noteAt(pfd, name)
		n.noted.Store(o.syncs != nil && n.kind == unix.S_IFREG) // see adopt
		lowerLinks := st.Nlink
		// The copy's own descriptor, where there is one, gives its inode
		// without looking the new name up again.
		if dst >= 0 {
			err = unix.Fstat(dst, &st)
		} else {
			err = format.Lstat(pfd, name, &st)
		}
		if err != nil {
			return fmt.Errorf("copy up %s: %w", name, err)
		}
		n.realIno = st.Ino
		if lowerLinks != 1 && !o.indexOn {
			// The copy split a lower hard link: it has its own number now,
			// as a lookup would give it (upperIno).
			n.ino.Store(o.inoFor(o.upper, st.Ino))
		}
		o.keep(n, st.Ino)
	}
	n.inUpper, n.metacopy = true, meta
	o.stats.copyUps.Add(1)
	o.stats.copyUpBytes.Add(uint64(copied))
	return nil
}

// lowerFd is the fd of the directory's presence in lower layer l, or -1.
func (n *Node) lowerFd(l *layer) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, lr := range n.lowers {
		if lr.layer == l {
			return lr.fd
		}
	}
	return -1
}

// makeCopy creates tmp in work/ as a copy of the object src without its
// metadata, and returns the number of data bytes copied and, for a regular
// file, the copy's descriptor (open for writing; the caller closes it), so
// that its metadata is set without resolving tmp again. src is O_PATH
// unless srcRead says it is open for reading.
func (o *Overlay) makeCopy(src int, srcRead bool, st *unix.Stat_t, tmp string, noData bool) (int64, int, error) {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return 0, -1, unix.Mkdirat(o.work, tmp, 0o700)
	case unix.S_IFLNK:
		target, err := readlinkFd(src)
		if err != nil {
			return 0, -1, err
		}
		return 0, -1, unix.Symlinkat(target, o.work, tmp)
	case unix.S_IFREG:
		dst, err := format.OpenAt(o.work, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o600)
		if err != nil {
			return 0, -1, err
		}
		fault.Hit("copyup.create")
		var n int64
		if !noData && st.Size > 0 {
			in := src
			if !srcRead {
				in, err = unix.Open(format.ProcPath(src), unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					return 0, dst, err
				}
				defer unix.Close(in)
			}
			if n, err = copyData(in, dst, st.Size, &o.noClone); err != nil {
				return 0, dst, err
			}
		}
		if !o.cfg.Volatile && !o.cfg.FsyncStrict {
			// Data reaches the disk before the name does (the kernel's
			// default fsync=auto; fsync=strict syncs the copy once its
			// metadata is done too).
			if err := unix.Fsync(dst); err != nil {
				return 0, dst, err
			}
		}
		return n, dst, nil
	default: // devices, FIFOs, sockets
		return 0, -1, unix.Mknodat(o.work, tmp, st.Mode&unix.S_IFMT|0o600, int(st.Rdev))
	}
}

// srcFd is the lower object a copy-up copies.
type srcFd struct {
	fd   int
	read bool // open for reading, not O_PATH
}

// openSrc opens name in the lower directory dirfd for a copy-up: for
// reading when its data is to be copied (one open instead of an O_PATH one
// and a reopen through /proc), else, or where reading is refused, O_PATH.
// O_NONBLOCK: should the name have become a FIFO meanwhile, the open does
// not wait for a writer (the caller's type check then refuses it).
func openSrc(dirfd int, name string, data bool) (srcFd, error) {
	if data {
		fd, err := format.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err == nil {
			return srcFd{fd: fd, read: true}, nil
		}
		if err != unix.EACCES && err != unix.EPERM && err != unix.ELOOP {
			return srcFd{fd: -1}, err
		}
	}
	fd, err := format.OpenAt(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	return srcFd{fd: fd}, err
}

// copyData copies size bytes from in to out: a reflink where the upper can
// share extents, else copy_file_range per data extent so holes stay holes.
// noClone remembers that the upper filesystem cannot clone at all (ext4,
// xfs without reflink, tmpfs), so that a copy-up tries FICLONE only until
// the first such failure; EXDEV (lower on another filesystem) and EINVAL
// (a file the clone cannot take) say nothing of the next file.
func copyData(in, out int, size int64, noClone *atomic.Bool) (int64, error) {
	if !noClone.Load() {
		err := unix.IoctlFileClone(out, in)
		if err == nil {
			return size, nil
		}
		if err == unix.EOPNOTSUPP || err == unix.ENOTTY || err == unix.ENOSYS {
			noClone.Store(true)
		}
	}
	var copied int64
	off := int64(0)
	for off < size {
		data, err := unix.Seek(in, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole remains
		}
		if err != nil {
			// No SEEK_DATA: treat everything as data.
			data = off
		}
		hole, err := unix.Seek(in, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if hole > size {
			hole = size
		}
		for pos := data; pos < hole; {
			roff, woff := pos, pos
			n, err := unix.CopyFileRange(in, &roff, out, &woff, int(min(hole-pos, 1<<30)), 0)
			if err != nil {
				if err == unix.EINTR {
					continue
				}
				if err == unix.EXDEV || err == unix.EINVAL || err == unix.ENOSYS || err == unix.EOPNOTSUPP {
					m, err := copyPlain(in, out, pos, hole-pos)
					copied += m
					if err != nil {
						return copied, err
					}
					pos = hole
					continue
				}
				return copied, err
			}
			if n == 0 {
				// The file shrank under us; stop at what is there.
				hole = pos
				size = pos
				break
			}
			pos += int64(n)
			copied += int64(n)
		}
		off = hole
	}
	return copied, unix.Ftruncate(out, size)
}

func copyPlain(in, out int, off, n int64) (int64, error) {
	r := io.NewSectionReader(os.NewFile(uintptr(dupFd(in)), "in"), off, n)
	w := os.NewFile(uintptr(dupFd(out)), "out")
	defer w.Close()
	if _, err := w.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	return io.Copy(w, r)
}

func dupFd(fd int) int {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return d
}

// copyMeta copies xattrs, owner, mode and times from src to work/tmp and
// records the origin (kernel: ovl_copy_xattr, ovl_set_attr, ovl_set_origin).
// dst is tmp's descriptor open for writing, or -1 (then tmp is opened
// O_PATH here); srcRead says src is open for reading. With real
// descriptors every call works on the fd, with no path resolved again.
// The owner and mode are ow, src's as its layer has them (owner.go), kept
// where the upper keeps them; override xattrs are not copied as such.
// Times go last: nothing after them may touch the copy.
func (o *Overlay) copyMeta(src int, srcRead bool, st *unix.Stat_t, ow owner, tmp string, dst int, origin []byte) error {
	dstReal := dst >= 0
	if !dstReal {
		fd, err := format.OpenAt(o.work, tmp, unix.O_PATH|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		dst = fd
	}
	setx := func(name string, v []byte) error {
		if dstReal {
			return unix.Fsetxattr(dst, name, v, 0)
		}
		return format.Setxattr(dst, name, v, 0)
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	names, err := srcXattrs(src, srcRead)
	if err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range names {
		if o.names.IsPrivate(name) || idmap.IsOverride(name) {
			continue
		}
		v, err := srcXattr(src, srcRead, name)
		if err != nil {
			return fmt.Errorf("read xattr %s: %w", name, err)
		}
		if v == nil {
			continue
		}
		if err := setx(name, v); err != nil {
			// Like the kernel, skip what the upper cannot hold, except what
			// security depends on.
			if err == unix.EOPNOTSUPP && !mustCopyXattr(name) {
				continue
			}
			if isLink && err == unix.EPERM && !mustCopyXattr(name) {
				continue // user.* xattrs are not allowed on symlinks
			}
			return fmt.Errorf("write xattr %s: %w", name, err)
		}
	}
	if origin == nil {
		origin = []byte{} // "copied up, origin unknown"
	}
	if err := setx(o.names.Name(format.Origin), origin); err != nil && err != unix.EPERM {
		return fmt.Errorf("write origin: %w", err)
	}
	fault.Hit("copyup.xattrs")
	if o.owners {
		// The copy's owner so far is the daemon's, with no override.
		uid, gid := o.upperIDs(ow)
		cur := owner{uid: ^uint32(0), gid: ^uint32(0)}
		if err := o.setUpperOwner(dst, st.Mode&unix.S_IFMT, cur, uid, gid, ow.perm, true); err != nil {
			return err
		}
	} else if dstReal {
		if err := unix.Fchown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		if err := unix.Fchmod(dst, st.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	} else {
		if err := unix.Fchownat(o.work, tmp, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		if !isLink {
			if err := unix.Fchmodat(o.work, tmp, st.Mode&0o7777, 0); err != nil {
				return fmt.Errorf("chmod: %w", err)
			}
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if dstReal {
		err = unix.UtimesNanoAt(dst, "", ts, unix.AT_EMPTY_PATH)
	} else {
		err = unix.UtimesNanoAt(o.work, tmp, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// srcXattrs lists the xattr names of a copy-up's source: on the fd itself
// when it is open for reading, else through /proc (O_PATH).
func srcXattrs(fd int, read bool) ([]string, error) {
	if !read {
		return format.Listxattr(fd)
	}
	buf := make([]byte, 1024)
	for {
		n, err := unix.Flistxattr(fd, buf)
		switch {
		case err == unix.ERANGE && len(buf) < 1<<16:
			buf = make([]byte, 1<<16)
			continue
		case err == unix.EOPNOTSUPP:
			return nil, nil
		case err != nil:
			return nil, err
		}
		var names []string
		for _, nm := range bytes.Split(buf[:n], []byte{0}) {
			if len(nm) > 0 {
				names = append(names, string(nm))
			}
		}
		return names, nil
	}
}

// srcXattr reads one xattr of a copy-up's source (nil when absent).
func srcXattr(fd int, read bool, name string) ([]byte, error) {
	if !read {
		return format.Getxattr(fd, name) // a directory, or O_PATH
	}
	return format.Fgetxattr(fd, name)
}

// fsyncAt fsyncs name in dirfd ("." for dirfd itself), a regular file or
// a directory.
func fsyncAt(dirfd int, name string) error {
	fd, err := format.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

func mustCopyXattr(name string) bool {
	return name == "system.posix_acl_access" || name == "system.posix_acl_default" ||
		len(name) >= 9 && name[:9] == "security."
}

func readlinkFd(fd int) (string, error) {
	buf := make([]byte, 4096)
	for {
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, len(buf)*2)
	}
}

// copyUpIndexed publishes tmp, the copy of the lower hard link n, as its
// index entry, then links it at name (kernel: ovl_copy_up with c->indexed).
func (o *Overlay) copyUpIndexed(n, parent *Node, name, tmp string, lst *unix.Stat_t, copied int64) error {
	cleanup := func() { unix.Unlinkat(o.work, tmp, 0) }
	// Every name of the lower file is a name of the copy; the index entry
	// is the copy's only upper link so far.
	fd, err := format.OpenAt(o.work, tmp, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err == nil {
		err = format.Setxattr(fd, o.names.Name(format.Nlink), fmt.Appendf(nil, "U%+d", int64(lst.Nlink)-1), 0)
		unix.Close(fd)
	}
	if err != nil {
		cleanup()
		return fmt.Errorf("copy up %s: %w", name, err)
	}
	fault.Hit("index.nlink")
	if err := unix.Renameat2(o.work, tmp, o.index, n.indexName, unix.RENAME_NOREPLACE); err != nil {
		cleanup()
		if err != unix.EEXIST {
			return fmt.Errorf("copy up %s: rename into index: %w", name, err)
		}
		// Another name of the file was copied up meanwhile: use its copy.
	} else {
		o.stats.copyUps.Add(1)
		o.stats.copyUpBytes.Add(uint64(copied))
		o.note(o.index)
		fault.Hit("index.published")
	}
	var ist unix.Stat_t
	if err := format.Lstat(o.index, n.indexName, &ist); err != nil {
		return fmt.Errorf("copy up %s: %w", name, err)
	}
	n.inIndex, n.realIno = true, ist.Ino
	return o.linkUp(n, parent, name)
}

// linkUp links the index entry of n at name in parent's upper directory:
// the copy-up of a name of a hard link whose data is already up (kernel:
// ovl_link_up). n.mu is held.
func (o *Overlay) linkUp(n, parent *Node, name string) error {
	parent.dirMu.Lock()
	defer parent.dirMu.Unlock()
	if p, nm := n.location(); p != parent || nm != name {
		return unix.ENOENT
	}
	parent.mu.Lock()
	pfd, impure := parent.upperFd, parent.impure
	parent.mu.Unlock()
	var ist unix.Stat_t
	if err := format.Lstat(o.index, n.indexName, &ist); err != nil {
		return fmt.Errorf("link up %s: %w", name, err)
	}
	cur := int64(o.overlayNlinkAt(o.index, n.indexName, &ist))
	if !impure {
		o.markImpure(parent) // before the link: see copyUp
	}
	if err := unix.Linkat(o.index, n.indexName, pfd, name, 0); err != nil {
		if err == unix.EEXIST {
			return unix.ENOENT // the name was removed or replaced meanwhile
		}
		return fmt.Errorf("link up %s: %w", name, err)
	}
	fault.Hit("linkup.linked")
	o.setNlink(n.indexName, cur) // one more upper link, no new overlay name
	parent.noteUpper(pfd)
	o.noteAt(o.index, n.indexName)
	if o.cfg.FsyncStrict {
		if err := errors.Join(fsyncAt(o.index, "."), fsyncAt(o.index, n.indexName), fsyncAt(pfd, ".")); err != nil {
			return fmt.Errorf("link up %s: fsync: %w", name, err)
		}
	}
	n.inUpper, n.realIno = true, ist.Ino
	return nil
}
