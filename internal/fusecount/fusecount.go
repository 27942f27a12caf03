// Package fusecount counts the FUSE requests a file system serves, by
// opcode, so that a benchmark or a test can tell how many round trips an
// operation costs (issue 21). It wraps a go-fuse RawFileSystem; every
// method counts one request and passes it on. A BATCH_FORGET counts as one
// FORGET per node, as go-fuse passes it on; INIT, INTERRUPT, DESTROY and
// NOTIFY_REPLY are answered by go-fuse itself and are not counted.
//
// The counters are atomics, one per opcode: the cost per request is one
// uncontended atomic add.
package fusecount

import (
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// op indexes Counts.
type op int

const (
	opLookup op = iota
	opForget
	opGetattr
	opSetattr
	opMknod
	opMkdir
	opUnlink
	opRmdir
	opRename
	opLink
	opSymlink
	opReadlink
	opAccess
	opGetxattr
	opListxattr
	opSetxattr
	opRemovexattr
	opCreate
	opTmpfile
	opOpen
	opRead
	opLseek
	opGetlk
	opSetlk
	opSetlkw
	opRelease
	opWrite
	opCopyFileRange
	opIoctl
	opFlush
	opFsync
	opFallocate
	opOpendir
	opReaddir
	opReaddirplus
	opReleasedir
	opFsyncdir
	opStatfs
	opStatx
	numOps
)

// names are the kernel's opcode names (include/uapi/linux/fuse.h, without
// FUSE_).
var names = [numOps]string{
	"LOOKUP", "FORGET", "GETATTR", "SETATTR", "MKNOD", "MKDIR", "UNLINK", "RMDIR", "RENAME", "LINK",
	"SYMLINK", "READLINK", "ACCESS", "GETXATTR", "LISTXATTR", "SETXATTR", "REMOVEXATTR", "CREATE",
	"TMPFILE", "OPEN", "READ", "LSEEK", "GETLK", "SETLK", "SETLKW", "RELEASE", "WRITE",
	"COPY_FILE_RANGE", "IOCTL", "FLUSH", "FSYNC", "FALLOCATE", "OPENDIR", "READDIR", "READDIRPLUS",
	"RELEASEDIR", "FSYNCDIR", "STATFS", "STATX",
}

// Counts holds one counter per opcode. The zero value is ready.
type Counts struct {
	n [numOps]atomic.Uint64
}

func (c *Counts) add(o op) { c.n[o].Add(1) }

// Snapshot returns the counts so far, by opcode name; opcodes not seen are
// left out. Each counter is read atomically, the set is not: a request in
// progress may be counted in one and not another.
func (c *Counts) Snapshot() map[string]uint64 {
	m := map[string]uint64{}
	for i := range c.n {
		if v := c.n[i].Load(); v > 0 {
			m[names[i]] = v
		}
	}
	return m
}

// Total is the sum of all counters.
func (c *Counts) Total() uint64 {
	var t uint64
	for i := range c.n {
		t += c.n[i].Load()
	}
	return t
}

// Wrap returns raw with every request counted in c.
func Wrap(raw fuse.RawFileSystem, c *Counts) fuse.RawFileSystem {
	return &counted{RawFileSystem: raw, c: c}
}

type counted struct {
	fuse.RawFileSystem
	c *Counts
}

func (r *counted) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	r.c.add(opLookup)
	return r.RawFileSystem.Lookup(cancel, h, name, out)
}

func (r *counted) Forget(nodeid, nlookup uint64) {
	r.c.add(opForget)
	r.RawFileSystem.Forget(nodeid, nlookup)
}

func (r *counted) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	r.c.add(opGetattr)
	return r.RawFileSystem.GetAttr(cancel, in, out)
}

func (r *counted) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	r.c.add(opSetattr)
	return r.RawFileSystem.SetAttr(cancel, in, out)
}

func (r *counted) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	r.c.add(opMknod)
	return r.RawFileSystem.Mknod(cancel, in, name, out)
}

func (r *counted) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	r.c.add(opMkdir)
	return r.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (r *counted) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	r.c.add(opUnlink)
	return r.RawFileSystem.Unlink(cancel, h, name)
}

func (r *counted) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	r.c.add(opRmdir)
	return r.RawFileSystem.Rmdir(cancel, h, name)
}

func (r *counted) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	r.c.add(opRename)
	return r.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (r *counted) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	r.c.add(opLink)
	return r.RawFileSystem.Link(cancel, in, name, out)
}

func (r *counted) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	r.c.add(opSymlink)
	return r.RawFileSystem.Symlink(cancel, h, target, name, out)
}

func (r *counted) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	r.c.add(opReadlink)
	return r.RawFileSystem.Readlink(cancel, h)
}

func (r *counted) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	r.c.add(opAccess)
	return r.RawFileSystem.Access(cancel, in)
}

func (r *counted) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	r.c.add(opGetxattr)
	return r.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (r *counted) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	r.c.add(opListxattr)
	return r.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (r *counted) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	r.c.add(opSetxattr)
	return r.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (r *counted) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	r.c.add(opRemovexattr)
	return r.RawFileSystem.RemoveXAttr(cancel, h, attr)
}

func (r *counted) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	r.c.add(opCreate)
	return r.RawFileSystem.Create(cancel, in, name, out)
}

func (r *counted) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	r.c.add(opTmpfile)
	return r.RawFileSystem.Tmpfile(cancel, in, out)
}

func (r *counted) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.c.add(opOpen)
	return r.RawFileSystem.Open(cancel, in, out)
}

func (r *counted) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	r.c.add(opRead)
	return r.RawFileSystem.Read(cancel, in, buf)
}

func (r *counted) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	r.c.add(opLseek)
	return r.RawFileSystem.Lseek(cancel, in, out)
}

func (r *counted) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	r.c.add(opGetlk)
	return r.RawFileSystem.GetLk(cancel, in, out)
}

func (r *counted) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	r.c.add(opSetlk)
	return r.RawFileSystem.SetLk(cancel, in)
}

func (r *counted) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	r.c.add(opSetlkw)
	return r.RawFileSystem.SetLkw(cancel, in)
}

func (r *counted) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	r.c.add(opRelease)
	r.RawFileSystem.Release(cancel, in)
}

func (r *counted) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	r.c.add(opWrite)
	return r.RawFileSystem.Write(cancel, in, data)
}

// Writev is how go-fuse passes a WRITE whose data came in pieces; it is
// the same request as Write.
func (r *counted) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	r.c.add(opWrite)
	return r.RawFileSystem.Writev(cancel, in, data)
}

func (r *counted) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	r.c.add(opCopyFileRange)
	return r.RawFileSystem.CopyFileRange(cancel, in)
}

func (r *counted) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	r.c.add(opIoctl)
	return r.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf)
}

func (r *counted) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	r.c.add(opFlush)
	return r.RawFileSystem.Flush(cancel, in)
}

func (r *counted) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	r.c.add(opFsync)
	return r.RawFileSystem.Fsync(cancel, in)
}

func (r *counted) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	r.c.add(opFallocate)
	return r.RawFileSystem.Fallocate(cancel, in)
}

func (r *counted) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.c.add(opOpendir)
	return r.RawFileSystem.OpenDir(cancel, in, out)
}

func (r *counted) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	r.c.add(opReaddir)
	return r.RawFileSystem.ReadDir(cancel, in, out)
}

func (r *counted) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	r.c.add(opReaddirplus)
	return r.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (r *counted) ReleaseDir(in *fuse.ReleaseIn) {
	r.c.add(opReleasedir)
	r.RawFileSystem.ReleaseDir(in)
}

func (r *counted) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	r.c.add(opFsyncdir)
	return r.RawFileSystem.FsyncDir(cancel, in)
}

func (r *counted) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	r.c.add(opStatfs)
	return r.RawFileSystem.StatFs(cancel, h, out)
}

func (r *counted) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	r.c.add(opStatx)
	return r.RawFileSystem.Statx(cancel, in, out)
}
