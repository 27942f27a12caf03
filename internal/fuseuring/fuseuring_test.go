package fuseuring

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

// setEnableUring: testutil.SetFuseUring.
func setEnableUring(t testing.TB, on bool) { testutil.SetFuseUring(t, on) }

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root to mount")
		}
		t.Skip("needs root to mount")
	}
}

// mountLoopback serves go-fuse's loopback file system of dir.
func mountLoopback(t testing.TB, dir string, plain bool) *Server {
	t.Helper()
	root, err := gofs.NewLoopbackRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	raw := gofs.NewNodeFS(root, &gofs.Options{})
	mnt := t.TempDir()
	s, err := Mount(mnt, raw, fuse.MountOptions{Name: "uringtest", FsName: dir, MaxWrite: 1 << 20}, Options{Plain: plain})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return s
}

func populate(t testing.TB, dir string) {
	t.Helper()
	for i := 0; i < 20; i++ {
		d := filepath.Join(dir, fmt.Sprintf("d%02d", i), "sub")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 10; j++ {
			data := bytes.Repeat([]byte{byte('a' + j)}, i*1000+j*37)
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", j)), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("sub/f1", filepath.Join(dir, fmt.Sprintf("d%02d", i), "link")); err != nil {
			t.Fatal(err)
		}
	}
	// One file bigger than max_write, so reads and writes span requests.
	big := make([]byte, 3<<20+123)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o600); err != nil {
		t.Fatal(err)
	}
}

// mutate writes, renames, truncates, removes and makes entries.
func mutate(t testing.TB, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(root, "new"), []byte("hello"), 0o640))
	f, err := os.OpenFile(filepath.Join(root, "d03/sub/f2"), os.O_WRONLY|os.O_APPEND, 0)
	must(err)
	_, err = f.Write(bytes.Repeat([]byte("x"), 5000))
	must(err)
	must(f.Close())
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB: two WRITEs
	must(os.WriteFile(filepath.Join(root, "d04/big2"), big, 0o600))
	must(os.Rename(filepath.Join(root, "d05/sub/f3"), filepath.Join(root, "d06/moved")))
	must(os.Truncate(filepath.Join(root, "d07/sub/f4"), 10))
	must(os.Remove(filepath.Join(root, "d08/sub/f5")))
	must(os.Mkdir(filepath.Join(root, "d09/newdir"), 0o700))
	must(os.Chmod(filepath.Join(root, "d10/sub/f6"), 0o600))
	must(os.Symlink("../big", filepath.Join(root, "d11/biglink")))
	must(os.Link(filepath.Join(root, "d12/sub/f7"), filepath.Join(root, "d12/hard")))
	must(os.RemoveAll(filepath.Join(root, "d13")))
	if err := syscall.Setxattr(filepath.Join(root, "new"), "user.k", []byte("v"), 0); err == nil {
		buf := make([]byte, 16)
		n, err := syscall.Getxattr(filepath.Join(root, "new"), "user.k", buf)
		if err != nil || string(buf[:n]) != "v" {
			t.Fatalf("getxattr: %q %v", buf[:n], err)
		}
	}
}

// TestLoopbackUring serves go-fuse's loopback file system over io_uring
// and over /dev/fuse, side by side on copies of one tree, and compares
// what a walk, reads and a set of changes see through each mount; the
// io_uring mount must have served its requests through the rings.
func TestLoopbackUring(t *testing.T) {
	needRoot(t)
	setEnableUring(t, true)
	srcU, srcP := t.TempDir(), t.TempDir()
	populate(t, srcU)
	populate(t, srcP)
	u := mountLoopback(t, srcU, false)
	p := mountLoopback(t, srcP, true)
	if !u.Uring() {
		t.Fatal("io_uring mount is served through /dev/fuse")
	}
	if p.Uring() {
		t.Fatal("plain mount uses io_uring")
	}
	before := u.RingRequests()
	su, sp := testutil.TreeListing(t, u.mountpoint), testutil.TreeListing(t, p.mountpoint)
	if su != sp {
		t.Fatalf("walk differs:\nuring:\n%s\nplain:\n%s", su, sp)
	}
	if want := testutil.TreeListing(t, srcU); su != want {
		t.Fatalf("walk through uring mount differs from the tree:\n%s\nwant:\n%s", su, want)
	}
	mutate(t, u.mountpoint)
	mutate(t, p.mountpoint)
	su, sp = testutil.TreeListing(t, u.mountpoint), testutil.TreeListing(t, p.mountpoint)
	if su != sp {
		t.Fatalf("after changes, walk differs:\nuring:\n%s\nplain:\n%s", su, sp)
	}
	if want := testutil.TreeListing(t, srcU); su != want {
		t.Fatalf("after changes, uring mount differs from its tree:\n%s\nwant:\n%s", su, want)
	}
	// Each walk reads ~220 files: far more requests than that.
	if n := u.RingRequests() - before; n < 1000 {
		t.Fatalf("only %d requests through the rings", n)
	}
	t.Logf("%d requests served through %d rings", u.RingRequests(), len(u.queues))
}

// TestFallbackWithoutUring: with enable_uring=N the kernel does not offer
// io_uring at INIT, and the same Mount serves through /dev/fuse.
func TestFallbackWithoutUring(t *testing.T) {
	needRoot(t)
	setEnableUring(t, false)
	src := t.TempDir()
	populate(t, src)
	s := mountLoopback(t, src, false)
	if s.Uring() {
		t.Fatal("io_uring in use although the kernel has it off")
	}
	if got, want := testutil.TreeListing(t, s.mountpoint), testutil.TreeListing(t, src); got != want {
		t.Fatalf("walk differs:\n%s\nwant:\n%s", got, want)
	}
}

// TestLockWaitSameQueue: a lock wait (SETLKW) that only the unlock, sent
// from the same CPU and so on the same ring queue, can end. Served on the
// queue's thread, the wait would hold the queue and the unlock would never
// be read.
func TestLockWaitSameQueue(t *testing.T) {
	needRoot(t)
	setEnableUring(t, true)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := gofs.NewLoopbackRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	s, err := Mount(mnt, gofs.NewNodeFS(root, &gofs.Options{}), fuse.MountOptions{Name: "uringtest", FsName: src, EnableLocks: true}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Unmount(); err != nil {
			t.Error(err)
		}
	}()
	if !s.Uring() {
		t.Fatal("not on io_uring")
	}
	// Every request from CPU 0: queue 0.
	onCPU0 := func() {
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(0)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			t.Error(err)
		}
	}
	onCPU0()
	defer runtime.UnlockOSThread()
	f1, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	f2, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f1.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatalf("lock: %v", err)
	}
	got := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		onCPU0()
		l := unix.Flock_t{Type: unix.F_WRLCK}
		close(started)
		got <- unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLKW, &l)
	}()
	<-started
	// Let the wait reach the daemon: a conflicting F_OFD_GETLK from f2
	// sees f1's lock whatever the order, so wait until a SETLK from f2
	// still fails (the waiter has not got the lock), a bounded number of
	// times, then unlock.
	for i := 0; i < 50; i++ {
		l := unix.Flock_t{Type: unix.F_WRLCK}
		if err := unix.FcntlFlock(f2.Fd(), unix.F_OFD_GETLK, &l); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
	lk.Type = unix.F_UNLCK
	if err := unix.FcntlFlock(f1.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("lock wait: %v", err)
		}
	case <-time.After(120 * time.Second):
		t.Fatal("lock wait not ended by the unlock in 120 s")
	}
}
