package fusefs

// The kernel's lock messages that locks.go relies on, checked through a
// real mount of a minimal raw FUSE server (one directory, one file) that
// grants every lock and records what it is sent. If a kernel changes one of
// them, this test says which, and locks.go must be revisited.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

type lockRulesFS struct {
	fuse.RawFileSystem
	openFlags uint32 // FOPEN_* of every OPEN reply

	mu     sync.Mutex
	next   uint64
	events []string
}

func (r *lockRulesFS) record(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// take returns the events so far and forgets them.
func (r *lockRulesFS) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

func lockRulesAttr(ino uint64, out *fuse.Attr) {
	out.Ino = ino
	out.Mode = syscall.S_IFREG | 0o666
	if ino == 1 {
		out.Mode = syscall.S_IFDIR | 0o755
	}
	out.Nlink = 1
}

func (r *lockRulesFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.NodeId != 1 || name != "f" {
		return fuse.ENOENT
	}
	out.NodeId = 2
	lockRulesAttr(2, &out.Attr)
	return fuse.OK
}

func (r *lockRulesFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	lockRulesAttr(in.NodeId, &out.Attr)
	return fuse.OK
}

func (r *lockRulesFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.mu.Lock()
	r.next++
	out.Fh = r.next
	r.mu.Unlock()
	out.OpenFlags = r.openFlags
	return fuse.OK
}

func (r *lockRulesFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.OK
}

func (r *lockRulesFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	r.record("FLUSH fh%d owner=%x", in.Fh, in.LockOwner)
	return fuse.OK
}

func (r *lockRulesFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	r.record("RELEASE fh%d flock_unlock=%v owner=%x", in.Fh, in.ReleaseFlags&fuse.FUSE_RELEASE_FLOCK_UNLOCK != 0, in.LockOwner)
}

func (r *lockRulesFS) lk(op string, in *fuse.LkIn) {
	r.record("%s fh%d owner=%x type=%d flock=%v", op, in.Fh, in.Owner, in.Lk.Typ, in.LkFlags&fuse.FUSE_LK_FLOCK != 0)
}

func (r *lockRulesFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	r.lk("GETLK", in)
	out.Lk.Typ = unix.F_UNLCK
	return fuse.OK
}

func (r *lockRulesFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	r.lk("SETLK", in)
	return fuse.OK
}

func (r *lockRulesFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	r.lk("SETLKW", in)
	return fuse.OK
}

func mountLockRules(t *testing.T, openFlags uint32) (*lockRulesFS, string) {
	t.Helper()
	testutil.RequireRoot(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	r := &lockRulesFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), openFlags: openFlags}
	srv, err := fuse.NewServer(r, mnt, &fuse.MountOptions{Name: "lockrules", DirectMountStrict: true, EnableLocks: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return r, mnt
}

// until polls r's events until one has prefix (the RELEASE of a last
// close comes after close(2) returned), and returns all taken so far.
func (r *lockRulesFS) until(t *testing.T, prefix string, got []string) []string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got = append(got, r.take()...)
		for _, e := range got {
			if strings.HasPrefix(e, prefix) {
				return got
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 60s; got %q", prefix, got)
		}
		time.Sleep(time.Millisecond)
	}
}

func fieldOf(ev, name string) string {
	for _, f := range strings.Fields(ev) {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			return v
		}
	}
	return ""
}

func TestKernelLockRules(t *testing.T) {
	t.Run("posix_close_sends_flush_only", func(t *testing.T) {
		// A POSIX lock's release at a close is the FLUSH's lock owner,
		// the one of the SETLK; no unlock request follows. With
		// FOPEN_NOFLUSH nothing at all is sent.
		for _, noflush := range []bool{false, true} {
			var flags uint32
			if noflush {
				flags = fuse.FOPEN_NOFLUSH
			}
			r, mnt := mountLockRules(t, flags)
			a, err := unix.Open(filepath.Join(mnt, "f"), unix.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			b, err := unix.Open(filepath.Join(mnt, "f"), unix.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.FcntlFlock(uintptr(a), unix.F_SETLK, &unix.Flock_t{Type: unix.F_WRLCK}); err != nil {
				t.Fatal(err)
			}
			set := r.take()
			if len(set) != 1 || !strings.HasPrefix(set[0], "SETLK fh1 ") || fieldOf(set[0], "flock") != "false" {
				t.Fatalf("F_SETLK sent %q", set)
			}
			unix.Close(b)
			got := r.until(t, "RELEASE fh2", nil)
			want := []string{fmt.Sprintf("FLUSH fh2 owner=%s", fieldOf(set[0], "owner")), "RELEASE fh2 flock_unlock=false owner=0"}
			if noflush {
				want = want[1:]
			}
			if strings.Join(got, "; ") != strings.Join(want, "; ") {
				t.Errorf("noflush=%v: closing another descriptor sent %q, want %q", noflush, got, want)
			}
			unix.Close(a)
		}
	})
	t.Run("ofd_last_close_sends_release_only", func(t *testing.T) {
		// An OFD lock's owner is its open file's: not the FLUSH's, and the
		// RELEASE names none.
		r, mnt := mountLockRules(t, 0)
		a, err := unix.Open(filepath.Join(mnt, "f"), unix.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.FcntlFlock(uintptr(a), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_WRLCK}); err != nil {
			t.Fatal(err)
		}
		set := r.take()
		if len(set) != 1 || !strings.HasPrefix(set[0], "SETLK fh1 ") {
			t.Fatalf("F_OFD_SETLK sent %q", set)
		}
		unix.Close(a)
		got := r.until(t, "RELEASE fh1", nil)
		if len(got) != 2 || !strings.HasPrefix(got[0], "FLUSH fh1 ") || fieldOf(got[0], "owner") == fieldOf(set[0], "owner") ||
			got[1] != "RELEASE fh1 flock_unlock=false owner=0" {
			t.Errorf("last close of an OFD lock's file sent %q after %q", got, set)
		}
	})
	t.Run("flock_last_close_sends_release_flock_unlock", func(t *testing.T) {
		r, mnt := mountLockRules(t, 0)
		a, err := unix.Open(filepath.Join(mnt, "f"), unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(a, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		set := r.take()
		if len(set) != 1 || !strings.HasPrefix(set[0], "SETLK fh1 ") || fieldOf(set[0], "flock") != "true" {
			t.Fatalf("flock sent %q", set)
		}
		unix.Close(a)
		got := r.until(t, "RELEASE fh1", nil)
		if len(got) != 2 || !strings.HasPrefix(got[0], "FLUSH fh1 ") ||
			got[1] != "RELEASE fh1 flock_unlock=true owner="+fieldOf(set[0], "owner") {
			t.Errorf("last close of a flock's file sent %q after %q", got, set)
		}
	})
	t.Run("directory_locks_stay_in_the_kernel", func(t *testing.T) {
		r, mnt := mountLockRules(t, 0)
		a, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(a)
		b, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(b)
		if err := unix.Flock(a, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB); err != syscall.EWOULDBLOCK {
			t.Errorf("second flock of the directory: %v, want EWOULDBLOCK from the kernel's own lock", err)
		}
		if err := unix.FcntlFlock(uintptr(a), unix.F_SETLK, &unix.Flock_t{Type: unix.F_RDLCK}); err != nil {
			t.Fatal(err)
		}
		if got := r.take(); len(got) != 0 {
			t.Errorf("directory locks sent %q", got)
		}
	})
}
