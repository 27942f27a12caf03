package fusefs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
	"github.com/ovl-project/ovl/overlay"
)

// mountTest serves an overlay of one lower file "f" at a new mount point.
func mountTest(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	lower, upper, work, mnt := filepath.Join(dir, "l"), filepath.Join(dir, "u"), filepath.Join(dir, "w"), filepath.Join(dir, "m")
	for _, d := range []string{lower, upper, work, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "f"), []byte("lower data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ov, err := overlay.New(overlay.Config{Lowers: []string{lower}, Upper: upper, Work: work})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(mnt, ov, opts)
	if err != nil {
		ov.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
		srv.Wait()
		ov.Close()
	})
	return srv, mnt
}

// retire gives the object named name in the root a new FUSE inode, as a
// write open does for an object whose readers hold its lower backing: a
// new generation, so the next lookup makes a new node id, and the kernel's
// dentry dropped, so that the next open looks it up. Descriptors open
// before stay on the old inode.
func retire(t *testing.T, srv *Server, name string) {
	t.Helper()
	ch := srv.root.GetChild(name)
	if ch == nil {
		t.Fatalf("%s: not known to go-fuse", name)
	}
	srv.root.gens.bump(ch.Operations().(*node).n.Key())
	if e := srv.root.NotifyEntry(name); e != 0 {
		t.Fatalf("invalidate %s: %v", name, e)
	}
}

func ofdLock(fd int, cmd int, typ int16) (int16, error) {
	fl := unix.Flock_t{Type: typ}
	err := unix.FcntlFlock(uintptr(fd), cmd, &fl)
	return fl.Type, err
}

// TestLocksAcrossFUSEInodes: OFD and flock locks taken through a descriptor
// of an object conflict with those asked for through a descriptor on
// another FUSE inode of the same object, and go with the last close of
// theirs. The kernel alone keeps locks per FUSE inode, so this needs the
// daemon's table. (POSIX locks take the same path through the table; the
// process-owned kind needs a second process: cmd/ovl/locks_test.go.)
func TestLocksAcrossFUSEInodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{{"passthrough", Options{}}, {"nopassthrough", Options{NoPassthrough: true}}} {
		t.Run(tc.name, func(t *testing.T) {
			srv, mnt := mountTest(t, tc.opts)
			path := filepath.Join(mnt, "f")
			a, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { unix.Close(a) }()
			if _, err := ofdLock(a, unix.F_OFD_SETLK, unix.F_RDLCK); err != nil {
				t.Fatalf("OFD read lock: %v", err)
			}
			if err := unix.Flock(a, unix.LOCK_SH|unix.LOCK_NB); err != nil {
				t.Fatalf("flock shared: %v", err)
			}
			old := srv.root.GetChild("f")
			retire(t, srv, "f")
			b, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(b)
			if srv.root.GetChild("f") == old {
				t.Fatal("the second open is on the same FUSE inode: the test proves nothing")
			}
			var sa, sb unix.Stat_t
			if err := unix.Fstat(a, &sa); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fstat(b, &sb); err != nil {
				t.Fatal(err)
			}
			if sa.Ino != sb.Ino {
				t.Fatalf("st_ino %d, then %d: not one object", sa.Ino, sb.Ino)
			}
			if typ, err := ofdLock(b, unix.F_OFD_GETLK, unix.F_WRLCK); err != nil || typ != unix.F_RDLCK {
				t.Errorf("F_OFD_GETLK through the new inode: type %d, %v; want the read lock (%d)", typ, err, unix.F_RDLCK)
			}
			if err := unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB); err != syscall.EWOULDBLOCK {
				t.Errorf("flock exclusive through the new inode: %v, want EWOULDBLOCK", err)
			}
			if err := unix.Flock(b, unix.LOCK_SH|unix.LOCK_NB); err != nil {
				t.Errorf("flock shared through the new inode: %v", err)
			}
			// The last close of the holder's open file takes its locks.
			unix.Close(a)
			a = -1
			if typ, err := ofdLock(b, unix.F_OFD_GETLK, unix.F_WRLCK); err != nil || typ != unix.F_UNLCK {
				t.Errorf("F_OFD_GETLK after the holder's close: type %d, %v; want none", typ, err)
			}
			if err := unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB); err != nil {
				t.Errorf("flock exclusive after the holder's close: %v", err)
			}
		})
	}
}
