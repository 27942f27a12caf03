package main

// Rootless runs (issue 21, goal 5). Most fuse-overlayfs users run podman
// rootless, where FUSE passthrough is not allowed, so with -rootless the
// bench measures the systems as an unprivileged user: ovl and
// fuse-overlayfs mounting through fusermount3, and the kernel's overlayfs
// with userxattr as root of a user namespace of that user (unshare -Urm),
// the reference. The bench itself stays root (it makes the layers and drops
// the page cache); each run of a rootless system (mount, workload,
// unmount) is this program run again as the user, a worker, which asks its
// parent over an inherited socket to drop the caches. A worker mounts in
// its own mount namespace only for kernel-userns: a FUSE mount made
// through fusermount3 is in the bench's namespace, where an interrupted
// run's leftovers are found and unmounted.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

const (
	workerEnv   = "OVL_BENCH_WORKER"    // the worker's request, as JSON
	dropFdEnv   = "OVL_BENCH_DROP_FD"   // the worker's end of the drop-caches socket
	rootlessDir = "rootless"            // under the work dir: the user's run dir and binaries
	ownerStamp  = ".rootless-owner"     // in a layer set: the uid:gid it was given to
	defaultUser = "ovltest"             // the tests' unprivileged user (cmd/ovl rootless_test.go)
	userShell   = "/usr/sbin/nologin"   // as the tests make it
	setprivPath = "setpriv"             // util-linux
	unsharePath = "unshare"             // util-linux
	fusermount  = "fusermount3"         // fuse3
	workerStage = "rootless worker run" // in errors
)

// rootlessUser is who the rootless systems run as.
type rootlessUser struct {
	name     string
	uid, gid int
}

// lookupRootlessUser returns the user, made as the tests make it if it is
// missing.
func lookupRootlessUser(name string) (*rootlessUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if name != defaultUser {
			return nil, fmt.Errorf("-rootless-user %s: %w", name, err)
		}
		if out, err := exec.Command("useradd", "-M", "-r", "-s", userShell, name).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("useradd %s: %v: %s", name, err, oneLine(string(out)))
		}
		if u, err = user.Lookup(name); err != nil {
			return nil, err
		}
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %s: uid %q gid %q", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("-rootless-user %s is root", name)
	}
	return &rootlessUser{name: name, uid: uid, gid: gid}, nil
}

// setupRootless prepares e for rootless systems: a directory the user owns
// for the runs, and copies of this program and of ovl the user may run
// (go run builds into a directory only root may enter).
func setupRootless(e *env, u *rootlessUser) error {
	e.user = u
	base := filepath.Join(e.workdir, rootlessDir)
	if err := os.MkdirAll(filepath.Join(base, "bin"), 0o755); err != nil {
		return err
	}
	// base is the user's, so that a worker can empty and remove its run
	// dir; bin stays root's.
	for _, p := range []struct {
		path     string
		uid, gid int
	}{{base, u.uid, u.gid}, {filepath.Join(base, "bin"), 0, 0}} {
		if err := os.Chown(p.path, p.uid, p.gid); err != nil {
			return err
		}
		if err := os.Chmod(p.path, 0o755); err != nil {
			return err
		}
	}
	for _, c := range []struct {
		src string
		dst *string
	}{{e.self, &e.userSelf}, {e.ovlBin, &e.userOvl}} {
		dst := filepath.Join(base, "bin", filepath.Base(c.src))
		if err := copyExe(c.src, dst); err != nil {
			return err
		}
		*c.dst = dst
	}
	e.userRunDir = filepath.Join(base, "run")
	return nil
}

func copyExe(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// giveLayers makes a layer set the user's, once: the unprivileged
// systems write to lower files (copy-up) and run git in the repository,
// which needs the files to be the user's, as an image's layers are in a
// rootless podman store.
func giveLayers(e *env, setDir string) error {
	want := fmt.Sprintf("%d:%d", e.user.uid, e.user.gid)
	stamp := filepath.Join(setDir, ownerStamp)
	if b, err := os.ReadFile(stamp); err == nil && string(b) == want {
		return nil
	}
	e.logf("giving %s to %s", setDir, e.user.name)
	if out, err := exec.Command("chown", "-R", "-h", want, setDir).CombinedOutput(); err != nil {
		return fmt.Errorf("chown -R %s %s: %v: %s", want, setDir, err, oneLine(string(out)))
	}
	return os.WriteFile(stamp, []byte(want), 0o644)
}

// workerRequest is what a worker is to do.
type workerRequest struct {
	Probe    bool           `json:"probe,omitempty"`
	Workload string         `json:"workload,omitempty"`
	System   string         `json:"system"`
	SetDir   string         `json:"set_dir,omitempty"`
	Workdir  string         `json:"workdir"`
	RunDir   string         `json:"run_dir"`
	Scale    float64        `json:"scale"`
	Ovl      string         `json:"ovl"`
	OvlOpts  string         `json:"ovl_opts,omitempty"`
	Self     string         `json:"self"`
	Expects  map[string]int `json:"expects,omitempty"`
}

// workerReply is what it did.
type workerReply struct {
	Vals    map[string]float64 `json:"vals,omitempty"`
	Err     string             `json:"error,omitempty"`
	NA      string             `json:"na,omitempty"` // probe: why the system cannot be measured
	Expects map[string]int     `json:"expects,omitempty"`
}

// runRemote runs w (or, with w nil, the probe) on rootless system s in a
// worker as the user, and serves the worker's requests to drop caches
// meanwhile.
func runRemote(e *env, w *workload, s *system, setDir string) (*workerReply, error) {
	// The run dir is the user's; what the last run left (a kernel work
	// dir of mode 000) goes as root.
	if err := os.RemoveAll(e.userRunDir); err != nil {
		return nil, err
	}
	if err := os.Mkdir(e.userRunDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chown(e.userRunDir, e.user.uid, e.user.gid); err != nil {
		return nil, err
	}
	req := workerRequest{Probe: w == nil, System: s.name, SetDir: setDir, Workdir: e.workdir, RunDir: e.userRunDir,
		Scale: e.scale, Ovl: e.userOvl, OvlOpts: e.ovlOpts, Self: e.userSelf, Expects: e.expects}
	if w != nil {
		req.Workload = w.name
	}
	js, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "drop-caches"), os.NewFile(uintptr(fds[1]), "drop-caches-worker")
	defer mine.Close()
	args := []string{fmt.Sprintf("--reuid=%d", e.user.uid), fmt.Sprintf("--regid=%d", e.user.gid), "--init-groups", "--"}
	if s.userns {
		args = append(args, unsharePath, "--user", "--map-root-user", "--mount", "--propagation", "private", "--")
	}
	args = append(args, e.userSelf)
	cmd := exec.Command(setprivPath, args...)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), workerEnv+"="+string(js), dropFdEnv+"=3")
	cmd.ExtraFiles = []*os.File{theirs}
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, e.log
	if err := cmd.Start(); err != nil {
		theirs.Close()
		return nil, fmt.Errorf("%s: %w", workerStage, err)
	}
	theirs.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveDrops(mine)
	}()
	werr := cmd.Wait()
	mine.Close()
	wg.Wait()
	var rep workerReply
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return nil, fmt.Errorf("%s of %s: %v (exit: %v): %q", workerStage, s.name, err, werr, oneLine(stdout.String()))
	}
	for k, v := range rep.Expects {
		e.expects[k] = v
	}
	return &rep, nil
}

// serveDrops drops the page cache whenever the worker asks: one byte, the
// drop_caches level; the answer is one byte, 0 for done.
func serveDrops(c *os.File) {
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		res := byte(0)
		if err := dropCaches(int(b[0])); err != nil {
			res = 1
		}
		if _, err := c.Write([]byte{res}); err != nil {
			return
		}
	}
}

// dropper is a worker's connection to its parent, which drops caches for it.
var dropper struct {
	once sync.Once
	mu   sync.Mutex
	c    net.Conn
	err  error
}

// remoteDrop asks the parent to drop the caches at level; ok is false if
// this process is not a worker.
func remoteDrop(level int) (ok bool, err error) {
	if os.Getenv(dropFdEnv) == "" {
		return false, nil
	}
	dropper.once.Do(func() {
		fd, err := strconv.Atoi(os.Getenv(dropFdEnv))
		if err != nil {
			dropper.err = fmt.Errorf("%s: %w", dropFdEnv, err)
			return
		}
		dropper.c, dropper.err = net.FileConn(os.NewFile(uintptr(fd), "drop-caches"))
	})
	if dropper.err != nil {
		return true, dropper.err
	}
	dropper.mu.Lock()
	defer dropper.mu.Unlock()
	if _, err := dropper.c.Write([]byte{byte(level)}); err != nil {
		return true, fmt.Errorf("asking the bench to drop caches: %w", err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(dropper.c, b); err != nil {
		return true, fmt.Errorf("asking the bench to drop caches: %w", err)
	}
	if b[0] != 0 {
		return true, errors.New("the bench could not drop the caches")
	}
	return true, nil
}

// maybeServeWorker runs the worker's request and exits if this process
// was started as a worker.
func maybeServeWorker() {
	js := os.Getenv(workerEnv)
	if js == "" {
		return
	}
	os.Unsetenv(workerEnv) // not for the programs the workloads run
	var req workerRequest
	var rep workerReply
	if err := json.Unmarshal([]byte(js), &req); err != nil {
		rep.Err = fmt.Sprintf("worker request: %v", err)
	} else {
		rep = serveWorker(&req)
	}
	b, _ := json.Marshal(rep)
	os.Stdout.Write(b)
	os.Exit(0)
}

func serveWorker(req *workerRequest) (rep workerReply) {
	i := slices.IndexFunc(allSystems, func(s *system) bool { return s.name == req.System })
	if i < 0 {
		return workerReply{Err: fmt.Sprintf("no system %q", req.System)}
	}
	s := allSystems[i]
	e := &env{workdir: req.Workdir, runDir: req.RunDir, scale: req.Scale, ovlBin: req.Ovl, ovlOpts: req.OvlOpts,
		self: req.Self, log: os.Stderr, expects: req.Expects}
	if e.expects == nil {
		e.expects = map[string]int{}
	}
	defer func() { rep.Expects = e.expects }()
	if req.Probe {
		// The probe's layers go in the run dir: the work dir is root's.
		e.workdir = e.runDir
		return workerReply{NA: probe(e, s)}
	}
	j := slices.IndexFunc(workloads, func(w *workload) bool { return w.name == req.Workload })
	if j < 0 {
		return workerReply{Err: fmt.Sprintf("no workload %q", req.Workload)}
	}
	vals, err := runOne(e, workloads[j], s, req.SetDir)
	if err != nil {
		return workerReply{Err: err.Error()}
	}
	return workerReply{Vals: vals}
}

// fuseUnmount unmounts a FUSE mount of this user through fusermount3: an
// unprivileged process may not umount(2).
func fuseUnmount(mnt string) error {
	out, err := exec.Command(fusermount, "-u", mnt).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "busy") {
			return unix.EBUSY
		}
		return fmt.Errorf("%s -u %s: %v: %s", fusermount, mnt, err, oneLine(msg))
	}
	return nil
}
