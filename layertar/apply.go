package layertar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// ApplyOptions say how Apply writes the layer directory.
type ApplyOptions struct {
	// UserXattr writes the overlay's markers (opaque directories, xattr
	// whiteouts) under user.overlay.*, for mounts with userxattr, instead
	// of trusted.overlay.*, which needs CAP_SYS_ADMIN.
	UserXattr bool
}

// ApplyResult describes what Apply wrote.
type ApplyResult struct {
	// Entries is the number of tar entries read.
	Entries int
	// XattrWhiteouts counts the whiteouts written as xattr whiteouts
	// because mknod of a character device 0/0 was refused. A layer that
	// holds any can only be a lower layer: the kernel does not read them
	// in an upper layer (Documentation/filesystems/overlayfs.rst).
	XattrWhiteouts int
}

// Limits of names and values, as Linux has them.
const (
	pathMax      = 4095 // PATH_MAX without its NUL
	xattrNameMax = 255  // XATTR_NAME_MAX
	xattrSizeMax = 1 << 16
)

// Apply unpacks the layer tar r (uncompressed; see Decompress) into the
// directory dir, which must exist, in the kernel's overlayfs format (see
// the package doc for the rules). Nothing outside dir is ever written: an
// entry that would reach outside it is refused with an error, and so is
// everything Apply cannot represent. On error, dir holds what was applied
// before.
func Apply(r io.Reader, dir string, o ApplyOptions) (*ApplyResult, error) {
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("apply: %w", &os.PathError{Op: "open", Path: dir, Err: err})
	}
	a := &applier{
		root:  root,
		names: format.NewNames(o.UserXattr),
		dirs:  map[string]dirMeta{},
		wh:    map[string][]string{},
		xwh:   map[string][]string{},
		buf:   make([]byte, 1<<20),
	}
	defer a.close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return &a.res, fmt.Errorf("apply: read layer (after %d entries): %w", a.res.Entries, err)
		}
		a.res.Entries++
		if err := a.entry(hdr, tr); err != nil {
			return &a.res, fmt.Errorf("apply: %w", err)
		}
	}
	if err := a.finishDirs(); err != nil {
		return &a.res, fmt.Errorf("apply: %w", err)
	}
	return &a.res, nil
}

// applier is one Apply in progress.
type applier struct {
	root  int // O_PATH descriptor of the layer directory
	names format.Names
	// dirs holds the mode and mtime of each directory entry, set last.
	dirs map[string]dirMeta
	// wh lists, per directory, the whiteouts made in it, and xwh those of
	// them that are xattr whiteouts: an opaque marker removes them (they
	// would hide nothing, and xattr whiteouts would show as files).
	wh, xwh map[string][]string
	// The directory of the last entry, kept open for the next.
	lastDir   string
	lastDirFd int
	haveLast  bool
	buf       []byte
	res       ApplyResult
}

type dirMeta struct {
	mode  uint32
	mtime time.Time
}

func (a *applier) close() {
	if a.haveLast {
		unix.Close(a.lastDirFd)
	}
	unix.Close(a.root)
}

// cleanName turns a tar name into its components, and refuses one that is
// absolute, climbs with "..", holds a NUL or is too long. "." and empty
// components are dropped: "./a//b/" is a/b; the root has no component.
func cleanName(name string) ([]string, error) {
	switch {
	case strings.IndexByte(name, 0) >= 0:
		return nil, fmt.Errorf("name %q holds a NUL byte", name)
	case strings.HasPrefix(name, "/"):
		return nil, fmt.Errorf("name %q is absolute", name)
	case len(name) > pathMax:
		return nil, fmt.Errorf("name %.64q... is %d bytes long, longer than PATH_MAX", name, len(name))
	}
	var comps []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, fmt.Errorf("name %q leaves the layer (..)", name)
		}
		comps = append(comps, c)
	}
	return comps, nil
}

// checkComponent refuses a name longer than NAME_MAX, which no layer
// filesystem holds.
func checkComponent(full, c string) error {
	if len(c) > format.NameMax {
		return fmt.Errorf("%.64q...: a name of %d bytes, longer than NAME_MAX (%d)", full, len(c), format.NameMax)
	}
	return nil
}

// entry applies one tar entry.
func (a *applier) entry(hdr *tar.Header, r io.Reader) error {
	comps, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // PAX defaults for later entries: Next has applied them
	}
	if len(comps) == 0 {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%q: the layer root can only be a directory", hdr.Name)
		}
		return a.dir(nil, hdr)
	}
	name := strings.Join(comps, "/")
	parent, base := comps[:len(comps)-1], comps[len(comps)-1]
	for _, c := range parent {
		if err := checkComponent(name, c); err != nil {
			return err
		}
	}
	switch {
	case base == opaqueMarker:
		return a.opaque(parent)
	case strings.HasPrefix(base, whiteoutPrefix+whiteoutPrefix):
		return nil // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing for an overlay
	case strings.HasPrefix(base, whiteoutPrefix):
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if !format.RedirectComponentOK(target) {
			return fmt.Errorf("%s: whiteout of %q", name, target)
		}
		return a.whiteout(parent, target, join(strings.Join(parent, "/"), target))
	}
	if err := checkComponent(name, base); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		return a.dir(comps, hdr)
	}
	pfd, err := a.parentDir(parent)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		return a.file(pfd, base, name, hdr, r)
	case tar.TypeLink:
		return a.link(pfd, base, name, hdr)
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) > pathMax || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return fmt.Errorf("%s: invalid symlink target (%d bytes)", name, len(hdr.Linkname))
		}
		if err := a.replace(pfd, base, name, false); err != nil {
			return err
		}
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("%s: symlink: %w", name, err)
		}
		return a.meta(pfd, base, name, hdr, true)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return a.node(pfd, base, name, hdr)
	}
	return fmt.Errorf("%s: entry type %q is not supported", name, hdr.Typeflag)
}

// parentDir opens the directory comps, making the directories missing on
// the way. The descriptor belongs to the applier.
func (a *applier) parentDir(comps []string) (int, error) {
	p := strings.Join(comps, "/")
	if a.haveLast && a.lastDir == p {
		return a.lastDirFd, nil
	}
	fd, err := a.openDir(comps, true)
	if err != nil {
		return -1, err
	}
	if a.haveLast {
		unix.Close(a.lastDirFd)
	}
	a.lastDir, a.lastDirFd, a.haveLast = p, fd, true
	return fd, nil
}

// forgetDir drops the kept descriptor if it is of p or below: p is about
// to be removed or replaced.
func (a *applier) forgetDir(p string) {
	if a.haveLast && (a.lastDir == p || strings.HasPrefix(a.lastDir, p+"/")) {
		unix.Close(a.lastDirFd)
		a.haveLast = false
	}
}

// openDir opens the directory comps beneath the root (O_PATH), never
// through a symlink or into another mount. With create, missing
// directories are made (mode 0755, as other unpackers make implied
// parents), and a whiteout on the way becomes an opaque directory: the
// layer deletes the lower object and puts a directory of its own there.
func (a *applier) openDir(comps []string, create bool) (int, error) {
	p := strings.Join(comps, "/")
	if p == "" {
		p = "."
	}
	fd, err := format.OpenAt(a.root, p, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
		return fd, openErr(p, err)
	}
	cur, err := format.OpenAt(a.root, ".", unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, err
	}
	for i, c := range comps {
		sub := strings.Join(comps[:i+1], "/")
		var st unix.Stat_t
		err := format.Lstat(cur, c, &st)
		switch {
		case errors.Is(err, unix.ENOENT):
			err = a.mkdir(cur, c, 0o755, sub)
		case err != nil:
		case format.IsWhiteoutStat(&st):
			if err = unix.Unlinkat(cur, c, 0); err == nil {
				if err = a.mkdir(cur, c, 0o755, sub); err == nil {
					err = a.setOpaque(cur, c, sub)
				}
			}
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			err = fmt.Errorf("%s is not a directory", sub)
		}
		if err != nil {
			unix.Close(cur)
			return -1, err
		}
		next, err := format.OpenAt(cur, c, unix.O_PATH|unix.O_DIRECTORY, 0)
		unix.Close(cur)
		if err != nil {
			return -1, openErr(sub, err)
		}
		cur = next
	}
	return cur, nil
}

// openErr says why a directory of the layer could not be opened, in the
// words of the attack it stops.
func openErr(p string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ELOOP):
		return fmt.Errorf("%s: the path goes through a symlink (refused: it could lead outside the layer): %w", p, err)
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%s: the path crosses a mount or leaves the layer (refused): %w", p, err)
	case errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%s: not a directory: %w", p, err)
	}
	return fmt.Errorf("%s: %w", p, err)
}

func (a *applier) mkdir(dirfd int, name string, mode uint32, p string) error {
	if err := unix.Mkdirat(dirfd, name, mode); err != nil {
		return fmt.Errorf("%s: mkdir: %w", p, err)
	}
	return nil
}

// replace clears the way for a new object at name: a non-directory is
// unlinked, never written through; a directory is removed only when empty,
// and kept when the new object is a directory too.
func (a *applier) replace(pfd int, name, p string, isDir bool) error {
	var st unix.Stat_t
	err := format.Lstat(pfd, name, &st)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return fmt.Errorf("%s: %w", p, err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		if isDir {
			return nil
		}
		a.forgetDir(p)
		if err := unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR); err != nil {
			return fmt.Errorf("%s: replace a directory: %w", p, err)
		}
		delete(a.dirs, p)
		return nil
	}
	if err := unix.Unlinkat(pfd, name, 0); err != nil {
		return fmt.Errorf("%s: replace: %w", p, err)
	}
	return nil
}

// dir applies a directory entry (comps nil: the layer root).
func (a *applier) dir(comps []string, hdr *tar.Header) error {
	p := strings.Join(comps, "/")
	var fd int
	if len(comps) == 0 {
		var err error
		if fd, err = format.OpenAt(a.root, ".", unix.O_PATH|unix.O_DIRECTORY, 0); err != nil {
			return err
		}
	} else {
		pfd, err := a.parentDir(comps[:len(comps)-1])
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		name := comps[len(comps)-1]
		var st unix.Stat_t
		err = format.Lstat(pfd, name, &st)
		wasWhiteout := err == nil && format.IsWhiteoutStat(&st)
		if err := a.replace(pfd, name, p, true); err != nil {
			return err
		}
		if err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// Owner-only until the end, so that entries can be made in
			// it whatever its final mode.
			if err := a.mkdir(pfd, name, 0o700, p); err != nil {
				return err
			}
		}
		if wasWhiteout {
			// The layer deletes the lower object and makes a new
			// directory: nothing below may show through it.
			if err := a.setOpaque(pfd, name, p); err != nil {
				return err
			}
		}
		if fd, err = format.OpenAt(pfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0); err != nil {
			return openErr(p, err)
		}
	}
	defer unix.Close(fd)
	if err := a.owner(fd, p, hdr); err != nil {
		return err
	}
	if err := a.xattrs(fd, "", p, hdr, false); err != nil {
		return err
	}
	a.dirs[p] = dirMeta{mode: uint32(hdr.Mode) & 0o7777, mtime: hdr.ModTime}
	return nil
}

// file applies a regular file: made anew (O_EXCL), its data written with
// holes where it is zero.
func (a *applier) file(pfd int, name, p string, hdr *tar.Header, r io.Reader) error {
	if err := a.replace(pfd, name, p, false); err != nil {
		return err
	}
	fd, err := format.OpenAt(pfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("%s: create: %w", p, err)
	}
	defer unix.Close(fd)
	if err := a.copyData(fd, r, hdr.Size); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return a.metaFd(fd, p, hdr)
}

// copyData writes n bytes from r to fd, seeking over blocks of zeros so
// that they stay holes.
func (a *applier) copyData(fd int, r io.Reader, n int64) error {
	const block = 4096
	var off int64
	hole := false
	for off < n {
		k := int64(len(a.buf))
		if n-off < k {
			k = n - off
		}
		if _, err := io.ReadFull(r, a.buf[:k]); err != nil {
			return fmt.Errorf("read data: %w", err)
		}
		for i := int64(0); i < k; i += block {
			end := min(i+block, k)
			chunk := a.buf[i:end]
			if isZero(chunk) {
				hole = true
				continue
			}
			if _, err := unix.Pwrite(fd, chunk, off+i); err != nil {
				return fmt.Errorf("write: %w", err)
			}
		}
		off += k
	}
	if hole {
		return unix.Ftruncate(fd, n)
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// link applies a hard link to an earlier name of the layer.
func (a *applier) link(pfd int, name, p string, hdr *tar.Header) error {
	tcomps, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("%s: hard link: target %w", p, err)
	}
	if len(tcomps) == 0 {
		return fmt.Errorf("%s: hard link to the layer root", p)
	}
	target := strings.Join(tcomps, "/")
	if target == p {
		return fmt.Errorf("%s: hard link to itself", p)
	}
	tfd, err := a.openDir(tcomps[:len(tcomps)-1], false)
	if err != nil {
		return fmt.Errorf("%s: hard link target %s: %w", p, target, err)
	}
	defer unix.Close(tfd)
	tname := tcomps[len(tcomps)-1]
	var st unix.Stat_t
	if err := format.Lstat(tfd, tname, &st); err != nil {
		return fmt.Errorf("%s: hard link target %s: %w", p, target, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%s: hard link to the directory %s", p, target)
	}
	if err := a.replace(pfd, name, p, false); err != nil {
		return err
	}
	// No AT_SYMLINK_FOLLOW: a symlink target is linked itself.
	if err := unix.Linkat(tfd, tname, pfd, name, 0); err != nil {
		return fmt.Errorf("%s: hard link to %s: %w", p, target, err)
	}
	return nil
}

// node applies a device or a FIFO.
func (a *applier) node(pfd int, name, p string, hdr *tar.Header) error {
	mode := uint32(unix.S_IFIFO)
	dev := 0
	switch hdr.Typeflag {
	case tar.TypeChar, tar.TypeBlock:
		if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > 0xfff || hdr.Devminor > 0xfffff {
			return fmt.Errorf("%s: invalid device number %d:%d", p, hdr.Devmajor, hdr.Devminor)
		}
		mode = unix.S_IFBLK
		if hdr.Typeflag == tar.TypeChar {
			mode = unix.S_IFCHR
			if hdr.Devmajor == 0 && hdr.Devminor == 0 {
				return fmt.Errorf("%s: a character device 0/0 is a whiteout in an overlay layer; a layer says that with a %q entry (refused)", p, whiteoutPrefix+name)
			}
		}
		dev = int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
	}
	if err := a.replace(pfd, name, p, false); err != nil {
		return err
	}
	if err := unix.Mknodat(pfd, name, mode|0o600, dev); err != nil {
		if mode != unix.S_IFIFO && errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%s: device node %d:%d: creating device nodes needs CAP_MKNOD (refused): %w", p, hdr.Devmajor, hdr.Devminor, err)
		}
		return fmt.Errorf("%s: mknod: %w", p, err)
	}
	return a.meta(pfd, name, p, hdr, false)
}

// meta sets the owner, mode, xattrs and mtime of the new entry name in pfd.
func (a *applier) meta(pfd int, name, p string, hdr *tar.Header, symlink bool) error {
	if symlink {
		if err := unix.Fchownat(pfd, name, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil && !sameOwner(pfd, name, hdr) {
			return fmt.Errorf("%s: chown %d:%d: %w", p, hdr.Uid, hdr.Gid, err)
		}
		if err := a.xattrs(pfd, name, p, hdr, true); err != nil {
			return err
		}
		return setTimes(pfd, name, p, hdr.ModTime, unix.AT_SYMLINK_NOFOLLOW)
	}
	fd, err := format.OpenAt(pfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer unix.Close(fd)
	return a.metaFd(fd, p, hdr)
}

// metaFd is meta through a descriptor of the object (not a symlink).
func (a *applier) metaFd(fd int, p string, hdr *tar.Header) error {
	// chown first: it clears setuid and setgid, and security.capability.
	if err := a.owner(fd, p, hdr); err != nil {
		return err
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, format.ProcPath(fd), uint32(hdr.Mode)&0o7777, 0); err != nil {
		return fmt.Errorf("%s: chmod %#o: %w", p, hdr.Mode, err)
	}
	if err := a.xattrs(fd, "", p, hdr, false); err != nil {
		return err
	}
	return setTimes(unix.AT_FDCWD, format.ProcPath(fd), p, hdr.ModTime, 0)
}

// owner sets the owner of fd's object; a refusal is an error unless the
// object already has that owner (an unprivileged apply of its own files).
func (a *applier) owner(fd int, p string, hdr *tar.Header) error {
	err := unix.Fchownat(fd, "", hdr.Uid, hdr.Gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
	if err == nil {
		return nil
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && int(st.Uid) == hdr.Uid && int(st.Gid) == hdr.Gid {
		return nil
	}
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%s: chown %d:%d: %w (the layer's owners need root, or a user namespace that maps them, such as podman unshare's)", p, hdr.Uid, hdr.Gid, err)
	}
	return fmt.Errorf("%s: chown %d:%d: %w", p, hdr.Uid, hdr.Gid, err)
}

func sameOwner(pfd int, name string, hdr *tar.Header) bool {
	var st unix.Stat_t
	return format.Lstat(pfd, name, &st) == nil && int(st.Uid) == hdr.Uid && int(st.Gid) == hdr.Gid
}

func setTimes(dirfd int, name, p string, mtime time.Time, flags int) error {
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(dirfd, name, ts, flags); err != nil {
		return fmt.Errorf("%s: set mtime: %w", p, err)
	}
	return nil
}

// xattrs sets the entry's xattrs on fd ("" name) or on name in the
// directory fd without following it (symlinks). Names in either overlay
// namespace are escaped, so that the layer carries no overlay metadata.
func (a *applier) xattrs(fd int, name, p string, hdr *tar.Header, at bool) error {
	var keys []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, paxXattr) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		x, v := strings.TrimPrefix(k, paxXattr), hdr.PAXRecords[k]
		if x == "" || len(x) > xattrNameMax || len(v) > xattrSizeMax {
			return fmt.Errorf("%s: xattr %.64q: name or value too long", p, x)
		}
		x = format.NewNames(true).Escape(format.NewNames(false).Escape(x))
		var err error
		if at {
			err = format.SetxattrAt(fd, name, x, []byte(v), 0)
		} else {
			err = format.Setxattr(fd, x, []byte(v), 0)
		}
		if err != nil {
			return fmt.Errorf("%s: setxattr %s: %w", p, x, err)
		}
	}
	return nil
}

// whiteout applies ".wh.NAME" in the directory parent: a character
// device 0/0, or where mknod is refused an xattr whiteout.
func (a *applier) whiteout(parent []string, name, p string) error {
	if err := checkComponent(p, name); err != nil {
		return err
	}
	pfd, err := a.parentDir(parent)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	var st unix.Stat_t
	err = format.Lstat(pfd, name, &st)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		// The layer holds a directory of that name: the whiteout says
		// the lower one is gone, so this one stands alone.
		return a.setOpaque(pfd, name, p)
	case err == nil:
		return nil // whiteout already, or an object of the layer, which hides the lower one
	case !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%s: %w", p, err)
	}
	dir := strings.Join(parent, "/")
	if dir != "" {
		v, err := format.Getxattr(pfd, a.names.Name(format.Opaque))
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if y, _ := format.ParseOpaque(v); y {
			return nil // an opaque directory hides every lower name anyway
		}
	}
	err = format.MakeWhiteout(pfd, name)
	if err == nil {
		a.wh[dir] = append(a.wh[dir], name)
		return nil
	}
	if !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%s: whiteout: %w", p, err)
	}
	// Where mknod is refused: an xattr whiteout, which the kernel reads
	// in a directory marked opaque=x of a lower layer, never at a layer
	// root (it reads no marker there).
	if dir == "" {
		return fmt.Errorf("%s: whiteout at the layer root: mknod refused (%v), and an xattr whiteout does not work in a layer root", p, err)
	}
	fd, err := format.OpenAt(pfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("%s: xattr whiteout: %w", p, err)
	}
	err = unix.Fsetxattr(fd, a.names.Name(format.Whiteout), []byte("y"), 0)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("%s: xattr whiteout: %w", p, err)
	}
	if err := format.Setxattr(pfd, a.names.Name(format.Opaque), []byte{format.OpaqueXWhiteouts}, 0); err != nil {
		return fmt.Errorf("%s: mark %s for xattr whiteouts: %w", dir, filepath.Base(dir), err)
	}
	a.xwh[dir] = append(a.xwh[dir], name)
	a.wh[dir] = append(a.wh[dir], name)
	a.res.XattrWhiteouts++
	return nil
}

// opaque applies ".wh..wh..opq": its directory hides the layers below. A
// marker at the layer root is ignored, as the kernel ignores one there.
func (a *applier) opaque(comps []string) error {
	if len(comps) == 0 {
		return nil
	}
	p := strings.Join(comps, "/")
	for _, c := range comps {
		if err := checkComponent(p, c); err != nil {
			return err
		}
	}
	// The directory itself, made if missing (an opaque marker may come
	// before or without its directory's entry).
	fd, err := a.openDir(comps, true)
	if err != nil {
		return err
	}
	unix.Close(fd)
	pfd, err := a.parentDir(comps[:len(comps)-1])
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return a.setOpaque(pfd, comps[len(comps)-1], p)
}

// setOpaque marks the directory name in pfd opaque, removing the xattr
// whiteouts made in it (in an opaque directory they would be files).
func (a *applier) setOpaque(pfd int, name, p string) error {
	fd, err := format.OpenAt(pfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return openErr(p, err)
	}
	defer unix.Close(fd)
	xwh := map[string]bool{}
	for _, wh := range a.xwh[p] {
		xwh[wh] = true
	}
	for _, wh := range a.wh[p] {
		var st unix.Stat_t
		if format.Lstat(fd, wh, &st) != nil {
			continue // replaced by an entry of the layer, and gone since
		}
		if !format.IsWhiteoutStat(&st) && !(xwh[wh] && format.MaybeXWhiteout(&st)) {
			continue // an entry of the layer took the name
		}
		if err := unix.Unlinkat(fd, wh, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%s/%s: %w", p, wh, err)
		}
		if xwh[wh] {
			a.res.XattrWhiteouts--
		}
	}
	delete(a.xwh, p)
	delete(a.wh, p)
	if err := format.Setxattr(fd, a.names.Name(format.Opaque), format.OpaqueValue(), 0); err != nil {
		return fmt.Errorf("%s: mark opaque (%s): %w", p, a.names.Name(format.Opaque), err)
	}
	return nil
}

// finishDirs sets the modes and mtimes of the directory entries, deepest
// first, now that nothing more is made in them.
func (a *applier) finishDirs() error {
	paths := make([]string, 0, len(a.dirs))
	for p := range a.dirs {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool {
		di, dj := strings.Count(paths[i], "/"), strings.Count(paths[j], "/")
		if di != dj {
			return di > dj
		}
		return paths[i] < paths[j]
	})
	for _, p := range paths {
		m := a.dirs[p]
		name := p
		if name == "" {
			name = "."
		}
		fd, err := format.OpenAt(a.root, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return openErr(name, err)
		}
		err = unix.Fchmodat(unix.AT_FDCWD, format.ProcPath(fd), m.mode, 0)
		if err == nil {
			err = setTimes(unix.AT_FDCWD, format.ProcPath(fd), name, m.mtime, 0)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}
