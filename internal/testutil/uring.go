package testutil

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// FuseUringParam is the fuse module's switch for FUSE over io_uring. Y only
// lets servers that ask for io_uring at INIT use it; other FUSE servers are
// not affected.
const FuseUringParam = "/sys/module/fuse/parameters/enable_uring"

// SetFuseUring sets FuseUringParam for the test and restores it after. The
// switch is global and test packages run in parallel, so the test holds a
// lock on it across processes until it ends: otherwise one package's
// fallback test (N) would turn io_uring off under another's mount.
func SetFuseUring(t testing.TB, on bool) {
	t.Helper()
	lockFuseUring(t)
	old, err := os.ReadFile(FuseUringParam)
	if err != nil {
		t.Fatalf("kernel without FUSE over io_uring (CONFIG_FUSE_IO_URING): %v", err)
	}
	v := map[bool]string{true: "Y", false: "N"}[on]
	if err := os.WriteFile(FuseUringParam, []byte(v), 0); err != nil {
		t.Fatalf("set %s: %v", FuseUringParam, err)
	}
	t.Logf("set %s=%s (was %s); restored at the end", FuseUringParam, v, strings.TrimSpace(string(old)))
	// Registered after the unlock, so it runs first.
	t.Cleanup(func() { os.WriteFile(FuseUringParam, bytes.TrimSpace(old), 0) })
}

// uringLock is this process's hold on the cross-process lock: a test may
// set the switch more than once, and a second flock through another open
// file would wait for the first forever.
var uringLock struct {
	sync.Mutex
	f     *os.File
	holds int
}

func lockFuseUring(t testing.TB) {
	t.Helper()
	uringLock.Lock()
	defer uringLock.Unlock()
	if uringLock.holds == 0 {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), "ovl-test-enable-uring.lock"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatalf("lock %s: %v", FuseUringParam, err)
		}
		for {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
			if err != unix.EINTR {
				break
			}
		}
		if err != nil {
			f.Close()
			t.Fatalf("lock %s: %v", FuseUringParam, err)
		}
		uringLock.f = f
	}
	uringLock.holds++
	t.Cleanup(func() {
		uringLock.Lock()
		defer uringLock.Unlock()
		if uringLock.holds--; uringLock.holds == 0 {
			uringLock.f.Close()
			uringLock.f = nil
		}
	})
}
