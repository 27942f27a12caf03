package fsck

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/internal/mountinfo"
)

// layer is one opened lower layer.
type layer struct {
	path    string
	root    int // O_PATH fd of the layer root (a detached clone as root)
	mfd     int // the root opened for reading: open_by_handle_at's mount fd (O_PATH is EBADF there)
	dev     uint64
	uuid    [16]byte
	hasUUID bool
}

// checker is one run.
type checker struct {
	opts   Options
	names  format.Names
	follow bool // redirects are followed with these options
	meta   bool // metacopy=on

	upper, work      int // O_PATH fds of upperdir and workdir
	lockUp, lockWork int // flock'ed upperdir and workdir
	upperDev         uint64
	lowers           []*layer
	roots            []lowerDir // the lower stack of the root
	decode           bool       // file handles can be decoded (CAP_DAC_READ_SEARCH)

	index int // O_PATH fd of workdir/index, -1 when there is none
	// merged maps each lower directory an upper directory merges with to
	// the first upper directory found merging it: a second one is a
	// duplicate redirect.
	merged map[format.DirID]string
	// links counts the upper names of each regular file with several
	// links, for the index check.
	links map[format.DirID]int
	// redirects are the upper directories whose redirect the walk
	// followed, for the check that their lower directory is hidden at its
	// own path.
	redirects []redirected

	report Report
}

func newChecker(opts Options) (*checker, error) {
	cfg := opts.Config
	if len(cfg.Lowers) == 0 {
		return nil, errors.New("no lower layer given (lowerdir=)")
	}
	if cfg.Upper == "" || cfg.Work == "" {
		return nil, errors.New("fsck needs upperdir= and workdir=")
	}
	create, follow, err := cfg.Redirects()
	if err != nil {
		return nil, err
	}
	c := &checker{opts: opts, names: format.NewNames(cfg.UserXattr), follow: follow, meta: cfg.Metacopy == "on" && create,
		upper: -1, work: -1, lockUp: -1, lockWork: -1, index: -1,
		merged: map[format.DirID]string{}, links: map[format.DirID]int{}}
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	abs := func(kind, p string) (string, error) {
		r, err := filepath.EvalSymlinks(p)
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", kind, p, unwrap(err))
		}
		r, err = filepath.Abs(r)
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", kind, p, err)
		}
		return r, nil
	}
	up, err := abs("upperdir", cfg.Upper)
	if err != nil {
		return nil, err
	}
	wk, err := abs("workdir", cfg.Work)
	if err != nil {
		return nil, err
	}
	if err := checkNotMounted(up, wk); err != nil {
		return nil, err
	}
	if c.upper, c.work, _, err = format.OpenUpperWork(up, wk); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(c.upper, &st); err != nil {
		return nil, fmt.Errorf("upperdir %s: %w", up, err)
	}
	c.upperDev = st.Dev
	// The locks an ovl daemon holds (overlay.New): taken, they also keep
	// a mount from starting while fsck repairs.
	for _, d := range []struct {
		fd   int
		kind string
		lock *int
	}{{c.upper, "upperdir " + up, &c.lockUp}, {c.work, "workdir " + wk, &c.lockWork}} {
		lfd, err := unix.Open(format.ProcPath(d.fd), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.kind, err)
		}
		*d.lock = lfd
		if err := unix.Flock(lfd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return nil, fmt.Errorf("%s is in use by an ovl mount: unmount it first", d.kind)
		}
	}
	for i, p := range cfg.Lowers {
		lp, err := abs("lowerdir", p)
		if err != nil {
			return nil, err
		}
		fd, _, err := format.OpenLayerRoot(lp)
		if err != nil {
			return nil, fmt.Errorf("lowerdir %s: %w", p, unwrap(err))
		}
		l := &layer{path: lp, root: fd, mfd: -1}
		c.lowers = append(c.lowers, l)
		if l.mfd, err = unix.Open(format.ProcPath(fd), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return nil, fmt.Errorf("lowerdir %s: %w", p, err)
		}
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, fmt.Errorf("lowerdir %s: %w", p, err)
		}
		l.dev = st.Dev
		l.uuid, l.hasUUID = format.FSUUID(fd)
		c.roots = append(c.roots, lowerDir{layer: i, fd: fd, path: "/"})
	}
	c.decode = canDecode(c.lowers[0].mfd)
	ok = true
	return c, nil
}

func (c *checker) close() {
	for _, fd := range []int{c.upper, c.work, c.lockUp, c.lockWork, c.index} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	for _, l := range c.lowers {
		unix.Close(l.root)
		if l.mfd >= 0 {
			unix.Close(l.mfd)
		}
	}
}

func unwrap(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

// checkNotMounted refuses an upper or work directory that a kernel
// overlay mount in this mount namespace uses (mountinfo lists its
// upperdir= and workdir=). An ovl daemon is found by its lock instead:
// mountinfo does not name the upper of a fuse.ovl mount.
func checkNotMounted(upper, work string) error {
	mounts, err := mountinfo.Read()
	if err != nil {
		return fmt.Errorf("read the mount table: %w", err)
	}
	idOf := func(p string) (format.DirID, bool) {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil {
			return format.DirID{}, false
		}
		return format.StatID(&st), true
	}
	uid, _ := idOf(upper)
	wid, _ := idOf(work)
	for _, m := range mounts {
		if m.FSType != "overlay" {
			continue
		}
		for _, o := range m.SuperOpts {
			k, v, _ := strings.Cut(o, "=")
			if k != "upperdir" && k != "workdir" {
				continue
			}
			if id, ok := idOf(mountinfo.Unescape(v)); ok && (id == uid || id == wid) {
				return fmt.Errorf("%s is used by the overlay mounted at %s: unmount it first", mountinfo.Unescape(v), m.MountPoint)
			}
		}
	}
	return nil
}

// canDecode reports whether this process may open objects by file handle
// (open_by_handle_at needs CAP_DAC_READ_SEARCH): a handle of the layer
// root itself is tried.
func canDecode(root int) bool {
	h, _, err := unix.NameToHandleAt(root, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return false
	}
	fd, err := unix.OpenByHandleAt(root, h, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// say records a finding. fix, when the mode reaches level, repairs it.
func (c *checker) say(f Finding, level Mode, fix func() error) {
	switch {
	case fix == nil:
		f.Repair = ""
	case c.opts.Mode >= level && c.opts.Mode != Check:
		if err := fix(); err != nil {
			f.Err = err
		} else {
			f.Repaired = true
		}
	default:
		f.needs = level
	}
	c.report.Findings = append(c.report.Findings, f)
	if c.opts.Out != nil {
		fmt.Fprintln(c.opts.Out, f.String())
	}
}

// readNames lists the directory dirfd (O_PATH is fine), "." and ".." left out.
func readNames(dirfd int) ([]string, error) {
	fd, err := format.OpenAt(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}
