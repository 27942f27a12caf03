package overlay

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/internal/fault"
	"github.com/ovl-project/ovl/layerindex"
)

// Metadata-only copy-up (kernel: metacopy=on):
//   - chmod, chown, utimes, set/remove xattr, link and rename of a lower
//     regular file copy up its metadata only: the upper file has the lower
//     file's size, no data blocks, overlay.origin, and an empty
//     overlay.metacopy. Its data is read from the lower file.
//   - Opening for write, O_TRUNC and truncate copy the data into the upper
//     file in place, then remove overlay.metacopy: until then a crash
//     leaves a file whose data is still found below.
//   - The lower data is found by the upper file's name in the parent's lower
//     directories, or by its overlay.redirect: a metacopy file that moves
//     records where its data is, like a directory (absolute when it leaves
//     its directory or its lower file has several links).
//   - st_blocks is the lower file's (kernel: ovl_getattr).
//   - overlay.metacopy is read on every upper and lower regular file, as
//     the kernel does, whatever the mount's options: without metacopy=on a
//     metacopy file is EPERM (the kernel will not follow it to its data);
//     a value of 1 to 3 bytes is EIO; with metacopy=on, a metacopy file
//     with no data below is EIO. A metacopy file in a lower layer above its
//     data (a lower written by metacopy=on) is not served yet: EOPNOTSUPP
//     (docs/differences.md).

// markMetacopy makes the new copy fd (a regular file in work/, open for
// writing) a metacopy upper of a lower file of size bytes.
func (o *Overlay) markMetacopy(fd int, size int64) error {
	if err := unix.Ftruncate(fd, size); err != nil {
		return err
	}
	return unix.Fsetxattr(fd, o.names.Name(format.Metacopy), []byte{}, 0)
}

// dataAt opens (O_PATH) the lower file that holds the data of the metacopy
// node n.
func (n *Node) dataAt() (int, error) {
	o := n.o
	parent, name := n.location()
	n.mu.Lock()
	r, lowers := n.redirect, n.lowers
	n.mu.Unlock()
	if len(lowers) == 0 {
		return -1, fmt.Errorf("metacopy %s: no lower data: %w", name, unix.EIO)
	}
	l := lowers[0].layer
	if r != "" && r[0] == '/' {
		for _, lr := range o.root.lowers {
			if lr.layer == l {
				w, err := o.walkLower(lr, r)
				if err != nil || !w.found {
					return -1, fmt.Errorf("metacopy %s: lower data %s: %w", name, r, unix.EIO)
				}
				defer w.close()
				return format.OpenAt(w.dirfd, w.leaf, unix.O_PATH|unix.O_NOFOLLOW, 0)
			}
		}
		return -1, unix.EIO
	}
	if r != "" {
		name = r
	}
	if parent == nil {
		return -1, unix.ESTALE
	}
	dirfd := parent.lowerFd(l)
	if dirfd < 0 {
		return -1, fmt.Errorf("metacopy %s: parent lost its lower: %w", name, unix.EIO)
	}
	return format.OpenAt(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
}

// copyUpData copies the data of the metacopy node n into its upper file
// (n.mu is held); truncate skips the copy (the caller truncates to zero).
func (n *Node) copyUpData(truncate bool) error {
	o := n.o
	n.mu.Unlock()
	src, err := n.dataAt()
	var up int
	var done func()
	if err == nil {
		up, done, err = n.real()
	}
	n.mu.Lock()
	if err != nil {
		if src >= 0 {
			unix.Close(src)
		}
		return err
	}
	defer unix.Close(src)
	defer done()
	if !n.metacopy { // done by another caller meanwhile
		return nil
	}
	dst, err := unix.Open(format.ProcPath(up), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("copy up data: %w", err)
	}
	defer unix.Close(dst)
	o.note(dst)
	var copied int64
	if !truncate {
		var st unix.Stat_t
		if err := unix.Fstat(src, &st); err != nil {
			return err
		}
		in, err := unix.Open(format.ProcPath(src), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("copy up data: %w", err)
		}
		copied, err = copyData(in, dst, st.Size, &n.o.noClone)
		unix.Close(in)
		if err != nil {
			return fmt.Errorf("copy up data: %w", err)
		}
	}
	if !o.cfg.Volatile {
		if err := unix.Fsync(dst); err != nil {
			return err
		}
	}
	fault.Hit("metacopy.data")
	if err := format.Removexattr(up, o.names.Name(format.Metacopy)); err != nil && err != unix.ENODATA {
		return fmt.Errorf("copy up data: %w", err)
	}
	n.metacopy = false
	o.stats.copyUpBytes.Add(uint64(copied))
	return nil
}

// metacopyAt reads overlay.metacopy of the regular file name in the layer
// directory dirfd: whether it is a metacopy file; EIO for a value too
// short to be one (format.ParseMetacopy).
func (o *Overlay) metacopyAt(dirfd int, name string, ce *layerindex.Entry) (bool, error) {
	v := cachedXattr(ce, dirfd, name, o.names.Name(format.Metacopy))
	mc, err := format.ParseMetacopy(v)
	if err != nil {
		return false, fmt.Errorf("%s of %s: %w", o.names.Name(format.Metacopy), name, err)
	}
	return mc, nil
}

// lowerMetacopy answers the lookup of a lower regular file that carries
// overlay.metacopy, found as look in cands[i]. The kernel refuses it
// unless metacopy=on (EPERM, ovl_check_nextredirect), and fails where no
// layer below holds its data (EIO, "metacopy with no lower data found").
// With metacopy=on it takes the data from the layer below; ovl does not
// serve such a stack yet (docs/differences.md): EOPNOTSUPP, never the
// metacopy file's own (empty) blocks as data.
func (o *Overlay) lowerMetacopy(name, look string, i int, cands []lowerRef) error {
	if !o.metacopyOn {
		return fmt.Errorf("refusing to follow the metacopy origin of %s: %w", name, unix.EPERM)
	}
	var st unix.Stat_t
	for _, lr := range cands[i+1:] {
		w, err := o.walkLower(lr, look)
		if err != nil {
			return err
		}
		k := entryNone
		if w.found {
			k, err = o.probe(w.dirfd, w.xwh, w.aufs, w.leaf, &st)
		}
		w.close()
		if err != nil {
			return err
		}
		if k == entryOther && st.Mode&unix.S_IFMT == unix.S_IFREG {
			return fmt.Errorf("metacopy %s in a lower layer: %w", name, unix.EOPNOTSUPP)
		}
		if k != entryNone {
			break
		}
	}
	return fmt.Errorf("metacopy %s: no lower data: %w", name, unix.EIO)
}

// lookupMetacopy checks child, an upper regular file found as name in the
// upper directory dirfd, for overlay.metacopy and, if it carries one,
// finds its lower data (kernel: ovl_lookup with uppermetacopy). cands are
// the parent's lower directories. It returns whether child is a metacopy
// file. Without metacopy=on such a file is EPERM, as in the kernel.
func (o *Overlay) lookupMetacopy(child *Node, dirfd int, name string, cands []lowerRef) (bool, error) {
	mc, err := o.metacopyAt(dirfd, name, nil)
	if err != nil || !mc {
		return false, err
	}
	look := name
	r, ok, err := o.redirectAt(dirfd, name)
	if err != nil {
		return false, err
	}
	if ok {
		look = r
		child.redirect = look
		if strings.HasPrefix(look, "/") {
			cands = o.root.lowers
		}
	}
	if !o.metacopyOn {
		return false, fmt.Errorf("refusing to follow the metacopy origin of %s: %w", name, unix.EPERM)
	}
	var st unix.Stat_t
	for i, lr := range cands {
		w, err := o.walkLower(lr, look)
		if err != nil {
			return false, err
		}
		k := entryNone
		if w.found {
			k, err = o.probe(w.dirfd, w.xwh, w.aufs, w.leaf, &st)
		}
		lowerMC := false
		if err == nil && k == entryOther && st.Mode&unix.S_IFMT == unix.S_IFREG {
			lowerMC, err = o.metacopyAt(w.dirfd, w.leaf, nil)
		}
		w.close()
		if err != nil {
			return false, err
		}
		if k == entryWhiteout {
			break
		}
		if lowerMC {
			return false, o.lowerMetacopy(name, look, i, cands)
		}
		if k == entryOther && st.Mode&unix.S_IFMT == unix.S_IFREG {
			child.lowers = []lowerRef{{layer: lr.layer, fd: -1}}
			child.metacopy = true
			return true, nil
		}
	}
	return false, fmt.Errorf("metacopy %s: no lower data: %w", name, unix.EIO)
}

// DataInUpper reports whether the object's data is in the upper layer: it
// was copied up, and not as metadata only.
func (n *Node) DataInUpper() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.inUpper && !n.metacopy
}

func sizeMode(size uint64) copyMode {
	if size == 0 {
		return copyNone
	}
	return copyAll
}

func openMode(flags int) copyMode {
	if flags&unix.O_TRUNC != 0 {
		return copyNone
	}
	return copyAll
}

func (n *Node) isMetacopy() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.metacopy
}

// lowerHardlink reports whether a metacopy node's lower file has several
// links: its redirect must then be absolute, since its upper links may be
// in different directories (kernel: ovl_need_absolute_redirect).
func (n *Node) lowerHardlink() bool {
	if n.IsDir() || !n.isMetacopy() {
		return false
	}
	fd, err := n.dataAt()
	if err != nil {
		return true
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	return unix.Fstat(fd, &st) != nil || st.Nlink > 1
}
