// Package filelock keeps the file locks of a file server's objects, as the
// kernel's fs/locks.c keeps them for a local inode: POSIX record locks
// (fcntl F_SETLK, F_SETLKW, F_GETLK, and OFD locks, which reach a FUSE
// server the same way) and flock locks. It knows nothing of FUSE: fusefs
// feeds it requests (fusefs/locks.go says what the kernel sends when).
//
// Rules it enforces:
//   - Locks belong to an object key, the server's identity of a file, not to
//     the handle or inode a request comes through: locks taken through any
//     handle of an object conflict with locks through any other.
//   - POSIX locks belong to an owner (a process, or an open file for OFD
//     locks). An owner's locks never conflict with each other; a new lock
//     replaces the owner's locks over its range (splitting them), and merges
//     with the owner's adjacent or overlapping locks of the same type, as
//     posix_lock_inode does. A write lock conflicts with every other owner's
//     lock over an overlapping range; read locks share. An upgrade that
//     conflicts fails or waits and leaves the owner's locks as they were.
//     A range is inclusive; one that ends at EOF or beyond runs to the end of
//     the file, and is reported as ending at EOF (the kernel's OFFSET_MAX).
//   - flock locks belong to an open file (a Handle), cover the whole file,
//     and never conflict with POSIX locks. A conversion drops the old lock
//     before it tries the new one, as flock_lock_inode does: a conversion
//     that fails or is interrupted leaves no lock.
//   - Waiting (F_SETLKW, flock without LOCK_NB) ends when the lock is
//     granted, with EINTR when the request's context is done (FUSE
//     INTERRUPT; the wait for a close's release below is not interrupted), or with EDEADLK when a POSIX owner would wait for an owner
//     that waits, through a chain of at most maxDeadlockSteps owners, for it
//     (posix_locks_deadlock). A waiter never holds a partial lock.
//   - Release: Flush (a descriptor closed) drops every POSIX lock the
//     closing owner holds on the object. Release (the last close of an open
//     file) drops the handle's flock lock and the POSIX locks of every owner
//     that took locks through that handle alone: OFD locks, whose owner is
//     the open file; a process's locks are gone by then through Flush.
//   - A lock held through a handle that one of the processes that took
//     locks through it flushed (closed a descriptor of) since its last lock
//     request may be about to go: the Release of a last close arrives after
//     close(2) returned. A request that would fail only because of such
//     locks waits for them up to the table's close grace before it fails,
//     and a handle that outlives the grace (a duplicate of its descriptor is
//     still open) no longer counts as closing. A close by another process (a
//     child closing inherited descriptors at exec or exit) does not count:
//     were it the last, the locks would go with no wait for their Release.
//
// Table.mu is the only lock; it is never held while a request waits.
package filelock

import (
	"context"
	"math"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Type is a lock type, with the values of fcntl's l_type.
type Type uint32

// The lock types.
const (
	Read   Type = unix.F_RDLCK
	Write  Type = unix.F_WRLCK
	Unlock Type = unix.F_UNLCK
)

// EOF is the last offset a lock covers when it runs to the end of the file:
// the kernel's OFFSET_MAX, the largest end a FUSE reply may carry.
const EOF = math.MaxInt64

// maxDeadlockSteps bounds the wait-for chain followed from a blocker, as
// MAX_DEADLK_ITERATIONS does in fs/locks.c.
const maxDeadlockSteps = 10

// DefaultCloseGrace is how long a request waits for the locks of a handle
// that was just closed before it counts them: the kernel sends the RELEASE
// of a last close asynchronously, after close(2) has returned.
const DefaultCloseGrace = time.Second

// Lock is a lock, or a lock request.
type Lock struct {
	Type       Type
	Start, End uint64 // inclusive; End >= EOF: to the end of the file
	Pid        uint32 // of the process that took it, as reported by Test
}

// Owner identifies the owner of POSIX locks: the FUSE lock owner.
type Owner uint64

// Handle identifies an open file (one FUSE open, one open file
// description); 0 is none. Tables hand them out with NewHandle.
type Handle uint64

// Table holds the locks of every object of one file server.
type Table struct {
	grace time.Duration // immutable

	mu   sync.Mutex
	objs map[uint64]*object
	// waiting holds, for each POSIX owner blocked in Set, the owner of a
	// lock it waits for, once per waiting request.
	waiting map[Owner][]Owner
	next    Handle
}

// object is the lock state of one key. It is dropped when it holds no lock
// and no request waits on it.
type object struct {
	posix []record // every owner's POSIX locks, by start
	flock map[Handle]held
	// handles holds, for each owner with POSIX locks, the handles it took
	// them through.
	handles map[Owner]map[Handle]bool
	// flushed holds the handles with locks that were flushed since their
	// last lock request: they may be about to be released.
	flushed map[Handle]bool
	// users holds the pids of the processes that took locks through each
	// handle.
	users map[Handle]map[uint32]bool
	// wake is closed, and replaced, whenever a lock goes or is downgraded.
	wake    chan struct{}
	waiters int
}

type record struct {
	owner      Owner
	typ        Type
	start, end uint64
	pid        uint32
}

type held struct {
	typ Type
	pid uint32
}

// New returns an empty table whose close grace is DefaultCloseGrace.
func New() *Table { return NewWithGrace(DefaultCloseGrace) }

// NewWithGrace returns an empty table with the given close grace.
func NewWithGrace(grace time.Duration) *Table {
	return &Table{grace: grace, objs: map[uint64]*object{}, waiting: map[Owner][]Owner{}}
}

// NewHandle returns a handle no other open file of t has.
func (t *Table) NewHandle() Handle {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	return t.next
}

func (t *Table) object(key uint64) *object {
	o := t.objs[key]
	if o == nil {
		o = &object{
			flock:   map[Handle]held{},
			handles: map[Owner]map[Handle]bool{},
			flushed: map[Handle]bool{},
			users:   map[Handle]map[uint32]bool{},
			wake:    make(chan struct{}),
		}
		t.objs[key] = o
	}
	return o
}

// drop forgets o if it holds nothing and nobody waits on it.
func (t *Table) drop(key uint64, o *object) {
	if len(o.posix) == 0 && len(o.flock) == 0 && o.waiters == 0 && t.objs[key] == o {
		delete(t.objs, key)
	}
}

func (o *object) wakeAll() {
	close(o.wake)
	o.wake = make(chan struct{})
}

func valid(lk Lock) (Lock, error) {
	if lk.Type != Read && lk.Type != Write && lk.Type != Unlock {
		return lk, syscall.EINVAL
	}
	if lk.End > EOF {
		lk.End = EOF
	}
	if lk.Start > lk.End {
		return lk, syscall.EINVAL
	}
	return lk, nil
}

func conflicts(a, b Type) bool { return a == Write || b == Write }

// closing reports whether every handle owner o took its locks through was
// flushed since.
func (o *object) closing(owner Owner) bool {
	hs := o.handles[owner]
	if len(hs) == 0 {
		return false
	}
	for h := range hs {
		if !o.flushed[h] {
			return false
		}
	}
	return true
}

// posixConflict returns the first lock of another owner that conflicts
// with lk, and whether every conflicting lock may be about to go.
func (o *object) posixConflict(owner Owner, lk Lock) (*record, bool) {
	var first *record
	closing := true
	for i := range o.posix {
		r := &o.posix[i]
		if r.owner == owner || r.end < lk.Start || r.start > lk.End || !conflicts(r.typ, lk.Type) {
			continue
		}
		if first == nil {
			first = r
		}
		closing = closing && o.closing(r.owner)
	}
	return first, first != nil && closing
}

// settlePosix clears the closing marks of the handles behind the locks that
// conflict with lk: they outlived the grace, so a duplicate of their
// descriptor is still open.
func (o *object) settlePosix(owner Owner, lk Lock) {
	for _, r := range o.posix {
		if r.owner != owner && r.end >= lk.Start && r.start <= lk.End && conflicts(r.typ, lk.Type) {
			for h := range o.handles[r.owner] {
				delete(o.flushed, h)
			}
		}
	}
}

// setPosix applies lk (a lock or an unlock) to owner's locks, with no
// conflict left to check.
func (o *object) setPosix(owner Owner, h Handle, lk Lock) {
	out := make([]record, 0, len(o.posix)+2)
	changed := false
	for _, r := range o.posix {
		if r.owner != owner || r.end < lk.Start || r.start > lk.End {
			out = append(out, r)
			continue
		}
		changed = true
		if r.start < lk.Start {
			left := r
			left.end = lk.Start - 1
			out = append(out, left)
		}
		if r.end > lk.End {
			right := r
			right.start = lk.End + 1
			out = append(out, right)
		}
	}
	if lk.Type != Unlock {
		nr := record{owner: owner, typ: lk.Type, start: lk.Start, end: lk.End, pid: lk.Pid}
		merged := out[:0]
		for _, r := range out {
			// The owner's remaining locks do not overlap lk: merge those
			// of the same type that touch it.
			if r.owner == owner && r.typ == nr.typ && (r.end+1 == nr.start || nr.end+1 == r.start) {
				nr.start, nr.end = min(nr.start, r.start), max(nr.end, r.end)
				continue
			}
			merged = append(merged, r)
		}
		out = append(merged, nr)
		if h != 0 {
			hs := o.handles[owner]
			if hs == nil {
				hs = map[Handle]bool{}
				o.handles[owner] = hs
			}
			hs[h] = true
			o.used(h, lk.Pid)
		}
	}
	slices.SortStableFunc(out, func(a, b record) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	o.posix = out
	if !o.hasPosix(owner) {
		delete(o.handles, owner)
	}
	if changed {
		o.wakeAll()
	}
}

// used records that process pid took a lock through h, which is alive.
func (o *object) used(h Handle, pid uint32) {
	delete(o.flushed, h)
	us := o.users[h]
	if us == nil {
		us = map[uint32]bool{}
		o.users[h] = us
	}
	us[pid] = true
}

func (o *object) hasPosix(owner Owner) bool {
	for _, r := range o.posix {
		if r.owner == owner {
			return true
		}
	}
	return false
}

// dropOwner drops every POSIX lock of owner.
func (o *object) dropOwner(owner Owner) {
	if !o.hasPosix(owner) {
		return
	}
	o.posix = slices.DeleteFunc(o.posix, func(r record) bool { return r.owner == owner })
	delete(o.handles, owner)
	o.wakeAll()
}

// relevant reports whether handle h holds a lock of o or took one for an
// owner that still has locks.
func (o *object) relevant(h Handle) bool {
	if _, ok := o.flock[h]; ok {
		return true
	}
	for _, hs := range o.handles {
		if hs[h] {
			return true
		}
	}
	return false
}

// wait sleeps, with t.mu held on entry and on return, until o changes,
// ctx is done (EINTR) or timeout fires (timedOut). A POSIX waiter records
// the owner it waits for, for deadlock detection.
func (t *Table) wait(ctx context.Context, o *object, waiter, blocker Owner, posix bool, timeout <-chan time.Time) (timedOut bool, err error) {
	o.waiters++
	if posix {
		t.waiting[waiter] = append(t.waiting[waiter], blocker)
	}
	wake := o.wake
	t.mu.Unlock()
	select {
	case <-wake:
	case <-ctx.Done():
		err = syscall.EINTR
	case <-timeout:
		timedOut = true
	}
	t.mu.Lock()
	o.waiters--
	if posix {
		ws := t.waiting[waiter]
		if i := slices.Index(ws, blocker); i >= 0 {
			ws = slices.Delete(ws, i, i+1)
		}
		if len(ws) == 0 {
			delete(t.waiting, waiter)
		} else {
			t.waiting[waiter] = ws
		}
	}
	return timedOut, err
}

// deadlock reports whether owner waiting for blocker closes a cycle of
// waiting owners.
func (t *Table) deadlock(owner, blocker Owner) bool {
	for range maxDeadlockSteps {
		ws := t.waiting[blocker]
		if len(ws) == 0 {
			return false
		}
		blocker = ws[0]
		if blocker == owner {
			return true
		}
	}
	return false
}

// graceCtx is the context of a wait for a close's release (F_GETLK, or a
// request that does not wait otherwise): an interrupt does not end it, as
// such a call never fails with EINTR on a local filesystem, and the grace
// bounds it.
func graceCtx() context.Context { return context.Background() }

// graceTimer returns the channel of a timer for the close grace, and its stop.
func (t *Table) graceTimer() (<-chan time.Time, func() bool) {
	tm := time.NewTimer(t.grace)
	return tm.C, tm.Stop
}

// Test returns the first lock of another owner on key that conflicts with
// lk (F_GETLK), or a lock of Type Unlock if none does.
func (t *Table) Test(ctx context.Context, key uint64, owner Owner, lk Lock) (Lock, error) {
	lk, err := valid(lk)
	if err != nil {
		return Lock{}, err
	}
	none := Lock{Type: Unlock, Start: lk.Start, End: lk.End}
	if lk.Type == Unlock {
		return none, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.object(key)
	defer t.drop(key, o)
	var timeout <-chan time.Time
	for {
		c, closing := o.posixConflict(owner, lk)
		if c == nil {
			return none, nil
		}
		if !closing {
			return Lock{Type: c.typ, Start: c.start, End: c.end, Pid: c.pid}, nil
		}
		if timeout == nil {
			var stop func() bool
			timeout, stop = t.graceTimer()
			defer stop()
		}
		timedOut, err := t.wait(graceCtx(), o, owner, 0, false, timeout)
		if err != nil {
			return Lock{}, err
		}
		if timedOut {
			o.settlePosix(owner, lk)
		}
	}
}

// Set takes, changes or releases (Type Unlock) a POSIX lock of owner on
// key, through handle h (F_SETLK; F_SETLKW with wait). Without wait it
// fails with EAGAIN on a conflict.
func (t *Table) Set(ctx context.Context, key uint64, h Handle, owner Owner, lk Lock, wait bool) error {
	lk, err := valid(lk)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.object(key)
	defer t.drop(key, o)
	var timeout <-chan time.Time
	for {
		var c *record
		closing := false
		if lk.Type != Unlock {
			c, closing = o.posixConflict(owner, lk)
		}
		if c == nil {
			o.setPosix(owner, h, lk)
			return nil
		}
		blocker := c.owner
		var tmo <-chan time.Time
		switch {
		case wait:
			if t.deadlock(owner, blocker) {
				return syscall.EDEADLK
			}
		case !closing:
			return syscall.EAGAIN
		default:
			if timeout == nil {
				var stop func() bool
				timeout, stop = t.graceTimer()
				defer stop()
			}
			tmo = timeout
		}
		wctx := ctx
		if !wait {
			wctx = graceCtx()
		}
		timedOut, err := t.wait(wctx, o, owner, blocker, wait, tmo)
		if err != nil {
			return err
		}
		if timedOut {
			o.settlePosix(owner, lk)
		}
	}
}

// Flock takes, converts or releases (Type Unlock) the flock lock of handle
// h on key (LOCK_SH, LOCK_EX, LOCK_UN; without wait, LOCK_NB: EAGAIN on a
// conflict). pid is the caller's.
func (t *Table) Flock(ctx context.Context, key uint64, h Handle, typ Type, pid uint32, wait bool) error {
	if _, err := valid(Lock{Type: typ}); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.object(key)
	defer t.drop(key, o)
	if cur, ok := o.flock[h]; ok {
		delete(o.flushed, h)
		if cur.typ == typ {
			return nil
		}
		// flock_lock_inode: a conversion is an unlock, then a lock.
		delete(o.flock, h)
		o.wakeAll()
	}
	if typ == Unlock {
		return nil
	}
	var timeout <-chan time.Time
	for {
		conflict, closing := false, true
		for oh, l := range o.flock {
			if oh != h && conflicts(l.typ, typ) {
				conflict = true
				closing = closing && o.flushed[oh]
			}
		}
		if !conflict {
			o.flock[h] = held{typ: typ, pid: pid}
			o.used(h, pid)
			return nil
		}
		var tmo <-chan time.Time
		if !wait {
			if !closing {
				return syscall.EAGAIN
			}
			if timeout == nil {
				var stop func() bool
				timeout, stop = t.graceTimer()
				defer stop()
			}
			tmo = timeout
		}
		wctx := ctx
		if !wait {
			wctx = graceCtx()
		}
		timedOut, err := t.wait(wctx, o, 0, 0, false, tmo)
		if err != nil {
			return err
		}
		if timedOut {
			for oh, l := range o.flock {
				if oh != h && conflicts(l.typ, typ) {
					delete(o.flushed, oh)
				}
			}
		}
	}
}

// Flush is a close(2) of a descriptor of handle h on key by owner, in
// process pid (0: unknown): the owner's POSIX locks on key go, and if pid
// took locks through h, h's other locks may be about to.
func (t *Table) Flush(key uint64, owner Owner, h Handle, pid uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.objs[key]
	if o == nil {
		return
	}
	o.dropOwner(owner)
	if h != 0 && o.relevant(h) && (pid == 0 || o.users[h][pid]) {
		o.flushed[h] = true
	}
	t.drop(key, o)
}

// Release is the last close of handle h on key: its flock lock goes, and
// so do the POSIX locks of the owners that took locks through h alone.
func (t *Table) Release(key uint64, h Handle) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.objs[key]
	if o == nil {
		return
	}
	changed := false
	if _, ok := o.flock[h]; ok {
		delete(o.flock, h)
		changed = true
	}
	delete(o.flushed, h)
	delete(o.users, h)
	for owner, hs := range o.handles {
		if !hs[h] {
			continue
		}
		delete(hs, h)
		if len(hs) == 0 {
			o.posix = slices.DeleteFunc(o.posix, func(r record) bool { return r.owner == owner })
			delete(o.handles, owner)
			changed = true
		}
	}
	if changed {
		o.wakeAll()
	}
	t.drop(key, o)
}
