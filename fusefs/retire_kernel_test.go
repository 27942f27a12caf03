package fusefs

// The kernel behaviour that retiring a FUSE inode relies on
// (passthrough.go, docs/passthrough.md "A writer while a lower file is
// open"), checked through a real mount of a minimal raw FUSE server: one
// file object under the names f and g (hard links) and a symlink s to f,
// whose FUSE node id the server changes when it answers a request ESTALE.

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

const symID = 100 // the node id of the symlink s

type retireFS struct {
	fuse.RawFileSystem
	data string // the file every open of the object uses

	mu      sync.Mutex
	cur     uint64         // the object's current node id
	readers map[uint64]int // read-only opens live, by node id
	fhNode  map[uint64]uint64
	fhRO    map[uint64]bool
	fds     map[uint64]int
	next    uint64
	log     []string // "LOOKUP f=2", "OPEN 2 0x8001: ESTALE", "SETATTR 2 size: ok", "GETATTR 2"
}

func (r *retireFS) logf(format string, args ...any) {
	r.log = append(r.log, fmt.Sprintf(format, args...))
}

// events returns the log since mark and a new mark.
func (r *retireFS) events(mark int) ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log[mark:]...), len(r.log)
}

func (r *retireFS) fileAttr(out *fuse.Attr) {
	var st syscall.Stat_t
	syscall.Stat(r.data, &st)
	out.FromStat(&st)
	out.Ino = 2 // one object: the same st_ino through every node id
	out.Nlink = 2
}

func (r *retireFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.NodeId != 1 {
		return fuse.ENOENT
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch name {
	case "f", "g":
		out.NodeId = r.cur
		r.fileAttr(&out.Attr)
	case "s":
		out.NodeId = symID
		out.Attr.Mode, out.Attr.Ino, out.Attr.Nlink = syscall.S_IFLNK|0o777, symID, 1
	default:
		return fuse.ENOENT
	}
	r.logf("LOOKUP %s=%d", name, out.NodeId)
	out.SetEntryTimeout(time.Hour)
	out.SetAttrTimeout(time.Hour)
	return fuse.OK
}

func (r *retireFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	switch in.NodeId {
	case 1:
		out.Mode, out.Ino, out.Nlink = syscall.S_IFDIR|0o755, 1, 2
	case symID:
		out.Mode, out.Ino, out.Nlink = syscall.S_IFLNK|0o777, symID, 1
	default:
		r.mu.Lock()
		r.logf("GETATTR %d", in.NodeId)
		r.mu.Unlock()
		r.fileAttr(&out.Attr)
	}
	out.AttrValid, out.AttrValidNsec = 0, 0 // ask at every stat: what ovl gives a retired inode
	return fuse.OK
}

func (r *retireFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	return []byte("f"), fuse.OK
}

// stale answers ESTALE and moves the object to a new node id when a data
// change reaches a node id with live read-only opens; with r.mu held.
func (r *retireFS) stale(node uint64) bool {
	if r.readers[node] == 0 {
		return false
	}
	if node == r.cur {
		r.cur++
	}
	return true
}

func (r *retireFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	ro := in.Flags&unix.O_ACCMODE == unix.O_RDONLY && in.Flags&unix.O_TRUNC == 0
	if !ro && r.stale(in.NodeId) {
		r.logf("OPEN %d %#x: ESTALE", in.NodeId, in.Flags&(unix.O_ACCMODE|unix.O_TRUNC|unix.O_APPEND))
		return fuse.Status(syscall.ESTALE)
	}
	fd, err := unix.Open(r.data, int(in.Flags)&(unix.O_ACCMODE|unix.O_TRUNC|unix.O_APPEND)|unix.O_CLOEXEC, 0)
	if err != nil {
		return fuse.ToStatus(err)
	}
	r.logf("OPEN %d %#x: ok", in.NodeId, in.Flags&(unix.O_ACCMODE|unix.O_TRUNC|unix.O_APPEND))
	r.next++
	r.fds[r.next], r.fhNode[r.next], r.fhRO[r.next] = fd, in.NodeId, ro
	if ro {
		r.readers[in.NodeId]++
	}
	out.Fh = r.next
	out.OpenFlags = fuse.FOPEN_DIRECT_IO // the server sees every read and write
	return fuse.OK
}

func (r *retireFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	sz, ok := in.GetSize()
	if !ok {
		r.fileAttr(&out.Attr)
		return fuse.OK
	}
	if in.Valid&fuse.FATTR_FH == 0 && r.stale(in.NodeId) {
		r.logf("SETATTR %d size: ESTALE", in.NodeId)
		return fuse.Status(syscall.ESTALE)
	}
	r.logf("SETATTR %d size: ok", in.NodeId)
	if err := os.Truncate(r.data, int64(sz)); err != nil {
		return fuse.ToStatus(err)
	}
	r.fileAttr(&out.Attr)
	return fuse.OK
}

func (r *retireFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	r.mu.Lock()
	fd := r.fds[in.Fh]
	r.mu.Unlock()
	n, err := unix.Pread(fd, buf, int64(in.Offset))
	if err != nil {
		return nil, fuse.ToStatus(err)
	}
	return fuse.ReadResultData(buf[:n]), fuse.OK
}

func (r *retireFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	r.mu.Lock()
	fd := r.fds[in.Fh]
	r.mu.Unlock()
	n, err := unix.Write(fd, data)
	if err != nil {
		return 0, fuse.ToStatus(err)
	}
	return uint32(n), fuse.OK
}

func (r *retireFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.OK }

func (r *retireFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	unix.Close(r.fds[in.Fh])
	if r.fhRO[in.Fh] {
		r.readers[r.fhNode[in.Fh]]--
	}
	delete(r.fds, in.Fh)
}

func mountRetire(t *testing.T) (*retireFS, string) {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	r := &retireFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), data: filepath.Join(dir, "data"), cur: 2,
		readers: map[uint64]int{}, fhNode: map[uint64]uint64{}, fhRO: map[uint64]bool{}, fds: map[uint64]int{}}
	if err := os.WriteFile(r.data, []byte(ruleData), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	srv, err := fuse.NewServer(r, mnt, &fuse.MountOptions{Name: "ptretire", DirectMountStrict: true,
		ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC})
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
	if srv.KernelSettings().Flags64()&fuse.CAP_ATOMIC_O_TRUNC == 0 {
		t.Fatal("the kernel does not offer FUSE_ATOMIC_O_TRUNC")
	}
	return r, mnt
}

// only returns the events of the given kinds.
func only(evs []string, kinds ...string) []string {
	var out []string
	for _, e := range evs {
		for _, k := range kinds {
			if strings.HasPrefix(e, k+" ") {
				out = append(out, e)
			}
		}
	}
	return out
}

func sameEvents(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: the server saw\n\t%s\nwant\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

func TestKernelRetireRules(t *testing.T) {
	r, mnt := mountRetire(t)
	f, g, s := filepath.Join(mnt, "f"), filepath.Join(mnt, "g"), filepath.Join(mnt, "s")
	// Cache every name's dentry: no entry times out during the test, and
	// an O_PATH descriptor (which sends no OPEN) keeps g's in use, so that
	// memory pressure (drop_caches) cannot evict it; f's are held by the
	// readers below.
	for _, p := range []string{f, g, s} {
		if _, err := os.Lstat(p); err != nil {
			t.Fatal(err)
		}
	}
	mustOpen(t, g, unix.O_PATH)
	_, mark := r.events(0)

	// FUSE_ATOMIC_O_TRUNC: O_TRUNC comes with the OPEN, and no SETATTR
	// follows, also for O_RDONLY|O_TRUNC, with O_CREAT, through a symlink.
	for _, c := range []struct {
		what  string
		path  string
		flags int
	}{
		{"O_RDONLY|O_TRUNC", f, unix.O_RDONLY | unix.O_TRUNC},
		{"O_RDONLY|O_TRUNC|O_CREAT", f, unix.O_RDONLY | unix.O_TRUNC | unix.O_CREAT},
		{"O_RDONLY|O_TRUNC via a symlink", s, unix.O_RDONLY | unix.O_TRUNC},
		{"O_WRONLY|O_TRUNC", f, unix.O_WRONLY | unix.O_TRUNC},
	} {
		fd, err := unix.Open(c.path, c.flags|unix.O_CLOEXEC, 0o644)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		unix.Close(fd)
		var evs []string
		evs, mark = r.events(mark)
		sameEvents(t, c.what, only(evs, "OPEN", "SETATTR"),
			fmt.Sprintf("OPEN 2 %#x: ok", c.flags&(unix.O_ACCMODE|unix.O_TRUNC)))
	}

	// A reader holds node 2. A write open through the path is answered
	// ESTALE: the VFS retries once with LOOKUP_REVAL, FUSE revalidates the
	// cached dentry with a LOOKUP although its entry is valid for an hour,
	// finds another node id, drops the dentry and looks the name up again
	// (the second LOOKUP), and the new node id gets the open.
	ro := mustOpen(t, f, unix.O_RDONLY)
	_, mark = r.events(mark)
	w, err := unix.Open(f, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("write open while a reader holds the old node: %v", err)
	}
	evs, mark := r.events(mark)
	sameEvents(t, "write open", only(evs, "OPEN", "LOOKUP"),
		"OPEN 2 0x401: ESTALE", "LOOKUP f=3", "LOOKUP f=3", "OPEN 3 0x401: ok")
	if _, err := unix.Write(w, []byte("APPENDED\n")); err != nil {
		t.Fatal(err)
	}
	unix.Close(w)

	// fstat through the reader's descriptor asks the server about the old
	// node id each time: a zero attribute timeout never lets the kernel
	// keep the reply, not even for the rest of the jiffy.
	var st unix.Stat_t
	for i := 0; i < 3; i++ {
		if err := unix.Fstat(ro, &st); err != nil {
			t.Fatal(err)
		}
	}
	evs, mark = r.events(mark)
	sameEvents(t, "fstat of the old descriptor", only(evs, "GETATTR"), "GETATTR 2", "GETATTR 2", "GETATTR 2")
	if st.Size != int64(len("APPENDED\n")) { // the O_TRUNC opens above emptied it
		t.Errorf("fstat of the old descriptor: size %d", st.Size)
	}

	// truncate(2) while a reader holds node 3: SETATTR ESTALE, retried
	// after a LOOKUP on node 4 (retry_estale in do_sys_truncate).
	ro3 := mustOpen(t, f, unix.O_RDONLY)
	_, mark = r.events(mark)
	if err := unix.Truncate(f, 4); err != nil {
		t.Fatalf("truncate while a reader holds the node: %v", err)
	}
	evs, mark = r.events(mark)
	sameEvents(t, "truncate", only(evs, "SETATTR", "LOOKUP"),
		"SETATTR 3 size: ESTALE", "LOOKUP f=4", "LOOKUP f=4", "SETATTR 4 size: ok")

	// O_CREAT without O_EXCL of an existing name: retried the same way.
	ro4 := mustOpen(t, f, unix.O_RDONLY)
	_, mark = r.events(mark)
	w, err = unix.Open(f, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatalf("O_CREAT write open while a reader holds the node: %v", err)
	}
	unix.Close(w)
	evs, mark = r.events(mark)
	sameEvents(t, "O_CREAT write open", only(evs, "OPEN", "LOOKUP"),
		"OPEN 4 0x1: ESTALE", "LOOKUP f=5", "LOOKUP f=5", "OPEN 5 0x1: ok")

	// The other hard link's dentry still points at the old node (4 was
	// looked up through f only; g's dentry is of node 2): its open is
	// answered ESTALE on that node and retried after a LOOKUP of g.
	ro5 := mustOpen(t, f, unix.O_RDONLY)
	if err := unix.Truncate(f, 4); err != nil { // node 5 -> 6
		t.Fatal(err)
	}
	_, mark = r.events(mark)
	w, err = unix.Open(g, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("write open through the second link: %v", err)
	}
	unix.Close(w)
	evs, mark = r.events(mark)
	sameEvents(t, "write open through g", only(evs, "OPEN", "LOOKUP"),
		"OPEN 2 0x1: ESTALE", "LOOKUP g=6", "LOOKUP g=6", "OPEN 6 0x1: ok")

	// A reopen through /proc/self/fd/N of the reader's descriptor goes to
	// the old node id with no LOOKUP (the magic link skips revalidation),
	// also on the retry: the caller gets ESTALE.
	_, mark = r.events(mark)
	_, err = unix.Open(fmt.Sprintf("/proc/self/fd/%d", ro5), unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != syscall.ESTALE {
		t.Errorf("write reopen through /proc/self/fd of a reader: %v, want ESTALE", err)
	}
	evs, mark = r.events(mark)
	sameEvents(t, "write reopen through /proc/self/fd", only(evs, "OPEN", "LOOKUP"),
		"OPEN 5 0x1: ESTALE", "OPEN 5 0x1: ESTALE")
	// A read-only reopen of it is an open of the old node id.
	rr, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", ro5), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("read-only reopen through /proc/self/fd: %v", err)
	}
	unix.Close(rr)
	evs, _ = r.events(mark)
	sameEvents(t, "read-only reopen through /proc/self/fd", only(evs, "OPEN", "LOOKUP"), "OPEN 5 0x0: ok")
	for _, fd := range []int{ro, ro3, ro4, ro5} {
		unix.Close(fd)
	}
}
