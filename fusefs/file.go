package fusefs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/overlay"
)

// file is an open regular file: a descriptor of the real file the overlay
// chose at open. It deliberately offers no passthrough descriptor.
type file struct {
	lf       *fs.LoopbackFile
	fd       int
	writable bool
	volatile bool
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFlusher   = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileLseeker   = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
)

func newFile(ov *overlay.Overlay, fd int, flags int) *file {
	return &file{
		lf:       fs.NewLoopbackFile(fd).(*fs.LoopbackFile),
		fd:       fd,
		writable: flags&unix.O_ACCMODE != unix.O_RDONLY,
		volatile: ov.Volatile(),
	}
}

func (f *file) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return f.lf.Read(ctx, buf, off)
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return f.lf.Write(ctx, data, off)
}

func (f *file) Flush(ctx context.Context) syscall.Errno { return f.lf.Flush(ctx) }

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if f.volatile {
		return 0 // the kernel's volatile: syncs to the upper are skipped
	}
	return f.lf.Fsync(ctx, flags)
}

func (f *file) Release(ctx context.Context) syscall.Errno { return f.lf.Release(ctx) }

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return f.lf.Lseek(ctx, off, whence)
}

func (f *file) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	return f.lf.Allocate(ctx, off, size, mode)
}
