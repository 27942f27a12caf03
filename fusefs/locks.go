package fusefs

// File locks. ovl serves POSIX, OFD and flock locks itself, per overlay
// object (internal/filelock, keyed by the overlay node's Key, which a
// copy-up keeps), instead of leaving them to the kernel: the kernel keeps
// its own locks on a FUSE inode, and one object can be open through two
// FUSE inodes (a writer moved to a new node id while readers keep the old
// one), whose locks would then not conflict.
//
// What the kernel sends once FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS are
// negotiated (Linux 6.18, fs/fuse/file.c, fs/locks.c; TestKernelLockRules
// checks each on the running kernel):
//   - fcntl F_GETLK, F_SETLK, F_SETLKW and their F_OFD_ forms: GETLK, SETLK,
//     SETLKW with the owner fuse_lock_owner_id makes of the process's files
//     table (POSIX) or of the open file (OFD), and the caller's tgid. FUSE
//     cannot tell the two kinds apart. The kernel records nothing itself.
//   - flock(2): SETLK (LOCK_NB) or SETLKW with FUSE_LK_FLOCK, owner the open
//     file, whole file (fuse_file_flock, fuse_setlk).
//   - close(2) of any descriptor: FLUSH with the closing process's owner,
//     unless the open's reply had FOPEN_NOFLUSH. It is the only message a
//     POSIX lock's release-on-close gets: locks_remove_posix finds no local
//     lock to remove and sends nothing. So ovl no longer sets FOPEN_NOFLUSH:
//     a close(2) of a regular file costs one more round trip.
//   - the last close of an open file: RELEASE, asynchronously (close(2) has
//     returned by then), with FUSE_RELEASE_FLOCK_UNLOCK if flock was used.
//     OFD locks get no message of their own (locks_remove_file finds no
//     local lock either): filelock.Release drops the locks of owners that
//     took locks through that open file alone.
//   - a signal while a request waits: INTERRUPT, which go-fuse turns into
//     the request's context being done; the EINTR answered becomes
//     ERESTARTSYS (fuse_setlk: "locking is restartable"), so a handler with
//     SA_RESTART restarts the wait and one without gets EINTR.
//   - directories: fuse_dir_operations has no lock or flock method, so the
//     VFS keeps a directory's locks locally, on its FUSE inode, as before.
//     A directory has one FUSE inode per object, so that is enough.
//
// Differences left: F_GETLK (not F_OFD_GETLK) of a conflicting OFD lock
// reports its holder's pid where a local filesystem reports -1; a lock held
// through a descriptor just closed while a duplicate of it stays open makes
// a conflicting non-blocking request wait up to filelock.DefaultCloseGrace
// before it fails (the daemon cannot tell that close from a last one whose
// RELEASE is on its way), if the closing process is one that took locks
// through that open file.

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ovl-project/ovl/internal/filelock"
)

var (
	_ fs.NodeGetlker  = (*node)(nil)
	_ fs.NodeSetlker  = (*node)(nil)
	_ fs.NodeSetlkwer = (*node)(nil)
	_ fs.NodeFlusher  = (*node)(nil)
)

// mountLocks is one mount's lock state.
type mountLocks struct {
	table *filelock.Table

	mu sync.Mutex
	// flushOwner holds the lock owner of each FLUSH in progress, by its
	// cancel channel: go-fuse's bridge passes Flush no owner.
	flushOwner map[<-chan struct{}]uint64
}

func newMountLocks() *mountLocks {
	return &mountLocks{table: filelock.New(), flushOwner: map[<-chan struct{}]uint64{}}
}

// lockRaw wraps go-fuse's raw bridge to learn the lock owner of a FLUSH.
type lockRaw struct {
	fuse.RawFileSystem
	l *mountLocks
}

func (r *lockRaw) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	r.l.mu.Lock()
	r.l.flushOwner[cancel] = in.LockOwner
	r.l.mu.Unlock()
	st := r.RawFileSystem.Flush(cancel, in)
	r.l.mu.Lock()
	delete(r.l.flushOwner, cancel)
	r.l.mu.Unlock()
	return st
}

func (l *mountLocks) owner(ctx context.Context) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o, ok := l.flushOwner[cancelOf(ctx)]
	return o, ok
}

// fileLocks ties an open file to the lock table from its first lock
// request on.
type fileLocks struct {
	mu  sync.Mutex
	t   *filelock.Table // nil: no lock request came through this file
	key uint64
	h   filelock.Handle
}

// handle returns f's handle in t, made for object key at the first call.
func (f *fileLocks) handle(t *filelock.Table, key uint64) filelock.Handle {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.t == nil {
		f.t, f.key, f.h = t, key, t.NewHandle()
	}
	return f.h
}

// current returns f's handle, 0 if it never had one.
func (f *fileLocks) current() filelock.Handle {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.h
}

// release is the last close of f: its flock lock and OFD locks go.
func (f *fileLocks) release() {
	f.mu.Lock()
	t, key, h := f.t, f.key, f.h
	f.t = nil
	f.mu.Unlock()
	if t != nil {
		t.Release(key, h)
	}
}

func toLock(lk *fuse.FileLock) filelock.Lock {
	return filelock.Lock{Type: filelock.Type(lk.Typ), Start: lk.Start, End: lk.End, Pid: lk.Pid}
}

func lockErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.ENOLCK
}

func (p *node) Getlk(ctx context.Context, f fs.FileHandle, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	got, err := p.locks.table.Test(ctx, p.n.Key(), filelock.Owner(owner), toLock(lk))
	if err != nil {
		return lockErrno(err)
	}
	*out = fuse.FileLock{Typ: uint32(got.Type), Start: got.Start, End: got.End, Pid: got.Pid}
	return 0
}

func (p *node) Setlk(ctx context.Context, f fs.FileHandle, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return p.setlk(ctx, f, owner, lk, flags, false)
}

func (p *node) Setlkw(ctx context.Context, f fs.FileHandle, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return p.setlk(ctx, f, owner, lk, flags, true)
}

func (p *node) setlk(ctx context.Context, f fs.FileHandle, owner uint64, lk *fuse.FileLock, flags uint32, wait bool) syscall.Errno {
	h, ok := f.(*file)
	if !ok || h == nil {
		return syscall.ENOLCK // every open of a regular file has a handle
	}
	key := p.n.Key()
	id := h.locks.handle(p.locks.table, key)
	if flags&fuse.FUSE_LK_FLOCK != 0 {
		return lockErrno(p.locks.table.Flock(ctx, key, id, filelock.Type(lk.Typ), lk.Pid, wait))
	}
	return lockErrno(p.locks.table.Set(ctx, key, id, filelock.Owner(owner), toLock(lk), wait))
}

// Flush is a close(2) of a descriptor: the closing process's POSIX locks on
// the object go.
func (p *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno {
	owner, ok := p.locks.owner(ctx)
	if !ok {
		return 0
	}
	var id filelock.Handle
	if h, ok := f.(*file); ok && h != nil {
		id = h.locks.current()
	}
	var pid uint32
	if id != 0 {
		// Only a handle that took locks needs to know who closed it.
		pid = closerTgid(ctx)
	}
	p.locks.table.Flush(p.n.Key(), filelock.Owner(owner), id, pid)
	return 0
}

// closerTgid is the process (thread group) id of the caller of ctx, which
// FUSE gives as a thread id, in the daemon's pid namespace; 0 if unknown.
// Lock requests carry the thread group id.
func closerTgid(ctx context.Context) uint32 {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.Pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
				return uint32(n)
			}
		}
	}
	return 0
}
