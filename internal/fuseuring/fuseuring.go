// Package fuseuring serves a go-fuse RawFileSystem over FUSE-over-io_uring
// (Linux 6.14+, CONFIG_FUSE_IO_URING, fuse module parameter enable_uring=Y;
// Documentation/filesystems/fuse-io-uring.rst), falling back to /dev/fuse
// when the kernel does not offer it.
//
// The rules:
//   - /dev/fuse still carries INIT, FORGET, INTERRUPT and the daemon's
//     notifications: a go-fuse fuse.Server owns the device for those, and
//     for passthrough backing ids, exactly as without io_uring. Mount opens
//     /dev/fuse and mounts it itself (mount(2), so root only) and hands the
//     descriptor to go-fuse as "/dev/fd/N", because go-fuse does not export
//     the descriptor of a mount it made.
//   - INIT asks for FUSE_OVER_IO_URING only when the rings are already set
//     up: once the kernel agrees, it holds every request until each of its
//     queues (one per possible CPU) has registered an entry.
//   - Each queue is one locked OS thread with its own ring (SQE128,
//     SINGLE_ISSUER, DEFER_TASKRUN). A request arrives as the completion of
//     a REGISTER or COMMIT_AND_FETCH command; the thread serves it inline
//     through go-fuse's ProtocolServer and commits the reply with the next
//     fetch, one io_uring_enter per request and no hand-off between
//     threads. Requests that can take long (a lock wait, which may need
//     another request on the same queue to end; syncs; large reads and
//     writes; what may copy up a file) are served on their own goroutine
//     and committed after an eventfd wakes the queue's thread (see aside).
//   - An INTERRUPT for a request served on a ring is not acted on: the
//     kernel sends it through /dev/fuse, where go-fuse does not know the
//     request, and the kernel itself does not accept interrupt replies for
//     ring requests yet. The request runs to completion.
//   - Unmount goes through Server.Unmount, not fuse.Server.Unmount (which
//     refuses a "/dev/fd/N" mount).
package fuseuring

import (
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FUSE-over-io_uring ABI (include/uapi/linux/fuse.h).
const (
	cmdRegister       = 1
	cmdCommitAndFetch = 2

	// struct fuse_uring_req_header: in_out[128], op_in[128],
	// fuse_uring_ent_in_out{flags, commit_id, payload_sz, padding, reserved}.
	hdrOpIn      = 128
	hdrCommitID  = 256 + 8
	hdrPayloadSz = 256 + 16
	hdrSize      = 256 + 32

	inHeaderSize  = 40
	outHeaderSize = 16

	opWrite  = 16
	opSetlkw = 33
	opInit   = 26
)

// Options tunes the transport.
type Options struct {
	// Plain serves through /dev/fuse only, as go-fuse's own server does.
	Plain bool
	// Depth is the number of ring entries (requests in flight) per
	// queue; 0 means 4.
	Depth int
	// Inited runs after INIT, before any other request is served.
	Inited func(*fuse.Server)
}

// Server is a mounted file system.
type Server struct {
	// Fuse is go-fuse's server on /dev/fuse: notifications, passthrough
	// backing ids, KernelSettings. Do not call its Unmount.
	Fuse       *fuse.Server
	mountpoint string
	devFd      int
	ps         *fuse.ProtocolServer
	uring      bool
	queues     []*queue
	threads    sync.WaitGroup
	unmounted  atomic.Bool
}

// Uring reports whether requests are served through io_uring.
func (s *Server) Uring() bool { return s.uring }

// RingRequests is the number of requests served through the rings.
func (s *Server) RingRequests() uint64 {
	var n uint64
	for _, q := range s.queues {
		n += q.served.Load()
	}
	return n
}

// Mount mounts raw at mountpoint and serves it until unmounted. A
// failure to set up io_uring is logged and the mount is served through
// /dev/fuse alone.
func Mount(mountpoint string, raw fuse.RawFileSystem, mo fuse.MountOptions, o Options) (*Server, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("fuseuring: mounting needs root (mount(2) of a /dev/fuse descriptor)")
	}
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return nil, fmt.Errorf("mountpoint: %w", err)
	}
	devFd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	s := &Server{mountpoint: mountpoint, devFd: devFd}
	if !o.Plain {
		if err := s.startQueues(o.Depth, mo.MaxWrite); err != nil {
			log.Printf("fuse_uring: off: %v", err)
			s.stopQueues()
		}
	}
	if err := mountFd(mountpoint, devFd, &st, &mo); err != nil {
		s.stopQueues()
		unix.Close(devFd)
		return nil, err
	}
	mo.DirectMount, mo.DirectMountStrict = false, false
	if len(s.queues) > 0 {
		mo.ExtraCapabilities |= fuse.CAP_OVER_IO_URING
	}
	srv, err := fuse.NewServer(raw, fmt.Sprintf("/dev/fd/%d", devFd), &mo)
	if err != nil {
		s.stopQueues()
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		unix.Close(devFd)
		return nil, err
	}
	s.Fuse = srv
	if len(s.queues) > 0 && srv.KernelSettings().Flags64()&fuse.CAP_OVER_IO_URING != 0 {
		s.ps = fuse.NewProtocolServer(raw, &mo)
		if err := initProtocol(s.ps, srv.KernelSettings()); err != nil {
			// The kernel waits for the rings now; without them the
			// mount cannot serve anything.
			unix.Unmount(mountpoint, unix.MNT_DETACH)
			s.stopQueues()
			return nil, err
		}
		s.uring = true
		log.Printf("fuse_uring: on, %d queues of %d entries", len(s.queues), s.queues[0].depth)
		for _, q := range s.queues {
			q.start <- true
		}
	} else {
		if len(s.queues) > 0 {
			log.Printf("fuse_uring: off: the kernel does not offer FUSE_OVER_IO_URING (is /sys/module/fuse/parameters/enable_uring Y?)")
		}
		s.stopQueues()
	}
	if o.Inited != nil {
		o.Inited(srv)
	}
	go srv.Serve()
	if err := pollHack(mountpoint); err != nil {
		s.Unmount()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	return s, nil
}

// pollHack does what go-fuse's WaitMount does for a mount it made (it
// skips "/dev/fd/N" ones): it opens go-fuse's magic file and polls it, so
// that the kernel learns at once that POLL is not supported. Otherwise the
// first epoll_ctl that Go's os.Open does on a file of the mount, in this
// process, waits for a POLL reply while holding its P, and a
// stop-the-world then deadlocks the servers.
func pollHack(mountpoint string) error {
	fd, err := unix.Open(mountpoint+"/.go-fuse-epoll-hack", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("poll hack: %w", err)
	}
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	unix.Close(fd)
	return nil
}

// initProtocol gives the ProtocolServer the INIT the kernel sent, so that
// it parses requests for the same protocol version and flags as the
// fuse.Server that answered it. (Its answer is computed again from the
// same options and dropped.)
func initProtocol(ps *fuse.ProtocolServer, k *fuse.InitIn) error {
	in := *k
	in.Length = uint32(unsafe.Sizeof(in))
	in.Opcode = opInit
	in.Unique = 2
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in))
	out := make([]byte, 256)
	if _, st := ps.HandleRequest([][]byte{buf}, [][]byte{out}); !st.Ok() {
		return fmt.Errorf("fuse_uring: INIT for the ring server: %v", st)
	}
	if status := int32(get32(out, 4)); status != 0 {
		return fmt.Errorf("fuse_uring: INIT for the ring server: errno %d", -status)
	}
	return nil
}

// mountFd mounts the FUSE descriptor fd, with the options go-fuse's
// direct mount uses.
func mountFd(mountpoint string, fd int, st *unix.Stat_t, mo *fuse.MountOptions) error {
	source := mo.FsName
	if source == "" {
		source = mo.Name
	}
	fstype := "fuse"
	if mo.Name != "" {
		fstype = "fuse." + mo.Name
	}
	flags := uintptr(syscall.MS_NOSUID | syscall.MS_NODEV)
	if mo.DirectMountFlags != 0 {
		flags = mo.DirectMountFlags
	}
	maxWrite := mo.MaxWrite
	if maxWrite <= 0 {
		maxWrite = 1 << 16
	}
	data := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", st.Mode&syscall.S_IFMT),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
		fmt.Sprintf("max_read=%d", maxWrite),
	}
	for _, o := range mo.Options {
		switch o {
		case "nodev":
			flags |= syscall.MS_NODEV
		case "dev":
			flags &^= syscall.MS_NODEV
		case "nosuid":
			flags |= syscall.MS_NOSUID
		case "suid":
			flags &^= syscall.MS_NOSUID
		case "noexec":
			flags |= syscall.MS_NOEXEC
		case "exec":
			flags &^= syscall.MS_NOEXEC
		case "ro":
			flags |= syscall.MS_RDONLY
		default:
			data = append(data, o)
		}
	}
	if mo.AllowOther {
		data = append(data, "allow_other")
	}
	if err := syscall.Mount(source, mountpoint, fstype, flags, strings.Join(data, ",")); err != nil {
		return fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	return nil
}

// Unmount unmounts the file system and waits until its servers stop.
func (s *Server) Unmount() error {
	if s.unmounted.Load() {
		return nil
	}
	var err error
	delay := time.Duration(0)
	for try := 0; try < 5; try++ {
		// EBUSY right after the last close: the kernel may not have
		// released every file yet (as go-fuse's own Unmount retries).
		if err = unix.Unmount(s.mountpoint, 0); err == nil || !errors.Is(err, unix.EBUSY) {
			break
		}
		delay = 2*delay + 5*time.Millisecond
		time.Sleep(delay)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", s.mountpoint, err)
	}
	s.unmounted.Store(true)
	s.Wait()
	return nil
}

// Wait blocks until the file system is unmounted and every server has
// stopped.
func (s *Server) Wait() {
	s.Fuse.Wait()
	s.threads.Wait()
}

// startQueues sets up one ring per possible CPU (the kernel's queue for a
// request is the CPU its sender runs on), before the mount, so that INIT
// asks for io_uring only when it can be served.
func (s *Server) startQueues(depth, maxWrite int) error {
	if depth <= 0 {
		depth = 4
	}
	ncpu, err := possibleCPUs()
	if err != nil {
		return err
	}
	// The kernel wants each entry's payload buffer to hold
	// max(8 KiB, max_write, max_pages pages).
	if maxWrite <= 0 {
		maxWrite = 1 << 20
	}
	pg := os.Getpagesize()
	payload := max(8192, (maxWrite+pg-1)/pg*pg)
	errs := make(chan error, ncpu)
	for qid := 0; qid < ncpu; qid++ {
		q := &queue{s: s, qid: qid, depth: depth, payloadSize: payload, start: make(chan bool, 1)}
		s.queues = append(s.queues, q)
		s.threads.Add(1)
		go q.run(errs)
	}
	var first error
	for range ncpu {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// stopQueues ends queues that were set up but will not be used.
func (s *Server) stopQueues() {
	for _, q := range s.queues {
		q.start <- false
	}
	s.threads.Wait()
	s.queues = nil
}

// possibleCPUs counts /sys/devices/system/cpu/possible ("0-1", "0-3,5").
func possibleCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, fmt.Errorf("possible CPUs: %w", err)
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		var lo, hi int
		if _, err := fmt.Sscanf(part, "%d-%d", &lo, &hi); err == nil {
			n = max(n, hi+1)
		} else if _, err := fmt.Sscanf(part, "%d", &lo); err == nil {
			n = max(n, lo+1)
		} else {
			return 0, fmt.Errorf("possible CPUs %q: %w", b, err)
		}
	}
	return n, nil
}
