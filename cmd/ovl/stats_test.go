package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

// TestStatsNodes (issue 17, item 8): "ovl stats" counts every node the
// daemon holds, whatever made it: create, mkdir, symlink, mknod and link
// as well as lookups, and a failed lookup none. While every new object is
// held open the count is exact; once they are let go and the caches
// dropped it falls back to where it started, and it is never negative.
func TestStatsNodes(t *testing.T) {
	testutil.RequireRoot(t)
	dir := cliTree(t)
	cliMustMount(t, dir, "mount", "-o", cliLayerOpts, "m")
	defer runOvl(t, dir, "umount", "m")
	nodes := func() float64 {
		n := cliStats(t, dir, false)["nodes"]
		if n < 1 {
			t.Fatalf("ovl stats counts %v nodes (the root is one)", n)
		}
		return n
	}
	// settle drops the caches until the count is want (another test's
	// drop_caches may come at any time, so only this is stable).
	settle := func(want float64) float64 {
		var n float64
		for range 200 {
			dropCaches(t)
			if n = nodes(); n == want {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		return n
	}
	base := settle(1)
	if base != 1 {
		t.Fatalf("%v nodes on an idle mount after drop_caches, want 1 (the root)", base)
	}
	const rounds, each = 3, 5
	for r := range rounds {
		top := filepath.Join(dir, "m", fmt.Sprintf("t%d", r))
		var fds []int
		hold := func(p string) {
			fd, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
		}
		if err := os.Mkdir(top, 0o755); err != nil {
			t.Fatal(err)
		}
		hold(top)
		objects := 1
		for i := range each {
			p := func(kind string) string { return filepath.Join(top, fmt.Sprintf("%s%d", kind, i)) }
			if err := os.WriteFile(p("file"), nil, 0o644); err != nil { // touch
				t.Fatal(err)
			}
			if err := os.Mkdir(p("dir"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("file0", p("link")); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mknod(p("fifo"), unix.S_IFIFO|0o644, 0); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(p("file"), p("hard")); err != nil { // the same object
				t.Fatal(err)
			}
			for _, k := range []string{"file", "dir", "link", "fifo", "hard"} {
				hold(p(k))
			}
			objects += 4
			// Failed lookups make no node.
			if _, err := os.Lstat(p("missing")); err == nil {
				t.Fatal("missing file exists")
			}
			if _, err := os.Lstat(filepath.Join(dir, "m", fmt.Sprintf("missing%d-%d", r, i))); err == nil {
				t.Fatal("missing file exists")
			}
		}
		if got, want := nodes(), base+float64(objects); got != want {
			t.Errorf("round %d: %v nodes with %d new objects held, want %v", r, got, objects, want)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		if got := settle(base); got != base {
			t.Errorf("round %d: %v nodes after the new objects were let go and the caches dropped, want %v", r, got, base)
		}
	}
	// Lookups of lower objects, then forgetting them, leave the count as it was.
	for _, p := range []string{"top.txt", "both.txt", "bottom.txt", "shared/one.txt", "shared/two.txt", "shared/none"} {
		os.Lstat(filepath.Join(dir, "m", p))
	}
	if got := settle(base); got != base {
		t.Errorf("%v nodes after lookups of lower objects and drop_caches, want %v", got, base)
	}
}

// TestStatsSocketNewMount (issue 17, item 8): a new mount that gets the
// device number of an unmounted one whose daemon has not exited yet still
// gets its own stats socket: "ovl stats" reports the new daemon, and "ovl
// umount" waits for the new daemon's exit. The first daemon is held
// stopped (SIGSTOP) across its unmount, so it cannot exit.
func TestStatsSocketNewMount(t *testing.T) {
	testutil.RequireRoot(t)
	dir := cliTree(t)
	for _, d := range []string{"u2", "w2", "m2"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cliCleanupMount(t, filepath.Join(dir, "m2"))
	// The kernel hands out the lowest free device number, so the second
	// mount usually gets the first one's; other mounts made meanwhile on a
	// busy machine may take it first: try again then.
	for try := 0; ; try++ {
		cliMustMount(t, dir, "mount", "-o", cliLayerOpts, "m")
		first := cliDaemonPid(t, dir, "m")
		firstFd := cliPidfd(t, first)
		m1 := cliMountAt(t, filepath.Join(dir, "m"))
		if err := unix.Kill(first, unix.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		resume := func() {
			unix.Kill(first, unix.SIGCONT)
			if err := waitExit(firstFd, time.Minute); err != nil {
				t.Errorf("first daemon: %v", err)
			}
		}
		if err := unix.Unmount(filepath.Join(dir, "m"), 0); err != nil {
			resume()
			t.Fatalf("umount m: %v", err)
		}
		r := runOvl(t, dir, "mount", "-o", "lowerdir=l1:l2,upperdir=u2,workdir=w2", "m2")
		if r.code != 0 {
			resume()
			t.Fatalf("second mount: exit %d: %s", r.code, r.stderr)
		}
		m2 := cliMountAt(t, filepath.Join(dir, "m2"))
		if m2 == nil || m1 == nil {
			resume()
			t.Fatal("mount missing from mountinfo")
		}
		if m2.Dev != m1.Dev {
			runOvl(t, dir, "umount", "m2")
			resume()
			if try < 50 {
				continue
			}
			t.Fatalf("the second mount never got the first one's device number %s in %d tries", m1.Dev, try+1)
		}
		t.Logf("both mounts had device %s (try %d)", m1.Dev, try+1)
		st := runOvl(t, dir, "stats", "m2")
		var second int
		if st.code != 0 {
			t.Errorf("ovl stats m2: exit %d: %s", st.code, st.stderr)
		} else if _, err := fmt.Sscanf(st.stdout[strings.Index(st.stdout, `"pid":`)+6:], "%d", &second); err != nil || second == first {
			t.Errorf("ovl stats m2 reports pid %d (%v), the first daemon's is %d: %s", second, err, first, st.stdout)
		}
		var secondFd int
		if second > 0 && second != first {
			secondFd = cliPidfd(t, second)
		}
		um := runOvl(t, dir, "umount", "m2")
		if um.code != 0 {
			t.Errorf("ovl umount m2: exit %d: %s", um.code, um.stderr)
		}
		if secondFd > 0 {
			if err := waitExit(secondFd, 0); err != nil {
				t.Errorf("ovl umount returned before the second daemon exited: %v", err)
			}
		}
		resume()
		return
	}
}
