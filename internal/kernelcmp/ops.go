package kernelcmp

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Op is one file-system operation on paths relative to a mount root. It is
// plain data (JSON) so that it can run in a child process under another uid
// and so that a randomized tester can generate, print and replay it.
type Op struct {
	Op    string `json:"op"`              // see Apply for the list
	Path  string `json:"path,omitempty"`  // relative to the root
	Path2 string `json:"path2,omitempty"` // rename/link destination
	Data  string `json:"data,omitempty"`  // write data, symlink target, xattr value
	Name  string `json:"name,omitempty"`  // xattr name
	Mode  uint32 `json:"mode,omitempty"`  // create/mkdir/mknod/chmod mode, umask, access mode
	Flags int    `json:"flags,omitempty"` // open flags, renameat2 flags, setxattr flags
	Off   int64  `json:"off,omitempty"`   // write offset, truncate size, utimes mtime (ns)
	UID   int    `json:"uid,omitempty"`
	GID   int    `json:"gid,omitempty"`
	Dev   uint64 `json:"dev,omitempty"` // mknod device
	// As, when set, runs the op in a child process with these
	// credentials (Run batches consecutive ops of the same caller into
	// one child), so that permission checks for unprivileged callers
	// are compared too.
	As *Cred `json:"as,omitempty"`
}

// shortPath abbreviates the long components of p for logs: a 255-byte
// name is "<255:xxxxxxxx>".
func shortPath(p string) string {
	if len(p) <= 60 {
		return p
	}
	parts := strings.Split(p, "/")
	for i, c := range parts {
		if len(c) > 16 {
			parts[i] = fmt.Sprintf("<%d:%s>", len(c), c[:8])
		}
	}
	return strings.Join(parts, "/")
}

func (op Op) String() string {
	var b strings.Builder
	b.WriteString(op.Op)
	if op.Path != "" {
		fmt.Fprintf(&b, " %q", shortPath(op.Path))
	}
	if op.Path2 != "" {
		fmt.Fprintf(&b, " %q", shortPath(op.Path2))
	}
	if op.Name != "" {
		fmt.Fprintf(&b, " name=%s", op.Name)
	}
	if op.Data != "" {
		d := op.Data
		if len(d) > 32 {
			d = d[:32] + "..."
		}
		fmt.Fprintf(&b, " data=%q", d)
	}
	if op.Mode != 0 {
		fmt.Fprintf(&b, " mode=%#o", op.Mode)
	}
	if op.Flags != 0 {
		fmt.Fprintf(&b, " flags=%#x", op.Flags)
	}
	if op.Off != 0 {
		fmt.Fprintf(&b, " off=%d", op.Off)
	}
	if op.UID != 0 || op.GID != 0 {
		fmt.Fprintf(&b, " owner=%d:%d", op.UID, op.GID)
	}
	if op.Dev != 0 {
		fmt.Fprintf(&b, " dev=%d:%d", unix.Major(op.Dev), unix.Minor(op.Dev))
	}
	if op.As != nil {
		fmt.Fprintf(&b, " as=%d:%d", op.As.UID, op.As.GID)
	}
	return b.String()
}

// Result is the outcome of an Op: its errno (0 on success) and, for ops that
// observe something, a canonical output that must agree between sides.
type Result struct {
	Errno syscall.Errno `json:"errno"`
	Out   string        `json:"out,omitempty"`
	// Err is set when the failure is not an errno (a harness problem).
	Err string `json:"err,omitempty"`
}

func (r Result) String() string {
	s := "ok"
	if r.Errno != 0 {
		s = fmt.Sprintf("%s (%d)", ErrnoName(r.Errno), int(r.Errno))
	}
	if r.Err != "" {
		s += " err=" + r.Err
	}
	if r.Out != "" {
		s += " out=" + r.Out
	}
	return s
}

// ErrnoName is the symbolic name of an errno ("ENOENT"), or "0".
func ErrnoName(e syscall.Errno) string {
	if e == 0 {
		return "0"
	}
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return fmt.Sprintf("errno%d", int(e))
}

// Errno extracts the errno of err: 0 for nil, and ok=false when err carries
// no errno.
func Errno(err error) (e syscall.Errno, ok bool) {
	if err == nil {
		return 0, true
	}
	if errors.As(err, &e) {
		return e, true
	}
	return 0, false
}

func result(out string, err error) Result {
	e, ok := Errno(err)
	if !ok {
		return Result{Out: out, Err: err.Error()}
	}
	if e != 0 {
		out = ""
	}
	return Result{Errno: e, Out: out}
}

// Apply runs op against root (in the calling process, with its
// credentials). Ops:
//
//	open      open(Path, Flags, Mode), then close
//	create    open(Path, O_CREAT|O_WRONLY|O_NONBLOCK|Flags, Mode), then close
//	write     open(Path, O_WRONLY|O_NONBLOCK|Flags), pwrite(Data, Off)
//	append    open(Path, O_WRONLY|O_APPEND|O_NONBLOCK), write(Data)
//	read      read all of Path (O_NONBLOCK: FIFOs do not hang); Out =
//	          content (or its sha256 if long)
//	truncate  truncate(Path, Off)
//	mkdir, rmdir, unlink, mknod (Mode incl. type, Dev)
//	rename    renameat2(Path, Path2, Flags)
//	link      link(Path, Path2)
//	symlink   symlink(Data, Path)
//	readlink  Out = target
//	chmod, chown (UID, GID), lchown, utimes (mtime=atime=Off ns, no follow)
//	setxattr (Name, Data, Flags), getxattr (Out = value), listxattr (Out =
//	  sorted names), removexattr — all without following symlinks
//	stat, lstat   Out = StatString
//	readdir   Out = sorted "name:type" of everything but . and ..
//	access    faccessat(Path, Mode)
//	umask     umask(Mode)
//	waitstdin read stdin to EOF (a start barrier for child processes)
//	sleep     sleep Off milliseconds
//	dropcaches  write Off (2: dentries and inodes, 3: also the page
//	          cache; 0 means 2) to /proc/sys/vm/drop_caches: the kernel
//	          forgets every unused inode of both mounts (Run applies it
//	          once for both sides)
//	rmrf      remove Path and everything under it, depth first in name
//	          order, stopping at the first error (rm -rf); Out = how many
//	          objects were removed
//
// The stateful ops need an FDs (ApplyFDs); Apply gives them none:
//
//	hold      open(Path, Flags|O_NONBLOCK) (Flags 0: O_RDONLY) and keep
//	          the fd under Path (an fd already held there is closed
//	          first)
//	readheld  through the fd held under Path (EBADF if none): Out = the
//	          content read from offset 0 (pread) and the fstat StatString;
//	          read or fstat errors are part of Out
//	writeheld pwrite(Data, Off) through the fd held under Path (EBADF if
//	          none, or if it is not open for writing)
//	unhold    close the fd held under Path (EBADF if none)
//
// "views" (ViewsOp) is not applied: Run compares the merged views there.
func (op Op) Apply(root string) Result { return op.ApplyFDs(root, nil) }

// FDs are the file descriptors that "hold" ops keep open on one mount,
// by the path they were opened as. The zero value is ready to use.
type FDs struct {
	fds map[string]int
}

// Close closes every held fd.
func (h *FDs) Close() {
	for p, fd := range h.fds {
		unix.Close(fd)
		delete(h.fds, p)
	}
}

// Len is the number of held fds.
func (h *FDs) Len() int { return len(h.fds) }

// ApplyFDs is Apply with a place for the stateful ops' fds (nil: they
// fail with a harness error).
func (op Op) ApplyFDs(root string, fds *FDs) Result {
	p := filepath.Join(root, filepath.Clean("/"+op.Path))
	p2 := filepath.Join(root, filepath.Clean("/"+op.Path2))
	switch op.Op {
	case ViewsOp:
		return Result{Err: "views is done by Run, not Apply"}
	case "hold", "readheld", "unhold", "writeheld":
		if fds == nil {
			return Result{Err: op.Op + " needs ApplyFDs"}
		}
		return fds.apply(op, p)
	case "rmrf":
		n, err := removeAll(p)
		return result(fmt.Sprint(n), err)
	case "open":
		return result("", withOpen(p, op.Flags, op.Mode, nil))
	case "create":
		return result("", withOpen(p, op.Flags|unix.O_CREAT|unix.O_WRONLY|unix.O_NONBLOCK, op.Mode, nil))
	case "write":
		return result("", withOpen(p, op.Flags|unix.O_WRONLY|unix.O_NONBLOCK, 0, func(fd int) error {
			_, err := unix.Pwrite(fd, []byte(op.Data), op.Off)
			return err
		}))
	case "append":
		return result("", withOpen(p, unix.O_WRONLY|unix.O_APPEND|unix.O_NONBLOCK, 0, func(fd int) error {
			_, err := unix.Write(fd, []byte(op.Data))
			return err
		}))
	case "read":
		var out string
		err := withOpen(p, unix.O_RDONLY|unix.O_NONBLOCK|op.Flags, 0, func(fd int) error {
			f := fdReader(fd)
			b, err := io.ReadAll(io.LimitReader(f, 1<<16))
			if err != nil {
				return err
			}
			if len(b) < 1<<16 {
				out = fmt.Sprintf("%q", b)
				return nil
			}
			h := sha256.New()
			h.Write(b)
			if _, err := io.Copy(h, f); err != nil {
				return err
			}
			out = "sha256:" + hex.EncodeToString(h.Sum(nil))
			return nil
		})
		return result(out, err)
	case "truncate":
		return result("", unix.Truncate(p, op.Off))
	case "mkdir":
		return result("", unix.Mkdir(p, op.Mode))
	case "rmdir":
		return result("", unix.Rmdir(p))
	case "unlink":
		return result("", unix.Unlink(p))
	case "mknod":
		return result("", unix.Mknod(p, op.Mode, int(op.Dev)))
	case "rename":
		return result("", unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, p2, uint(op.Flags)))
	case "link":
		return result("", unix.Link(p, p2))
	case "symlink":
		return result("", unix.Symlink(op.Data, p))
	case "readlink":
		t, err := os.Readlink(p)
		return result(t, err)
	case "chmod":
		return result("", unix.Chmod(p, op.Mode))
	case "chown":
		return result("", unix.Chown(p, op.UID, op.GID))
	case "lchown":
		return result("", unix.Lchown(p, op.UID, op.GID))
	case "utimes":
		ts := []unix.Timespec{unix.NsecToTimespec(op.Off), unix.NsecToTimespec(op.Off)}
		return result("", unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	case "setxattr":
		return result("", unix.Lsetxattr(p, op.Name, []byte(op.Data), op.Flags))
	case "getxattr":
		v, err := lgetxattr(p, op.Name)
		return result(fmt.Sprintf("%q", v), err)
	case "listxattr":
		names, err := llistxattr(p)
		return result(strings.Join(names, ","), err)
	case "removexattr":
		return result("", unix.Lremovexattr(p, op.Name))
	case "stat", "lstat":
		var st unix.Stat_t
		var err error
		if op.Op == "stat" {
			err = unix.Stat(p, &st)
		} else {
			err = unix.Lstat(p, &st)
		}
		return result(StatString(&st), err)
	case "readdir":
		ents, err := ReadDir(p)
		var names []string
		for _, e := range ents {
			if e.Name != "." && e.Name != ".." {
				names = append(names, e.Name+":"+dtypeName(e.Type))
			}
		}
		sort.Strings(names)
		return result(strings.Join(names, ","), err)
	case "access":
		return result("", unix.Faccessat(unix.AT_FDCWD, p, op.Mode, 0))
	case "umask":
		unix.Umask(int(op.Mode))
		return Result{}
	case "waitstdin":
		_, err := io.Copy(io.Discard, os.Stdin)
		return result("", err)
	case "sleep":
		time.Sleep(time.Duration(op.Off) * time.Millisecond)
		return Result{}
	case "dropcaches":
		v := op.Off
		if v == 0 {
			v = 2
		}
		return result("", os.WriteFile("/proc/sys/vm/drop_caches", []byte(fmt.Sprintln(v)), 0))
	}
	return Result{Err: "unknown op " + op.Op}
}

func (h *FDs) apply(op Op, p string) Result {
	if h.fds == nil {
		h.fds = map[string]int{}
	}
	fd, held := h.fds[op.Path]
	switch op.Op {
	case "hold":
		if held {
			unix.Close(fd)
			delete(h.fds, op.Path)
		}
		fd, err := unix.Open(p, op.Flags|unix.O_NONBLOCK|unix.O_CLOEXEC, op.Mode)
		if err != nil {
			return result("", err)
		}
		h.fds[op.Path] = fd
		return Result{}
	case "writeheld":
		if !held {
			return Result{Errno: unix.EBADF}
		}
		_, err := unix.Pwrite(fd, []byte(op.Data), op.Off)
		return result("", err)
	case "unhold":
		if !held {
			return Result{Errno: unix.EBADF}
		}
		delete(h.fds, op.Path)
		return result("", unix.Close(fd))
	}
	if !held {
		return Result{Errno: unix.EBADF}
	}
	var out strings.Builder
	buf := make([]byte, 1<<16)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		fmt.Fprintf(&out, "read:%s", ErrnoName(errnoOf(err)))
	} else {
		fmt.Fprintf(&out, "%q", buf[:n])
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		fmt.Fprintf(&out, " fstat:%s", ErrnoName(errnoOf(err)))
	} else {
		fmt.Fprintf(&out, " %s", StatString(&st))
	}
	return Result{Out: out.String()}
}

// removeAll removes p and everything below it, children in name order,
// and stops at the first error. It returns how many objects it removed.
func removeAll(p string) (int, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlink(p); err != nil {
			return 0, err
		}
		return 1, nil
	}
	ents, err := ReadDir(p)
	if err != nil {
		return 0, err
	}
	var names []string
	for _, e := range ents {
		if e.Name != "." && e.Name != ".." {
			names = append(names, e.Name)
		}
	}
	sort.Strings(names)
	n := 0
	for _, name := range names {
		k, err := removeAll(p + "/" + name)
		n += k
		if err != nil {
			return n, err
		}
	}
	if err := unix.Rmdir(p); err != nil {
		return n, err
	}
	return n + 1, nil
}

func withOpen(p string, flags int, mode uint32, f func(fd int) error) error {
	// Retried on EINTR, as Go's os.Open does: the kernel's overlayfs
	// waits for a concurrent copy-up interruptibly (ovl_copy_up_start) and
	// fails the open with EINTR when a signal (the Go runtime's SIGURG)
	// comes meanwhile; that is not a difference between the sides.
	fd, err := unix.Open(p, flags|unix.O_CLOEXEC, mode)
	for err == unix.EINTR {
		fd, err = unix.Open(p, flags|unix.O_CLOEXEC, mode)
	}
	if err != nil {
		return err
	}
	if f != nil {
		err = f(fd)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return err
}

// StatString is the part of a stat that must agree between sides: type,
// permission bits, owner, size (non-directories), link count
// (non-directories) and device numbers.
func StatString(st *unix.Stat_t) string {
	t := typeName(st.Mode, st.Rdev)
	s := fmt.Sprintf("%s %04o %d:%d", t, st.Mode&0o7777, st.Uid, st.Gid)
	if t != "dir" {
		s += fmt.Sprintf(" size=%d nlink=%d", st.Size, st.Nlink)
	}
	if t == "char" || t == "block" {
		s += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	return s
}

func lgetxattr(p, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if err == unix.ERANGE {
			sz, err := unix.Lgetxattr(p, name, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+1)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func llistxattr(p string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Llistxattr(p, buf)
		if err == unix.ERANGE {
			sz, err := unix.Llistxattr(p, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+1)
			continue
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		sort.Strings(names)
		return names, nil
	}
}

// fdReader reads from a file descriptor it does not own.
type fdReader int

func (r fdReader) Read(b []byte) (int, error) {
	n, err := unix.Read(int(r), b)
	if n < 0 {
		n = 0
	}
	if err == nil && n == 0 && len(b) > 0 {
		return 0, io.EOF
	}
	return n, err
}
