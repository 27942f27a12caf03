package filelock

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"syscall"
	"testing"
	"time"
)

const key = 7

func whole(typ Type) Lock { return Lock{Type: typ, Start: 0, End: EOF} }

func rng(typ Type, start, end uint64) Lock { return Lock{Type: typ, Start: start, End: end} }

// set is a non-blocking Set that must end as want.
func set(t *testing.T, tb *Table, h Handle, owner Owner, lk Lock, want error) {
	t.Helper()
	err := tb.Set(context.Background(), key, h, owner, lk, false)
	if !errors.Is(err, want) && err != want {
		t.Fatalf("owner %d set %+v: %v, want %v", owner, lk, err, want)
	}
}

// dump lists the POSIX locks of key as "owner:type:start-end" by start.
func dump(tb *Table) string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	o := tb.objs[key]
	if o == nil {
		return ""
	}
	var s []string
	for _, r := range o.posix {
		end := fmt.Sprint(r.end)
		if r.end == EOF {
			end = "EOF"
		}
		s = append(s, fmt.Sprintf("%d:%s:%d-%s", r.owner, "RWU"[r.typ:r.typ+1], r.start, end))
	}
	return strings.Join(s, " ")
}

func expectDump(t *testing.T, tb *Table, want string) {
	t.Helper()
	if got := dump(tb); got != want {
		t.Fatalf("locks: %q, want %q", got, want)
	}
}

// eventually polls cond with a generous limit: the machine may be loaded.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 60s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (tb *Table) waiters(key uint64) int {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if o := tb.objs[key]; o != nil {
		return o.waiters
	}
	return 0
}

func TestPosixConflicts(t *testing.T) {
	tb := New()
	set(t, tb, 1, 1, rng(Read, 0, 9), nil)
	set(t, tb, 2, 2, rng(Read, 5, 14), nil)            // read locks share
	set(t, tb, 3, 3, rng(Write, 5, 5), syscall.EAGAIN) // a write conflicts with both
	set(t, tb, 3, 3, rng(Write, 15, 20), nil)          // no overlap
	set(t, tb, 1, 1, rng(Write, 20, 20), syscall.EAGAIN)
	set(t, tb, 1, 1, rng(Write, 0, 4), nil) // only owner 1 covers 0-4: its own lock never conflicts
	expectDump(t, tb, "1:W:0-4 1:R:5-9 2:R:5-14 3:W:15-20")
	got, err := tb.Test(context.Background(), key, 3, rng(Write, 0, EOF))
	if err != nil || got != (Lock{Type: Write, Start: 0, End: 4}) {
		t.Fatalf("test: %+v %v", got, err)
	}
	// An owner's own locks are not reported to it.
	got, err = tb.Test(context.Background(), key, 3, rng(Read, 15, 20))
	if err != nil || got.Type != Unlock {
		t.Fatalf("test own: %+v %v", got, err)
	}
}

func TestPosixSplitMergeUpgrade(t *testing.T) {
	tb := New()
	set(t, tb, 1, 1, whole(Write), nil)
	set(t, tb, 1, 1, rng(Unlock, 10, 19), nil)
	expectDump(t, tb, "1:W:0-9 1:W:20-EOF")
	set(t, tb, 2, 2, rng(Write, 10, 19), nil)
	set(t, tb, 2, 2, rng(Write, 9, 10), syscall.EAGAIN)
	// Downgrade the middle of a write lock: three pieces.
	set(t, tb, 1, 1, rng(Read, 30, 39), nil)
	expectDump(t, tb, "1:W:0-9 2:W:10-19 1:W:20-29 1:R:30-39 1:W:40-EOF")
	// Adjacent and overlapping locks of the same type merge.
	set(t, tb, 1, 1, rng(Write, 35, 39), nil)
	expectDump(t, tb, "1:W:0-9 2:W:10-19 1:W:20-29 1:R:30-34 1:W:35-EOF")
	set(t, tb, 1, 1, rng(Write, 30, 34), nil)
	expectDump(t, tb, "1:W:0-9 2:W:10-19 1:W:20-EOF")
	set(t, tb, 2, 2, rng(Unlock, 0, EOF), nil)
	set(t, tb, 1, 1, rng(Write, 10, 19), nil)
	expectDump(t, tb, "1:W:0-EOF")
	// An upgrade that conflicts fails and leaves the read lock.
	set(t, tb, 1, 1, whole(Read), nil)
	set(t, tb, 2, 2, rng(Read, 50, 60), nil)
	set(t, tb, 1, 1, rng(Write, 0, 99), syscall.EAGAIN)
	expectDump(t, tb, "1:R:0-EOF 2:R:50-60")
	set(t, tb, 1, 1, rng(Write, 0, 49), nil)
	expectDump(t, tb, "1:W:0-49 1:R:50-EOF 2:R:50-60")
	// Downgrade back: merged again.
	set(t, tb, 1, 1, rng(Read, 0, 49), nil)
	expectDump(t, tb, "1:R:0-EOF 2:R:50-60")
	set(t, tb, 1, 1, whole(Unlock), nil)
	set(t, tb, 2, 2, whole(Unlock), nil)
	if len(tb.objs) != 0 {
		t.Fatalf("an object with no lock is kept: %+v", tb.objs)
	}
}

func TestPosixEOFAndPid(t *testing.T) {
	tb := New()
	// FUSE sends OFFSET_MAX; anything larger also means to the end.
	set(t, tb, 1, 1, Lock{Type: Read, Start: 100, End: math.MaxUint64, Pid: 4242}, nil)
	got, err := tb.Test(context.Background(), key, 2, rng(Write, 0, 100))
	if err != nil || got != (Lock{Type: Read, Start: 100, End: EOF, Pid: 4242}) {
		t.Fatalf("test: %+v %v", got, err)
	}
	set(t, tb, 2, 2, rng(Write, 0, 99), nil)
	set(t, tb, 2, 2, rng(Write, 5, 4), syscall.EINVAL)
	set(t, tb, 2, 2, Lock{Type: 7}, syscall.EINVAL)
}

func TestSetlkwWokenByUnlock(t *testing.T) {
	tb := New()
	set(t, tb, 1, 1, rng(Write, 0, 9), nil)
	done := make(chan error, 1)
	go func() {
		done <- tb.Set(context.Background(), key, 2, 2, rng(Write, 5, 15), true)
	}()
	eventually(t, "waiter", func() bool { return tb.waiters(key) == 1 })
	select {
	case err := <-done:
		t.Fatalf("granted while held: %v", err)
	default:
	}
	set(t, tb, 1, 1, rng(Unlock, 0, 4), nil) // still conflicts: stays asleep
	set(t, tb, 1, 1, rng(Unlock, 5, 9), nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	expectDump(t, tb, "2:W:5-15")
}

func TestSetlkwInterrupted(t *testing.T) {
	tb := New()
	set(t, tb, 1, 1, whole(Read), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tb.Set(ctx, key, 2, 2, whole(Write), true) }()
	eventually(t, "waiter", func() bool { return tb.waiters(key) == 1 })
	cancel()
	if err := <-done; err != syscall.EINTR {
		t.Fatalf("interrupted wait: %v, want EINTR", err)
	}
	expectDump(t, tb, "1:R:0-EOF")
	if len(tb.waiting) != 0 || tb.waiters(key) != 0 {
		t.Fatalf("waiter left behind: %v", tb.waiting)
	}
	// The same for flock.
	if err := tb.Flock(context.Background(), key, 1, Write, 1, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	go func() { done <- tb.Flock(ctx, key, 2, Read, 2, true) }()
	eventually(t, "flock waiter", func() bool { return tb.waiters(key) == 1 })
	cancel()
	if err := <-done; err != syscall.EINTR {
		t.Fatalf("interrupted flock: %v, want EINTR", err)
	}
}

func TestDeadlock(t *testing.T) {
	tb := New()
	set(t, tb, 1, 1, rng(Write, 0, 0), nil)
	set(t, tb, 2, 2, rng(Write, 1, 1), nil)
	set(t, tb, 3, 3, rng(Write, 2, 2), nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 2)
	// 1 waits for 2, 2 waits for 3: 3 waiting for 1 closes the cycle.
	go func() { done <- tb.Set(ctx, key, 1, 1, rng(Write, 1, 1), true) }()
	eventually(t, "first waiter", func() bool { return tb.waiters(key) == 1 })
	go func() { done <- tb.Set(ctx, key, 2, 2, rng(Write, 2, 2), true) }()
	eventually(t, "second waiter", func() bool { return tb.waiters(key) == 2 })
	if err := tb.Set(ctx, key, 3, 3, rng(Write, 0, 0), true); err != syscall.EDEADLK {
		t.Fatalf("cycle: %v, want EDEADLK", err)
	}
	// No cycle through an owner that does not wait.
	set(t, tb, 4, 4, rng(Write, 3, 3), nil)
	go func() { done <- tb.Set(ctx, key, 3, 3, rng(Write, 3, 3), true) }()
	eventually(t, "third waiter", func() bool { return tb.waiters(key) == 3 })
	// 3 releasing 2-2 wakes 2, which takes it; 1 goes on waiting for 2.
	set(t, tb, 3, 3, rng(Unlock, 2, 2), nil)
	if err := <-done; err != nil {
		t.Fatalf("woken waiter: %v", err)
	}
	cancel()
	for range 2 {
		if err := <-done; err != syscall.EINTR {
			t.Fatalf("cancelled waiter: %v", err)
		}
	}
}

func TestFlock(t *testing.T) {
	tb := New()
	bg := context.Background()
	fl := func(h Handle, typ Type, want error) {
		t.Helper()
		if err := tb.Flock(bg, key, h, typ, uint32(h), false); err != want {
			t.Fatalf("flock %d %d: %v, want %v", h, typ, err, want)
		}
	}
	fl(1, Read, nil)
	fl(2, Read, nil)
	fl(3, Write, syscall.EAGAIN)
	// flock and POSIX locks are independent.
	set(t, tb, 3, 3, whole(Write), nil)
	// A conversion that fails drops the old lock (flock_lock_inode).
	fl(1, Write, syscall.EAGAIN)
	if _, ok := tb.objs[key].flock[1]; ok {
		t.Fatal("a failed conversion kept the shared lock")
	}
	fl(2, Write, nil) // the only holder now: converts
	fl(2, Write, nil) // same type: nothing to do
	fl(1, Read, syscall.EAGAIN)
	fl(2, Read, nil) // downgrade
	fl(1, Read, nil)
	fl(2, Unlock, nil)
	fl(2, Unlock, nil)
	// The last close of an open file drops its flock lock.
	tb.Release(key, 1)
	fl(3, Write, nil)
}

func TestFlushAndRelease(t *testing.T) {
	tb := New()
	// Owner 10 is a process with two open files (handles 1 and 2) of the
	// object; owner 11 is an OFD lock of open file 3; handle 4 holds a flock.
	set(t, tb, 1, 10, rng(Read, 0, 9), nil)
	set(t, tb, 2, 10, rng(Read, 20, 29), nil)
	set(t, tb, 3, 11, rng(Read, 40, 49), nil)
	if err := tb.Flock(context.Background(), key, 4, Read, 1, false); err != nil {
		t.Fatal(err)
	}
	// Another process closing a descriptor changes nothing of theirs.
	tb.Flush(key, 12, 3, 12)
	expectDump(t, tb, "10:R:0-9 10:R:20-29 11:R:40-49")
	// The process closing any descriptor of the object drops its locks.
	tb.Flush(key, 10, 2, 10)
	expectDump(t, tb, "11:R:40-49")
	// The last close of an open file drops the locks of owners that used it
	// alone (OFD locks) and its flock lock ...
	set(t, tb, 1, 10, rng(Read, 0, 9), nil)
	set(t, tb, 2, 10, rng(Read, 60, 69), nil)
	tb.Release(key, 3)
	tb.Release(key, 4)
	expectDump(t, tb, "10:R:0-9 10:R:60-69")
	if len(tb.objs[key].flock) != 0 {
		t.Fatal("flock lock kept after the last close")
	}
	// ... not those of an owner that took locks through another one too.
	tb.Release(key, 1)
	expectDump(t, tb, "10:R:0-9 10:R:60-69")
	tb.Release(key, 2)
	expectDump(t, tb, "")
	if len(tb.objs) != 0 {
		t.Fatalf("an object with no lock is kept: %+v", tb.objs)
	}
}

// TestCloseGrace: a lock whose handle was just closed is waited for, since
// the RELEASE of a last close comes after close(2) returned; one whose
// handle outlives the grace (a duplicate descriptor) counts again at once.
func TestCloseGrace(t *testing.T) {
	bg := context.Background()
	tb := NewWithGrace(time.Hour)
	set(t, tb, 1, 11, whole(Read), nil) // an OFD lock
	if err := tb.Flock(bg, key, 1, Write, 1, false); err != nil {
		t.Fatal(err)
	}
	tb.Flush(key, 10, 1, 1)
	done := make(chan error, 2)
	// An interrupt does not end this wait: F_SETLK never fails with EINTR.
	interrupted, cancel := context.WithCancel(bg)
	cancel()
	go func() { done <- tb.Flock(interrupted, key, 2, Write, 2, false) }()
	go func() { done <- tb.Set(interrupted, key, 2, 12, whole(Write), false) }()
	eventually(t, "waiters", func() bool { return tb.waiters(key) == 2 })
	tb.Release(key, 1)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("after the release: %v", err)
		}
	}
	// F_GETLK waits the same way.
	set(t, tb, 3, 11, whole(Unlock), nil)
	set(t, tb, 2, 12, whole(Unlock), nil)
	set(t, tb, 3, 11, whole(Read), nil)
	tb.Flush(key, 10, 3, 0)
	go func() {
		l, err := tb.Test(bg, key, 13, whole(Write))
		if err == nil && l.Type != Unlock {
			err = fmt.Errorf("getlk: %+v", l)
		}
		done <- err
	}()
	eventually(t, "getlk waiter", func() bool { return tb.waiters(key) == 1 })
	tb.Release(key, 3)
	if err := <-done; err != nil {
		t.Fatalf("after the release: %v", err)
	}
	// A handle that is not released within the grace is alive.
	tb = NewWithGrace(time.Millisecond)
	set(t, tb, 1, 11, whole(Read), nil)
	if err := tb.Flock(bg, key, 1, Write, 1, false); err != nil {
		t.Fatal(err)
	}
	tb.Flush(key, 10, 1, 1)
	if err := tb.Flock(bg, key, 2, Write, 2, false); err != syscall.EAGAIN {
		t.Fatalf("flock after the grace: %v", err)
	}
	set(t, tb, 2, 12, whole(Write), syscall.EAGAIN)
	if len(tb.objs[key].flushed) != 0 {
		t.Fatal("a handle that outlived the grace still counts as closing")
	}
	// A close by a process that took no lock through the handle (a child
	// closing inherited descriptors at exec) does not count.
	tb.Flush(key, 20, 1, 999)
	if len(tb.objs[key].flushed) != 0 {
		t.Fatal("a close by a process that took no lock through the handle counts as closing")
	}
	// A lock request through a flushed handle shows it is alive too.
	tb.Flush(key, 10, 1, 1)
	if err := tb.Flock(bg, key, 1, Write, 1, false); err != nil || len(tb.objs[key].flushed) != 0 {
		t.Fatalf("flock through a flushed handle: %v, flushed %v", err, tb.objs[key].flushed)
	}
}
