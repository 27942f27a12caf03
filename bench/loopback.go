package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ovl-project/ovl/internal/fusecount"
)

// The loopback system is this program run again with these variables set:
// a plain go-fuse loopback of a directory, the floor for any FUSE
// filesystem. It takes ovl's caching choices (one-second entry and attribute
// timeouts, 1 MiB writes, direct mount as root) so that the two differ only
// in what the overlay does. It counts its requests as ovl does
// (internal/fusecount) and answers each connection to loopbackSocket(pid)
// with them, as JSON {"requests": {OPCODE: n}}.
const (
	loopbackEnv    = "OVL_BENCH_LOOPBACK"     // the directory to serve
	loopbackMntEnv = "OVL_BENCH_LOOPBACK_MNT" // where
	loopbackName   = "bench-loopback"         // fuse.NAME in mountinfo
)

// loopbackSocket is the abstract socket of the loopback server with pid.
func loopbackSocket(pid int) string { return fmt.Sprintf("@ovl-bench-loopback/%d", pid) }

// serveLoopback serves until the mount is unmounted.
func serveLoopback(src, mnt string) error {
	root, err := fs.NewLoopbackRoot(src)
	if err != nil {
		return err
	}
	sec := time.Second
	mo := fuse.MountOptions{
		FsName:            src,
		Name:              loopbackName,
		AllowOther:        true,
		MaxWrite:          1 << 20,
		DirectMountStrict: true,
		DirectMountFlags:  syscall.MS_MGC_VAL,
		Options:           []string{"default_permissions"},
	}
	var reqs fusecount.Counts
	raw := fusecount.Wrap(fs.NewNodeFS(root, &fs.Options{
		EntryTimeout:    &sec,
		AttrTimeout:     &sec,
		NegativeTimeout: &sec,
		MountOptions:    mo,
	}), &reqs)
	ln, err := net.Listen("unix", loopbackSocket(os.Getpid()))
	if err != nil {
		return fmt.Errorf("loopback counter socket: %w", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			json.NewEncoder(c).Encode(map[string]any{"requests": reqs.Snapshot()})
			c.Close()
		}
	}()
	srv, err := fuse.NewServer(raw, mnt, &mo)
	if err != nil {
		return fmt.Errorf("loopback mount %s: %w", mnt, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return fmt.Errorf("loopback mount %s: %w", mnt, err)
	}
	fmt.Println("ready")
	srv.Wait()
	return nil
}

// loopbackRequests asks the loopback server with pid for its counts.
func loopbackRequests(pid int) (map[string]float64, error) {
	c, err := net.DialTimeout("unix", loopbackSocket(pid), serverWait)
	if err != nil {
		return nil, fmt.Errorf("loopback counters: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(serverWait))
	var r struct {
		Requests map[string]float64 `json:"requests"`
	}
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		return nil, fmt.Errorf("loopback counters: %w", err)
	}
	return r.Requests, nil
}

// maybeServeLoopback runs the loopback server and exits if this process
// was started as one.
func maybeServeLoopback() {
	src := os.Getenv(loopbackEnv)
	if src == "" {
		return
	}
	if err := serveLoopback(src, os.Getenv(loopbackMntEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "bench loopback:", err)
		os.Exit(1)
	}
	os.Exit(0)
}
