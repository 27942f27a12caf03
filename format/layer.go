package format

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Resolve is the openat2 resolution every layer walk uses: never leave the
// directory we start from, never follow a symlink (a symlink in a layer is an
// object of the overlay, resolved by the kernel above us, never by us), and
// never cross into another mount, so a mount inside a layer (ovl's own
// mountpoint included) is never entered.
const Resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS |
	unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// OpenAt opens name (one component or a relative path) beneath dirfd with the
// layer resolution rules. A trailing symlink is opened itself when flags hold
// O_PATH|O_NOFOLLOW.
func OpenAt(dirfd int, name string, flags int, mode uint32) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: Resolve}
	for {
		fd, err := unix.Openat2(dirfd, name, &how)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			// openat2 returns EAGAIN when a concurrent rename raced with
			// RESOLVE_BENEATH's check; retrying is what the man page asks.
			continue
		}
		return fd, err
	}
}

// Lstat stats one name in a directory without following it. A name that is
// a mountpoint is reported as EXDEV-free: the entry is stat'ed on the layer's
// own filesystem when the layer was opened as a detached clone (see
// OpenLayerRoot); otherwise a different st_dev tells the caller it crossed.
func Lstat(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
}

// IsWhiteoutStat reports a char device 0/0, the kernel's whiteout.
func IsWhiteoutStat(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// MaybeXWhiteout reports whether st could be an xattr whiteout: a zero-size
// regular file. Only then is the xattr worth reading.
func MaybeXWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0
}

// ProcPath names an open file descriptor through /proc, so that calls that
// take only paths (getxattr on an O_PATH fd, for one) reach the very inode
// the fd holds, symlinks included, without any path walk in a layer.
func ProcPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// Getxattr reads an xattr of the object fd refers to (fd may be O_PATH).
// It returns nil, nil when the attribute is absent.
func Getxattr(fd int, name string) ([]byte, error) {
	return getxattr(fd, "", name)
}

// GetxattrFile is Getxattr for an object known not to be a directory. For
// an O_PATH descriptor getxattrat can neither read the fd itself
// (AT_EMPTY_PATH wants a readable one) nor look "." up from a
// non-directory, so this goes through /proc at once: one call, not a
// failing getxattrat first.
func GetxattrFile(fd int, name string) ([]byte, error) {
	return xattrValue(func(buf []byte) (int, error) { return unix.Getxattr(ProcPath(fd), name, buf) })
}

// Fgetxattr reads an xattr of the object open for reading or writing at
// fd (not O_PATH). It returns nil, nil when the attribute is absent.
func Fgetxattr(fd int, name string) ([]byte, error) {
	return xattrValue(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) })
}

// xattrValue calls get with a buffer large enough for any value (64 KiB,
// XATTR_SIZE_MAX), growing it on ERANGE; an absent attribute, or one the
// filesystem cannot hold, is nil, nil.
func xattrValue(get func(buf []byte) (int, error)) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := get(buf)
		switch {
		case err == unix.ERANGE && len(buf) < 1<<16:
			buf = make([]byte, 1<<16)
			continue
		case err == unix.ENODATA || err == unix.EOPNOTSUPP:
			return nil, nil
		case err != nil:
			return nil, err
		}
		return buf[:n], nil
	}
}

// GetxattrAt reads an xattr of name (one path component) in dirfd without
// following it. It returns nil, nil when the attribute is absent.
func GetxattrAt(dirfd int, name, attr string) ([]byte, error) {
	if strings.ContainsRune(name, '/') || name == ".." {
		return nil, unix.EINVAL
	}
	return getxattr(dirfd, name, attr)
}

// noXattrAt is set once getxattrat(2) (Linux 6.13) is known to be missing.
var noXattrAt atomic.Bool

// getxattr reads attr of name in dirfd ("": dirfd itself). getxattrat
// reads it in one call, without the walk through /proc that the
// path-based calls need for an O_PATH descriptor.
func getxattr(dirfd int, name, attr string) ([]byte, error) {
	return xattrValue(func(buf []byte) (int, error) {
		if !noXattrAt.Load() {
			// An O_PATH descriptor cannot be read with AT_EMPTY_PATH, but a
			// directory's "." can be looked up from it.
			at := name
			if at == "" {
				at = "."
			}
			n, err := getxattrat(dirfd, at, attr, buf)
			if err != unix.ENOSYS {
				if err == unix.ENOTDIR && name == "" {
					return unix.Getxattr(ProcPath(dirfd), attr, buf)
				}
				return n, err
			}
			noXattrAt.Store(true)
		}
		if name == "" {
			return unix.Getxattr(ProcPath(dirfd), attr, buf)
		}
		fd, err := OpenAt(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
		if err != nil {
			return 0, err
		}
		defer unix.Close(fd)
		return unix.Getxattr(ProcPath(fd), attr, buf)
	})
}

// xattrArgs is struct xattr_args of getxattrat(2).
type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

func getxattrat(dirfd int, name, attr string, buf []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	a, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, err
	}
	args := xattrArgs{size: uint32(len(buf))}
	if len(buf) > 0 {
		args.value = uint64(uintptr(unsafe.Pointer(&buf[0])))
	}
	flags := unix.AT_SYMLINK_NOFOLLOW
	r, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags),
		uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	runtime.KeepAlive(buf)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Setxattr sets an xattr on the object fd refers to (fd may be O_PATH).
func Setxattr(fd int, name string, value []byte, flags int) error {
	return unix.Setxattr(ProcPath(fd), name, value, flags)
}

// Removexattr removes an xattr from the object fd refers to.
func Removexattr(fd int, name string) error {
	return unix.Removexattr(ProcPath(fd), name)
}

// Listxattr lists the xattr names of the object fd refers to.
func Listxattr(fd int) ([]string, error) {
	sz, err := unix.Listxattr(ProcPath(fd), nil)
	if err != nil {
		if err == unix.EOPNOTSUPP {
			return nil, nil
		}
		return nil, err
	}
	if sz == 0 {
		return nil, nil
	}
	buf := make([]byte, sz*2)
	n, err := unix.Listxattr(ProcPath(fd), buf)
	if err != nil {
		return nil, err
	}
	var names []string
	start := 0
	for i := 0; i < n; i++ {
		if buf[i] == 0 {
			if i > start {
				names = append(names, string(buf[start:i]))
			}
			start = i + 1
		}
	}
	return names, nil
}

// MakeWhiteout creates a char device 0/0 whiteout at name in dirfd.
func MakeWhiteout(dirfd int, name string) error {
	return unix.Mknodat(dirfd, name, unix.S_IFCHR, 0)
}

// FSUUID returns the UUID of the filesystem fd is on, as the kernel's
// s_uuid (FS_IOC_GETFSUUID, Linux 6.5+). ok is false where the filesystem
// does not report one.
func FSUUID(fd int) (uuid [16]byte, ok bool) {
	// struct fsuuid2 { __u8 len; __u8 uuid[16]; }
	var buf [17]byte
	const fsIocGetFSUUID = 0x80111500 // _IOR(0x15, 0, struct fsuuid2)
	// FS_IOC_GETFSUUID needs a real fd, not O_PATH.
	rfd, err := unix.Open(ProcPath(fd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_DIRECTORY, 0)
	if err != nil {
		return uuid, false
	}
	defer unix.Close(rfd)
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(rfd), fsIocGetFSUUID, uintptr(unsafe.Pointer(&buf[0])))
	if e != 0 || buf[0] != 16 {
		return uuid, false
	}
	copy(uuid[:], buf[1:])
	return uuid, true
}

// OpenLayerRoot opens a layer directory for walks. As root it takes a
// detached, non-recursive clone of the mount (open_tree OPEN_TREE_CLONE), so
// walks see the layer's own directories under any mountpoint, exactly as the
// kernel's overlayfs does, and never the filesystem mounted there (ovl's own
// mount included). Without privilege it opens the directory plainly; walks
// then rely on RESOLVE_NO_XDEV and st_dev checks.
func OpenLayerRoot(path string) (fd int, cloned bool, err error) {
	fd, err = unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err == nil {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			unix.Close(fd)
			return -1, false, &os.PathError{Op: "open layer", Path: path, Err: unix.ENOTDIR}
		}
		// Read-only and noatime, as the kernel's overlayfs makes its
		// lower clones: nothing can write the layer through this mount,
		// reads leave its atimes alone, and its files can be passthrough
		// backing files as they are (fusefs). Best effort: a kernel that
		// refuses leaves a writable clone, which fusefs checks for.
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOATIME, Attr_clr: unix.MOUNT_ATTR__ATIME}
		_ = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr)
		return fd, true, nil
	}
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return -1, false, &os.PathError{Op: "open layer", Path: path, Err: err}
	}
	fd, err = unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, &os.PathError{Op: "open layer", Path: path, Err: err}
	}
	return fd, false, nil
}

// TempName returns the name of the n-th temporary in work/, as the kernel
// names them ("#<hex>").
func TempName(n uint64) string { return fmt.Sprintf("#%x", n) }

// OpenUpperWork opens the upper and work directories on one mount, as
// renames between them need. As root both come from one detached,
// non-recursive clone of the mount that holds them (see OpenLayerRoot);
// otherwise they are opened plainly. It fails when they are on different
// mounts, as the kernel's overlayfs does.
func OpenUpperWork(upper, work string) (upperFd, workFd int, cloned bool, err error) {
	mu, err1 := mountID(upper)
	mw, err2 := mountID(work)
	if err1 != nil || err2 != nil {
		return -1, -1, false, errors.Join(err1, err2)
	}
	if mu != mw {
		return -1, -1, false, fmt.Errorf("upperdir %s and workdir %s are not on the same mount", upper, work)
	}
	root := upper
	for root != "/" {
		parent := filepathDir(root)
		if id, err := mountID(parent); err != nil || id != mu {
			break
		}
		root = parent
	}
	clone, err := unix.OpenTree(unix.AT_FDCWD, root, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		uf, err := unix.Open(upper, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, -1, false, &os.PathError{Op: "open upperdir", Path: upper, Err: err}
		}
		wf, err := unix.Open(work, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(uf)
			return -1, -1, false, &os.PathError{Op: "open workdir", Path: work, Err: err}
		}
		return uf, wf, false, nil
	}
	defer unix.Close(clone)
	rel := func(p string) string {
		if p == root {
			return "."
		}
		if root == "/" {
			return p[1:]
		}
		return p[len(root)+1:]
	}
	// The paths were resolved by the caller: no symlinks are left in them.
	uf, err := OpenAt(clone, rel(upper), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, -1, false, &os.PathError{Op: "open upperdir", Path: upper, Err: err}
	}
	wf, err := OpenAt(clone, rel(work), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		unix.Close(uf)
		return -1, -1, false, &os.PathError{Op: "open workdir", Path: work, Err: err}
	}
	return uf, wf, true, nil
}

func mountID(path string) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, &os.PathError{Op: "statx", Path: path, Err: err}
	}
	return stx.Mnt_id, nil
}

func filepathDir(p string) string {
	i := len(p) - 1
	for i > 0 && p[i] != '/' {
		i--
	}
	if i == 0 {
		return "/"
	}
	return p[:i]
}

// HasXattrs reports whether the directory dirfd (O_PATH is fine) has any
// extended attribute in the namespace of prefix, with one listxattrat(2)
// (Linux 6.13; before, it answers true so that callers read each one).
// Most layer directories have none, and one call then replaces a read of
// every overlay attribute.
func HasXattrs(dirfd int, prefix string) bool {
	ours, _ := DirXattrs(dirfd, prefix, nil)
	return ours
}

// DirXattrs is HasXattrs that also reports, from the same call, whether
// the directory has any of the xattrs named in also (such as the opaque
// mark of fuse-overlayfs, FuseOverlayfsOpaque).
func DirXattrs(dirfd int, prefix string, also []string) (ours, some bool) {
	if noXattrAt.Load() {
		return true, len(also) > 0
	}
	var buf [1024]byte
	p, _ := unix.BytePtrFromString(".")
	r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(unix.AT_SYMLINK_NOFOLLOW),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0)
	if e != 0 {
		if e == unix.ENOSYS {
			noXattrAt.Store(true)
		}
		// ERANGE and others: do not guess.
		return e != unix.EOPNOTSUPP, e != unix.EOPNOTSUPP && len(also) > 0
	}
	for _, name := range strings.Split(string(buf[:r]), "\x00") {
		if strings.HasPrefix(name, prefix) {
			ours = true
		}
		for _, a := range also {
			if name == a {
				some = true
			}
		}
	}
	return ours, some
}

// ListxattrAt lists the xattr names of name (one path component) in dirfd
// without following it, so a symlink's own are listed. It uses
// listxattrat(2) (Linux 6.13) and, before that, llistxattr on the name
// below the directory's /proc path: either way no path is walked in the
// layer.
func ListxattrAt(dirfd int, name string) ([]string, error) {
	if strings.ContainsRune(name, '/') || name == ".." || name == "" {
		return nil, unix.EINVAL
	}
	buf := make([]byte, 1024)
	for {
		var n int
		var err error
		if !noXattrAt.Load() {
			p, perr := unix.BytePtrFromString(name)
			if perr != nil {
				return nil, perr
			}
			r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(unix.AT_SYMLINK_NOFOLLOW),
				uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0)
			runtime.KeepAlive(buf)
			n = int(r)
			if e == unix.ENOSYS {
				noXattrAt.Store(true)
				continue
			}
			if e != 0 {
				err = e
			}
		} else {
			n, err = unix.Llistxattr(ProcPath(dirfd)+"/"+name, buf)
		}
		switch {
		case err == unix.ERANGE && len(buf) < 1<<20:
			buf = make([]byte, len(buf)*16)
			continue
		case err == unix.EOPNOTSUPP:
			return nil, nil
		case err != nil:
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

// SetxattrAt sets an xattr of name (one path component) in dirfd without
// following it: a symlink's own xattr is set, never its target's.
func SetxattrAt(dirfd int, name, attr string, value []byte, flags int) error {
	if strings.ContainsRune(name, '/') || name == ".." || name == "" {
		return unix.EINVAL
	}
	return unix.Lsetxattr(ProcPath(dirfd)+"/"+name, attr, value, flags)
}
