package main

// File locks through the mount, against the kernel's overlayfs: ovl serves
// POSIX, OFD and flock locks from the daemon, per overlay object
// (fusefs/locks.go). A lock taken through any descriptor of an object
// conflicts with locks through any other, before and after a copy-up
// (issue 4, item 7; issue 17, item 4); locks go when the kernel says they
// go (POSIX: any close by the holder; OFD and flock: the last close of the
// open file); a waiting request is woken by an unlock, interrupted by a
// signal, or refused as a deadlock. The other process is this test binary
// run again (TestLockHelperProcess): POSIX locks belong to processes, so the
// conflicting one must come from another.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

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
	// ReadOnly opens O_RDONLY and asks for a shared lock instead.
	ReadOnly bool
	// Wait waits for the lock (F_SETLKW, F_OFD_SETLKW, flock without
	// LOCK_NB); with NoRestart, SIGUSR1 interrupts the wait (its handler
	// has no SA_RESTART).
	Wait, NoRestart bool
	// Start, Len: the range of a POSIX or OFD lock (0, 0: the whole file).
	Start, Len int64
	// Byte1 first takes a write lock of byte 1, without waiting.
	Byte1 bool
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
	if req.NoRestart {
		if err := noRestart(unix.SIGUSR1); err != nil {
			fmt.Fprintln(os.Stderr, "sigaction:", err)
			os.Exit(2)
		}
	}
	flags, typ := unix.O_RDWR, int16(unix.F_WRLCK)
	if req.ReadOnly {
		flags, typ = unix.O_RDONLY, unix.F_RDLCK
	}
	fd, err := unix.Open(req.Path, flags|unix.O_CLOEXEC, 0)
	res.OpenErrno = errnoOf(err)
	if err == nil && req.Byte1 {
		err = unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: 1, Len: 1})
		if err != nil {
			fmt.Fprintln(os.Stderr, "lock byte 1:", err)
			os.Exit(2)
		}
	}
	if err == nil {
		res.LockErrno = errnoOf(lockRange(fd, req.Kind, typ, req.Start, req.Len, req.Wait))
		if req.GetLk && res.LockErrno != 0 {
			res.GetLkType, res.GetLkPid, err = getLock(fd, req.Kind, typ)
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
	return lockRange(fd, kind, typ, 0, 0, false)
}

// lockRange takes or releases a lock of kind: for POSIX and OFD locks, of
// len bytes from start (0: to the end of the file); with wait, it waits.
func lockRange(fd int, kind string, typ int16, start, len int64, wait bool) error {
	fl := &unix.Flock_t{Type: typ, Start: start, Len: len}
	switch kind {
	case "posix":
		cmd := unix.F_SETLK
		if wait {
			cmd = unix.F_SETLKW
		}
		return unix.FcntlFlock(uintptr(fd), cmd, fl)
	case "ofd":
		cmd := unix.F_OFD_SETLK
		if wait {
			cmd = unix.F_OFD_SETLKW
		}
		return unix.FcntlFlock(uintptr(fd), cmd, fl)
	case "flock":
		how := unix.LOCK_SH
		switch typ {
		case unix.F_WRLCK:
			how = unix.LOCK_EX
		case unix.F_UNLCK:
			how = unix.LOCK_UN
		}
		if !wait {
			how |= unix.LOCK_NB
		}
		return unix.Flock(fd, how)
	}
	return fmt.Errorf("unknown lock kind %q", kind)
}

// getLock asks which lock would block one of typ (F_GETLK, F_OFD_GETLK);
// flock has no such call and reports F_UNLCK, 0.
func getLock(fd int, kind string, typ int16) (int16, int32, error) {
	fl := wholeFile(typ)
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
// file; another process then opens the file O_RDWR, which copies it up, and
// asks for an exclusive lock without waiting. The request fails with
// EAGAIN, F_GETLK names the holder (OFD locks report pid -1), and once the
// holder lets go the lock is granted. The kernel's overlayfs keeps locks on
// its overlay inode, which a copy-up keeps; ovl keeps them per overlay
// object in the daemon, whatever FUSE inode each descriptor is on.
//
// Modes: passthrough=off; passthrough=on with the file only in the lower
// layer (the reader's descriptor holds the lower file as its backing, and
// the writer's open must succeed: it needs the write open that moves the
// object to a new FUSE inode instead of answering ETXTBSY, issue 17 item
// 4); passthrough=on with the file copied up (chmod) before the reader
// opens it, so that no lower backing is live and the writer's open is an
// ordinary one.
func TestLocksSurviveCopyUp(t *testing.T) {
	kindsOf := []string{"posix", "ofd", "flock"}
	want := map[string]lockOutcome{
		"posix": {Conflict: syscall.EAGAIN, GetLk: fmt.Sprintf("type=%d pid=holder", unix.F_RDLCK)},
		"ofd":   {Conflict: syscall.EAGAIN, GetLk: fmt.Sprintf("type=%d pid=-1", unix.F_RDLCK)},
		"flock": {Conflict: syscall.EWOULDBLOCK, GetLk: "none"},
	}
	for _, mode := range []struct {
		name, pt string
		copiedUp bool
	}{
		{"passthrough=off", "off", false},
		{"passthrough=on", "on", false},
		{"passthrough=on_copied_up", "on", true},
	} {
		t.Run(mode.name, func(t *testing.T) {
			var lower k.Layer
			for _, kind := range kindsOf {
				lower = append(lower, k.File("d/"+kind, "locked "+kind).Mode(0o644))
			}
			p := ptPair(t, mode.pt, k.Layers{Lowers: []k.Layer{lower}})
			for _, kind := range kindsOf {
				for _, s := range p.Sides() {
					if mode.copiedUp {
						if err := os.Chmod(s.Path("d/"+kind), 0o664); err != nil {
							t.Fatal(err)
						}
						expectCopiedUp(t, s, "d/"+kind)
					}
					got := lockAcrossCopyUp(t, s, "d/"+kind, kind, mode.copiedUp)
					if got != want[kind] {
						t.Errorf("%s lock on %s: got %s; want %s", kind, s.Name, got, want[kind])
					} else {
						t.Logf("%s lock on %s: %s", kind, s.Name, got)
					}
				}
			}
			p.Finish()
		})
	}
}

// lockAcrossCopyUp holds a shared lock of kind on rel through a read-only
// fd while another process copies rel up (unless copiedUp: it is already)
// and tries an exclusive lock.
func lockAcrossCopyUp(t *testing.T, s *k.Side, rel, kind string, copiedUp bool) lockOutcome {
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
	if _, err := os.Lstat(s.UpperPath(rel)); err == nil && !copiedUp {
		t.Fatalf("%s: %s is in the upper before the other process opened it", s.Name, rel)
	}
	var o lockOutcome
	res := runLockHelper(t, lockReq{Path: path, Kind: kind, GetLk: true})
	if res.OpenErrno != 0 {
		t.Fatalf("%s: other process: open O_RDWR while this one reads the file: %v", s.Name, res.OpenErrno)
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

// saRestart is SA_RESTART (asm-generic/signal.h, x86 and arm64 alike).
const saRestart = 0x10000000

// noRestart makes sig interrupt the system call it arrives in (EINTR)
// instead of restarting it. Go installs its handlers with SA_RESTART; this
// installs the runtime's handler (signal.Notify) and clears the flag on it.
// The flags word follows the handler in the kernel's struct sigaction on
// every architecture; the buffer is larger than the struct.
func noRestart(sig syscall.Signal) error {
	signal.Notify(make(chan os.Signal, 1), sig)
	var act [8]uint64
	if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(unsafe.Pointer(&act[0])), 8, 0, 0); e != 0 {
		return e
	}
	act[1] &^= saRestart
	if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act[0])), 0, 8, 0, 0); e != 0 {
		return e
	}
	return nil
}

// lockHelper is a helper process that may wait for its lock.
type lockHelper struct {
	req  lockReq
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

// startLockHelper starts TestLockHelperProcess and returns at once.
func startLockHelper(t *testing.T, req lockReq) *lockHelper {
	t.Helper()
	spec, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	h := &lockHelper{req: req, done: make(chan error, 1)}
	h.cmd = exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$", "-test.count=1")
	h.cmd.Env = append(os.Environ(), lockHelperEnv+"="+string(spec))
	h.cmd.Stdout = &h.out
	h.cmd.Stderr = os.Stderr
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- h.cmd.Wait() }()
	t.Cleanup(func() {
		if h.cmd.ProcessState == nil {
			h.cmd.Process.Kill()
			<-h.done
		}
	})
	return h
}

// result waits for the helper to end and returns what it saw.
func (h *lockHelper) result(t *testing.T) lockRes {
	t.Helper()
	if err := <-h.done; err != nil {
		t.Fatalf("lock helper %+v: %v\n%s", h.req, err, h.out.Bytes())
	}
	h.done <- nil // result may be asked again
	var res lockRes
	if err := json.Unmarshal(h.out.Bytes(), &res); err != nil {
		t.Fatalf("lock helper output %q: %v", h.out.Bytes(), err)
	}
	return res
}

// blocked waits until a thread of the helper waits in its lock call
// (fcntl F_SETLKW or F_OFD_SETLKW, or flock without LOCK_NB), and returns
// the thread's id. It fails if the helper ends first.
func (h *lockHelper) blocked(t *testing.T) int {
	t.Helper()
	pid := h.cmd.Process.Pid
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-h.done:
			h.done <- err
			t.Fatalf("lock helper %+v ended without waiting: %v\n%s", h.req, err, h.out.Bytes())
		default:
		}
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, task.Name()))
			if err != nil {
				continue
			}
			if waitingInLock(string(b), h.req.Kind) {
				tid, _ := strconv.Atoi(task.Name())
				return tid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("lock helper %+v: not waiting for its lock after 60s", h.req)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitingInLock reads a /proc/PID/task/TID/syscall line ("NR ARG1 ARG2 ..."
// while in a system call): is it the waiting lock call of kind?
func waitingInLock(line, kind string) bool {
	f := strings.Fields(line)
	if len(f) < 3 {
		return false
	}
	nr, err1 := strconv.ParseUint(f[0], 10, 64)
	arg2, err2 := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	switch kind {
	case "posix":
		return nr == unix.SYS_FCNTL && arg2 == unix.F_SETLKW
	case "ofd":
		return nr == unix.SYS_FCNTL && arg2 == unix.F_OFD_SETLKW
	case "flock":
		return nr == unix.SYS_FLOCK && arg2&unix.LOCK_NB == 0
	}
	return false
}

var lockKinds = []string{"posix", "ofd", "flock"}

// lockFiles is one lower layer with a file dir/KIND for each kind of lock.
func lockFiles(dir string) k.Layers {
	var l k.Layer
	for _, kind := range lockKinds {
		l = append(l, k.File(dir+"/"+kind, "locked "+kind).Mode(0o644))
	}
	return k.Layers{Lowers: []k.Layer{l}}
}

// holdWrite opens rel O_RDWR (a copy-up, with nothing else open) and takes
// a whole-file exclusive lock of kind.
func holdWrite(t *testing.T, s *k.Side, rel, kind string) int {
	t.Helper()
	fd, err := unix.Open(s.Path(rel), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("%s: open %s O_RDWR: %v", s.Name, rel, err)
	}
	if err := tryLock(fd, kind, unix.F_WRLCK); err != nil {
		t.Fatalf("%s: %s write lock: %v", s.Name, kind, err)
	}
	return fd
}

// TestLockReleasedOnClose (passthrough on): a POSIX lock goes when its
// process closes any descriptor of the file, another open of it included;
// OFD and flock locks belong to the open file and go with its last close,
// not with the close of another open or of a duplicate descriptor. The
// other process asks for a shared lock (F_GETLK names the holder) after
// each close. The kernel sends FLUSH at each close and RELEASE at the last
// (fusefs/locks.go); the RELEASE comes after close(2) returned, so the
// request right after the last close checks that ovl waits for it.
func TestLockReleasedOnClose(t *testing.T) {
	p := ptPair(t, "on", lockFiles("close"))
	holder := fmt.Sprintf("type=%d pid=holder", unix.F_WRLCK)
	want := map[string][]string{
		"posix": {"held: EAGAIN getlk " + holder, "another open closed: 0"},
		"ofd": {"held: EAGAIN getlk " + fmt.Sprintf("type=%d pid=-1", unix.F_WRLCK),
			"another open closed: EAGAIN", "a duplicate closed: EAGAIN", "last close: 0"},
		"flock": {"held: EAGAIN getlk none", "another open closed: EAGAIN", "a duplicate closed: EAGAIN", "last close: 0"},
	}
	for _, kind := range lockKinds {
		for _, s := range p.Sides() {
			rel := "close/" + kind
			var got []string
			ask := func(what string, getlk bool) {
				res := runLockHelper(t, lockReq{Path: s.Path(rel), Kind: kind, ReadOnly: true, GetLk: getlk})
				if res.OpenErrno != 0 {
					t.Fatalf("%s: other process: open %s: %v", s.Name, rel, res.OpenErrno)
				}
				line := what + ": " + lockErrName(res.LockErrno)
				if getlk {
					line += " getlk " + getLkString(res.GetLkType, res.GetLkPid, os.Getpid())
				}
				got = append(got, line)
			}
			a := holdWrite(t, s, rel, kind)
			ask("held", true)
			b, err := unix.Open(s.Path(rel), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(b)
			ask("another open closed", false)
			if kind != "posix" {
				dup, err := unix.FcntlInt(uintptr(a), unix.F_DUPFD_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				unix.Close(a)
				ask("a duplicate closed", false)
				unix.Close(dup)
				ask("last close", false)
			} else {
				unix.Close(a)
			}
			if strings.Join(got, "; ") != strings.Join(want[kind], "; ") {
				t.Errorf("%s lock on %s:\n got  %q\n want %q", kind, s.Name, got, want[kind])
			} else {
				t.Logf("%s lock on %s: %q", kind, s.Name, got)
			}
		}
	}
	p.Finish()
}

// lockErrName names an errno as the kernel's, with 0 for success (EAGAIN
// and EWOULDBLOCK are one number).
func lockErrName(e syscall.Errno) string {
	if e == 0 {
		return "0"
	}
	return k.ErrnoName(e)
}

// TestLockWait (passthrough on): another process waits for a shared lock
// (F_SETLKW, F_OFD_SETLKW, flock without LOCK_NB) while this one holds an
// exclusive one; it is granted when this process unlocks, and a signal
// whose handler has no SA_RESTART ends the wait with EINTR. The helper is
// seen waiting in its system call (/proc/PID/task/TID/syscall) before
// anything is done to it.
func TestLockWait(t *testing.T) {
	p := ptPair(t, "on", lockFiles("wait"))
	for _, kind := range lockKinds {
		for _, s := range p.Sides() {
			rel := "wait/" + kind
			a := holdWrite(t, s, rel, kind)
			h := startLockHelper(t, lockReq{Path: s.Path(rel), Kind: kind, ReadOnly: true, Wait: true})
			h.blocked(t)
			if err := tryLock(a, kind, unix.F_UNLCK); err != nil {
				t.Fatal(err)
			}
			if res := h.result(t); res.OpenErrno != 0 || res.LockErrno != 0 {
				t.Errorf("%s: %s wait ended by an unlock: open %v, lock %v; want the lock", s.Name, kind, res.OpenErrno, res.LockErrno)
			}

			if err := tryLock(a, kind, unix.F_WRLCK); err != nil {
				t.Fatal(err)
			}
			h = startLockHelper(t, lockReq{Path: s.Path(rel), Kind: kind, ReadOnly: true, Wait: true, NoRestart: true})
			tid := h.blocked(t)
			if res := h.interrupt(t, tid); res.LockErrno != syscall.EINTR {
				t.Errorf("%s: %s wait interrupted by a signal: %v, want EINTR", s.Name, kind, lockErrName(res.LockErrno))
			}
			// The lock is this process's still: the interrupted request
			// took nothing.
			res := runLockHelper(t, lockReq{Path: s.Path(rel), Kind: kind, ReadOnly: true})
			if res.LockErrno != syscall.EAGAIN {
				t.Errorf("%s: %s after the interrupted wait: %v, want EAGAIN", s.Name, kind, lockErrName(res.LockErrno))
			}
			unix.Close(a)
		}
	}
	p.Finish()
}

// interrupt sends SIGUSR1 to thread tid of the helper until it ends, and
// returns what it saw. (A signal that arrives while the thread is briefly
// out of its system call, restarting it after another signal, interrupts
// nothing: send again.)
func (h *lockHelper) interrupt(t *testing.T, tid int) lockRes {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := unix.Tgkill(h.cmd.Process.Pid, tid, unix.SIGUSR1); err != nil && err != unix.ESRCH {
			t.Fatal(err)
		}
		select {
		case err := <-h.done:
			h.done <- err
			return h.result(t)
		case <-time.After(time.Second):
		}
		if time.Now().After(deadline) {
			t.Fatalf("lock helper %+v: still waiting 60s after SIGUSR1", h.req)
		}
	}
}

// TestLockDeadlock (passthrough on): the other process holds byte 1 and
// waits for byte 0, which this process holds; this process then waiting for
// byte 1 would close the cycle, and F_SETLKW fails with EDEADLK, as the
// kernel's posix_locks_deadlock finds for local locks. Unlocking byte 0 then
// lets the other process through.
func TestLockDeadlock(t *testing.T) {
	p := ptPair(t, "on", lockFiles("deadlock"))
	for _, s := range p.Sides() {
		rel := "deadlock/posix"
		a, err := unix.Open(s.Path(rel), unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := lockRange(a, "posix", unix.F_WRLCK, 0, 1, false); err != nil {
			t.Fatal(err)
		}
		h := startLockHelper(t, lockReq{Path: s.Path(rel), Kind: "posix", Byte1: true, Wait: true, Start: 0, Len: 1})
		h.blocked(t)
		err = lockRange(a, "posix", unix.F_WRLCK, 1, 1, true)
		if errnoOf(err) != syscall.EDEADLK {
			t.Errorf("%s: F_SETLKW closing a cycle: %v, want EDEADLK", s.Name, err)
		}
		if err := lockRange(a, "posix", unix.F_UNLCK, 0, 1, false); err != nil {
			t.Fatal(err)
		}
		if res := h.result(t); res.LockErrno != 0 {
			t.Errorf("%s: the other process after the unlock: %v", s.Name, lockErrName(res.LockErrno))
		}
		unix.Close(a)
	}
	p.Finish()
}

// TestLockDirectory (passthrough on): flock on a directory descriptor.
// FUSE has no lock request for directories (fuse_dir_operations has no
// flock method): the kernel keeps their locks on the FUSE inode, which
// stays one per directory, so they behave as on the kernel's overlayfs.
func TestLockDirectory(t *testing.T) {
	p := ptPair(t, "on", k.Layers{Lowers: []k.Layer{{k.Dir("d"), k.File("d/f", "x")}}})
	for _, s := range p.Sides() {
		fd, err := unix.Open(s.Path("d"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Fatalf("%s: flock of a directory: %v", s.Name, err)
		}
		res := runLockHelper(t, lockReq{Path: s.Path("d"), Kind: "flock", ReadOnly: true})
		if res.OpenErrno != 0 || res.LockErrno != syscall.EWOULDBLOCK {
			t.Errorf("%s: another open of the locked directory: open %v, flock %v; want EWOULDBLOCK", s.Name, res.OpenErrno, lockErrName(res.LockErrno))
		}
		unix.Close(fd)
		if res := runLockHelper(t, lockReq{Path: s.Path("d"), Kind: "flock", ReadOnly: true}); res.LockErrno != 0 {
			t.Errorf("%s: the directory after the holder's close: %v", s.Name, lockErrName(res.LockErrno))
		}
	}
	p.Finish()
}
