package main

// Locks across copy-up (issue 4, item 7): a lock taken through a read-only
// fd of a pristine lower file belongs to the overlay object, so it still
// conflicts with a lock another process asks for after opening the file for
// writing (which copies it up). The other process is this test binary run
// again (TestLockHelperProcess): POSIX locks belong to processes, so the
// conflicting one must come from another.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

const lockHelperEnv = "OVL_LOCK_HELPER"

// lockReq is what the helper process does: open Path O_RDWR and try an
// exclusive lock of Kind without waiting; with GetLk, also ask who holds a
// conflicting lock.
type lockReq struct {
	Path  string
	Kind  string // posix, ofd, flock
	GetLk bool
}

// lockRes is what it saw.
type lockRes struct {
	OpenErrno syscall.Errno
	LockErrno syscall.Errno
	GetLkType int16 // F_UNLCK when nothing conflicts
	GetLkPid  int32
	Pid       int
}

// TestLockHelperProcess is not a test: it is the other process of the lock
// tests, run by re-executing the test binary with lockHelperEnv set. Without
// that variable it does nothing.
func TestLockHelperProcess(t *testing.T) {
	spec := os.Getenv(lockHelperEnv)
	if spec == "" {
		return
	}
	var req lockReq
	if err := json.Unmarshal([]byte(spec), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	res := lockRes{Pid: os.Getpid(), GetLkType: unix.F_UNLCK}
	fd, err := unix.Open(req.Path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	res.OpenErrno = errnoOf(err)
	if err == nil {
		res.LockErrno = errnoOf(tryLock(fd, req.Kind, unix.F_WRLCK))
		if req.GetLk && res.LockErrno != 0 {
			res.GetLkType, res.GetLkPid, err = getLock(fd, req.Kind)
			if err != nil {
				fmt.Fprintln(os.Stderr, "getlk:", err)
				os.Exit(2)
			}
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(2)
	}
	os.Exit(0) // the lock (if taken) goes with the process
}

func errnoOf(err error) syscall.Errno {
	e, _ := k.Errno(err)
	if err != nil && e == 0 {
		return syscall.EINVAL
	}
	return e
}

func wholeFile(typ int16) *unix.Flock_t {
	return &unix.Flock_t{Type: typ, Whence: 0, Start: 0, Len: 0}
}

// tryLock takes (typ F_RDLCK or F_WRLCK) or releases (F_UNLCK) a whole-file
// lock of kind without waiting.
func tryLock(fd int, kind string, typ int16) error {
	switch kind {
	case "posix":
		return unix.FcntlFlock(uintptr(fd), unix.F_SETLK, wholeFile(typ))
	case "ofd":
		return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, wholeFile(typ))
	case "flock":
		how := unix.LOCK_SH
		switch typ {
		case unix.F_WRLCK:
			how = unix.LOCK_EX
		case unix.F_UNLCK:
			how = unix.LOCK_UN
		}
		return unix.Flock(fd, how|unix.LOCK_NB)
	}
	return fmt.Errorf("unknown lock kind %q", kind)
}

// getLock asks which lock would block an exclusive one (F_GETLK,
// F_OFD_GETLK); flock has no such call and reports F_UNLCK, 0.
func getLock(fd int, kind string) (int16, int32, error) {
	fl := wholeFile(unix.F_WRLCK)
	var err error
	switch kind {
	case "posix":
		err = unix.FcntlFlock(uintptr(fd), unix.F_GETLK, fl)
	case "ofd":
		err = unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, fl)
	default:
		return unix.F_UNLCK, 0, nil
	}
	return fl.Type, fl.Pid, err
}

// runLockHelper runs TestLockHelperProcess in a new process.
func runLockHelper(t *testing.T, req lockReq) lockRes {
	t.Helper()
	spec, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("lock helper %+v: %v\n%s", req, err, out)
	}
	var res lockRes
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("lock helper output %q: %v", out, err)
	}
	if res.Pid == os.Getpid() || res.Pid == 0 {
		t.Fatalf("lock helper ran in pid %d: not another process", res.Pid)
	}
	return res
}

// lockOutcome is what one side showed for one kind of lock.
type lockOutcome struct {
	Conflict syscall.Errno // the other process's exclusive lock after its copy-up
	GetLk    string        // what F_GETLK / F_OFD_GETLK reported then
	After    syscall.Errno // the same lock after the holder released
}

func (o lockOutcome) String() string {
	return fmt.Sprintf("conflicting lock: %s, getlk: %s, after release: %s",
		k.ErrnoName(o.Conflict), o.GetLk, k.ErrnoName(o.After))
}

func getLkString(typ int16, pid int32, holder int) string {
	switch {
	case typ == unix.F_UNLCK:
		return "none"
	case pid == int32(holder):
		return fmt.Sprintf("type=%d pid=holder", typ)
	}
	return fmt.Sprintf("type=%d pid=%d", typ, pid)
}

// TestLocksSurviveCopyUp (item 7): this process takes a shared POSIX lock
// (F_SETLK), OFD lock (F_OFD_SETLK) or flock through a read-only fd of a
// pristine lower file; another process then opens the file O_RDWR, which
// copies it up, and asks for an exclusive lock without waiting. On ovl the
// kernel's FUSE layer holds every lock on the one FUSE inode of the object,
// so the request fails with EAGAIN, F_GETLK names the holder (OFD locks
// report pid -1), and once the holder lets go the lock is granted. The
// kernel's overlayfs (6.18) keeps locks on its own overlay inode too, and
// so behaves the same. (That is ovl with passthrough=off, kcCoherent: with
// passthrough the other process's O_RDWR open gets ETXTBSY while the
// read-only fd is open; TestPassthroughOpenSequences checks locks there.)
func TestLocksSurviveCopyUp(t *testing.T) {
	kindsOf := []string{"posix", "ofd", "flock"}
	var lower k.Layer
	for _, kind := range kindsOf {
		lower = append(lower, k.File("d/"+kind, "locked "+kind).Mode(0o644))
	}
	p := kcPair(t, kcCoherent(), k.Layers{Lowers: []k.Layer{lower}})
	want := map[string]lockOutcome{
		"posix": {Conflict: syscall.EAGAIN, GetLk: fmt.Sprintf("type=%d pid=holder", unix.F_RDLCK)},
		"ofd":   {Conflict: syscall.EAGAIN, GetLk: fmt.Sprintf("type=%d pid=-1", unix.F_RDLCK)},
		"flock": {Conflict: syscall.EWOULDBLOCK, GetLk: "none"},
	}
	for _, kind := range kindsOf {
		for _, s := range p.Sides() {
			got := lockAcrossCopyUp(t, s, "d/"+kind, kind)
			if got != want[kind] {
				t.Errorf("%s lock on %s: got %s; want %s", kind, s.Name, got, want[kind])
			} else {
				t.Logf("%s lock on %s: %s", kind, s.Name, got)
			}
		}
	}
	p.Finish()
}

// lockAcrossCopyUp holds a shared lock of kind on rel through a read-only
// fd while another process copies rel up and tries an exclusive lock.
func lockAcrossCopyUp(t *testing.T, s *k.Side, rel, kind string) lockOutcome {
	t.Helper()
	path := s.Path(rel)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := tryLock(fd, kind, unix.F_RDLCK); err != nil {
		t.Fatalf("%s: %s read lock on a read-only fd: %v", s.Name, kind, err)
	}
	if _, err := os.Lstat(s.UpperPath(rel)); err == nil {
		t.Fatalf("%s: %s is in the upper before the other process opened it", s.Name, rel)
	}
	var o lockOutcome
	res := runLockHelper(t, lockReq{Path: path, Kind: kind, GetLk: true})
	if res.OpenErrno != 0 {
		t.Fatalf("%s: other process: open O_RDWR: %v", s.Name, res.OpenErrno)
	}
	expectCopiedUp(t, s, rel)
	o.Conflict = res.LockErrno
	o.GetLk = getLkString(res.GetLkType, res.GetLkPid, os.Getpid())
	if err := tryLock(fd, kind, unix.F_UNLCK); err != nil {
		t.Fatalf("%s: unlock: %v", s.Name, err)
	}
	o.After = runLockHelper(t, lockReq{Path: path, Kind: kind}).LockErrno
	return o
}
