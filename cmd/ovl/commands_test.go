package main

// The command line of issue 20: per-command help, usage on a bare ovl,
// unknown commands, too many arguments, umount of what is not an ovl
// mount and its lazy form, fusermount3's reason, the daemon's errors in
// the system log, the version, shell completion and man pages, ovl ls.

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

// Each command has its own help, with every flag; mount's lists every -o
// option, the ignored and the refused ones with their reasons.
func TestCommandHelp(t *testing.T) {
	dir := t.TempDir()
	global := runOvl(t, dir, "--help")
	if global.code != 0 {
		t.Fatalf("--help: exit %d: %s", global.code, global.stderr)
	}
	cases := map[string][]string{
		"mount": {"--foreground", "--debug", "--log", "--options", "passthrough=on|off", "lowerdir+=DIR",
			"metacopy=on|off", "xattr_permissions", "Accepted and ignored:", "nofail", "x-*",
			"Refused", "plugins", "verity=on|require", "lowerdir=A::B", "ovl SOURCE MOUNTPOINT -o OPTIONS"},
		"umount": {"--lazy", "-l", "not an ovl mount", "MOUNTPOINT"},
		"stats":  {"--gc", "JSON"},
		"ls":     {"--json", "status"},
		"diff":   {"--output", "--compress", ".wh..wh..opq"},
		"apply":  {"--userxattr", "LAYER"},
	}
	for cmd, words := range cases {
		for _, form := range [][]string{{cmd, "--help"}, {"help", cmd}, {cmd, "-h"}} {
			r := runOvl(t, dir, form...)
			if r.code != 0 {
				t.Errorf("%q: exit %d: %s", form, r.code, r.stderr)
				continue
			}
			if r.stdout == global.stdout {
				t.Errorf("%q prints the global help", form)
			}
			if strings.Contains(r.stdout, "See README.md") {
				t.Errorf("%q sends the reader to the README", form)
			}
			flat := strings.Join(strings.Fields(r.stdout), " ")
			for _, w := range words {
				if !strings.Contains(flat, w) {
					t.Errorf("%q lacks %q:\n%s", form, w, r.stdout)
				}
			}
		}
	}
	// The fuse-overlayfs form asks for mount's help.
	if r := runOvl(t, dir, "-o", "lowerdir=l", "m", "--help"); !strings.Contains(r.stdout, "passthrough=on|off") {
		t.Errorf("ovl -o ... --help: not mount's help: %s", r.stdout)
	}
}

// A bare ovl prints the usage and fails as a usage error, as podman does.
func TestBareOvl(t *testing.T) {
	r := runOvl(t, t.TempDir())
	if r.code != 2 {
		t.Errorf("exit %d, want 2", r.code)
	}
	for _, w := range []string{"Usage:", "mount", "umount", "stats", "ls", "diff", "apply", "completion"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("usage lacks %q:\n%s", w, r.stdout)
		}
	}
	cliCheckError(t, r, "missing command")
}

// An unknown first word is an unknown command, with the nearest one, when
// the argv has no -o; with -o it is the mount form whatever the word (as
// mount.fuse3 passes any word as SOURCE), even a command's name.
func TestUnknownCommand(t *testing.T) {
	dir := cliTree(t)
	for _, c := range []struct {
		args  []string
		words []string
	}{
		{[]string{"umout", "m"}, []string{`unknown command "umout"`, `did you mean "umount"?`}},
		{[]string{"stast", "m"}, []string{`unknown command "stast"`, `did you mean "stats"?`}},
		{[]string{"frobnicate"}, []string{`unknown command "frobnicate"`, "ovl --help"}},
		{[]string{"m"}, []string{`unknown command "m"`, "ovl -o OPTIONS MOUNTPOINT"}},
	} {
		r := runOvl(t, dir, c.args...)
		cliCheckError(t, r, c.words...)
		if r.code != 2 {
			t.Errorf("%q: exit %d, want 2", c.args, r.code)
		}
		if strings.Contains(r.stderr, "lowerdir") {
			t.Errorf("%q: read as a mount: %s", c.args, r.stderr)
		}
	}
	testutil.RequireRoot(t)
	for _, source := range []string{"stats", "overlay", "umount"} {
		t.Run("source "+source, func(t *testing.T) {
			cliMustMount(t, dir, source, "m", "-o", cliLayerOpts)
			m := cliMountAt(t, filepath.Join(dir, "m"))
			if m == nil || m.Source != source || m.FSType != "fuse.ovl" {
				t.Errorf("mounted %+v, want a fuse.ovl mount with source %q", m, source)
			}
			if r := runOvl(t, dir, "umount", "m"); r.code != 0 {
				t.Errorf("umount: %s", r.stderr)
			}
		})
	}
}

// More operands than a command takes are refused as such, and nothing is
// mounted; mount.fuse3's form (SOURCE MOUNTPOINT, the options after both)
// stays.
func TestTooManyArguments(t *testing.T) {
	dir := cliTree(t)
	os.Mkdir(filepath.Join(dir, "extra"), 0o755)
	for _, args := range [][]string{
		{"mount", "-o", cliLayerOpts, "m", "extra"},
		{"-o", cliLayerOpts, "m", "extra"},
		{"mount", "-o", cliLayerOpts, "m", "extra", "more"},
		{"umount", "m", "extra"},
		{"stats", "m", "extra"},
		{"ls", "extra"},
		{"demo", "extra"},
		{"apply", "a", "b", "extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cliCleanupMount(t, filepath.Join(dir, "m"))
			cliCleanupMount(t, filepath.Join(dir, "extra"))
			r := runOvl(t, dir, args...)
			cliCheckError(t, r, "too many arguments", "extra")
			if r.code != 2 {
				t.Errorf("exit %d, want 2", r.code)
			}
			if cliMountAt(t, filepath.Join(dir, "m")) != nil || cliMountAt(t, filepath.Join(dir, "extra")) != nil {
				t.Error("something got mounted")
			}
		})
	}
}

// "lowerdir=A::B" names what ovl lacks: data-only layers, not metacopy.
func TestDataOnlyLowerMessage(t *testing.T) {
	dir := cliTree(t)
	r := runOvl(t, dir, "mount", "-o", "lowerdir=l1::l2", "m")
	cliCheckError(t, r, "data-only", "::", "not supported")
	if strings.Contains(r.stderr, "does no metacopy") {
		t.Errorf("the error still says ovl does no metacopy: %s", r.stderr)
	}
}

// "ovl umount" refuses a mount that is not ovl's, and leaves it mounted.
// A busy ovl mount is refused with the hint of -l; -l detaches it at once
// and its daemon exits once the last file open on it is closed.
func TestUmountOnlyOvlAndLazy(t *testing.T) {
	testutil.RequireRoot(t)
	dir := cliTree(t)
	tmpfs := filepath.Join(dir, "tmpfs")
	os.Mkdir(tmpfs, 0o755)
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(tmpfs, unix.MNT_DETACH) })
	for _, args := range [][]string{{"umount", "tmpfs"}, {"umount", "-l", "tmpfs"}} {
		cliCheckError(t, runOvl(t, dir, args...), "tmpfs", "not an ovl mount")
		if m, err := findMount(tmpfs); err != nil || m.FSType != "tmpfs" {
			t.Fatalf("%q unmounted the tmpfs", args)
		}
	}

	mnt := filepath.Join(dir, "m")
	cliMustMount(t, dir, "mount", "-o", cliLayerOpts, "m")
	pid := cliDaemonPid(t, dir, "m")
	fd := cliPidfd(t, pid)
	f, err := os.Open(filepath.Join(mnt, "top.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cliCheckError(t, runOvl(t, dir, "umount", "m"), "busy", "-l")
	if cliMountAt(t, mnt) == nil {
		t.Fatal("a busy mount was unmounted")
	}
	if r := runOvl(t, dir, "umount", "-l", "m"); r.code != 0 {
		t.Fatalf("umount -l: exit %d: %s", r.code, r.stderr)
	}
	if cliMountAt(t, mnt) != nil {
		t.Fatal("still mounted after umount -l")
	}
	if waitExit(fd, 0) == nil {
		t.Fatal("the daemon exited while a file was still open on the detached mount")
	}
	buf := make([]byte, 16)
	if n, err := f.Read(buf); err != nil || string(buf[:n]) != "top\n" {
		t.Errorf("read from the detached mount: %q, %v", buf[:n], err)
	}
	f.Close()
	if err := waitExit(fd, 120*time.Second); err != nil {
		t.Fatalf("daemon after the last close on a detached mount: %v", err)
	}
}

// "ovl ls" (and "ovl status") lists the ovl mounts with their layers,
// options and counters; --json for scripts.
func TestLs(t *testing.T) {
	testutil.RequireRoot(t)
	dir := cliTree(t)
	os.Mkdir(filepath.Join(dir, "ro"), 0o755)
	cliMustMount(t, dir, "mount", "-o", cliLayerOpts+",volatile,nosuid", "m")
	defer runOvl(t, dir, "umount", "m")
	cliCleanupMount(t, filepath.Join(dir, "ro"))
	if r := runOvl(t, dir, "fstabsource", "ro", "-o", "lowerdir=l2"); r.code != 0 {
		t.Fatalf("mount ro: %s", r.stderr)
	}
	defer runOvl(t, dir, "umount", "ro")
	if err := os.WriteFile(filepath.Join(dir, "m/bottom.txt"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(dir)
	abs := func(p string) string { return filepath.Join(real, p) }

	r := runOvl(t, dir, "ls", "--json")
	if r.code != 0 {
		t.Fatalf("ls --json: exit %d: %s", r.code, r.stderr)
	}
	var list []struct {
		Mountpoint string   `json:"mountpoint"`
		Source     string   `json:"source"`
		Pid        int      `json:"pid"`
		Lowers     []string `json:"lowerdir"`
		Upper      string   `json:"upperdir"`
		Work       string   `json:"workdir"`
		Options    []string `json:"options"`
		CopyUps    uint64   `json:"copy_ups"`
		Error      string   `json:"error"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("ls --json printed %q: %v", r.stdout, err)
	}
	found := 0
	for _, e := range list {
		switch e.Mountpoint {
		case abs("m"):
			found++
			if e.Source != "ovl" || e.Pid <= 0 || e.Error != "" ||
				strings.Join(e.Lowers, ":") != abs("l1")+":"+abs("l2") || e.Upper != abs("u") || e.Work != abs("w") ||
				strings.Join(e.Options, ",") != "volatile,nosuid" || e.CopyUps != 1 {
				t.Errorf("ls --json, m: %+v", e)
			}
		case abs("ro"):
			found++
			if e.Source != "fstabsource" || e.Upper != "" || strings.Join(e.Lowers, ":") != abs("l2") {
				t.Errorf("ls --json, ro: %+v", e)
			}
		}
	}
	if found != 2 {
		t.Errorf("ls --json lists %d of the test's 2 mounts: %s", found, r.stdout)
	}
	for _, cmd := range []string{"ls", "status"} {
		r := runOvl(t, dir, cmd)
		if r.code != 0 {
			t.Fatalf("%s: exit %d: %s", cmd, r.code, r.stderr)
		}
		for _, w := range []string{abs("m") + " (source ovl)", "lowers:   " + abs("l1") + ":" + abs("l2"),
			"upper:    " + abs("u"), "options:  volatile,nosuid", "copy_ups 1", abs("ro") + " (source fstabsource)"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%s lacks %q:\n%s", cmd, w, r.stdout)
			}
		}
	}
}

// "ovl --version": the release set at build time and the commit, the
// first line in the form podman shows ("ovl VERSION (GO VERSION)").
func TestVersionCommit(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		testutil.Skip(t, "not a git checkout: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "ovl")
	ldflags := "-X main.version=v9.8.7-test"
	if st, err := os.Stat(filepath.Join(root, ".git")); err == nil && !st.IsDir() {
		// A git worktree: go build stamps no VCS information there (it
		// looks for a .git directory), so the build script's -X is
		// what gives the commit.
		ldflags += " -X main.commit=" + strings.TrimSpace(string(head))
	}
	build := exec.Command("go", "build", "-buildvcs=true", "-ldflags", ldflags, "-o", bin, "./cmd/ovl")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"--version"}, {"-V"}, {"version"}} {
		r := runProg(t, t.TempDir(), bin, args...)
		lines := strings.Split(r.stdout, "\n")
		if r.code != 0 || len(lines) < 2 {
			t.Fatalf("%q: exit %d: %q %s", args, r.code, r.stdout, r.stderr)
		}
		if !regexp.MustCompile(`^ovl v9\.8\.7-test \(go[0-9.]+.*\)$`).MatchString(lines[0]) {
			t.Errorf("%q: first line %q", args, lines[0])
		}
		if want := "commit: " + strings.TrimSpace(string(head)); !strings.HasPrefix(lines[1], want) {
			t.Errorf("%q: second line %q, want %q", args, lines[1], want)
		}
	}
}

// Shell completion and man pages come from the command definitions.
func TestCompletionAndMan(t *testing.T) {
	dir := t.TempDir()
	for shell, want := range map[string]string{"bash": "__start_ovl", "zsh": "#compdef ovl", "fish": "complete -c ovl"} {
		r := runOvl(t, dir, "completion", shell)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: exit %d, lacks %q: %s", shell, r.code, want, r.stderr)
		}
	}
	// What the scripts ask the binary: the commands after "um", the flags
	// of umount.
	if r := runOvl(t, dir, "__complete", "um"); !strings.Contains(r.stdout, "umount") {
		t.Errorf("__complete um: %q", r.stdout)
	}
	if r := runOvl(t, dir, "__complete", "umount", "-"); !strings.Contains(r.stdout, "--lazy") {
		t.Errorf("__complete umount -: %q", r.stdout)
	}
	if r := runOvl(t, dir, "__complete", "mount", "-o", "x", "--"); !strings.Contains(r.stdout, "--foreground") {
		t.Errorf("__complete mount -o x --: %q", r.stdout)
	}
	// The option after -o, from the option table, the ones before the
	// last comma kept.
	if r := runOvl(t, dir, "__complete", "mount", "-o", "lowerdir=a,up"); !strings.Contains(r.stdout, "lowerdir=a,upperdir=\n") {
		t.Errorf("__complete mount -o lowerdir=a,up: %q", r.stdout)
	}
	if r := runOvl(t, dir, "__complete", "mount", "-o", "pass"); !strings.Contains(r.stdout, "passthrough=\n") {
		t.Errorf("__complete mount -o pass: %q", r.stdout)
	}
	man := filepath.Join(dir, "man")
	if r := runOvl(t, dir, "man", man); r.code != 0 {
		t.Fatalf("man: exit %d: %s", r.code, r.stderr)
	}
	for page, words := range map[string][]string{
		"ovl.1":        {".TH \"OVL\" \"1\"", "ovl-mount(1)"},
		"ovl-mount.1":  {"--foreground", "passthrough=on|off", "lowerdir=A::B"},
		"ovl-umount.1": {"--lazy"},
		"ovl-ls.1":     {"--json"},
		"ovl-diff.1":   {"--compress"},
	} {
		b, err := os.ReadFile(filepath.Join(man, page))
		if err != nil {
			t.Errorf("man page: %v", err)
			continue
		}
		text := strings.ReplaceAll(string(b), `\-`, "-")
		for _, w := range words {
			if !strings.Contains(text, w) {
				t.Errorf("%s lacks %q", page, w)
			}
		}
	}
	if _, err := exec.LookPath("man"); err == nil {
		out, err := exec.Command("man", "-l", "-Tutf8", filepath.Join(man, "ovl-mount.1")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "passthrough") {
			t.Errorf("man -l ovl-mount.1: %v: %.300s", err, out)
		}
	}
}

// An unprivileged mount that fusermount3 refuses fails with fusermount3's
// own reason. The scenario's /etc/fuse.conf, bind-mounted in its private
// mount namespace, lacks user_allow_other.
func TestFusermountReason(t *testing.T) {
	e := newNSEnv(t)
	e.mkdirs("l", "u", "w", "m")
	e.write("l/a", "a\n")
	if err := os.Mkdir(e.path("rootm"), 0o755); err != nil { // root's: the user may not mount there
		t.Fatal(err)
	}
	e.write("fuse.conf", "# no user_allow_other\n")
	e.script(`
mount --bind fuse.conf /etc/fuse.conf
for form in "mount -o lowerdir=l,upperdir=u,workdir=w rootm" "mount -o lowerdir=l,allow_other m" "mount -f -o lowerdir=l,allow_other m"; do
	n=$((${n:-0}+1))
	if $AS_USER "$OVL" $form 2> err$n.txt; then echo "$form: mounted"; exit 1; fi
done
`)
	for i, want := range []string{
		"fusermount3 refused it: user has no write access to mountpoint " + e.path("rootm"),
		"fusermount3 refused it: option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf",
		"fusermount3 refused it: option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf",
	} {
		b, _ := os.ReadFile(e.path("err" + strconv.Itoa(i+1) + ".txt"))
		if i == 2 {
			// In the foreground the daemon's log lines come first, on
			// stderr: the error is the last line.
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			b = []byte(lines[len(lines)-1] + "\n")
		}
		r := cliResult{stderr: string(b), code: 1}
		cliCheckError(t, r, want)
		if strings.Contains(r.stderr, "exited with code") {
			t.Errorf("the error still gives fusermount3's exit code: %s", b)
		}
	}
}

// A daemon started in the background without --log logs to the system
// log: its fatal error at LOG_ERR, its notes at LOG_INFO. The scenario's
// /dev is a tmpfs in its private mount namespace, with the devices ovl
// needs and /dev/log a symlink to the test's socket.
func TestDaemonLogsToSyslog(t *testing.T) {
	e := newNSEnv(t)
	e.mkdirs("l", "u", "w", "w2", "m", "m2", "dev")
	e.write("l/a", "a\n")
	sock := e.path("log.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e.script(`
B=` + e.base + `
mount -t tmpfs tmpfs "$B/dev"
for n in null zero full random urandom fuse; do touch "$B/dev/$n"; mount --bind "/dev/$n" "$B/dev/$n"; done
ln -s "$B/log.sock" "$B/dev/log"
mount --rbind "$B/dev" /dev
"$OVL" mount -o lowerdir=l,upperdir=u,workdir=w,nofail m
if "$OVL" mount -o lowerdir=l,upperdir=u,workdir=w2 m2 2> err.txt; then echo "the upper was mounted twice"; exit 1; fi
"$OVL" umount m
`)
	errText, _ := os.ReadFile(e.path("err.txt"))
	var msgs []string
	buf := make([]byte, 8192)
	for {
		ln.SetReadDeadline(time.Now().Add(2 * time.Second)) // the messages were sent before the script ended
		n, err := ln.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, string(buf[:n]))
	}
	has := func(pri, words string) bool {
		for _, m := range msgs {
			if strings.HasPrefix(m, pri) && regexp.MustCompile(`ovl\[[0-9]+\]: `).MatchString(m) && strings.Contains(m, words) {
				return true
			}
		}
		return false
	}
	// LOG_DAEMON is 3<<3; LOG_ERR 3, LOG_INFO 6.
	want := strings.TrimPrefix(strings.TrimSpace(string(errText)), "ovl: ")
	if want == "" || !has("<27>", "error: "+want) {
		t.Errorf("no LOG_ERR message with the daemon's error %q; got %q", want, msgs)
	}
	if !has("<30>", "ignoring options: nofail") {
		t.Errorf("no LOG_INFO message with the ignored options; got %q", msgs)
	}
}

// A command registered in layerTools (parsing its own flags) gets its
// arguments as they are, -o included: it is not read as a mount.
func TestLegacyLayerTool(t *testing.T) {
	var got []string
	layerTools["legacytool"] = func(args []string) error { got = args; return nil }
	defer delete(layerTools, "legacytool")
	args := []string{"-o", "lowerdir=a", "--flag", "DIR", "--help"}
	if _, err := parseArgs(append([]string{"legacytool"}, args...)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != strings.Join(args, " ") {
		t.Errorf("the tool got %q, want %q", got, args)
	}
}
