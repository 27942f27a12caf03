package fusefs

// The kernel's passthrough rules that passthrough.go relies on, checked
// through a real mount of a minimal raw FUSE server with one file whose
// opens each test decides. If a kernel changes one of them, this test says
// which, and docs/passthrough.md must be revisited.

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

const ruleData = "LOWER-DATA-0123456789\n"

// reply is how the rule server answers one OPEN.
type reply struct {
	backing string // "": no passthrough; "lower", "upper", "lowerro": register (once) and use
	flags   uint32 // FOPEN_* added to the reply
}

type ruleFS struct {
	fuse.RawFileSystem
	t      *testing.T
	dir    string
	srv    *fuse.Server
	decide func(in *fuse.OpenIn) reply

	mu       sync.Mutex
	fds      map[uint64]int
	keys     map[uint64]string
	next     uint64
	ids      map[string]int32
	refs     map[string]int
	released int
}

func (r *ruleFS) path(which string) string { return filepath.Join(r.dir, which) }

func (r *ruleFS) attr(out *fuse.Attr) {
	var st syscall.Stat_t
	syscall.Stat(r.path("lower"), &st)
	out.FromStat(&st)
	out.Ino = 2
}

func (r *ruleFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.NodeId != 1 || name != "f" {
		return fuse.ENOENT
	}
	out.NodeId = 2
	r.attr(&out.Attr)
	return fuse.OK
}

func (r *ruleFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.NodeId == 1 {
		out.Mode = syscall.S_IFDIR | 0o755
		out.Ino = 1
		return fuse.OK
	}
	r.attr(&out.Attr)
	return fuse.OK
}

func (r *ruleFS) backingFd(which string) (int, error) {
	if which != "lowerro" {
		return unix.Open(r.path(which), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	fd, err := unix.Open(r.path("lower"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(fd)
	return readOnlyClone(fd)
}

func (r *ruleFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	rep := r.decide(in)
	// The daemon's own descriptor (for non-passthrough I/O) is on the
	// upper file for writers, as after a copy-up, and on the lower one for
	// readers.
	own := "lower"
	if in.Flags&unix.O_ACCMODE != unix.O_RDONLY {
		own = "upper"
	}
	fd, err := unix.Open(r.path(own), int(in.Flags)&unix.O_ACCMODE|unix.O_CLOEXEC, 0)
	if err != nil {
		return fuse.ToStatus(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if rep.backing != "" {
		if r.refs[rep.backing] == 0 {
			bfd, err := r.backingFd(rep.backing)
			if err != nil {
				unix.Close(fd)
				return fuse.ToStatus(err)
			}
			id, errno := r.srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(bfd)})
			unix.Close(bfd)
			if errno != 0 {
				unix.Close(fd)
				r.t.Errorf("register %s: %v", rep.backing, errno)
				return fuse.ToStatus(errno)
			}
			r.ids[rep.backing] = id
		}
		r.refs[rep.backing]++
		out.BackingID = r.ids[rep.backing]
		rep.flags |= fuse.FOPEN_PASSTHROUGH
	}
	r.next++
	r.fds[r.next], r.keys[r.next] = fd, rep.backing
	out.Fh, out.OpenFlags = r.next, rep.flags
	return fuse.OK
}

func (r *ruleFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	r.mu.Lock()
	fd := r.fds[in.Fh]
	r.mu.Unlock()
	n, err := unix.Pread(fd, buf, int64(in.Offset))
	if err != nil {
		return nil, fuse.ToStatus(err)
	}
	return fuse.ReadResultData(buf[:n]), fuse.OK
}

func (r *ruleFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	r.mu.Lock()
	fd := r.fds[in.Fh]
	r.mu.Unlock()
	n, err := unix.Pwrite(fd, data, int64(in.Offset))
	if err != nil {
		return 0, fuse.ToStatus(err)
	}
	return uint32(n), fuse.OK
}

func (r *ruleFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.OK }

func (r *ruleFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	unix.Close(r.fds[in.Fh])
	if k := r.keys[in.Fh]; k != "" {
		if r.refs[k]--; r.refs[k] == 0 {
			r.srv.UnregisterBackingFd(r.ids[k])
		}
	}
	delete(r.fds, in.Fh)
	r.released++
}

func (r *ruleFS) live() (open, released int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.fds), r.released
}

// mountRules mounts a rule server over a fresh lower and upper file.
func mountRules(t *testing.T, decide func(in *fuse.OpenIn) reply) (*ruleFS, string) {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	for _, f := range []string{"lower", "upper"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(ruleData), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	r := &ruleFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), t: t, dir: dir, decide: decide,
		fds: map[uint64]int{}, keys: map[uint64]string{}, ids: map[string]int32{}, refs: map[string]int{}}
	srv, err := fuse.NewServer(r, mnt, &fuse.MountOptions{Name: "ptrules", DirectMountStrict: true})
	if err != nil {
		t.Fatal(err)
	}
	r.srv = srv
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	if srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		testutil.Skip(t, "the kernel offers no FUSE passthrough")
	}
	return r, filepath.Join(mnt, "f")
}

// readersOn makes read-only opens passthrough on backing; writers get w.
func readersOn(backing string, w reply) func(in *fuse.OpenIn) reply {
	return func(in *fuse.OpenIn) reply {
		if in.Flags&unix.O_ACCMODE == unix.O_RDONLY {
			return reply{backing: backing}
		}
		return w
	}
}

func mustOpen(t *testing.T, path string, flags int) int {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s %#x: %v", path, flags, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func fileIs(t *testing.T, path, want string) {
	t.Helper()
	if b, err := os.ReadFile(path); err != nil || string(b) != want {
		t.Errorf("%s holds %q (%v), want %q", filepath.Base(path), b, err, want)
	}
}

func writeAt0(fd int) error {
	_, err := unix.Pwrite(fd, []byte("WRITTEN"), 0)
	return err
}

const written = "WRITTENATA-0123456789\n"

func TestKernelPassthroughRules(t *testing.T) {
	// An inode open through passthrough refuses every open that is not a
	// passthrough open on the same backing, direct I/O included.
	for name, w := range map[string]reply{
		"cached":                  {},
		"direct_io":               {flags: fuse.FOPEN_DIRECT_IO},
		"other_backing":           {backing: "upper"},
		"other_backing_direct_io": {backing: "upper", flags: fuse.FOPEN_DIRECT_IO},
	} {
		t.Run("refused_"+name, func(t *testing.T) {
			r, f := mountRules(t, readersOn("lower", w))
			ro := mustOpen(t, f, unix.O_RDONLY)
			_, err := unix.Open(f, unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != syscall.EIO {
				t.Errorf("write open while a read-only passthrough open is live: %v, want EIO", err)
			}
			unix.Close(ro)
			fileIs(t, r.path("lower"), ruleData)
		})
	}

	// A passthrough open on a lower file's backing reopens that file with
	// the new open's flags: a writer gets the lower file itself.
	t.Run("same_backing_writes_lower", func(t *testing.T) {
		r, f := mountRules(t, readersOn("lower", reply{backing: "lower"}))
		ro := mustOpen(t, f, unix.O_RDONLY)
		rw := mustOpen(t, f, unix.O_RDWR)
		if err := writeAt0(rw); err != nil {
			t.Fatal(err)
		}
		unix.Close(ro)
		fileIs(t, r.path("lower"), written)
		fileIs(t, r.path("upper"), ruleData)
	})

	// FOPEN_DIRECT_IO with the same backing: read and write go to the
	// server (here: the upper file), but mmap maps the backing file opened
	// with the writer's flags, so a shared writable mapping writes the lower.
	t.Run("same_backing_direct_io_mmap_writes_lower", func(t *testing.T) {
		r, f := mountRules(t, readersOn("lower", reply{backing: "lower", flags: fuse.FOPEN_DIRECT_IO}))
		ro := mustOpen(t, f, unix.O_RDONLY)
		rw := mustOpen(t, f, unix.O_RDWR)
		if err := writeAt0(rw); err != nil {
			t.Fatal(err)
		}
		fileIs(t, r.path("upper"), written)
		fileIs(t, r.path("lower"), ruleData)
		m, err := unix.Mmap(rw, 0, len(ruleData), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatalf("mmap: %v", err)
		}
		copy(m, "MAPPED")
		unix.Msync(m, unix.MS_SYNC)
		unix.Munmap(m)
		unix.Close(ro)
		fileIs(t, r.path("lower"), "MAPPEDDATA-0123456789\n")
	})

	// A backing registered from a read-only clone of the lower file's mount
	// serves readers, and refuses writers instead of writing the lower.
	t.Run("read_only_clone", func(t *testing.T) {
		r, f := mountRules(t, readersOn("lowerro", reply{backing: "lowerro", flags: fuse.FOPEN_DIRECT_IO}))
		ro := mustOpen(t, f, unix.O_RDONLY)
		b := make([]byte, len(ruleData))
		if n, err := unix.Pread(ro, b, 0); err != nil || string(b[:n]) != ruleData {
			t.Errorf("read through the clone's backing: %q, %v", b[:n], err)
		}
		for _, flags := range []int{unix.O_RDWR, unix.O_WRONLY} {
			if _, err := unix.Open(f, flags|unix.O_CLOEXEC, 0); err != syscall.EIO {
				t.Errorf("write open (%#x) on the read-only clone's backing: %v, want EIO", flags, err)
			}
		}
		unix.Close(ro)
		fileIs(t, r.path("lower"), ruleData)
		r2, f2 := mountRules(t, readersOn("lowerro", reply{backing: "lowerro"}))
		ro2 := mustOpen(t, f2, unix.O_RDONLY)
		if _, err := unix.Open(f2, unix.O_RDWR|unix.O_CLOEXEC, 0); err != syscall.EIO {
			t.Errorf("passthrough write open on the read-only clone's backing: %v, want EIO", err)
		}
		unix.Close(ro2)
		fileIs(t, r2.path("lower"), ruleData)
	})

	// A mapping of a passthrough file maps the backing file itself: close
	// releases the FUSE file and the inode's backing, so a writer with
	// another backing can open, and the mapping goes on showing the old
	// backing file's data (as a mapping of a lower file does in the
	// kernel's overlayfs after a copy-up).
	t.Run("mmap_releases_backing", func(t *testing.T) {
		r, f := mountRules(t, readersOn("lower", reply{backing: "upper"}))
		ro := mustOpen(t, f, unix.O_RDONLY)
		m, err := unix.Mmap(ro, 0, len(ruleData), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(m)
		unix.Close(ro)
		waitFor(t, "the RELEASE of the mapped file", func() bool { open, _ := r.live(); return open == 0 })
		rw := mustOpen(t, f, unix.O_RDWR)
		if err := writeAt0(rw); err != nil {
			t.Fatal(err)
		}
		fileIs(t, r.path("upper"), written)
		fileIs(t, r.path("lower"), ruleData)
		if !bytes.Equal(m, []byte(ruleData)) {
			t.Errorf("mapping shows %q, want the lower data", m)
		}
	})

	// The kernel sends RELEASE for an open it refused after the server's
	// reply, so a server's count of handles on a backing stays right.
	t.Run("refused_open_released", func(t *testing.T) {
		r, f := mountRules(t, readersOn("lower", reply{backing: "upper"}))
		ro := mustOpen(t, f, unix.O_RDONLY)
		if _, err := unix.Open(f, unix.O_RDWR|unix.O_CLOEXEC, 0); err != syscall.EIO {
			t.Fatalf("write open with another backing: %v, want EIO", err)
		}
		waitFor(t, "the refused open's RELEASE", func() bool { open, rel := r.live(); return open == 1 && rel == 1 })
		unix.Close(ro)
	})

	// A cached open makes passthrough opens fail until it is closed.
	t.Run("cached_then_passthrough", func(t *testing.T) {
		r, f := mountRules(t, func(in *fuse.OpenIn) reply {
			if in.Flags&unix.O_ACCMODE == unix.O_RDONLY {
				return reply{backing: "lower"}
			}
			return reply{}
		})
		rw := mustOpen(t, f, unix.O_RDWR)
		if _, err := unix.Open(f, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != syscall.EIO {
			t.Errorf("passthrough open while a cached open is live: %v, want EIO", err)
		}
		unix.Close(rw)
		waitFor(t, "RELEASEs", func() bool { open, _ := r.live(); return open == 0 })
		mustOpen(t, f, unix.O_RDONLY)
	})
}

// waitFor polls cond until it holds; RELEASE reaches a server after the
// close(2) that caused it has returned.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
