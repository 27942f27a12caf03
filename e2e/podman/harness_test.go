package podman

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/internal/testutil"
)

// cmdTimeout bounds every podman command. It is a backstop for a hung
// command (a mount program that never answers), far above what any step
// takes on a loaded machine.
const cmdTimeout = 5 * time.Minute

// trace (OVL_PODMAN_TRACE=1) prints every command and its time to stderr.
var trace = os.Getenv("OVL_PODMAN_TRACE") != ""

const pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Program names, also the first element of the subtest names.
const (
	progOvl    = "ovl"
	progFuse   = "fuse-overlayfs"
	progKernel = "kernel"
)

// A program is a configuration of the overlay driver: a mount program, or
// none (the kernel's overlayfs).
type program struct {
	name string
	path string // mount_program; "" for the kernel driver
}

// suite is what one run of TestPodman shares between its subtests.
type suite struct {
	base    string // scratch dir, mode 0755 so the test user can reach it
	short   string // parent of the stores' run roots (see newSuite)
	progs   map[string]program
	user    testutil.User
	rootfs  string // the busybox rootfs tar every store imports
	listSh  string // the listing script, for listings made outside a container
	cgroup  string // cgroup parent of the rootful containers, unique to the run
	builds  int    // builds so far, to name their cgroups
	stores  map[string]*store
	results map[string]*outcome // by scenario|program|mode
	table   map[string]string   // status by scenario|program|mode
}

// store is one private podman storage (graph root and configuration).
type store struct {
	s        *suite
	name     string
	rootless bool
	prog     program  // the mount program storage.conf names now
	extra    []string // more lines for [storage.options.overlay]
	dir      string
	graph    string
	tmp      string // libpod's tmp_dir (the rootless pause.pid is there)
	short    string // holds run (the rootful run root) and xdg
	xdg      string // XDG_RUNTIME_DIR of a rootless store (its run root is there)
	images   map[string]error
}

// newSuite checks what the test needs, builds the base image's rootfs and
// registers the cleanup of everything the run makes.
func newSuite(t *testing.T) *suite {
	testutil.RequireRoot(t)
	for _, prog := range []string{"podman", "runc", "conmon", "fuse-overlayfs", "fusermount3", "busybox", "setpriv", "newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(prog); err != nil {
			testutil.Skip(t, "no %s (scripts/test installs it)", prog)
		}
	}
	busybox, _ := exec.LookPath("busybox")
	if err := requireStatic(busybox); err != nil {
		testutil.Skip(t, "%v (install busybox-static)", err)
	}
	base, err := os.MkdirTemp("", "ovl-podman-")
	if err != nil {
		t.Fatal(err)
	}
	s := &suite{
		base:    base,
		cgroup:  fmt.Sprintf("ovl-e2e-%d-%s", os.Getpid(), filepath.Base(base)[len("ovl-podman-"):]),
		stores:  map[string]*store{},
		results: map[string]*outcome{},
		table:   map[string]string{},
	}
	t.Cleanup(func() { s.cleanup(t) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	s.user = testutil.TestUserWithSubIDs(t)
	// podman refuses a run root longer than 50 characters (sockets live
	// there; a rootless podman keeps it in $XDG_RUNTIME_DIR/containers):
	// run roots get a short parent. Past the limit, the container cleanup
	// command conmon runs fails, and every `podman run` waits 20 s for it.
	if s.short, err = os.MkdirTemp("/tmp", "ovlpm-"); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(s.short, 0o755); err != nil {
		t.Fatal(err)
	}

	ovl := os.Getenv("OVL_PODMAN_OVL")
	if ovl == "" {
		ovl = testutil.Binary(t)
	}
	// The build dir is private (0700): copy the binary where the test user
	// can run it.
	s.progs = map[string]program{
		progOvl:    {progOvl, filepath.Join(base, "ovl")},
		progFuse:   {progFuse, mustLookPath(t, "fuse-overlayfs")},
		progKernel: {progKernel, ""},
	}
	if err := copyFile(ovl, s.progs[progOvl].path, 0o755); err != nil {
		t.Fatal(err)
	}
	s.rootfs = filepath.Join(base, "rootfs.tar")
	if err := makeRootfs(t, busybox, filepath.Join(base, "rootfs"), s.rootfs); err != nil {
		t.Fatal(err)
	}
	s.listSh = filepath.Join(base, "list.sh")
	if err := os.WriteFile(s.listSh, []byte(listFn+`view "$1" "$2"`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, text := range containerfiles {
		dir := filepath.Join(base, "ctx-"+name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "Containerfile"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func mustLookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// requireStatic checks that path is a statically linked ELF: it is copied
// into an image that has no libc.
func requireStatic(path string) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	f, err := elf.Open(real)
	if err != nil {
		return fmt.Errorf("busybox %s: %w", real, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s is dynamically linked", real)
		}
	}
	return nil
}

func copyFile(from, to string, mode os.FileMode) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, mode)
}

// makeRootfs makes a minimal root filesystem: busybox with a link per applet
// in /bin, passwd and group, /tmp; and packs it with tar.
func makeRootfs(t *testing.T, busybox, dir, tarPath string) error {
	for _, d := range []string{"bin", "etc", "root", "tmp", "dev", "proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := copyFile(busybox, filepath.Join(dir, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":  "root:x:0:\nnobody:x:65534:\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	if out, err := exec.Command("tar", "--numeric-owner", "--owner=0", "--group=0", "-C", dir, "-cf", tarPath, ".").CombinedOutput(); err != nil {
		return fmt.Errorf("tar: %v: %s", err, out)
	}
	return os.Chmod(tarPath, 0o644)
}

// store returns the store named kind for the program and mode, making it on
// first use.
func (s *suite) store(kind string, prog program, rootless bool, extra ...string) (*store, error) {
	name := fmt.Sprintf("%s-%s-%s", kind, prog.name, modeName(rootless))
	if st := s.stores[name]; st != nil {
		return st, nil
	}
	dir := filepath.Join(s.base, name)
	st := &store{
		s: s, name: name, rootless: rootless, prog: prog, extra: extra,
		dir: dir, graph: filepath.Join(dir, "graph"), tmp: filepath.Join(dir, "tmp"),
		short:  filepath.Join(s.short, strconv.Itoa(len(s.stores))),
		images: map[string]error{},
	}
	st.xdg = filepath.Join(st.short, "xdg")
	s.stores[name] = st // cleaned up even if it is only half made
	for _, p := range []string{dir, st.graph, st.tmp, filepath.Join(dir, "tmpdir"), filepath.Join(dir, "cni"),
		filepath.Join(dir, "home"), st.short, filepath.Join(st.short, "run"), st.xdg} {
		if err := os.Mkdir(p, 0o700); err != nil {
			return nil, fmt.Errorf("store %s: %w", name, err)
		}
		if rootless {
			if err := os.Chown(p, s.user.UID, s.user.GID); err != nil {
				return nil, fmt.Errorf("store %s: %w", name, err)
			}
		}
	}
	if err := st.writeConf(); err != nil {
		return nil, fmt.Errorf("store %s: %w", name, err)
	}
	return st, nil
}

func modeName(rootless bool) string {
	if rootless {
		return "rootless"
	}
	return "rootful"
}

// writeConf writes the store's configuration files; a switch of mount
// program rewrites storage.conf.
func (st *store) writeConf() error {
	var sc strings.Builder
	fmt.Fprintf(&sc, "[storage]\ndriver = %q\nrunroot = %q\ngraphroot = %q\n", "overlay", filepath.Join(st.short, "run"), st.graph)
	// A rootless podman ignores graphroot: it reads this one.
	fmt.Fprintf(&sc, "rootless_storage_path = %q\n", st.graph)
	sc.WriteString("\n[storage.options.overlay]\n")
	if st.prog.path != "" {
		fmt.Fprintf(&sc, "mount_program = %q\n", st.prog.path)
	}
	for _, l := range st.extra {
		sc.WriteString(l + "\n")
	}
	// The workarounds of ../shared/podman-notes.md: no CAP_SYS_RESOURCE (the
	// ulimits), hybrid cgroup v1 (runc, cgroupfs, no-conmon), no usable
	// network (netns none).
	cc := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
cgroups = "no-conmon"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
tmp_dir = %q
events_logger = "file"
events_logfile_path = %q

[network]
network_config_dir = %q
`, st.tmp, filepath.Join(st.dir, "events.log"), filepath.Join(st.dir, "cni"))
	files := map[string]string{
		"storage.conf":    sc.String(),
		"containers.conf": cc,
		"registries.conf": "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
	}
	for name, text := range files {
		p := filepath.Join(st.dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (st *store) env() []string {
	env := []string{
		pathEnv,
		"LC_ALL=C",
		"HOME=" + filepath.Join(st.dir, "home"),
		"TMPDIR=" + filepath.Join(st.dir, "tmpdir"),
		"CONTAINERS_STORAGE_CONF=" + filepath.Join(st.dir, "storage.conf"),
		"CONTAINERS_CONF=" + filepath.Join(st.dir, "containers.conf"),
		"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(st.dir, "registries.conf"),
	}
	if st.rootless {
		env = append(env, "XDG_RUNTIME_DIR="+st.xdg, "USER="+st.s.user.Name, "LOGNAME="+st.s.user.Name)
	}
	return env
}

// podman runs podman on the store. Rootful containers and builds get the
// run's cgroup parent.
func (st *store) podman(args ...string) (string, error) {
	if !st.rootless && len(args) > 0 && slices.Contains([]string{"run", "create", "build"}, args[0]) {
		parent := "/" + st.s.cgroup
		if args[0] == "build" {
			// buildah puts RUN containers into the parent cgroup itself, and
			// runc cannot set the devices rules of a v1 cgroup that has
			// children: give each build a leaf of its own.
			st.s.builds++
			parent += fmt.Sprintf("/build-%d", st.s.builds)
		}
		args = slices.Insert(args, 1, "--cgroup-parent="+parent)
	}
	return st.exec(append([]string{"podman"}, args...)...)
}

// exec runs argv with the store's environment, as the test user for a
// rootless store, in a process group killed whole at the timeout. The error
// holds the command, its stderr and the end of its stdout.
func (st *store) exec(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	full := argv
	if st.rootless {
		u := st.s.user
		full = append([]string{"setpriv", "--reuid=" + strconv.Itoa(u.UID), "--regid=" + strconv.Itoa(u.GID), "--init-groups", "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.Env = st.env()
	cmd.Dir = st.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A daemon that keeps the output pipes open must not hold the test.
	cmd.WaitDelay = time.Minute
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if trace {
		fmt.Fprintf(os.Stderr, "podman e2e: %s: %v (%v)\n", shortCmd(argv), err, time.Since(start).Round(time.Millisecond))
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", cmdTimeout, err)
	}
	if err != nil {
		// containers-storage puts the mount program's message at the end of
		// a long line: show it first.
		said := ""
		if _, msg, ok := strings.Cut(stderr.String(), "using mount program "); ok {
			msg, _, _ = strings.Cut(msg, "\n")
			said = "\nmount program: " + msg
		}
		return stdout.String(), fmt.Errorf("%s: %w%s\nstderr:\n%s\nstdout (end):\n%s",
			shortCmd(argv), err, said, tail(stderr.String(), 40), tail(stdout.String(), 20))
	}
	return stdout.String(), nil
}

// shortCmd shows a command without the long scripts it passes.
func shortCmd(argv []string) string {
	var b []string
	for _, a := range argv {
		if len(a) > 60 || strings.Contains(a, "\n") {
			a, _, _ = strings.Cut(a, "\n")
			a = a[:min(len(a), 40)] + "…"
		}
		b = append(b, a)
	}
	return strings.Join(b, " ")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"…"}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// image makes sure the store has the named image: "base" imported from the
// rootfs tar, the others built from containerfiles. A failure is kept: every
// later use reports it.
func (st *store) image(name string) (string, error) {
	ref := imageRef(name)
	if err, done := st.images[name]; done {
		return ref, err
	}
	var err error
	if name == "base" {
		_, err = st.podman("import", "--quiet", st.s.rootfs, ref)
	} else {
		from := strings.Fields(strings.SplitN(containerfiles[name], "\n", 2)[0])
		if len(from) == 2 && from[0] == "FROM" {
			// A parent image of this suite: build it first.
			parent := strings.TrimSuffix(strings.TrimPrefix(from[1], "localhost/e2e/"), ":1")
			if _, err := st.image(parent); err != nil {
				st.images[name] = fmt.Errorf("parent image %s: %w", parent, err)
				return ref, st.images[name]
			}
		}
		ctx := filepath.Join(st.s.base, "ctx-"+name)
		_, err = st.podman("build", "--network=none", "--pull=never", "-t", ref, ctx)
	}
	if err != nil {
		err = fmt.Errorf("image %s on %s: %w", name, st.name, err)
	}
	st.images[name] = err
	return ref, err
}

func imageRef(name string) string { return "localhost/e2e/" + name + ":1" }

// cleanup ends and removes everything the run made: podman's own teardown
// first, then what it left behind.
func (s *suite) cleanup(t *testing.T) {
	for _, name := range slices.Sorted(maps.Keys(s.stores)) {
		s.stores[name].cleanup(t)
	}
	s.removeCgroups(t)
	for _, d := range []string{s.base, s.short} {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

func (st *store) cleanup(t *testing.T) {
	pause := readPid(filepath.Join(st.tmp, "pause.pid"))
	if _, err := os.Stat(filepath.Join(st.dir, "storage.conf")); err == nil {
		if _, err := st.podman("rm", "--all", "--force", "--time=0"); err != nil {
			t.Logf("cleanup %s: %v", st.name, err)
		}
		if _, err := st.podman("system", "reset", "--force"); err != nil {
			t.Logf("cleanup %s: %v", st.name, err)
		}
	}
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		root, _ := os.Readlink(filepath.Join("/proc", p.Name(), "root"))
		// Daemons name the graph root in their argv (mount programs, conmon);
		// container processes have a root under it.
		if bytes.Contains(cmdline, []byte(st.graph)) || strings.HasPrefix(root, st.dir+"/") {
			pids = append(pids, pid)
		}
	}
	if pause > 0 && st.rootless && ownedBy(pause, st.s.user.UID) {
		pids = append(pids, pause)
	}
	for _, pid := range pids {
		if pid == pause {
			t.Logf("cleanup %s: killing the rootless pause process %d", st.name, pid)
		} else {
			t.Logf("cleanup %s: killing leftover process %d", st.name, pid)
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		waitGone(pid)
	}
	st.unmountAll(t)
	for _, d := range []string{st.dir, st.short} {
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("cleanup %s: %v", st.name, err)
		}
	}
}

func readPid(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

func ownedBy(pid, uid int) bool {
	var st syscall.Stat_t
	return syscall.Stat(fmt.Sprintf("/proc/%d", pid), &st) == nil && int(st.Uid) == uid
}

// waitGone waits, by count, for a killed process to be reaped by its
// parent (or init).
func waitGone(pid int) {
	for range 600 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := bytes.LastIndexByte(data, ')'); i > 0 && i+2 < len(data) && data[i+2] == 'Z' {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// unmountAll detaches every mount under the store's dir, the deepest
// first.
func (st *store) unmountAll(t *testing.T) {
	entries, err := mountinfo.Read()
	if err != nil {
		t.Errorf("cleanup %s: %v", st.name, err)
		return
	}
	var mps []string
	for _, e := range entries {
		if under(e.MountPoint, st.dir) || under(e.MountPoint, st.short) {
			mps = append(mps, e.MountPoint)
		}
	}
	slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range mps {
		t.Logf("cleanup %s: unmounting leftover %s", st.name, mp)
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			t.Errorf("cleanup %s: unmount %s: %v", st.name, mp, err)
		}
	}
}

// removeCgroups removes the run's cgroup parent from every hierarchy, the
// deepest dirs first, killing what is still in them (only processes of
// this run are).
func (s *suite) removeCgroups(t *testing.T) {
	hier, _ := filepath.Glob("/sys/fs/cgroup/*/" + s.cgroup)
	if top := "/sys/fs/cgroup/" + s.cgroup; isDir(top) {
		hier = append(hier, top)
	}
	for _, top := range hier {
		var dirs []string
		filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			var err error
			for range 100 {
				if data, _ := os.ReadFile(filepath.Join(d, "cgroup.procs")); len(data) > 0 {
					for _, f := range strings.Fields(string(data)) {
						if pid, _ := strconv.Atoi(f); pid > 0 {
							syscall.Kill(pid, syscall.SIGKILL)
						}
					}
				}
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Errorf("cleanup: remove cgroup %s: %v", d, err)
			}
		}
	}
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
