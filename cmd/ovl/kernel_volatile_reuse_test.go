package main

// Reusable volatile mounts (issue 19): a clean unmount of a volatile ovl
// mount syncs what it changed and removes work/incompat/volatile, so the
// upper mounts again, by ovl and by the kernel; after a kill -9 of the
// daemon, the next mount accepts the upper only if the record's identities
// match and the journalled changes sync, and volatile_recovery= decides
// otherwise. fsync=strict is accepted with the kernel's meaning.

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// volatileChanges writes through the mount at mnt what a container does:
// a new file, a changed lower file, a new directory with a file, a removed
// lower file (a whiteout).
func volatileChanges(t *testing.T, mnt string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(mnt, "new"), []byte("volatile data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(mnt, "d/e"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "d/e/g"), []byte("deep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "gone"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "gone")); err != nil {
		t.Fatal(err)
	}
}

// volatileView reads back what volatileChanges wrote, as "name=content;...".
func volatileView(mnt string) string {
	var out []string
	for _, p := range []string{"new", "f", "d/e/g", "gone"} {
		b, err := os.ReadFile(filepath.Join(mnt, p))
		if err != nil {
			out = append(out, p+"="+err.(*os.PathError).Err.Error())
			continue
		}
		out = append(out, p+"="+string(b))
	}
	return strings.Join(out, ";")
}

const volatileWant = "new=volatile data;f=changed;d/e/g=deep;gone=no such file or directory"

// reuseTree is volatileTree with a lower file "gone" to remove.
func reuseTree(t *testing.T) (string, k.Layout) {
	dir, l := volatileTree(t)
	if err := os.WriteFile(filepath.Join(dir, "L/gone"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, l
}

// incompatGone fails the test unless work/incompat is absent.
func incompatGone(t *testing.T, l k.Layout, when string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(l.Work, "work/incompat")); !os.IsNotExist(err) {
		t.Errorf("%s: work/incompat is there (%v): %s", when, err, markerState(t, l.Work))
	}
}

// killVolatile mounts l volatile with ovl, makes the changes, and kills
// the daemon with SIGKILL; the dead mount is detached.
func killVolatile(t *testing.T, dir string, l k.Layout) {
	t.Helper()
	cliCleanupMount(t, l.Mnt)
	r := runOvl(t, dir, "mount", "-o", k.DefaultOptions().OvlOptions(l)+",volatile", l.Mnt)
	if r.code != 0 {
		t.Fatalf("ovl volatile mount: %s", r.stderr)
	}
	volatileChanges(t, l.Mnt)
	pid := cliDaemonPid(t, dir, l.Mnt)
	fd := cliPidfd(t, pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(fd, 120*time.Second); err != nil {
		t.Fatalf("daemon %d: %v", pid, err)
	}
	if err := unix.Unmount(l.Mnt, unix.MNT_DETACH); err != nil {
		t.Fatalf("detach the dead mount: %v", err)
	}
	if got := markerState(t, l.Work); strings.Contains(got, "ENOENT") {
		t.Fatalf("the killed volatile mount left no marker: %s", got)
	}
}

// editRecord replaces the value of key in the volatile record.
func editRecord(t *testing.T, l k.Layout, key, value string) {
	t.Helper()
	p := filepath.Join(l.Work, "work/incompat/volatile/ovl-record")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	found := false
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if k, _, _ := strings.Cut(line, " "); k == key {
			line, found = key+" "+value, true
		}
		lines = append(lines, line)
	}
	if !found {
		t.Fatalf("the record has no %s: %s", key, b)
	}
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVolatileReuse(t *testing.T) {
	testutil.RequireRoot(t)

	t.Run("clean unmount: the upper mounts again, by the kernel and by ovl", func(t *testing.T) {
		dir, l := reuseTree(t)
		check := func(when string) func() {
			return func() {
				if got := volatileView(l.Mnt); got != volatileWant {
					t.Errorf("%s: %s, want %s", when, got, volatileWant)
				}
			}
		}
		if r := ovlMount(t, dir, l, ",volatile", func() { volatileChanges(t, l.Mnt) }); r.code != 0 {
			t.Fatalf("ovl volatile mount: %s", r.stderr)
		}
		incompatGone(t, l, "after a clean unmount of a volatile ovl mount")
		for _, extra := range []string{"", ",volatile"} {
			if err := kernelMount(t, l, extra, check("kernel"+extra)); err != nil {
				t.Errorf("the kernel mounting (%q) the upper of a cleanly unmounted volatile ovl mount: %v", extra, err)
			}
			if extra == ",volatile" {
				// The kernel leaves its marker; ovl's test goes on without it.
				os.RemoveAll(filepath.Join(l.Work, "work/incompat"))
			}
			if r := ovlMount(t, dir, l, extra, check("ovl"+extra)); r.code != 0 {
				t.Errorf("ovl mounting (%q) the upper of a cleanly unmounted volatile ovl mount: %s", extra, r.stderr)
			}
			incompatGone(t, l, "after ovl"+extra)
		}
	})

	t.Run("kill -9: the next mount syncs the journal and accepts", func(t *testing.T) {
		for _, extra := range []string{"", ",volatile"} {
			dir, l := reuseTree(t)
			killVolatile(t, dir, l)
			r := ovlMount(t, dir, l, extra, func() {
				if got := volatileView(l.Mnt); got != volatileWant {
					t.Errorf("after the kill, ovl%s: %s, want %s", extra, got, volatileWant)
				}
			})
			if r.code != 0 {
				t.Fatalf("ovl%s refused the upper of a killed volatile mount whose identities match: %s", extra, r.stderr)
			}
			incompatGone(t, l, "after the remount"+extra)
			if err := kernelMount(t, l, "", nil); err != nil {
				t.Errorf("the kernel mounting the recovered upper: %v", err)
			}
		}
	})

	t.Run("kill -9 with an identity that differs: refused, then accept or discard", func(t *testing.T) {
		for _, c := range []struct{ key, value, why string }{
			{"boot_id", "00000000-0000-0000-0000-000000000000", "the machine rebooted since"},
			{"mount_id", "1", "the upper's filesystem was mounted again since"},
			{"dev", "1", "the upper is on another device now"},
			{"fsid", "0123456789abcdef", "the upper's filesystem id changed"},
		} {
			dir, l := reuseTree(t)
			killVolatile(t, dir, l)
			editRecord(t, l, c.key, c.value)
			marker := markerState(t, l.Work)
			for _, extra := range []string{"", ",volatile", ",volatile_recovery=check"} {
				r := ovlMount(t, dir, l, extra, nil)
				cliCheckError(t, r, "workdir "+l.Work, "overlay with incompat feature 'volatile' cannot be mounted",
					"did not stop cleanly", c.why, "volatile_recovery=accept", "volatile_recovery=discard")
				if got := markerState(t, l.Work); got != marker {
					t.Errorf("%s%s: a refused mount changed the marker: %s", c.key, extra, got)
				}
			}
			if err := kernelMount(t, l, "", nil); err != unix.EINVAL {
				t.Errorf("the kernel mounting the unproven upper: %v, want EINVAL", err)
			}
			if c.key == "boot_id" {
				// discard empties the upper: the lower shows through.
				r := ovlMount(t, dir, l, ",volatile_recovery=discard", func() {
					want := "new=no such file or directory;f=lower;d/e/g=no such file or directory;gone=lower"
					if got := volatileView(l.Mnt); got != want {
						t.Errorf("after discard: %s, want %s", got, want)
					}
				})
				if r.code != 0 {
					t.Fatalf("volatile_recovery=discard: %s", r.stderr)
				}
				if ents, _ := os.ReadDir(l.Upper); len(ents) != 0 {
					t.Errorf("the upper after discard holds %d entries", len(ents))
				}
			} else {
				r := ovlMount(t, dir, l, ",volatile_recovery=accept", func() {
					if got := volatileView(l.Mnt); got != volatileWant {
						t.Errorf("after accept: %s, want %s", got, volatileWant)
					}
				})
				if r.code != 0 {
					t.Fatalf("volatile_recovery=accept: %s", r.stderr)
				}
			}
			incompatGone(t, l, c.key+": after the recovery option")
		}
	})

	t.Run("the kernel's marker has no record: refused, accepted with accept", func(t *testing.T) {
		dir, l := reuseTree(t)
		if err := kernelMount(t, l, ",volatile", func() { volatileChanges(t, l.Mnt) }); err != nil {
			t.Fatal(err)
		}
		r := ovlMount(t, dir, l, "", nil)
		cliCheckError(t, r, "overlay with incompat feature 'volatile' cannot be mounted", "left no record", "volatile_recovery=accept")
		if r := ovlMount(t, dir, l, ",volatile_recovery=accept", nil); r.code != 0 {
			t.Fatalf("volatile_recovery=accept of the kernel's marker: %s", r.stderr)
		}
		incompatGone(t, l, "after accept")
	})

	// A writeback error is reported once: the daemon that saw it must
	// leave it written down, or the next mount's clean fsync would pass
	// for proof. OVL_FAULT makes the sync fail (internal/fault).
	t.Run("a failed sync at the clean end: refused, then accept", func(t *testing.T) {
		dir, l := reuseTree(t)
		t.Setenv("OVL_FAULT", "volatile.finish:EIO")
		if r := ovlMount(t, dir, l, ",volatile", func() { volatileChanges(t, l.Mnt) }); r.code != 0 {
			t.Fatalf("ovl volatile mount: %s", r.stderr)
		}
		os.Unsetenv("OVL_FAULT")
		if got := markerState(t, l.Work); strings.Contains(got, "ENOENT") {
			t.Fatalf("the marker is gone after a failed sync: %s", got)
		}
		for _, extra := range []string{"", ",volatile"} {
			cliCheckError(t, ovlMount(t, dir, l, extra, nil), "overlay with incompat feature 'volatile' cannot be mounted",
				"its own sync at the end of the mount failed", "input/output error", "volatile_recovery=accept")
		}
		if err := kernelMount(t, l, "", nil); err != unix.EINVAL {
			t.Errorf("the kernel mounting the unproven upper: %v, want EINVAL", err)
		}
		r := ovlMount(t, dir, l, ",volatile_recovery=accept", func() {
			if got := volatileView(l.Mnt); got != volatileWant {
				t.Errorf("after accept: %s, want %s", got, volatileWant)
			}
		})
		if r.code != 0 {
			t.Fatalf("volatile_recovery=accept: %s", r.stderr)
		}
		incompatGone(t, l, "after accept")
	})

	t.Run("kill -9, then a failed fsync of a recorded change: refused", func(t *testing.T) {
		dir, l := reuseTree(t)
		killVolatile(t, dir, l)
		marker := markerState(t, l.Work)
		t.Setenv("OVL_FAULT", "volatile.recover:EIO")
		cliCheckError(t, ovlMount(t, dir, l, "", nil), "overlay with incompat feature 'volatile' cannot be mounted",
			"the fsync of a recorded change failed", "input/output error", "volatile_recovery=accept")
		os.Unsetenv("OVL_FAULT")
		if got := markerState(t, l.Work); got != marker {
			t.Errorf("a refused mount changed the marker: %s", got)
		}
	})

	t.Run("a torn journal is no proof", func(t *testing.T) {
		dir, l := reuseTree(t)
		killVolatile(t, dir, l)
		j := filepath.Join(l.Work, "work/incompat/volatile/ovl-journal")
		f, err := os.OpenFile(j, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("h 1 00ab")
		f.Close()
		cliCheckError(t, ovlMount(t, dir, l, "", nil), "its journal is unreadable", "volatile_recovery=accept")
	})
}

// fsync=strict is accepted, and copy-ups under it (data, metadata only,
// directories) land as the kernel reads them.
func TestFsyncStrict(t *testing.T) {
	testutil.RequireRoot(t)
	dir, l := reuseTree(t)
	if err := os.MkdirAll(filepath.Join(l.Lowers[0], "ld/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.Lowers[0], "ld/sub/x"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := ovlMount(t, dir, l, ",fsync=strict", func() {
		volatileChanges(t, l.Mnt)
		if err := os.Chmod(filepath.Join(l.Mnt, "ld/sub/x"), 0o600); err != nil { // metadata-only copy-up
			t.Error(err)
		}
	})
	if r.code != 0 {
		t.Fatalf("fsync=strict: %s", r.stderr)
	}
	if _, err := os.Lstat(filepath.Join(l.Work, "work/incompat")); !os.IsNotExist(err) {
		t.Errorf("fsync=strict left work/incompat: %v", err)
	}
	if err := kernelMount(t, l, "", func() {
		if got := volatileView(l.Mnt); got != volatileWant {
			t.Errorf("the kernel reads %s, want %s", got, volatileWant)
		}
		if st, err := os.Stat(filepath.Join(l.Mnt, "ld/sub/x")); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("ld/sub/x after chmod under fsync=strict: %v %v", st, err)
		}
	}); err != nil {
		t.Fatal(err)
	}
}
