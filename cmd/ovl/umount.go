package main

import (
	"time"

	"github.com/ovl-project/ovl"
	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/internal/pidfd"
)

// runUmount unmounts and waits until the daemon has exited: only then has
// it released the lock on the upper, so a remount right after works.
func runUmount(inv *invocation) error {
	return ovl.Unmount(inv.positional[0], inv.lazy)
}

// findMount returns the topmost mount at path.
func findMount(path string) (*mountinfo.Entry, error) { return mountinfo.Find(path) }

// waitExit waits until the process behind pidfd has exited, for at most
// limit (a zero limit just checks).
func waitExit(fd int, limit time.Duration) error { return pidfd.Wait(fd, limit) }
