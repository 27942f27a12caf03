package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// stressFiles is the number of lower files per directory of
// TestCrashKillStress (of 1 KiB to 4 MiB), stressReset how many kills
// one upper takes.
const (
	stressFiles = 24
	stressReset = 6
)

// crashKillsEnv sets how many times TestCrashKillStress kills the daemon
// (default 24).
const crashKillsEnv = "OVL_CRASH_KILLS"

// selfChecked is data that proves it is whole: a body, then "#", the hex
// sha256 of the body and a newline. Every file of the stress test's lower
// layer and every file its load writes has this form, so a file cut short
// or left empty by a half-made copy-up shows.
func selfChecked(r *rand.Rand, size int) []byte {
	body := make([]byte, size)
	for i := range body {
		body[i] = byte('a' + r.IntN(26))
	}
	sum := sha256.Sum256(body)
	return append(append(body, '#'), hex.EncodeToString(sum[:])+"\n"...)
}

// checkSelf reports whether b has the form selfChecked makes.
func checkSelf(b []byte) bool {
	const tail = 1 + 64 + 1
	if len(b) < tail || b[len(b)-tail] != '#' || b[len(b)-1] != '\n' {
		return false
	}
	sum := sha256.Sum256(b[:len(b)-tail])
	return hex.EncodeToString(sum[:]) == string(b[len(b)-tail+1:len(b)-1])
}

// TestCrashKillStress (issue 19): a mixed load of copy-ups, whole-file
// writes renamed into place, renames of files and directories and rm -rf
// from several goroutines, with the daemon killed (SIGKILL) after a random
// number of operations, then remounted, over and over. After each remount
// work/ is empty, the view has no whiteout or name listed twice, and every
// file of the view is whole (its lower content or a file the load wrote
// completely: all are self-checking); the lower layer never changes; at the
// end the kernel's overlayfs shows the same view of the upper.
// Files the load was still writing (*.tmp) may be partial: a write that
// was not finished is not promised to be whole.
func TestCrashKillStress(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	kills := 24
	if v := os.Getenv(crashKillsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q", crashKillsEnv, v)
		}
		kills = n
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %d kills", seed, kills)
	r := rand.New(rand.NewPCG(seed, 0))

	base := t.TempDir()
	lowerDir := filepath.Join(base, "l")
	var lower k.Layer
	for d := range 6 {
		for f := range stressFiles {
			lower = append(lower, k.File(fmt.Sprintf("d%d/f%d", d, f), string(selfChecked(r, 1<<(10+r.IntN(12))))))
		}
		for s := range 3 {
			lower = append(lower, k.File(fmt.Sprintf("d%d/t%d/s/g", d, s), string(selfChecked(r, 100))))
		}
	}
	if err := k.Build(lowerDir, k.OverlayPrefix(false), lower); err != nil {
		t.Fatal(err)
	}
	lowerBefore := crashLowerSums(t, lowerDir)
	l := k.Layout{Lowers: []string{lowerDir}, Upper: base + "/u", Work: base + "/w", Mnt: base + "/m"}
	for _, p := range []string{l.Upper, l.Work, l.Mnt} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cliCleanupMount(t, l.Mnt)
	opts := k.DefaultOptions()

	totalOps := 0
	for kill := 0; kill < kills; kill++ {
		if kill%stressReset == 0 {
			// A fresh upper now and then, so that copy-ups never run out.
			for _, p := range []string{l.Upper, l.Work} {
				if err := os.RemoveAll(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(p, 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
		// Every third time a crash point is armed as well, so that some
		// kills land inside a change under a concurrent load for sure.
		var env []string
		if kill%3 == 2 {
			pts := []string{"copyup.data", "copyup.attrs", "copyup.rename", "copyup.renamed", "whiteout.temp",
				"whiteout.placed", "rename.redirect", "rename.impure", "rename.whiteout", "create.exchanged"}
			env = []string{fmt.Sprintf("OVL_CRASH=%s:%d", pts[r.IntN(len(pts))], 1+r.IntN(3))}
		}
		if err := crashMount(bin, l, opts, env); err != nil {
			t.Fatalf("kill %d: mount: %v", kill, err)
		}
		if names, err := crashWorkEntries(l.Work); err != nil || len(names) > 0 {
			t.Errorf("kill %d: work/ after the mount holds %v (%v), want nothing", kill, names, err)
		}
		stressCheckView(t, fmt.Sprintf("before kill %d", kill), l.Mnt)
		if t.Failed() {
			t.FailNow()
		}
		pid, err := (k.Ovl{Bin: bin}).DaemonPid(l.Mnt)
		if err != nil {
			t.Fatal(err)
		}
		pfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		target := int64(5 + r.IntN(80))
		var ops atomic.Int64
		var inCopy atomic.Int32  // operations that may be copying up
		var running atomic.Int32 // workers
		var stop atomic.Bool
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			running.Add(1)
			go func() {
				defer wg.Done()
				defer running.Add(-1)
				wr := rand.New(rand.NewPCG(seed, uint64(kill*16+w+1)))
				for i := 0; !stop.Load(); i++ {
					ops.Add(1)
					if stressOp(wr, l.Mnt, fmt.Sprintf("%d-%d-%d", kill, w, i), &inCopy) == unix.ENOTCONN {
						return
					}
				}
			}()
		}
		// Kill after target operations, in the middle of a copy-up where
		// one comes within 500 more; the time bound only catches a hung
		// load.
		// An armed point may have killed the daemon already: then the
		// workers are all gone.
		for deadline := time.Now().Add(120 * time.Second); time.Now().Before(deadline) && running.Load() > 0; {
			if n := ops.Load(); n >= target && (inCopy.Load() > 0 || n >= target+500) {
				break
			}
			runtime.Gosched()
		}
		if err := unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0); err != nil && err != unix.ESRCH {
			t.Fatalf("kill %d: %v", kill, err)
		}
		if !crashWaitExit(pfd, 60*time.Second) {
			t.Fatalf("kill %d: the daemon did not die", kill)
		}
		unix.Close(pfd)
		stop.Store(true)
		wg.Wait()
		totalOps += int(ops.Load())
		if err := unix.Unmount(l.Mnt, unix.MNT_DETACH); err != nil {
			t.Fatalf("kill %d: umount -l: %v", kill, err)
		}
		crashCheckLower(t, fmt.Sprintf("kill %d", kill), lowerDir, lowerBefore)
	}
	t.Logf("%d kills over %d operations", kills, totalOps)

	// The last state: whole in ovl, and the same under the kernel.
	if err := crashMount(bin, l, opts, nil); err != nil {
		t.Fatal(err)
	}
	stressCheckView(t, "at the end", l.Mnt)
	got := crashView(t, "ovl at the end", l.Mnt)
	if err := (k.Ovl{Bin: bin}).Unmount(l.Mnt); err != nil {
		t.Fatal(err)
	}
	if err := (k.Kernel{}).Mount(l, opts); err != nil {
		t.Fatalf("the kernel refuses the upper: %v", err)
	}
	kv := crashView(t, "kernel at the end", l.Mnt)
	if err := (k.Kernel{}).Unmount(l.Mnt); err != nil {
		t.Fatal(err)
	}
	crashSameView(t, t.Errorf, "the kernel's view of the upper vs ovl's", kv, got)
	crashCheckLower(t, "at the end", lowerDir, lowerBefore)
}

// stressOp does one random operation of the load under mnt and returns its
// errno (0 if none); errors other than ENOTCONN (the daemon is gone) are
// expected, as the workers race each other.
func stressOp(r *rand.Rand, mnt, id string, inCopy *atomic.Int32) error {
	dir := filepath.Join(mnt, fmt.Sprintf("d%d", r.IntN(6)))
	file := filepath.Join(dir, fmt.Sprintf("f%d", r.IntN(stressFiles)))
	var err error
	switch r.IntN(9) {
	case 0, 1: // copy-up without changing the data
		var fd int
		inCopy.Add(1)
		if fd, err = unix.Open(file, unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
		}
		inCopy.Add(-1)
	case 2: // copy-up for a change of metadata
		inCopy.Add(1)
		err = unix.Chmod(file, uint32(0o600+r.IntN(0o100)))
		inCopy.Add(-1)
	case 3, 4: // a whole file written aside and renamed over a name
		tmp := filepath.Join(dir, "w-"+id+".tmp")
		if err = os.WriteFile(tmp, selfChecked(r, 1<<(6+r.IntN(12))), 0o644); err == nil {
			dst := file
			if r.IntN(2) == 0 {
				dst = filepath.Join(dir, "n-"+id)
			}
			err = unix.Rename(tmp, dst)
		}
	case 5: // a file moves to another directory
		err = unix.Rename(file, filepath.Join(mnt, fmt.Sprintf("d%d", r.IntN(6)), "r-"+id))
	case 6: // rm -rf of a subtree, or of a file
		t := filepath.Join(dir, fmt.Sprintf("t%d", r.IntN(3)))
		if r.IntN(3) == 0 {
			t = file
		}
		err = os.RemoveAll(t)
	case 7: // a directory renamed (a redirect), or made again
		t := filepath.Join(dir, fmt.Sprintf("t%d", r.IntN(3)))
		if err = unix.Rename(t, t+"-"+id); err != nil {
			// Written aside and renamed, as every file of the load.
			tmp := filepath.Join(dir, "g-"+id+".tmp")
			if err = os.MkdirAll(filepath.Join(t, "s"), 0o755); err == nil {
				if err = os.WriteFile(tmp, selfChecked(r, 100), 0o644); err == nil {
					err = unix.Rename(tmp, filepath.Join(t, "s", "g"))
				}
			}
		}
	case 8: // a new directory renamed over one that holds whiteouts
		t := filepath.Join(dir, fmt.Sprintf("t%d", r.IntN(3)), "s")
		nd := filepath.Join(dir, "n-dir-"+id)
		if err = os.RemoveAll(filepath.Join(t, "g")); err == nil {
			if err = os.Mkdir(nd, 0o755); err == nil {
				err = unix.Rename(nd, t)
			}
		}
	}
	if e, ok := k.Errno(err); ok {
		return e
	}
	return err
}

// stressCheckView walks the view: no walk problem (d_ino is st_ino too),
// every file whole.
func stressCheckView(t *testing.T, label, mnt string) {
	t.Helper()
	tr, err := k.Snapshot(mnt, k.SnapOptions{NoHash: true, DIno: true})
	if err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	for _, p := range tr.Problems {
		t.Errorf("%s: %s", label, p)
	}
	files, bad := 0, 0
	err = filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		files++
		if strings.HasSuffix(p, ".tmp") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !checkSelf(b) {
			bad++
			if bad <= 5 {
				t.Errorf("%s: %s is not whole: %d bytes, ends %q", label, strings.TrimPrefix(p, mnt), len(b), b[max(0, len(b)-20):])
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: walk: %v", label, err)
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d files are not whole", label, bad, files)
	}
}
