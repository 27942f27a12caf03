package fusefs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/overlay"
)

// file is an open regular file: a descriptor of the real file the overlay
// chose at open. It deliberately does not implement
// fs.FilePassthroughFder: ovl registers backing files itself
// (passthrough.go), and go-fuse's bridge would attach an inode's first
// backing to every later open, a writable one included.
//
// Reads and writes of a passthrough handle do not reach the daemon; the
// descriptor still serves fstat, fsync, lseek and fallocate.
//
// A read-only descriptor opened before the object was copied up is
// reopened on the upper copy at the next read, so it sees what was written
// since, as the kernel's overlay file operations do (ovl_real_fdget).
type file struct {
	n        *overlay.Node
	owner    *node      // the inode whose opens count this handle, or nil
	mu       sync.Mutex // guards lf and fd when a stale read-only fd is swapped
	lf       *fs.LoopbackFile
	fd       int
	flags    int
	writable bool
	upper    bool // fd is on the upper layer
	volatile bool

	// Passthrough bookkeeping (nil pm: passthrough=off). backed: the handle
	// holds a reference on pt's backing; cachedRef: it is counted as a
	// handle served through the daemon. Set at open, cleared at release.
	pm        *ptMount
	pt        *ptNode
	backed    bool
	cachedRef bool

	locks fileLocks // its lock handle (locks.go)
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileLseeker   = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
)

func newFile(ov *overlay.Overlay, n *overlay.Node, fd int, flags int) *file {
	return &file{
		n:        n,
		lf:       fs.NewLoopbackFile(fd).(*fs.LoopbackFile),
		fd:       fd,
		flags:    flags,
		writable: flags&unix.O_ACCMODE != unix.O_RDONLY,
		upper:    n.DataInUpper(),
		volatile: ov.Volatile(),
	}
}

// current returns the descriptor to use, moving a read-only one to the
// upper copy once there is one.
func (f *file) current(ctx context.Context) *fs.LoopbackFile {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.upper && f.n.DataInUpper() {
		if fd, err := f.n.Open(f.flags &^ unix.O_TRUNC); err == nil {
			old := f.lf
			f.lf, f.fd, f.upper = fs.NewLoopbackFile(fd).(*fs.LoopbackFile), fd, true
			old.Release(ctx)
		}
	}
	return f.lf
}

func (f *file) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return f.current(ctx).Read(ctx, buf, off)
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, e := f.lf.Write(ctx, data, off)
	if e == 0 && n > 0 {
		f.killSgid(ctx)
	}
	return n, e
}

// killSgid clears the setgid bit a write by a caller outside the file's
// group leaves (see killpriv.go); FUSE asks only for the setuid bit and a
// group-executable setgid. Like the kernel's file_remove_privs, a failure
// does not undo the write.
func (f *file) killSgid(ctx context.Context) {
	var st unix.Stat_t
	// The mode and group the kernel sees (the owner may be mapped or in
	// an override xattr), not the layer inode's.
	if f.n.Fstat(f.fd, &st) != nil {
		return
	}
	if _, kill := needsSgidKill(ctx, &st); kill {
		m := st.Mode & 0o7777 &^ (unix.S_ISUID | unix.S_ISGID)
		f.n.Setattr(overlay.SetAttr{Mode: &m}, -1)
	}
}

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if f.volatile {
		return 0 // the kernel's volatile: syncs to the upper are skipped
	}
	return f.lf.Fsync(ctx, flags)
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	// First: close(2) returned before this RELEASE was sent, and a lock
	// request may be waiting for these locks to go.
	f.locks.release()
	e := f.current(ctx).Release(ctx)
	if f.pm != nil {
		f.pm.release(f)
	}
	if f.owner != nil {
		f.owner.obj.opens.Add(-1)
		f.n.Forget()
	}
	return e
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return f.current(ctx).Lseek(ctx, off, whence)
}

func (f *file) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return f.lf.Allocate(ctx, off, size, mode)
}
