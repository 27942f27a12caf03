package fuseuring

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring ABI (include/uapi/linux/io_uring.h); x/sys/unix has the
// syscall numbers but not the structures.
const (
	setupCoopTaskrun  = 1 << 8
	setupSQE128       = 1 << 10
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13
	setupNoSQArray    = 1 << 16

	enterGetEvents = 1 << 0

	ioringOpRead     = 22
	ioringOpURingCmd = 46

	sqeFixedFile = 1 << 0

	registerFiles = 2

	offSQRing = 0
	offSQEs   = 0x10000000

	featSingleMmap = 1 << 0

	sqeSize = 128 // SQE128: the FUSE command lives in the second half
	cqeSize = 16
)

type sqRingOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqRingOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqRingOffsets
	cqOff                                                                  cqRingOffsets
}

// ring is one io_uring instance, used by one OS thread only (it is set up
// SINGLE_ISSUER and DEFER_TASKRUN: the kernel copies FUSE requests into
// the buffers in that thread's io_uring_enter, never from a task_work
// signalled at some other moment).
type ring struct {
	fd       int
	mem      []byte // SQ and CQ rings (one mapping)
	sqeMem   []byte
	sqTail   *uint32
	sqHead   *uint32
	sqMask   uint32
	cqHead   *uint32
	cqTail   *uint32
	cqMask   uint32
	cqes     unsafe.Pointer
	tail     uint32 // our SQ tail, published on submit
	nEntries uint32
}

func newRing(entries uint32) (*ring, error) {
	p := params{flags: setupSQE128 | setupSingleIssuer | setupDeferTaskrun | setupCoopTaskrun | setupNoSQArray}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &ring{fd: int(fd), nEntries: p.sqEntries}
	if p.features&featSingleMmap == 0 {
		r.close()
		return nil, fmt.Errorf("io_uring: kernel lacks IORING_FEAT_SINGLE_MMAP")
	}
	size := max(int(p.sqOff.array)+int(p.sqEntries)*4, int(p.cqOff.cqes)+int(p.cqEntries)*cqeSize)
	mem, err := unix.Mmap(r.fd, offSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("mmap io_uring rings: %w", err)
	}
	r.mem = mem
	sqes, err := unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("mmap io_uring SQEs: %w", err)
	}
	r.sqeMem = sqes
	base := unsafe.Pointer(&mem[0])
	r.sqHead = (*uint32)(unsafe.Add(base, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(base, p.sqOff.tail))
	r.sqMask = *(*uint32)(unsafe.Add(base, p.sqOff.ringMask))
	r.cqHead = (*uint32)(unsafe.Add(base, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(base, p.cqOff.tail))
	r.cqMask = *(*uint32)(unsafe.Add(base, p.cqOff.ringMask))
	r.cqes = unsafe.Add(base, p.cqOff.cqes)
	r.tail = atomic.LoadUint32(r.sqTail)
	return r, nil
}

func (r *ring) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.mem != nil {
		unix.Munmap(r.mem)
	}
	unix.Close(r.fd)
}

// registerFile makes fd the ring's fixed file 0: the ring holds its own
// reference, so commands keep reaching the FUSE device even after the
// descriptor number is closed (and reused) by go-fuse at unmount.
func (r *ring) registerFile(fd int) error {
	fds := [1]int32{int32(fd)}
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), registerFiles, uintptr(unsafe.Pointer(&fds[0])), 1, 0, 0)
	if errno != 0 {
		return fmt.Errorf("io_uring_register files: %w", errno)
	}
	return nil
}

// sqe returns the next free submission entry, zeroed. The caller fills it
// before the next submit; there is always room, as each queue has fewer
// operations in flight than SQ entries.
func (r *ring) sqe() []byte {
	i := r.tail & r.sqMask
	r.tail++
	s := r.sqeMem[int(i)*sqeSize : int(i+1)*sqeSize]
	clear(s)
	return s
}

// enter submits what sqe handed out and waits for at least one completion.
func (r *ring) enter() error {
	atomic.StoreUint32(r.sqTail, r.tail)
	for {
		toSubmit := r.tail - atomic.LoadUint32(r.sqHead)
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), 1, enterGetEvents, 0, 0)
		switch errno {
		case 0:
			return nil
		case syscall.EINTR, syscall.EAGAIN, syscall.EBUSY:
			continue
		default:
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// reap calls f for each completion and then frees them.
func (r *ring) reap(f func(cqe)) {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for ; head != tail; head++ {
		c := *(*cqe)(unsafe.Add(r.cqes, uintptr(head&r.cqMask)*cqeSize))
		f(c)
	}
	atomic.StoreUint32(r.cqHead, head)
}

func put32(b []byte, off int, v uint32) { *(*uint32)(unsafe.Pointer(&b[off])) = v }
func put64(b []byte, off int, v uint64) { *(*uint64)(unsafe.Pointer(&b[off])) = v }
func get32(b []byte, off int) uint32    { return *(*uint32)(unsafe.Pointer(&b[off])) }
func get64(b []byte, off int) uint64    { return *(*uint64)(unsafe.Pointer(&b[off])) }
