package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/ovl-project/ovl/internal/testutil"
)

// setEnableUring: testutil.SetFuseUring.
func setEnableUring(t testing.TB, on bool) { testutil.SetFuseUring(t, on) }

// uringRequests is "ovl stats"' count of requests served through io_uring.
func uringRequests(t *testing.T, dir string) uint64 {
	t.Helper()
	r := runOvl(t, dir, "stats", "m")
	if r.code != 0 {
		t.Fatalf("ovl stats: %s", r.stderr)
	}
	var st struct {
		N *uint64 `json:"fuse_uring_requests"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.N == nil {
		t.Fatalf("ovl stats printed %q (%v): no fuse_uring_requests", r.stdout, err)
	}
	return *st.N
}

// uringChanges copies up, writes, renames, removes and makes entries.
func uringChanges(t *testing.T, m string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(filepath.Join(m, "both.txt"), os.O_WRONLY|os.O_APPEND, 0)
	must(err)
	_, err = f.Write([]byte("appended\n"))
	must(err)
	must(f.Close())
	must(os.WriteFile(filepath.Join(m, "big"), bytes.Repeat([]byte("0123456789abcdef"), 1<<17), 0o600))
	must(os.Rename(filepath.Join(m, "top.txt"), filepath.Join(m, "shared", "moved.txt")))
	must(os.Remove(filepath.Join(m, "bottom.txt")))
	must(os.Mkdir(filepath.Join(m, "newdir"), 0o700))
	must(os.Symlink("../big", filepath.Join(m, "newdir", "link")))
	must(os.Chmod(filepath.Join(m, "shared"), 0o711))
	must(os.Truncate(filepath.Join(m, "big"), 1000))
}

// TestFuseUringMount: with fuse_uring=on (and the kernel offering FUSE
// over io_uring), a mount serves its requests through io_uring, and a
// walk, reads and changes see what the same on a mount served through
// /dev/fuse see; with the kernel not offering it, the same option falls
// back to /dev/fuse.
func TestFuseUringMount(t *testing.T) {
	testutil.RequireRoot(t)
	setEnableUring(t, true)
	views := map[string]string{}
	for _, opt := range []string{"fuse_uring=on", "fuse_uring=off"} {
		dir := cliTree(t)
		cliMustMount(t, dir, "mount", "-o", cliLayerOpts+","+opt, "m")
		m := filepath.Join(dir, "m")
		before := testutil.TreeListing(t, m)
		uringChanges(t, m)
		views[opt] = before + "\n--\n" + testutil.TreeListing(t, m)
		n := uringRequests(t, dir)
		if opt == "fuse_uring=on" && n < 50 {
			t.Errorf("%s: %d requests through io_uring", opt, n)
		}
		if opt == "fuse_uring=off" && n != 0 {
			t.Errorf("%s: %d requests through io_uring", opt, n)
		}
		t.Logf("%s: %d requests through io_uring", opt, n)
		if r := runOvl(t, dir, "umount", "m"); r.code != 0 {
			t.Fatalf("umount: %s", r.stderr)
		}
	}
	if views["fuse_uring=on"] != views["fuse_uring=off"] {
		t.Fatalf("views differ:\nio_uring:\n%s\n/dev/fuse:\n%s", views["fuse_uring=on"], views["fuse_uring=off"])
	}

	// The kernel not offering it: the mount works through /dev/fuse.
	setEnableUring(t, false)
	dir := cliTree(t)
	cliMustMount(t, dir, "mount", "-o", cliLayerOpts+",fuse_uring=on", "m")
	defer runOvl(t, dir, "umount", "m")
	uringChanges(t, filepath.Join(dir, "m"))
	if n := uringRequests(t, dir); n != 0 {
		t.Errorf("enable_uring=N: %d requests through io_uring", n)
	}
}
