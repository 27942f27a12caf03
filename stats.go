package ovl

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/overlay"
)

// Stats are a mount's counters, as "ovl stats" prints them.
type Stats struct {
	// Pid is the process that serves the mount.
	Pid int `json:"pid"`
	overlay.Stats
	// The Go heap of that process, from runtime/metrics: what the last
	// collection found live, and all heap objects now (garbage not yet
	// collected included).
	HeapLive    uint64 `json:"go_heap_live_bytes"`
	HeapObjects uint64 `json:"go_heap_objects_bytes"`
	GCCycles    uint64 `json:"go_gc_cycles"`
	// Requests counts the FUSE requests served, by opcode (issue 21).
	Requests map[string]uint64 `json:"requests"`
	// UringRequests of them came through io_uring (fuse_uring=on).
	UringRequests uint64 `json:"fuse_uring_requests"`
}

// Info is what "ovl ls" shows of a mount: its layers and options with its
// counters.
type Info struct {
	Stats
	Mountpoint string   `json:"mountpoint"`
	Lowers     []string `json:"lowerdir"`
	Upper      string   `json:"upperdir,omitempty"`
	Work       string   `json:"workdir,omitempty"`
	// Options are the options given other than the layers.
	Options []string `json:"options"`
	// The options in effect that change how the layers read (defaults
	// and the xattr namespace ovl chose included), for "ovl explain".
	UserXattr   bool   `json:"userxattr"`
	RedirectDir string `json:"redirect_dir,omitempty"`
	Metacopy    string `json:"metacopy,omitempty"`
	Index       string `json:"index,omitempty"`
	// Daemon is set when the process exits once the mount is gone, as
	// ovl's daemon does (Config.Daemon).
	Daemon bool `json:"daemon"`
}

// Stats returns the mount's counters now; the heap figures are this
// process's.
func (s *Server) Stats() Stats { return newStats(s, false) }

func (s *Server) info(gc bool) Info {
	cfg := s.plan.res.Overlay
	return Info{
		Stats:      newStats(s, gc),
		Mountpoint: s.plan.Mountpoint,
		Lowers:     cfg.Lowers, Upper: cfg.Upper, Work: cfg.Work,
		Options:   append([]string{}, s.plan.res.Given...),
		UserXattr: cfg.UserXattr, RedirectDir: cfg.RedirectDir, Metacopy: cfg.Metacopy, Index: cfg.Index,
		Daemon: s.plan.daemon,
	}
}

// A client sends a request line and half-closes; "gc" asks for a garbage
// collection first, so that the heap figures show what is still reachable
// (an idle daemon may otherwise not collect for two minutes); "info" asks
// for Info instead of Stats; "wait" gets no reply, and the connection is
// closed once the serving has ended and the layers are closed (Unmount).
// Any other line asks for Stats.
const (
	gcRequest   = "gc\n"
	infoRequest = "info\n"
	waitRequest = "wait\n"
)

func newStats(s *Server, gc bool) Stats {
	if gc {
		// Two collections: sync.Pool keeps what it held for one more
		// cycle (go-fuse's request buffers, 1 MiB each), and the second
		// returns the freed pages to the system.
		runtime.GC()
		debug.FreeOSMemory()
		writeHeapProfile()
	}
	m := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(m)
	r := Stats{Pid: os.Getpid(), Stats: s.ov.Stats(), Requests: s.fs.Requests(), UringRequests: s.fs.UringRequests()}
	for i, p := range []*uint64{&r.HeapLive, &r.HeapObjects, &r.GCCycles} {
		if m[i].Value.Kind() == metrics.KindUint64 {
			*p = m[i].Value.Uint64()
		}
	}
	return r
}

// daemonGCPercent is the GOGC of a daemon that serves one mount, unless
// the environment sets GOGC. Go's default, 100, lets the heap grow to
// twice what is live before a collection: a daemon holds a node per
// object the kernel keeps, so its RSS follows the kernel's inode cache.
// Measured over a stat of 100k files (issue 21 goal 3, 2 runs each): peak
// RSS 135-139 MiB at 100, 126-129 MiB at 50, 121 MiB at 25; daemon CPU
// per object 90-104, 76-99 and 112 µs, the same within the noise of
// that machine, while 25 doubled the collections again for 4% less.
const daemonGCPercent = 50

// daemonGC sets the collector of a daemon process (Config.Daemon).
func daemonGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(daemonGCPercent)
	}
}

// heapProfileEnv names a file that a daemon started with it set writes a
// heap profile to on each "ovl stats --gc", for "go tool pprof" (issue 21:
// where the bytes per object go). The sampling is then fine enough to
// see small per-node allocations.
const heapProfileEnv = "OVL_HEAP_PROFILE"

func init() {
	if os.Getenv(heapProfileEnv) != "" {
		runtime.MemProfileRate = 512
	}
}

func writeHeapProfile() {
	path := os.Getenv(heapProfileEnv)
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("heap").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		// Beside it, where the process's memory goes by class, to tell
		// fragmentation and runtime overhead from live objects.
		var b []byte
		for _, d := range metrics.All() {
			if strings.HasPrefix(d.Name, "/memory/classes/") {
				m := []metrics.Sample{{Name: d.Name}}
				metrics.Read(m)
				b = fmt.Appendf(b, "%s %d\n", d.Name, m[0].Value.Uint64())
			}
		}
		err = os.WriteFile(path+".classes", b, 0o644)
	}
	if err != nil {
		log.Printf("%s: %v", heapProfileEnv, err)
	}
}

// statsSocket names the abstract unix socket of the process serving m. An
// abstract name leaves no file behind and vanishes with the process.
//
// The name holds the mount's unique ID (statx STATX_MNT_ID_UNIQUE, Linux
// 6.8+), which the kernel never gives to another mount: a device number,
// the name before, is given to a new mount as soon as the old one is gone,
// while its daemon may still be exiting and holding the name. Older
// kernels get the device number; unique says which it is. The statx asks
// for cached attributes only, so it sends the daemon no request and cannot
// hang on a daemon that does.
func statsSocket(m *mountinfo.Entry) (name string, unique bool) {
	var stx unix.Statx_t
	flags := unix.AT_STATX_DONT_SYNC | unix.AT_SYMLINK_NOFOLLOW | unix.AT_NO_AUTOMOUNT
	if unix.Statx(unix.AT_FDCWD, m.MountPoint, flags, unix.STATX_MNT_ID_UNIQUE, &stx) == nil &&
		stx.Mask&unix.STATX_MNT_ID_UNIQUE != 0 {
		return fmt.Sprintf("@ovl/mnt/%d", stx.Mnt_id), true
	}
	return "@ovl/" + m.Dev, false
}

// legacyBindWait bounds how long a daemon waits for a name by device
// number (statsSocket) held by the exiting daemon of an earlier mount.
const legacyBindWait = 10 * time.Second

// statsIOWait bounds each step of a stats query, on both sides: far above
// what it takes, so that only a hung peer fails it.
const statsIOWait = 60 * time.Second

// serveStats answers every connection on the stats socket of m with one
// JSON reply.
func serveStats(m *mountinfo.Entry, s *Server) (net.Listener, error) {
	name, unique := statsSocket(m)
	ln, err := net.Listen("unix", name)
	for deadline := time.Now().Add(legacyBindWait); err != nil && !unique &&
		errors.Is(err, unix.EADDRINUSE) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		ln, err = net.Listen("unix", name)
	}
	if err != nil {
		return nil, fmt.Errorf("stats socket %s: %w", name, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			go func() {
				defer c.Close()
				// The client half-closes after its request. The bounds
				// only keep a stuck client from holding a goroutine: on
				// a loaded machine a client may take seconds between
				// connect and write (a 250 ms bound broke its pipe).
				c.SetReadDeadline(time.Now().Add(statsIOWait))
				req, _ := io.ReadAll(io.LimitReader(c, 64))
				c.SetDeadline(time.Now().Add(statsIOWait))
				var reply any
				switch string(req) {
				case waitRequest:
					<-s.closed
					return
				case infoRequest:
					reply = s.info(false)
				default:
					reply = newStats(s, string(req) == gcRequest)
				}
				if err := json.NewEncoder(c).Encode(reply); err != nil {
					log.Printf("stats: %v", err)
				}
			}()
		}
	}()
	return ln, nil
}

// ReadStats asks the process serving the ovl mount at mountpoint for its
// counters; gc asks it to collect garbage first, so that the heap figures
// show only what is reachable.
func ReadStats(mountpoint string, gc bool) (*Stats, error) {
	req := "\n"
	if gc {
		req = gcRequest
	}
	var r Stats
	if err := query(mountpoint, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ReadInfo asks the process serving the ovl mount at mountpoint for its
// layers, options and counters.
func ReadInfo(mountpoint string) (*Info, error) {
	var r Info
	if err := query(mountpoint, infoRequest, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ask connects to the process serving the ovl mount at mnt, sends req and
// half-closes. It checks that the socket belongs to root or to the
// caller, so that another user squatting the name cannot pass for the
// daemon.
func ask(mnt, req string) (*net.UnixConn, *unix.Ucred, error) {
	m, err := mountinfo.Find(mnt)
	if err != nil {
		return nil, nil, err
	}
	if !isOvl(m) {
		return nil, nil, fmt.Errorf("%s is a %s mount, not an ovl mount", mnt, m.FSType)
	}
	name, _ := statsSocket(m)
	c, err := net.DialTimeout("unix", name, statsIOWait)
	if err != nil {
		return nil, nil, fmt.Errorf("no ovl daemon answers for %s: %w", mnt, err)
	}
	conn := c.(*net.UnixConn)
	cred, err := peerCred(conn)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		conn.Close()
		return nil, nil, fmt.Errorf("the stats socket of %s belongs to uid %d, not to root or you", mnt, cred.Uid)
	}
	conn.SetDeadline(time.Now().Add(statsIOWait))
	if _, err := io.WriteString(conn, req); err == nil {
		err = conn.CloseWrite()
	}
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("asking the daemon of %s: %w", mnt, err)
	}
	return conn, cred, nil
}

func query(mnt, req string, reply any) error {
	conn, cred, err := ask(mnt, req)
	if err != nil {
		return err
	}
	defer conn.Close()
	data, err := io.ReadAll(conn)
	if err != nil {
		return fmt.Errorf("reading stats of %s: %w", mnt, err)
	}
	if err := json.Unmarshal(data, reply); err != nil {
		return fmt.Errorf("bad stats from %s: %w", mnt, err)
	}
	// A daemon in another pid namespace reports its own pid number; trust
	// the kernel's view of the peer.
	if cred.Pid != 0 {
		switch r := reply.(type) {
		case *Stats:
			r.Pid = int(cred.Pid)
		case *Info:
			r.Pid = int(cred.Pid)
		}
	}
	return nil
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return cred, nil
}
