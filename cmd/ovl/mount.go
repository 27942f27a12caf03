package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ovl-project/ovl"
)

// mountRequest is a checked mount: what to mount where.
type mountRequest struct {
	plan   *ovl.Plan
	source string // the SOURCE of mount.fuse3's and mount(8)'s call forms, or ""
	log    string // absolute, or ""
}

// prepareMount parses and checks a mount command line.
func prepareMount(inv *invocation) (*mountRequest, error) {
	var mnt, source string
	switch len(inv.positional) {
	case 1:
		mnt = inv.positional[0]
	case 2:
		// mount.fuse3 calls "PROG SOURCE MOUNTPOINT -o ...": the source
		// names nothing for an overlay, and becomes the fsname, so that
		// mountinfo shows the fstab's source and "mount -a" knows the
		// line is mounted.
		source, mnt = inv.positional[0], inv.positional[1]
	case 0:
		return nil, usagef("no mountpoint given (usage: ovl mount -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR] MOUNTPOINT)")
	default:
		return nil, usagef("too many arguments: %s", strings.Join(inv.positional, " "))
	}
	plan, err := ovl.Prepare(ovl.Config{Mountpoint: mnt, Options: inv.opts, Source: source, Debug: inv.debug, Daemon: true})
	if err != nil {
		return nil, err
	}
	req := &mountRequest{plan: plan, source: source, log: plan.Log}
	if inv.log != "" {
		if req.log, err = filepath.Abs(inv.log); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// runMount mounts. In the background mode (the default) it starts the
// daemon and returns once the daemon reports the mount ready, as
// containers-storage expects of its mount_program: it waits for this
// command to exit (and for its stderr to close) and then uses the mount.
func runMount(inv *invocation) error {
	if inv.readyFD >= 0 {
		// We are the daemon started by startDaemon: every error, even a
		// parse error, goes to the parent on the pipe.
		ready := os.NewFile(uintptr(inv.readyFD), "ready-pipe")
		req, err := prepareMount(inv)
		if err != nil {
			fmt.Fprintf(ready, "error %s\n", oneLine(err.Error()))
			ready.Close()
			return err
		}
		return runDaemon(req, ready)
	}
	req, err := prepareMount(inv)
	if err != nil {
		return err
	}
	// -d without a log file keeps the daemon in the foreground, so that
	// the debug output has somewhere to go, as libfuse's -d does.
	if inv.foreground || (req.plan.Debug && req.log == "") {
		return runDaemon(req, nil)
	}
	return startDaemon(inv, req)
}

// startDaemon re-executes this binary as the daemon, in a new session so
// it outlives this process and the terminal, and waits on a pipe for the
// daemon's "ready" or its error.
func startDaemon(inv *invocation, req *mountRequest) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding own binary: %w", err)
	}
	args := []string{"mount", "--ready-fd=3"}
	for _, o := range inv.opts {
		args = append(args, "-o", o)
	}
	if inv.debug {
		args = append(args, "-d")
	}
	if inv.log != "" {
		args = append(args, "--log", req.log)
	}
	if req.source != "" {
		args = append(args, "--source", req.source)
	}
	args = append(args, "--", req.plan.Mountpoint)

	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer devNull.Close()
	out := devNull
	if req.log != "" {
		f, err := os.OpenFile(req.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("log file: %w", err)
		}
		defer f.Close()
		out = f
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(self, args...)
	// The daemon's stdio must not be this process's: a caller that waits
	// for our stderr to close (exec.Cmd with a buffer) would hang forever.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devNull, out, out
	cmd.ExtraFiles = []*os.File{w} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("starting the daemon: %w", err)
	}
	w.Close()
	line, err := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSuffix(line, "\n")
	switch {
	case line == "ready":
		return cmd.Process.Release()
	case strings.HasPrefix(line, "error "):
		cmd.Wait()
		return errors.New(strings.TrimPrefix(line, "error "))
	}
	if err != nil && err != io.EOF {
		return fmt.Errorf("reading from the daemon: %w", err)
	}
	werr := cmd.Wait()
	hint := " (see the system log, or give --log FILE)"
	if req.log != "" {
		hint = " (see " + req.log + ")"
	}
	return fmt.Errorf("the daemon exited before the mount was ready: %v%s", werr, hint)
}
