package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

const fsckOpts = cliLayerOpts + ",redirect_dir=on"

// TestFsckCLI runs ovl fsck on an upper broken in three ways (a whiteout
// that hides nothing, a temporary left in work/, a stale volatile marker):
// -n reports them with exit 4 and changes nothing, -p repairs the first two
// and leaves the marker (exit 4), -y removes it (exit 1), and a last -n is
// clean (exit 0). Wrong flags are exit 8.
func TestFsckCLI(t *testing.T) {
	testutil.RequireRoot(t)
	dir := cliTree(t)
	p := func(s string) string { return filepath.Join(dir, s) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(p("w/work/incompat/volatile"), 0o755))
	must(os.WriteFile(p("w/work/incompat/volatile/dirty"), nil, 0o644))
	must(os.WriteFile(p("w/work/#3"), []byte("half a copy"), 0o644))
	must(unix.Mknod(p("u/ghost"), unix.S_IFCHR, 0))

	r := runOvl(t, dir, "fsck", "-n", "-o", fsckOpts)
	if r.code != 4 || !strings.Contains(r.stdout, "upper:/ghost") || !strings.Contains(r.stdout, "work:work/#3") ||
		!strings.Contains(r.stdout, "may have lost writes") {
		t.Fatalf("fsck -n: exit %d, stdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if !exists(p("u/ghost")) || !exists(p("w/work/#3")) {
		t.Fatal("fsck -n changed the layers")
	}
	r = runOvl(t, dir, "fsck", "-p", "-o", fsckOpts)
	if r.code != 4 || exists(p("u/ghost")) || exists(p("w/work/#3")) || !exists(p("w/work/incompat/volatile/dirty")) {
		t.Fatalf("fsck -p: exit %d, want 4 with the marker left; stdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	r = runOvl(t, dir, "fsck", "-y", "-o", fsckOpts)
	if r.code != 1 || exists(p("w/work/incompat")) {
		t.Fatalf("fsck -y: exit %d, want 1; stdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	r = runOvl(t, dir, "fsck", "-o", fsckOpts)
	if r.code != 0 || strings.TrimSpace(r.stdout) != "clean" {
		t.Fatalf("second fsck: exit %d, stdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	for _, args := range [][]string{
		{"fsck", "-n", "-y", "-o", fsckOpts},
		{"fsck", "-o", "lowerdir=l1"},
		{"fsck", "-o", fsckOpts, "extra"},
		{"fsck", "-o", "lowerdir=l1,upperdir=nothere,workdir=w"},
	} {
		if r := runOvl(t, dir, args...); r.code != 8 {
			t.Errorf("ovl %q: exit %d, want 8 (stderr %q)", args, r.code, r.stderr)
		}
	}
}

// TestFsckInUse: fsck refuses (exit 8) an upper that an ovl mount or a
// kernel overlay mount uses, and runs once it is unmounted.
func TestFsckInUse(t *testing.T) {
	testutil.RequireRoot(t)
	dir := cliTree(t)
	cliMustMount(t, dir, "mount", "-o", fsckOpts, "m")
	r := runOvl(t, dir, "fsck", "-y", "-o", fsckOpts)
	cliCheckError(t, r, "in use")
	if r.code != 8 {
		t.Errorf("fsck on an ovl mount's upper: exit %d, want 8", r.code)
	}
	if r := runOvl(t, dir, "umount", "m"); r.code != 0 {
		t.Fatalf("umount: %s", r.stderr)
	}
	if err := unix.Mount("overlay", filepath.Join(dir, "m"), "overlay", 0,
		fmt.Sprintf("lowerdir=%s/l1:%s/l2,upperdir=%s/u,workdir=%s/w", dir, dir, dir, dir)); err != nil {
		t.Fatal(err)
	}
	r = runOvl(t, dir, "fsck", "-y", "-o", fsckOpts)
	unix.Unmount(filepath.Join(dir, "m"), 0)
	cliCheckError(t, r, "used by the overlay mounted at")
	if r.code != 8 {
		t.Errorf("fsck on a kernel mount's upper: exit %d, want 8", r.code)
	}
	if r := runOvl(t, dir, "fsck", "-n", "-o", fsckOpts); r.code != 0 {
		t.Errorf("fsck after umount: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
}

// TestFsckKilledCopyUp kills the ovl daemon (SIGKILL) while it copies up
// large lower files, several at once, at a moment a copy-up temporary is
// in work/: fsck then reports the leftovers in work/ and nothing else,
// -p removes them (exit 1) and a second run is clean.
func TestFsckKilledCopyUp(t *testing.T) {
	testutil.RequireRoot(t)
	const files = 6
	big := strings.Repeat("0123456789abcdef", 1<<20) // 16 MiB
	caught := 0
	for round := 0; round < 20 && caught < 3; round++ {
		dir := cliTree(t)
		for i := 0; i < files; i++ {
			if err := os.WriteFile(filepath.Join(dir, "l1", fmt.Sprintf("big%d", i)), []byte(big), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cliMustMount(t, dir, "mount", "-o", fsckOpts, "m")
		pid := cliDaemonPid(t, dir, filepath.Join(dir, "m"))
		pfd := cliPidfd(t, pid)
		var wg sync.WaitGroup
		for i := 0; i < files; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				// Opening for write copies the file up; errors after the
				// kill (ENOTCONN) are expected.
				f, err := os.OpenFile(filepath.Join(dir, "m", fmt.Sprintf("big%d", i)), os.O_WRONLY|os.O_APPEND, 0)
				if err == nil {
					f.Write([]byte("x"))
					f.Close()
				}
			}(i)
		}
		// Poll work/work for a temporary that is not the shared whiteout;
		// kill the daemon as soon as one is there. A bounded count of
		// polls, not a time: the load ends by itself if none is seen.
		killed := false
		for poll := 0; poll < 1_000_000 && !killed; poll++ {
			ents, _ := os.ReadDir(filepath.Join(dir, "w", "work"))
			for _, e := range ents {
				if e.Type().IsRegular() {
					unix.Kill(pid, unix.SIGKILL)
					killed = true
					break
				}
			}
			if !killed && allCopied(dir, files) {
				break
			}
		}
		if !killed {
			unix.Kill(pid, unix.SIGKILL)
		}
		// Wait for the daemon to be gone (its locks with it), unblocking
		// the writers by detaching the dead mount.
		unix.Unmount(filepath.Join(dir, "m"), unix.MNT_DETACH)
		fds := []unix.PollFd{{Fd: int32(pfd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, 120_000); err != nil {
			t.Fatalf("wait for the daemon: %v", err)
		}
		wg.Wait()
		r := runOvl(t, dir, "fsck", "-n", "-o", fsckOpts)
		var leftovers int
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			switch {
			case strings.Contains(line, "(work-leftover)"):
				leftovers++
			case strings.HasPrefix(line, "note: "), line == "clean", strings.HasSuffix(line, "none repaired (-n)"):
			default:
				t.Errorf("round %d: fsck -n after kill -9 found more than work/ leftovers: %q", round, line)
			}
		}
		if leftovers == 0 {
			if r.code != 0 {
				t.Errorf("round %d: exit %d without findings: %s%s", round, r.code, r.stdout, r.stderr)
			}
			continue
		}
		caught++
		if r.code != 4 {
			t.Errorf("round %d: fsck -n: exit %d, want 4", round, r.code)
		}
		if r := runOvl(t, dir, "fsck", "-p", "-o", fsckOpts); r.code != 1 {
			t.Errorf("round %d: fsck -p: exit %d, want 1: %s%s", round, r.code, r.stdout, r.stderr)
		}
		if r := runOvl(t, dir, "fsck", "-n", "-o", fsckOpts); r.code != 0 {
			t.Errorf("round %d: second fsck -n: exit %d, want 0: %s%s", round, r.code, r.stdout, r.stderr)
		}
		t.Logf("round %d: %d leftovers in work/ after kill -9, repaired", round, leftovers)
	}
	if caught == 0 {
		t.Fatal("no kill landed while a copy-up temporary was in work/ in 20 rounds")
	}
}

// allCopied reports whether every big file has its upper copy.
func allCopied(dir string, files int) bool {
	for i := 0; i < files; i++ {
		if !exists(filepath.Join(dir, "u", fmt.Sprintf("big%d", i))) {
			return false
		}
	}
	return true
}

func exists(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil
}
