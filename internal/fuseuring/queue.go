package fuseuring

import (
	"errors"
	"fmt"
	"log"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// wakeTag marks the completion of the eventfd read that wakes a queue
// for replies made on other goroutines.
const wakeTag = 1 << 63

// queue is the kernel's FUSE queue qid: one ring, one OS thread.
type queue struct {
	s           *Server
	qid         int
	depth       int
	payloadSize int
	start       chan bool
	served      atomic.Uint64

	r     *ring
	ents  []*entry
	live  int
	efd   int
	efdBf []byte

	mu     sync.Mutex
	done   []int // entries answered off the queue's thread, to commit
	closed bool  // efd is closed: answers made aside are dropped
}

// entry is one ring entry: the header and payload buffers the kernel
// copies a request into and a reply out of.
type entry struct {
	idx     int
	mem     []byte // header page, then payload
	hdr     []byte
	payload []byte
	scratch []byte // input payload copy, when the reply reuses the buffer
}

func (q *queue) run(setup chan<- error) {
	defer q.s.threads.Done()
	// The ring is SINGLE_ISSUER: only this thread may submit to it, and
	// the kernel fills request buffers while this thread is in
	// io_uring_enter. The thread ends with the goroutine.
	runtime.LockOSThread()
	if err := q.setup(); err != nil {
		q.teardown()
		setup <- fmt.Errorf("queue %d: %w", q.qid, err)
		<-q.start
		return
	}
	setup <- nil
	if !<-q.start {
		q.teardown()
		return
	}
	defer q.teardown()
	if err := q.allocEntries(); err != nil {
		log.Printf("fuse_uring: queue %d: %v", q.qid, err)
		return
	}
	// Pin to the queue's CPU, where its requests come from (as libfuse
	// does); a failure only costs locality.
	var set unix.CPUSet
	set.Set(q.qid)
	_ = unix.SchedSetaffinity(0, &set)
	for _, e := range q.ents {
		q.register(e)
	}
	q.armWake()
	q.live = len(q.ents)
	for q.live > 0 {
		if err := q.r.enter(); err != nil {
			log.Printf("fuse_uring: queue %d: %v", q.qid, err)
			return
		}
		q.r.reap(q.complete)
	}
}

func (q *queue) setup() error {
	r, err := newRing(uint32(q.depth + 1))
	if err != nil {
		return err
	}
	q.r = r
	if err := r.registerFile(q.s.devFd); err != nil {
		return err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	q.efd = efd
	return nil
}

func (q *queue) allocEntries() error {
	pg := unix.Getpagesize()
	b, err := unix.Mmap(-1, 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	q.efdBf = b[:8]
	for i := 0; i < q.depth; i++ {
		// Outside the Go heap: the kernel writes these between our
		// calls.
		mem, err := unix.Mmap(-1, 0, pg+q.payloadSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return fmt.Errorf("mmap ring entry: %w", err)
		}
		e := &entry{idx: i, mem: mem, hdr: mem[:hdrSize], payload: mem[pg:]}
		// iovec[2] after the header: what REGISTER points the kernel to.
		put64(mem, 512, uint64(uintptr(unsafe.Pointer(&e.hdr[0]))))
		put64(mem, 520, hdrSize)
		put64(mem, 528, uint64(uintptr(unsafe.Pointer(&e.payload[0]))))
		put64(mem, 536, uint64(len(e.payload)))
		q.ents = append(q.ents, e)
	}
	return nil
}

func (q *queue) teardown() {
	if q.r != nil {
		q.r.close()
	}
	q.mu.Lock()
	q.closed = true
	if q.efd > 0 {
		unix.Close(q.efd)
	}
	q.mu.Unlock()
	for _, e := range q.ents {
		unix.Munmap(e.mem)
	}
	q.ents = nil
}

// fuseCmd fills a URING_CMD SQE for the FUSE device (fixed file 0).
func (q *queue) fuseCmd(op uint32, e *entry) []byte {
	s := q.r.sqe()
	s[0] = ioringOpURingCmd
	s[1] = sqeFixedFile
	put32(s, 4, 0) // fixed file index
	put32(s, 8, op)
	put64(s, 32, uint64(e.idx))
	// struct fuse_uring_cmd_req at sqe->cmd (offset 48): flags,
	// commit_id, qid.
	s[64] = byte(q.qid)
	s[65] = byte(q.qid >> 8)
	return s
}

func (q *queue) register(e *entry) {
	s := q.fuseCmd(cmdRegister, e)
	put64(s, 16, uint64(uintptr(unsafe.Pointer(&e.mem[512]))))
	put32(s, 24, 2)
}

func (q *queue) commit(e *entry, commitID uint64) {
	s := q.fuseCmd(cmdCommitAndFetch, e)
	put64(s, 56, commitID)
}

func (q *queue) armWake() {
	s := q.r.sqe()
	s[0] = ioringOpRead
	put32(s, 4, uint32(q.efd))
	put64(s, 16, uint64(uintptr(unsafe.Pointer(&q.efdBf[0]))))
	put32(s, 24, 8)
	put64(s, 32, wakeTag)
}

// complete handles one completion: a request in an entry, or a wake-up.
func (q *queue) complete(c cqe) {
	if c.userData == wakeTag {
		q.mu.Lock()
		done := q.done
		q.done = nil
		q.mu.Unlock()
		for _, i := range done {
			e := q.ents[i]
			q.commit(e, get64(e.hdr, hdrCommitID))
		}
		if c.res != -int32(syscall.ECANCELED) {
			q.armWake()
		}
		return
	}
	e := q.ents[c.userData]
	switch {
	case c.res == 0:
	case c.res == -int32(syscall.EAGAIN):
		// The connection was not initialized yet: register again.
		q.register(e)
		return
	default:
		// ENOTCONN: the connection is gone (unmount or abort).
		if err := syscall.Errno(-c.res); !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
			log.Printf("fuse_uring: queue %d entry %d: %v", q.qid, e.idx, err)
		}
		q.live--
		return
	}
	q.served.Add(1)
	if aside(e.hdr) {
		go func() {
			q.serve(e)
			q.mu.Lock()
			defer q.mu.Unlock()
			if q.closed {
				return
			}
			q.done = append(q.done, e.idx)
			one := [8]byte{1}
			unix.Write(q.efd, one[:])
		}()
		return
	}
	q.serve(e)
	q.commit(e, get64(e.hdr, hdrCommitID))
}

// serve answers the request in e through go-fuse's ProtocolServer and
// leaves the reply in e's buffers.
func (q *queue) serve(e *entry) {
	h := e.hdr
	unique := get64(h, 8)
	payloadSz := int(get32(h, hdrPayloadSz))
	// The request's op header is in op_in, the rest in the payload;
	// in_header.len still counts both.
	opIn := int(get32(h, 0)) - inHeaderSize - payloadSz
	if opIn < 0 || opIn > 128 || payloadSz > len(e.payload) {
		log.Printf("fuse_uring: bad request: len %d, payload %d", get32(h, 0), payloadSz)
		q.replyErr(e, unique, syscall.EIO)
		return
	}
	payload := e.payload[:payloadSz]
	if payloadSz > 0 && get32(h, 4) != opWrite {
		// The reply is written to the same buffer (GETXATTR's name,
		// IOCTL's input): serve from a copy. WRITE's data is read
		// before its small reply is written.
		e.scratch = append(e.scratch[:0], payload...)
		payload = e.scratch
	}
	in := [][]byte{h[:inHeaderSize], h[hdrOpIn : hdrOpIn+opIn], payload}
	out := [][]byte{h[:outHeaderSize], e.payload}
	n, st := q.s.ps.HandleRequest(in, out)
	if !st.Ok() {
		q.replyErr(e, unique, syscall.Errno(st))
		return
	}
	if n < outHeaderSize {
		// No reply wanted; the entry still has to be committed.
		put32(h, 0, outHeaderSize)
		put32(h, 4, 0)
		put64(h, 8, unique)
		n = outHeaderSize
	}
	put32(h, hdrPayloadSz, uint32(n-outHeaderSize))
}

func (q *queue) replyErr(e *entry, unique uint64, errno syscall.Errno) {
	put32(e.hdr, 0, outHeaderSize)
	put32(e.hdr, 4, uint32(-int32(errno)))
	put64(e.hdr, 8, unique)
	put32(e.hdr, hdrPayloadSz, 0)
}

// Opcodes and fields aside looks at (include/uapi/linux/fuse.h).
const (
	opSetattr       = 4
	opRename        = 12
	opLink          = 13
	opOpen          = 14
	opRead          = 15
	opFsync         = 20
	opSetxattr      = 21
	opRemovexattr   = 24
	opFsyncdir      = 30
	opIoctl         = 39
	opFallocate     = 43
	opRename2       = 45
	opCopyFileRange = 47
	opSyncfs        = 50

	fattrSize = 1 << 3
	// Reads and writes up to this size are served inline.
	inlineIO = 128 << 10
)

// aside says whether a request is served on its own goroutine rather
// than on the queue's thread, which serves the queue's other requests
// only after it. Those are the requests that can take long: a lock wait
// (which may need a request on this queue, the unlock, to end), syncs,
// large reads and writes, and what may copy a file up (an open for
// writing or truncating, a truncate, a rename, a link, an xattr change).
// The rest, the many small metadata requests, are answered inline.
func aside(h []byte) bool {
	op := get32(h, 4)
	in := h[hdrOpIn:]
	switch op {
	case opSetlkw, opFsync, opFsyncdir, opSyncfs, opFallocate, opCopyFileRange,
		opRename, opRename2, opLink, opSetxattr, opRemovexattr, opIoctl:
		return true
	case opSetattr:
		return get32(in, 0)&fattrSize != 0
	case opOpen:
		flags := get32(in, 0)
		return flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0
	case opRead, opWrite:
		return get32(in, 16) > inlineIO
	}
	return false
}
