package ovl

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/internal/pidfd"
)

// FSType is the type of every ovl mount in /proc/self/mountinfo: FUSE with
// the subtype ovl (fusefs.Mount names it; fusermount3 and mount.fuse3 keep
// it).
const FSType = "fuse.ovl"

func isOvl(m *mountinfo.Entry) bool { return m.FSType == FSType }

// daemonExitWait bounds how long Unmount waits for a process to exit or
// answer. The daemon exits right after the unmount, but on a busy machine
// that can take seconds, and a volatile mount first syncs what it wrote,
// which on a slow disk can take minutes: for a daemon the bound is how
// long it may go without doing anything (pidfd.WaitIdle), not in all.
const daemonExitWait = 60 * time.Second

// Unmount unmounts the ovl mount at mountpoint, made by another process,
// and waits until that process has released the layers: until ovl's
// daemon has exited, or a program using this package has closed them
// (Server.Wait returns then). Only then can the upper be mounted again.
// It refuses a mountpoint where no ovl mount is (the topmost mount there
// is of another type). lazy detaches a busy mount (MNT_DETACH) and does
// not wait: the daemon exits once the mount's last user is gone.
//
// A mount served by the calling process is unmounted with Server.Unmount.
func Unmount(mountpoint string, lazy bool) error {
	m, err := mountinfo.Find(mountpoint)
	if err != nil {
		return err
	}
	if !isOvl(m) {
		return fmt.Errorf("%s is a %s mount, not an ovl mount (umount(8) unmounts it)", mountpoint, m.FSType)
	}
	// What to wait for: the exit of a daemon, through a pidfd; the end of
	// the serving in a process that goes on (a program using this
	// package), through a "wait" request on its socket, which must be
	// made while the mount is there to name the socket.
	fd, pid := -1, 0
	var waitConn net.Conn
	if !lazy {
		if info, err := ReadInfo(mountpoint); err == nil {
			// A daemon of an older ovl reports no layers, and is one.
			if info.Daemon || len(info.Lowers) == 0 {
				if f, err := unix.PidfdOpen(info.Pid, 0); err == nil {
					fd, pid = f, info.Pid
					defer unix.Close(fd)
				}
			} else if c, _, err := ask(mountpoint, waitRequest); err == nil {
				waitConn = c
				defer c.Close()
			}
		}
	}
	if err := unmountPath(m.MountPoint, lazy); err != nil {
		if !lazy && errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w (-l detaches it now; its daemon exits when the last user is gone)", err)
		}
		return err
	}
	switch {
	case fd >= 0:
		if err := pidfd.WaitIdle(fd, pid, daemonExitWait); err != nil {
			return fmt.Errorf("the ovl daemon of %s: %w", mountpoint, err)
		}
	case waitConn != nil:
		waitConn.SetDeadline(time.Now().Add(daemonExitWait))
		if _, err := io.Copy(io.Discard, waitConn); err != nil {
			return fmt.Errorf("waiting for the process serving %s: %w", mountpoint, err)
		}
	}
	// Else lazy, or nothing answered (the daemon is gone already).
	return nil
}

// unmountPath unmounts mp: directly when privileged, else (or when the
// direct way is refused, e.g. root in a user namespace) with fusermount3.
// lazy detaches a busy mount.
func unmountPath(mp string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		err := unix.Unmount(mp, flags)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("umount %s: %w", mp, err)
		}
	}
	bin, err := fusermountBinary()
	if err != nil {
		return fmt.Errorf("umount %s: not root and %w", mp, err)
	}
	args := []string{"-u"}
	if lazy {
		args = append(args, "-z")
	}
	out, err := exec.Command(bin, append(args, mp)...).CombinedOutput()
	if err != nil {
		msg := strings.Join(strings.Fields(string(out)), " ")
		if strings.Contains(msg, "busy") {
			err = unix.EBUSY
		}
		return fmt.Errorf("umount %s: %s: %w", mp, msg, err)
	}
	return nil
}
