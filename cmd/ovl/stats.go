package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/overlay"
)

// statsReply is what a daemon sends on its stats socket.
type statsReply struct {
	Pid int `json:"pid"`
	overlay.Stats
	// The Go heap, from runtime/metrics: what the last collection found
	// live, and all heap objects now (garbage not yet collected included).
	HeapLive    uint64 `json:"go_heap_live_bytes"`
	HeapObjects uint64 `json:"go_heap_objects_bytes"`
	GCCycles    uint64 `json:"go_gc_cycles"`
}

// A client sends a request line and half-closes; "gc" asks for a garbage
// collection first, so that the heap figures show what is still reachable
// (an idle daemon may otherwise not collect for two minutes).
const gcRequest = "gc\n"

func newStatsReply(ov *overlay.Overlay, gc bool) statsReply {
	if gc {
		debug.FreeOSMemory()
	}
	m := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(m)
	r := statsReply{Pid: os.Getpid(), Stats: ov.Stats()}
	for i, p := range []*uint64{&r.HeapLive, &r.HeapObjects, &r.GCCycles} {
		if m[i].Value.Kind() == metrics.KindUint64 {
			*p = m[i].Value.Uint64()
		}
	}
	return r
}

// statsSocket names the abstract unix socket of the daemon serving m. An
// abstract name leaves no file behind and vanishes with the daemon.
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

// serveStats answers every connection on the stats socket of m with one
// JSON reply. A name that cannot be bound is an error the daemon reports:
// without its socket, "ovl stats" and the wait of "ovl umount" would fail
// for the whole life of the mount.
func serveStats(m *mountinfo.Entry, ov *overlay.Overlay) (net.Listener, error) {
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
				var reply any = newStatsReply(ov, string(req) == gcRequest)
				if string(req) == layersRequest {
					reply = newLayersReply(ov.Config()) // for ovl explain
				}
				if err := json.NewEncoder(c).Encode(reply); err != nil {
					log.Printf("stats: %v", err)
				}
			}()
		}
	}()
	return ln, nil
}

// queryDaemon asks the daemon serving mnt for its stats. It checks that the
// socket belongs to root or to the caller, so that another user squatting
// the name cannot pass for the daemon.
// statsIOWait bounds each step of a stats query, on both sides: far above
// what it takes, so that only a hung peer fails it.
const statsIOWait = 60 * time.Second

func queryDaemon(mnt string, gc bool) (*statsReply, []byte, error) {
	m, err := findMount(mnt)
	if err != nil {
		return nil, nil, err
	}
	if m.FSType != "fuse" && !strings.HasPrefix(m.FSType, "fuse.") {
		return nil, nil, fmt.Errorf("%s is a %s mount, not an ovl mount", mnt, m.FSType)
	}
	name, _ := statsSocket(m)
	conn, err := net.DialTimeout("unix", name, statsIOWait)
	if err != nil {
		return nil, nil, fmt.Errorf("no ovl daemon answers for %s: %w", mnt, err)
	}
	defer conn.Close()
	cred, err := peerCred(conn.(*net.UnixConn))
	if err != nil {
		return nil, nil, err
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return nil, nil, fmt.Errorf("the stats socket of %s belongs to uid %d, not to root or you", mnt, cred.Uid)
	}
	conn.SetDeadline(time.Now().Add(statsIOWait))
	req := "\n"
	if gc {
		req = gcRequest
	}
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, nil, fmt.Errorf("asking the daemon of %s: %w", mnt, err)
	}
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		return nil, nil, fmt.Errorf("asking the daemon of %s: %w", mnt, err)
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		return nil, nil, fmt.Errorf("reading stats of %s: %w", mnt, err)
	}
	var r statsReply
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, nil, fmt.Errorf("bad stats from %s: %w", mnt, err)
	}
	if r.Pid != int(cred.Pid) && cred.Pid != 0 {
		// A daemon in another pid namespace reports its own pid number;
		// trust the kernel's view of the peer.
		r.Pid = int(cred.Pid)
	}
	return &r, data, nil
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

// runStats prints the daemon's stats as one JSON object.
func runStats(inv *invocation) error {
	if len(inv.positional) != 1 {
		return fmt.Errorf("usage: ovl stats [--gc] MOUNTPOINT")
	}
	r, _, err := queryDaemon(inv.positional[0], inv.gc)
	if err != nil {
		return err
	}
	out, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
