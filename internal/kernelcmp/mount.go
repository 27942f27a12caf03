package kernelcmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mounter mounts one side of a comparison.
type Mounter interface {
	// Name names the side in diffs ("kernel", "ovl").
	Name() string
	// Mount mounts layout l with options o at l.Mnt and returns once it is
	// ready.
	Mount(l Layout, o Options) error
	// Unmount unmounts mnt and returns once the filesystem is gone (for
	// ovl: the daemon has exited and flushed everything to the upper).
	Unmount(mnt string) error
}

// Kernel mounts the kernel's overlayfs.
type Kernel struct{}

// Name implements Mounter.
func (Kernel) Name() string { return "kernel" }

// Mount implements Mounter.
func (Kernel) Mount(l Layout, o Options) error {
	data := o.KernelOptions(l)
	flags := uintptr(0)
	if o.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	// An upper or work directory stays "in use" (index=on) until the
	// superblock of its last mount is gone, which may come a moment after
	// umount returns: EBUSY is retried, bounded as umount's wait is.
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err = unix.Mount("overlay", l.Mnt, "overlay", flags, data); err != unix.EBUSY || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("mount -t overlay -o %s %s: %w", data, l.Mnt, err)
	}
	return nil
}

// Unmount implements Mounter.
func (Kernel) Unmount(mnt string) error { return umount(mnt) }

// umount unmounts mnt, retrying while it is busy: a process that used it
// (a helper child) may still be exiting on a loaded machine.
func umount(mnt string) error {
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		err = unix.Unmount(mnt, 0)
		if err == nil || err == unix.EINVAL || err == unix.ENOENT {
			return nil
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("umount %s: %w", mnt, err)
}

// Ovl mounts ovl through its command line.
type Ovl struct {
	Bin string // the ovl binary (testutil.Binary)
}

// Name implements Mounter.
func (Ovl) Name() string { return "ovl" }

// promisesDIno reports whether m's readdir must give each entry's st_ino as
// d_ino (SnapOptions.DIno): ovl promises it, the kernel does not keep it.
func promisesDIno(m Mounter) bool {
	_, ok := m.(Ovl)
	return ok
}

// Mount implements Mounter.
func (m Ovl) Mount(l Layout, o Options) error {
	args := []string{"mount", "-o", o.OvlOptions(l), l.Mnt}
	out, err := exec.Command(m.Bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ovl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Unmount implements Mounter.
func (m Ovl) Unmount(mnt string) error {
	out, err := exec.Command(m.Bin, "umount", mnt).CombinedOutput()
	if err != nil {
		// Leave nothing mounted behind, but report the failure.
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
		return fmt.Errorf("ovl umount %s: %v\n%s", mnt, err, out)
	}
	if mounted(mnt) {
		return fmt.Errorf("ovl umount %s: still mounted after success", mnt)
	}
	return nil
}

// Stats runs "ovl stats mnt" and decodes its JSON.
func (m Ovl) Stats(mnt string) (map[string]any, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(m.Bin, "stats", mnt)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("ovl stats %s: %v\n%s", mnt, err, stderr.Bytes())
	}
	var st map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &st); err != nil {
		return nil, fmt.Errorf("ovl stats %s: %v in %q", mnt, err, stdout.Bytes())
	}
	return st, nil
}

// DaemonPid finds the ovl daemon serving mnt by its command line (it ends
// with "-- MNT"), not through its stats socket: that socket is named
// after the FUSE device number, which the daemon of an earlier mount may
// still hold while it exits.
func (m Ovl) DaemonPid(mnt string) (int, error) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if n := len(args); n >= 3 && args[1] == "mount" && args[n-2] == "--" && args[n-1] == mnt {
			pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if err == nil && pid != os.Getpid() {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no ovl daemon serves %s", mnt)
}

// mounted reports whether mnt is a mount point (its device differs from
// its parent's, or /proc/self/mountinfo lists it).
func mounted(mnt string) bool {
	var st, pst unix.Stat_t
	if unix.Lstat(mnt, &st) != nil || unix.Lstat(mnt+"/..", &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

// errNotMounted is returned when a side that should be mounted is not.
var errNotMounted = errors.New("not mounted")

// Filesystem magic numbers (statfs f_type).
const (
	OverlayfsMagic = 0x794c7630
	FuseMagic      = 0x65735546
)

// checkFsType makes sure that a side is served by what it claims to be, so
// that a harness slip cannot compare the kernel with itself.
func checkFsType(m Mounter, mnt string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		return err
	}
	want := int64(0)
	switch m.(type) {
	case Kernel:
		want = OverlayfsMagic
	case Ovl:
		want = FuseMagic
	default:
		return nil
	}
	if st.Type != want {
		return fmt.Errorf("%s is a filesystem of type %#x, want %#x", mnt, st.Type, want)
	}
	return nil
}
