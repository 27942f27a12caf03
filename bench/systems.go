package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/mountinfo"
)

// A system is one way to present a stack of layers at a mountpoint.
type system struct {
	name string
	// fstype is what /proc/self/mountinfo must show for the mount, so that
	// a harness slip cannot time one system under another's name. Empty
	// for plain, a bind mount of whatever holds the work dir.
	fstype string
	// flat: the system serves the flattened copy, not the layers.
	flat bool
	// daemon: a FUSE server process serves the mount.
	daemon bool
	// command is the command that mounts l; it returns once the mount is
	// ready, except for loopback, which serves in the foreground.
	command func(e *env, l layout) *exec.Cmd
	// foreground: the command is the server and runs until the unmount.
	foreground bool
	// rootless: the system runs as the unprivileged user (rootless.go);
	// userns: as root of that user's namespace, in a mount namespace of
	// its own. kind is the system it is a rootless run of ("" for none).
	rootless, userns bool
	kind             string
	// optIn: measured only when -systems names it.
	optIn bool
}

// is reports whether s is the system named kind, or a rootless run of it.
func (s *system) is(kind string) bool { return s.name == kind || s.kind == kind }

// layout is where one mount of a system gets its layers and is mounted.
type layout struct {
	lowers      []string // topmost first
	flat        string   // the lowers flattened into one directory
	upper, work string
	mnt         string
}

func (l layout) overlayOpts() string {
	return "lowerdir=" + strings.Join(l.lowers, ":") + ",upperdir=" + l.upper + ",workdir=" + l.work
}

// allSystems lists the systems in the table's column order.
var allSystems = []*system{
	{name: "plain", command: func(e *env, l layout) *exec.Cmd {
		return exec.Command("mount", "--bind", l.flat, l.mnt)
	}, flat: true},
	{name: "kernel", fstype: "overlay", command: func(e *env, l layout) *exec.Cmd {
		return exec.Command("mount", "-t", "overlay", "overlay", "-o", l.overlayOpts(), l.mnt)
	}},
	{name: "kernel-volatile", fstype: "overlay", command: func(e *env, l layout) *exec.Cmd {
		return exec.Command("mount", "-t", "overlay", "overlay", "-o", l.overlayOpts()+",volatile", l.mnt)
	}},
	{name: "fuse-overlayfs", fstype: "fuse.fuse-overlayfs", daemon: true, command: func(e *env, l layout) *exec.Cmd {
		return exec.Command("fuse-overlayfs", "-o", l.overlayOpts(), l.mnt)
	}},
	{name: "loopback", fstype: "fuse." + loopbackName, daemon: true, flat: true, foreground: true,
		command: func(e *env, l layout) *exec.Cmd {
			cmd := exec.Command(e.self)
			cmd.Env = append(os.Environ(), loopbackEnv+"="+l.flat, loopbackMntEnv+"="+l.mnt)
			return cmd
		}},
	{name: "ovl", fstype: "fuse.ovl", daemon: true, command: ovlCommand},

	// The rootless systems (-rootless).
	{name: "kernel-userns", kind: "kernel", fstype: "overlay", rootless: true, userns: true, command: func(e *env, l layout) *exec.Cmd {
		return exec.Command("mount", "-t", "overlay", "overlay", "-o", l.overlayOpts()+",userxattr", l.mnt)
	}},
	{name: "fuse-overlayfs-rootless", kind: "fuse-overlayfs", fstype: "fuse.fuse-overlayfs", daemon: true, rootless: true,
		command: func(e *env, l layout) *exec.Cmd {
			return exec.Command("fuse-overlayfs", "-o", l.overlayOpts(), l.mnt)
		}},
	{name: "ovl-rootless", kind: "ovl", fstype: "fuse.ovl", daemon: true, rootless: true, command: ovlCommand},

	// ovl served through FUSE over io_uring (issue 21 goal 6); the bench
	// sets the fuse module's enable_uring=Y while it runs (setUring).
	{name: "ovl-uring", kind: "ovl", fstype: "fuse.ovl", daemon: true, optIn: true, command: func(e *env, l layout) *exec.Cmd {
		return ovlWith(e, l, ",fuse_uring=on")
	}},
}

func ovlCommand(e *env, l layout) *exec.Cmd { return ovlWith(e, l, "") }

// ovlWith mounts ovl with extra options after the layers.
func ovlWith(e *env, l layout, extra string) *exec.Cmd {
	opts := l.overlayOpts() + extra
	if e.ovlOpts != "" {
		opts += "," + e.ovlOpts
	}
	return exec.Command(e.ovlBin, "mount", "-o", opts, l.mnt)
}

const enableUringParam = "/sys/module/fuse/parameters/enable_uring"

// setUring sets the fuse module's enable_uring=Y when ovl-uring is
// measured (it only lets servers that ask use io_uring) and returns what
// puts the old value back.
func setUring(e *env, sel []*system) func() {
	if !slices.ContainsFunc(sel, func(s *system) bool { return s.name == "ovl-uring" }) {
		return func() {}
	}
	old, err := os.ReadFile(enableUringParam)
	if err != nil {
		fmt.Fprintf(e.log, "bench: ovl-uring: no %s (%v): it runs on /dev/fuse\n", enableUringParam, err)
		return func() {}
	}
	if err := os.WriteFile(enableUringParam, []byte("Y"), 0); err != nil {
		fmt.Fprintf(e.log, "bench: ovl-uring: set %s: %v\n", enableUringParam, err)
		return func() {}
	}
	fmt.Fprintf(e.log, "bench: set %s=Y (was %s) for ovl-uring; restored at the end\n", enableUringParam, strings.TrimSpace(string(old)))
	return func() { os.WriteFile(enableUringParam, bytes.TrimSpace(old), 0) }
}

// mounted is one live mount.
type mounted struct {
	sys  *system
	l    layout
	took time.Duration // from exec to the mount being in mountinfo
	pid  int           // the serving daemon, 0 if none
	cmd  *exec.Cmd     // the foreground server
	done chan error    // the foreground server's exit
	out  *output       // the foreground server's output
}

// mount mounts l with s and checks that the mount is what s claims to be.
func mount(e *env, s *system, l layout) (*mounted, error) {
	for _, d := range []string{l.upper, l.work, l.mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	cmd := s.command(e, l)
	out := newOutput()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir = "/" // a server must not keep a directory busy
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	m := &mounted{sys: s, l: l}
	for !isMounted(l.mnt) {
		select {
		case err := <-done:
			if !isMounted(l.mnt) {
				return nil, fmt.Errorf("%s: %s exited (%v) without mounting: %s", s.name, cmd.Path, err, oneLine(out.String()))
			}
			done <- err // for the checks below
		case <-time.After(200 * time.Microsecond):
		}
	}
	// A FUSE mount is in mountinfo before its server answers: the stat
	// waits for that.
	var st unix.Stat_t
	serr := unix.Stat(l.mnt, &st)
	m.took = time.Since(start)
	fail := func(err error) (*mounted, error) {
		if s.rootless && !s.userns {
			exec.Command(fusermount, "-u", "-z", l.mnt).Run()
		}
		unix.Unmount(l.mnt, unix.MNT_DETACH)
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	if serr != nil {
		return fail(fmt.Errorf("stat %s: %w", l.mnt, serr))
	}
	if s.foreground {
		// Wait for the server to say that its mount call is done, so that
		// an unmount cannot catch it halfway.
		m.cmd, m.done, m.pid, m.out = cmd, done, cmd.Process.Pid, out
		select {
		case <-out.ready:
		case err := <-done:
			done <- err
			return fail(fmt.Errorf("%s exited (%v): %s", cmd.Path, err, oneLine(out.String())))
		case <-time.After(serverWait):
			return fail(fmt.Errorf("%s is not ready after %v: %s", cmd.Path, serverWait, oneLine(out.String())))
		}
	} else if err := <-done; err != nil {
		return fail(fmt.Errorf("%s: %v: %s", cmd.Path, err, oneLine(out.String())))
	}
	if err := checkFsType(s, l.mnt); err != nil {
		return fail(err)
	}
	if s.daemon && m.pid == 0 {
		pid, err := daemonPid(e, s, l.mnt)
		if err != nil {
			return fail(err)
		}
		m.pid = pid
	}
	return m, nil
}

// unmount unmounts m and waits for its daemon to exit, so that nothing of
// one run is still working during the next.
func (m *mounted) unmount(e *env) error {
	pidfd := -1
	if m.pid != 0 && m.cmd == nil {
		if fd, err := unix.PidfdOpen(m.pid, 0); err == nil {
			pidfd = fd
			defer unix.Close(fd)
		}
	}
	var err error
	for i := 0; i < 100; i++ {
		if m.sys.rootless && !m.sys.userns {
			err = fuseUnmount(m.l.mnt)
		} else {
			err = unix.Unmount(m.l.mnt, 0)
		}
		if err != unix.EBUSY {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		if m.sys.rootless && !m.sys.userns {
			exec.Command(fusermount, "-u", "-z", m.l.mnt).Run()
		}
		unix.Unmount(m.l.mnt, unix.MNT_DETACH)
		return fmt.Errorf("umount %s (%s): %w", m.l.mnt, m.sys.name, err)
	}
	if m.cmd != nil {
		select {
		case err := <-m.done:
			if err != nil {
				return fmt.Errorf("%s server: %w: %s", m.sys.name, err, oneLine(m.out.String()))
			}
		case <-time.After(serverWait):
			m.cmd.Process.Kill()
			return fmt.Errorf("%s server still running %v after umount", m.sys.name, serverWait)
		}
	}
	if pidfd >= 0 {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for deadline := time.Now().Add(serverWait); ; {
			n, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds()))
			if n > 0 {
				break
			}
			if err != unix.EINTR && time.Now().After(deadline) {
				return fmt.Errorf("%s daemon %d still running %v after umount", m.sys.name, m.pid, serverWait)
			}
		}
	}
	return nil
}

// serverWait bounds the wait for a server to be ready or to exit: far
// above what it takes, even on a loaded machine (CI runs on two busy
// cores), so that only a hung server fails.
const serverWait = 120 * time.Second

// lookupMount returns the topmost mount at mnt.
func lookupMount(mnt string) (mountinfo.Entry, bool) {
	tab, err := mountinfo.Read()
	if err != nil {
		return mountinfo.Entry{}, false
	}
	for i := len(tab) - 1; i >= 0; i-- {
		if tab[i].MountPoint == mnt {
			return tab[i], true
		}
	}
	return mountinfo.Entry{}, false
}

func isMounted(mnt string) bool {
	_, ok := lookupMount(mnt)
	return ok
}

func checkFsType(s *system, mnt string) error {
	me, ok := lookupMount(mnt)
	if !ok {
		return fmt.Errorf("%s is not in /proc/self/mountinfo", mnt)
	}
	if s.fstype == "" {
		if me.FSType == "overlay" || strings.HasPrefix(me.FSType, "fuse") {
			return fmt.Errorf("%s is of type %s, want a plain filesystem", mnt, me.FSType)
		}
		return nil
	}
	if me.FSType != s.fstype {
		return fmt.Errorf("%s is of type %s, want %s", mnt, me.FSType, s.fstype)
	}
	return nil
}

// daemonPid finds the process serving mnt: the process with mnt among its
// arguments. (Not ovl's stats socket: it is named after the FUSE device
// number, which a daemon of an earlier mount may still hold while it
// exits, and this pid is what unmount waits for.)
func daemonPid(e *env, s *system, mnt string) (int, error) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for _, a := range args[1:] {
			if a == mnt {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
				if pid != os.Getpid() {
					return pid, nil
				}
			}
		}
	}
	return 0, fmt.Errorf("no process serves %s", mnt)
}

// ovlStats runs "ovl stats [--gc] mnt": its numeric fields, and its
// request counts under "requests."+OPCODE.
func ovlStats(e *env, mnt string, gc bool) (map[string]float64, error) {
	args := []string{"stats", mnt}
	if gc {
		args = []string{"stats", "--gc", mnt}
	}
	out, err := exec.Command(e.ovlBin, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, oneLine(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("ovl stats %s: %w", mnt, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("ovl stats %s: %w in %q", mnt, err, out)
	}
	st := map[string]float64{}
	for k, v := range raw {
		var f float64
		if json.Unmarshal(v, &f) == nil {
			st[k] = f
		}
	}
	if r, ok := raw["requests"]; ok {
		var reqs map[string]float64
		if err := json.Unmarshal(r, &reqs); err != nil {
			return nil, fmt.Errorf("ovl stats %s: requests: %w", mnt, err)
		}
		for op, n := range reqs {
			st["requests."+op] = n
		}
	}
	return st, nil
}

// procStatus reads a "Key: N kB" field of /proc/PID/status, in bytes.
func procStatus(pid int, key string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, key)
}

// cleanMounts unmounts whatever an earlier, interrupted run left under dir,
// deepest first.
func cleanMounts(dir string) {
	tab, _ := mountinfo.Read()
	for i := len(tab) - 1; i >= 0; i-- {
		if strings.HasPrefix(tab[i].MountPoint, dir+"/") {
			unix.Unmount(tab[i].MountPoint, unix.MNT_DETACH)
		}
	}
}

// output collects a command's output and notices the line "ready", which
// the loopback server prints once it serves.
type output struct {
	mu    sync.Mutex
	b     bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func newOutput() *output { return &output{ready: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Write(p)
	if bytes.Contains(o.b.Bytes(), []byte("ready\n")) {
		o.once.Do(func() { close(o.ready) })
	}
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
