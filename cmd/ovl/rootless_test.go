package main

// Rootless mounts (issue 18, item 4): without the privilege that trusted.*
// xattrs need, ovl picks user.overlay.* by itself and leaves FUSE
// passthrough out. Each scenario runs in a private mount namespace of its
// own (unshare -m), so that no other namespace on the machine (another
// user's rootless podman, say) keeps a copy of a mount and its daemon
// alive.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// nsEnv is a scratch tree that an unprivileged user can reach: base (mode
// 0755, owned by the user) holds copies of ovl and of this test binary in
// bin/, and the scenario's layers. Its scripts run in private mount
// namespaces (script).
type nsEnv struct {
	t        *testing.T
	base     string
	uid, gid int
	user     string
	bin      string // ovl
	self     string // this test binary
}

// nsUser returns the unprivileged test user, made if missing.
func nsUser(t *testing.T) *user.User {
	t.Helper()
	const name = "ovltest"
	u, err := user.Lookup(name)
	if err != nil {
		if out, err := exec.Command("useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd: %v: %s", err, out)
		}
		if u, err = user.Lookup(name); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

func newNSEnv(t *testing.T) *nsEnv {
	t.Helper()
	testutil.RequireRoot(t)
	for _, prog := range []string{"fusermount3", "setpriv", "unshare"} {
		if _, err := exec.LookPath(prog); err != nil {
			testutil.Skip(t, "no %s (scripts/test installs it)", prog)
		}
	}
	u := nsUser(t)
	e := &nsEnv{t: t, user: u.Username}
	e.uid, _ = strconv.Atoi(u.Uid)
	e.gid, _ = strconv.Atoi(u.Gid)
	base, err := os.MkdirTemp("", "ovl-ns-")
	if err != nil {
		t.Fatal(err)
	}
	e.base = base
	t.Cleanup(func() { os.RemoveAll(base) })
	// Registered after RemoveAll, so it runs first.
	t.Cleanup(func() { nsKillLeftovers(t, base) })
	os.Chmod(base, 0o755)
	os.Chown(base, e.uid, e.gid)
	os.Mkdir(filepath.Join(base, "bin"), 0o755)
	e.bin = filepath.Join(base, "bin/ovl")
	cliCopyFile(t, testutil.Binary(t), e.bin, 0o755)
	e.self = filepath.Join(base, "bin/ovl.test")
	cliCopyFile(t, os.Args[0], e.self, 0o755)
	return e
}

// nsKillLeftovers ends the daemons a failed scenario left behind: the
// processes that run this test's copy of ovl.
func nsKillLeftovers(t *testing.T, base string) {
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || !strings.HasPrefix(exe, base+"/") {
			continue
		}
		t.Logf("killing leftover process %d (%s)", pid, exe)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// path is a path under base.
func (e *nsEnv) path(rel string) string { return filepath.Join(e.base, rel) }

// mkdirs makes directories under base owned by the user.
func (e *nsEnv) mkdirs(rels ...string) {
	for _, rel := range rels {
		if err := os.MkdirAll(e.path(rel), 0o755); err != nil {
			e.t.Fatal(err)
		}
		for p := rel; p != "."; p = filepath.Dir(p) {
			os.Chown(e.path(p), e.uid, e.gid)
		}
	}
}

// write makes a file under base owned by the user.
func (e *nsEnv) write(rel, data string) {
	if err := os.WriteFile(e.path(rel), []byte(data), 0o644); err != nil {
		e.t.Fatal(err)
	}
	os.Chown(e.path(rel), e.uid, e.gid)
}

// script runs a shell script as root in a private mount namespace, in base,
// with $OVL (ovl), $SNAP (prints a snapshot of a directory: $SNAP DIR FILE)
// and $AS_USER (runs a command as the user) set. It fails the test with
// the output if the script fails.
func (e *nsEnv) script(script string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-euc", script)
	cmd.Dir = e.base
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + e.base,
		"OVL=" + e.bin,
		"SNAP=" + e.self + " -test.run=^TestRLSnapshotHelper$ -test.count=1 --",
		fmt.Sprintf("AS_USER=setpriv --reuid=%d --regid=%d --init-groups --", e.uid, e.gid),
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		e.t.Fatalf("script timed out after 300s:\n%s", out)
	}
	if err != nil {
		e.t.Fatalf("script: %v\n%s", err, out)
	}
	return string(out)
}

// snapshot reads a snapshot file written by $SNAP.
func (e *nsEnv) snapshot(rel string) *kernelcmp.Tree {
	e.t.Helper()
	b, err := os.ReadFile(e.path(rel))
	if err != nil {
		e.t.Fatal(err)
	}
	var tr kernelcmp.Tree
	if err := json.Unmarshal(b, &tr); err != nil {
		e.t.Fatalf("%s: %v", rel, err)
	}
	return &tr
}

// TestRLSnapshotHelper is not a test: run with arguments DIR FILE after
// "--", it writes a snapshot of DIR's tree to FILE as JSON. The scenarios
// run it inside their namespaces, as whoever may enter the mount.
func TestRLSnapshotHelper(t *testing.T) {
	args := flagArgs()
	if len(args) != 2 {
		return
	}
	tr, err := kernelcmp.Snapshot(args[0], kernelcmp.SnapOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot:", err)
		os.Exit(1)
	}
	b, _ := json.Marshal(tr)
	if err := os.WriteFile(args[1], b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// flagArgs returns the arguments after "--" on the test binary's command line.
func flagArgs() []string {
	for i, a := range os.Args {
		if a == "--" {
			return os.Args[i+1:]
		}
	}
	return nil
}

// rlLayers makes the layers of the scenarios: one lower l, upper u, work w,
// mountpoint m, and a mountpoint km for the kernel's overlayfs.
func (e *nsEnv) rlLayers() {
	e.mkdirs("l/d/sub", "l/e", "u", "w", "m", "km")
	e.write("l/a", "a\n")
	e.write("l/keep", "keep\n")
	e.write("l/d/x", "x\n")
	e.write("l/d/sub/y", "y\n")
	e.write("l/e/z", "z\n")
	if err := os.Symlink("keep", e.path("l/ln")); err != nil {
		e.t.Fatal(err)
	}
	os.Lchown(e.path("l/ln"), e.uid, e.gid)
}

// rlOps changes the merged view at m: a whiteout, an opaque directory
// (rm -rf + mkdir), copy-ups, a rename, a hard link, a symlink and a FIFO.
const rlOps = `rm m/a
rm -rf m/d
mkdir m/d
echo new > m/d/n
echo more >> m/keep
mkdir -p m/newdir/sub
echo f > m/newdir/sub/f
mv m/e/z m/e/z2
chmod 600 m/e/z2
ln m/keep m/keep.link
ln -s keep m/sl2
mkfifo m/fifo
`

// rlCheckView checks a view of the layers after rlOps.
func (e *nsEnv) rlCheckView(name string, view *kernelcmp.Tree) {
	e.t.Helper()
	if len(view.Problems) > 0 {
		e.t.Errorf("%s: %q", name, view.Problems)
	}
	for _, p := range []string{"a", "d/x", "d/sub", "e/z"} {
		if view.Nodes[p] != nil {
			e.t.Errorf("%s: %s is visible, want it deleted", name, p)
		}
	}
	for p, typ := range map[string]string{"keep": "file", "d/n": "file", "newdir/sub/f": "file", "e/z2": "file",
		"keep.link": "file", "ln": "symlink", "sl2": "symlink", "fifo": "fifo"} {
		if n := view.Nodes[p]; n == nil || n.Type != typ {
			e.t.Errorf("%s: %s is %+v, want a %s", name, p, n, typ)
		}
	}
	if n := view.Nodes["keep"]; n != nil && n.Nlink != 2 {
		e.t.Errorf("%s: keep has %d links, want 2", name, n.Nlink)
	}
}

// rlCompare compares ovl's view with the kernel's on the same layers.
func (e *nsEnv) rlCompare(kernel, ovl *kernelcmp.Tree, what string) {
	e.t.Helper()
	if ds := kernelcmp.Compare(kernel, ovl, kernelcmp.CompareOptions{Scope: kernelcmp.ScopeMerged}); len(ds) > 0 {
		e.t.Errorf("%s differs from the kernel's overlayfs with userxattr on the same layers:\n%s",
			what, kernelcmp.FormatDiffs("kernel", "ovl", ds))
	}
}

// rlCheckUpper checks that ovl wrote its markers in user.overlay.*: the
// directory replaced by rm -rf + mkdir is opaque there, and no
// trusted.overlay.* xattr was written anywhere.
func (e *nsEnv) rlCheckUpper() {
	e.t.Helper()
	v := make([]byte, 16)
	n, err := unix.Lgetxattr(e.path("u/d"), "user.overlay.opaque", v)
	if err != nil || string(v[:n]) != "y" {
		e.t.Errorf("upper d: user.overlay.opaque = %q, %v; want \"y\"", v[:max(n, 0)], err)
	}
	filepath.Walk(e.path("u"), func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		buf := make([]byte, 4096)
		k, _ := unix.Llistxattr(p, buf)
		for _, name := range strings.Split(string(buf[:max(k, 0)]), "\x00") {
			if strings.HasPrefix(name, "trusted.") {
				e.t.Errorf("upper %s has %s: an unprivileged mount cannot have written it", p, name)
			}
		}
		return nil
	})
}

// rlLog returns the daemon log lines that contain s.
func (e *nsEnv) rlLog(s string) []string {
	b, _ := os.ReadFile(e.path("log"))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// An unprivileged user mounts through fusermount3 with containers-storage's
// options and no userxattr: ovl keeps its xattrs in user.overlay.*, says
// so in its log, reads its own layer back at a second mount, and the
// kernel's overlayfs with userxattr shows the same view of the layers.
func TestRootlessUnprivilegedUser(t *testing.T) {
	e := newNSEnv(t)
	e.rlLayers()
	e.script(`
$AS_USER "$OVL" -o lowerdir=l,upperdir=u,workdir=w, --log log m
$AS_USER sh -euc '` + rlOps + `'
$AS_USER $SNAP m view1.json
$AS_USER "$OVL" umount m
$AS_USER "$OVL" -o lowerdir=l,upperdir=u,workdir=w,,volatile --log log m
$AS_USER $SNAP m view2.json
$AS_USER "$OVL" umount m
rm -rf w/work/incompat
mount -t overlay overlay -o lowerdir=l,upperdir=u,workdir=w,userxattr km
$SNAP km kernel.json
umount km
`)
	lines := e.rlLog("overlay xattrs in user.overlay.*")
	if len(lines) != 2 || !strings.Contains(lines[0], "CAP_SYS_ADMIN") {
		t.Errorf("log: want a line at each mount saying user.overlay.* was chosen, got %q", lines)
	}
	if lines := e.rlLog("passthrough: off"); len(lines) != 2 {
		t.Errorf("log: want one passthrough line per mount, got %q", lines)
	}
	e.rlCheckUpper()
	kernel := e.snapshot("kernel.json")
	for _, v := range []string{"view1.json", "view2.json"} {
		view := e.snapshot(v)
		e.rlCheckView(v, view)
		e.rlCompare(kernel, view, v)
	}
}

// Root in a user namespace, as rootless podman runs its mount program
// (unshare -Urm: a user namespace and a mount namespace of its own): the
// same choice of user.overlay.*, passthrough left out of the FUSE
// negotiation so that two kernel overlayfs mounts can stack on the ovl
// mount (a container in a rootless container), and the same view as the
// kernel's overlayfs with userxattr.
func TestRootlessUserNamespace(t *testing.T) {
	e := newNSEnv(t)
	e.rlLayers()
	e.mkdirs("k1/u", "k1/w", "k1/m", "k2/u", "k2/w", "k2/m")
	e.script(`
$AS_USER unshare --user --map-root-user --mount -- sh -euc '
"$OVL" -o lowerdir=l,upperdir=u,workdir=w, --log log m
` + rlOps + `
$SNAP m view1.json
mount -t overlay overlay -o userxattr,lowerdir=m,upperdir=k1/u,workdir=k1/w k1/m
mount -t overlay overlay -o userxattr,lowerdir=k1/m,upperdir=k2/u,workdir=k2/w k2/m
cat k2/m/keep > nested.txt
umount k2/m
umount k1/m
"$OVL" umount m
"$OVL" -o lowerdir=l,upperdir=u,workdir=w --log log m
$SNAP m view2.json
"$OVL" umount m
'
mount -t overlay overlay -o lowerdir=l,upperdir=u,workdir=w,userxattr km
$SNAP km kernel.json
umount km
`)
	if b, _ := os.ReadFile(e.path("nested.txt")); string(b) != "keep\nmore\n" {
		t.Errorf("two kernel overlayfs over the ovl mount read keep as %q", b)
	}
	lines := e.rlLog("overlay xattrs in user.overlay.*")
	if len(lines) != 2 || !strings.Contains(lines[0], "user namespace") {
		t.Errorf("log: want a line at each mount saying user.overlay.* was chosen in a user namespace, got %q", lines)
	}
	e.rlCheckUpper()
	kernel := e.snapshot("kernel.json")
	for _, v := range []string{"view1.json", "view2.json"} {
		view := e.snapshot(v)
		// Inside the namespace the user is root.
		for _, n := range view.Nodes {
			if n.UID == 0 && n.GID == 0 {
				n.UID, n.GID = uint32(e.uid), uint32(e.gid)
			}
		}
		e.rlCheckView(v, view)
		e.rlCompare(kernel, view, v)
	}
}

// The options that settle the xattr namespace: nouserxattr insists on
// trusted.overlay.* and fails without the privilege, as do the options
// that need it; as root, nothing changes unless userxattr is given.
func TestRootlessXattrOptions(t *testing.T) {
	e := newNSEnv(t)
	e.rlLayers()
	for _, c := range []struct{ opts, want string }{
		{"lowerdir=l,upperdir=u,workdir=w,nouserxattr", "nouserxattr: trusted.overlay.* xattrs need a privilege this process lacks: no CAP_SYS_ADMIN in the initial user namespace"},
		{"lowerdir=l,nouserxattr", "nouserxattr"},
		{"lowerdir=l,upperdir=u,workdir=w,redirect_dir=on", "redirect_dir=on needs trusted.overlay.* xattrs"},
		{"lowerdir=l,upperdir=u,workdir=w,metacopy=on", "metacopy=on needs trusted.overlay.* xattrs"},
	} {
		out := e.script(`$AS_USER "$OVL" -o ` + c.opts + ` m 2>&1 || echo "exit $?"`)
		if !strings.Contains(out, c.want) || !strings.Contains(out, "exit 1") || strings.Count(out, "\n") != 2 {
			t.Errorf("-o %s as %s: %q, want one line with %q and exit 1", c.opts, e.user, out, c.want)
		}
	}
	// The last of userxattr and nouserxattr wins; as root, trusted is the default.
	for _, c := range []struct{ opts, prefix string }{
		{"", "trusted.overlay."},
		{",nouserxattr", "trusted.overlay."},
		{",userxattr", "user.overlay."},
		{",userxattr,nouserxattr", "trusted.overlay."},
		{",nouserxattr,userxattr", "user.overlay."},
	} {
		os.RemoveAll(e.path("u"))
		os.RemoveAll(e.path("w"))
		e.mkdirs("u", "w")
		e.script(`"$OVL" -o lowerdir=l,upperdir=u,workdir=w` + c.opts + ` m
rm -rf m/d
mkdir m/d
"$OVL" umount m
`)
		v := make([]byte, 16)
		if n, err := unix.Lgetxattr(e.path("u/d"), c.prefix+"opaque", v); err != nil || string(v[:n]) != "y" {
			t.Errorf("as root with %q: %sopaque = %q, %v; want \"y\"", c.opts, c.prefix, v[:max(n, 0)], err)
		}
	}
}

// Root in a user namespace without a mount namespace of its own cannot
// mount FUSE: the error says what is missing.
func TestRootlessNoMountNamespace(t *testing.T) {
	e := newNSEnv(t)
	e.rlLayers()
	out := e.script(`$AS_USER unshare --user --map-root-user -- "$OVL" -o lowerdir=l,upperdir=u,workdir=w m 2>&1 || echo "exit $?"`)
	if !strings.Contains(out, "operation not permitted (in a user namespace a FUSE mount needs a mount namespace of that user namespace") ||
		!strings.Contains(out, "exit 1") {
		t.Errorf("got %q", out)
	}
}
