package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// daemonExitWait bounds how long umount waits for the daemon to exit. The
// daemon exits right after the unmount, but on a busy machine that can
// take seconds; failing then would make a successful unmount look failed.
const daemonExitWait = 60 * time.Second

// runUmount unmounts and waits until the daemon has exited: only then has
// it released the lock on the upper, so a remount right after works.
func runUmount(inv *invocation) error {
	if len(inv.positional) != 1 {
		return fmt.Errorf("usage: ovl umount MOUNTPOINT")
	}
	mnt := inv.positional[0]
	m, err := findMount(mnt)
	if err != nil {
		return err
	}
	// A pidfd is tied to the process, not to its number, so a reused pid
	// cannot fool the wait below.
	pidfd := -1
	if r, _, err := queryDaemon(mnt, false); err == nil {
		if fd, err := unix.PidfdOpen(r.Pid, 0); err == nil {
			pidfd = fd
			defer unix.Close(fd)
		}
	}
	if err := unmount(m.MountPoint, false); err != nil {
		return err
	}
	if pidfd < 0 {
		return nil // not our daemon, or it is already gone
	}
	return waitExit(pidfd, daemonExitWait)
}

// waitExit waits until the process behind pidfd has exited, for at most
// limit (a zero limit just checks).
func waitExit(pidfd int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int((left+time.Millisecond-1)/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("waiting for the ovl daemon: %w", err)
		}
		if n > 0 {
			return nil
		}
		if left == 0 {
			return fmt.Errorf("the ovl daemon is still running %v after the unmount", limit)
		}
	}
}

// unmount unmounts mp: directly when privileged, else (or when the
// direct way is refused, e.g. root in a user namespace) with fusermount3.
// lazy detaches a busy mount.
func unmount(mp string, lazy bool) error {
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
		return fmt.Errorf("umount %s: %s: %v", mp, msg, err)
	}
	return nil
}
