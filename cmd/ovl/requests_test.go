package main

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
)

// Requests per operation (issue 21): "ovl stats" counts the FUSE requests
// the daemon served, by opcode, and these tests bound the requests an
// operation costs through a real mount. Nothing else uses the test's
// mount, and "ovl stats" itself sends the mount no request.

// cliRequests returns the daemon's request counts of mount m in dir.
func cliRequests(t *testing.T, dir string) map[string]float64 {
	t.Helper()
	r := runOvl(t, dir, "stats", "m")
	if r.code != 0 {
		t.Fatalf("ovl stats: %s", r.stderr)
	}
	var st struct {
		Requests map[string]float64 `json:"requests"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Requests == nil {
		t.Fatalf("ovl stats printed %q (%v): no request counts", r.stdout, err)
	}
	return st.Requests
}

// requestsOf runs f on a fresh mount of cliTree with the extra options and
// returns the requests f caused, by opcode; setup runs before counting.
func requestsOf(t *testing.T, opts string, setup func(mnt string), f func(mnt string)) map[string]float64 {
	t.Helper()
	dir := cliTree(t)
	o := cliLayerOpts
	if opts != "" {
		o += "," + opts
	}
	cliMustMount(t, dir, "mount", "-o", o, "m")
	defer runOvl(t, dir, "umount", "m")
	mnt := filepath.Join(dir, "m")
	setup(mnt)
	before := cliRequests(t, dir)
	f(mnt)
	after := cliRequests(t, dir)
	d := map[string]float64{}
	for op, n := range after {
		if n -= before[op]; n != 0 {
			d[op] = n
		}
	}
	t.Logf("requests: %v", d)
	return d
}

// TestRequestsSetattrReplyKept: the attributes a SETATTR reply carries
// stay valid as long as a GETATTR's, so a stat after a chmod, utimes or
// truncate asks the daemon nothing (go-fuse sends a SETATTR reply with
// the timeout the node sets, and used to send zero).
func TestRequestsSetattrReplyKept(t *testing.T) {
	testutil.RequireRoot(t)
	const rounds = 20
	for _, pt := range []string{"", "passthrough=off"} {
		t.Run("opts="+pt, func(t *testing.T) {
			var f string
			d := requestsOf(t, pt, func(mnt string) {
				f = filepath.Join(mnt, "new")
				if err := os.WriteFile(f, []byte("data"), 0o644); err != nil {
					t.Fatal(err)
				}
				var st unix.Stat_t
				if err := unix.Lstat(f, &st); err != nil {
					t.Fatal(err)
				}
			}, func(mnt string) {
				for i := range rounds {
					mode := uint32(0o600 + i%2*0o44)
					if err := unix.Chmod(f, mode); err != nil {
						t.Fatal(err)
					}
					var st unix.Stat_t
					if err := unix.Lstat(f, &st); err != nil {
						t.Fatal(err)
					}
					if st.Mode&0o7777 != mode {
						t.Fatalf("mode %o after chmod %o", st.Mode&0o7777, mode)
					}
					ts := []unix.Timespec{{Sec: int64(i)}, {Sec: int64(1000 + i)}}
					if err := unix.UtimesNanoAt(unix.AT_FDCWD, f, ts, 0); err != nil {
						t.Fatal(err)
					}
					if err := unix.Lstat(f, &st); err != nil {
						t.Fatal(err)
					}
					if st.Mtim.Sec != int64(1000+i) {
						t.Fatalf("mtime %d after utimes %d", st.Mtim.Sec, 1000+i)
					}
				}
			})
			if d["SETATTR"] != 2*rounds {
				t.Errorf("%v SETATTRs for %d chmods and utimes", d["SETATTR"], 2*rounds)
			}
			if d["GETATTR"] != 0 {
				t.Errorf("%v GETATTRs for %d stats after a SETATTR reply, want 0", d["GETATTR"], 2*rounds)
			}
		})
	}
}

// TestRequestsKillprivV2: with FUSE_HANDLE_KILLPRIV_V2 the kernel leaves
// the setuid and setgid kill to the daemon: a chown sends no GETATTR
// before its SETATTR, and repeated writes to a file without privileges
// ask for security.capability once (the first write sets S_NOSEC), not
// once per write.
func TestRequestsKillprivV2(t *testing.T) {
	testutil.RequireRoot(t)
	const rounds = 20
	for _, pt := range []string{"", "passthrough=off"} {
		t.Run("opts="+pt, func(t *testing.T) {
			var f string
			d := requestsOf(t, pt, func(mnt string) {
				f = filepath.Join(mnt, "new")
				if err := os.WriteFile(f, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				var st unix.Stat_t
				if err := unix.Lstat(f, &st); err != nil {
					t.Fatal(err)
				}
			}, func(mnt string) {
				for i := range rounds {
					if err := unix.Chown(f, 0, i%2); err != nil {
						t.Fatal(err)
					}
				}
			})
			if d["GETATTR"] != 0 {
				t.Errorf("%v GETATTRs for %d chowns, want 0", d["GETATTR"], rounds)
			}
			var fd int
			d = requestsOf(t, pt, func(mnt string) {
				var err error
				fd, err = unix.Open(filepath.Join(mnt, "top.txt"), unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
			}, func(mnt string) {
				defer unix.Close(fd)
				for range rounds {
					if _, err := unix.Write(fd, []byte("x")); err != nil {
						t.Fatal(err)
					}
				}
			})
			if d["GETXATTR"] > 1 {
				t.Errorf("%v GETXATTRs for %d writes to one open file, want at most 1", d["GETXATTR"], rounds)
			}
		})
	}
}

// capV2 is a version 2 security.capability value granting cap (vfs_cap_data).
func capV2(c uint) string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000)
	binary.LittleEndian.PutUint32(b[4:], 1<<c)
	return string(b)
}

// TestKillprivNosec: under FUSE_HANDLE_KILLPRIV_V2 the kernel skips the
// privilege check of a write to an inode it marked S_NOSEC. A setuid mode
// or a security.capability given through the mount after such a write
// must still be dropped by the next write of a caller without
// CAP_FSETID, as by the kernel's overlayfs; so must a setgid with group
// execute, and a chown by anyone drops setuid.
func TestKillprivNosec(t *testing.T) {
	testutil.RequireRoot(t)
	owner := &k.Cred{UID: 1000, GID: 1000}
	var lay k.Layers
	lay.Lowers = make([]k.Layer, 1)
	for _, n := range []string{"suid", "sgid", "cap", "chown"} {
		lay.Upper = append(lay.Upper, k.File("u-"+n, "data").Mode(0o666).Owner(1000, 1000))
		lay.Lowers[0] = append(lay.Lowers[0], k.File("l-"+n, "data").Mode(0o666).Owner(1000, 1000))
	}
	for _, pt := range []string{"passthrough=off", ""} {
		t.Run("ovl-"+pt, func(t *testing.T) {
			opts := k.DefaultOptions()
			if pt != "" {
				opts.OvlExtra = []string{pt}
			}
			p := kcPair(t, opts, lay)
			for _, w := range []string{"u-", "l-"} {
				write := func(n string) k.Op { return k.Op{Op: "write", Path: w + n, Data: "x", Off: 1} }
				// A first write: the inode has no privileges (S_NOSEC).
				for _, n := range []string{"suid", "sgid", "cap", "chown"} {
					p.Ops(owner, write(n))
				}
				p.Ops(owner, k.Op{Op: "chmod", Path: w + "suid", Mode: 0o4766}, k.Op{Op: "chmod", Path: w + "sgid", Mode: 0o2776},
					k.Op{Op: "chmod", Path: w + "chown", Mode: 0o4766})
				p.Ops(nil, k.Op{Op: "setxattr", Path: w + "cap", Name: "security.capability", Data: capV2(unix.CAP_NET_RAW)})
				p.Ops(owner, write("suid"), write("sgid"), write("cap"), k.Op{Op: "chown", Path: w + "chown", UID: -1, GID: -1})
				res := p.Ops(nil, kcOp("lstat", w+"suid"), kcOp("lstat", w+"sgid"), kcOp("lstat", w+"chown"),
					k.Op{Op: "getxattr", Path: w + "cap", Name: "security.capability"})
				for i, want := range []string{"file 0766 1000:1000 size=4 nlink=1", "file 0776 1000:1000 size=4 nlink=1", "file 0766 1000:1000 size=4 nlink=1"} {
					if res[i].Out != want {
						t.Errorf("%s: %s, want %s", res[i].Out, res[i].Out, want)
					}
				}
				if res[3].Errno != unix.ENODATA {
					t.Errorf("security.capability of %scap after a write: %+v, want ENODATA", w, res[3])
				}
			}
			p.Unmount()
			p.Uppers("final")
		})
	}
}

// TestRequestsWarmWalk: a walk over directories whose listings the kernel
// keeps asks the daemon nothing per directory: directories open without
// an OPENDIR and close without a RELEASEDIR (FUSE_NO_OPENDIR_SUPPORT), and
// their listings come from the kernel's cache. A change through the mount
// is listed by the next walk.
func TestRequestsWarmWalk(t *testing.T) {
	testutil.RequireRoot(t)
	const dirs, rounds = 20, 3
	walk := func(t *testing.T, mnt string) int {
		n := 0
		err := filepath.WalkDir(filepath.Join(mnt, "walk"), func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			n++
			return unix.Lstat(p, &st)
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	dir := cliTree(t)
	cliMustMount(t, dir, "mount", "-o", cliLayerOpts, "m")
	defer runOvl(t, dir, "umount", "m")
	mnt := filepath.Join(dir, "m")
	for i := range dirs {
		sub := filepath.Join(mnt, "walk", "d"+string(rune('a'+i)))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "f"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The first listing of each directory fills the kernel's cache and
	// drops its atime; the second walk's stat asks for it again. Caches
	// dropped meanwhile (drop_caches by another test on the machine, memory
	// pressure) make the kernel forget the inodes and their listings: then
	// warm up and measure again.
	var before, after map[string]float64
	for try := 0; ; try++ {
		walk(t, mnt)
		walk(t, mnt)
		before = cliRequests(t, dir)
		for range rounds {
			if n := walk(t, mnt); n != 1+2*dirs {
				t.Fatalf("walk found %d names, want %d", n, 1+2*dirs)
			}
		}
		after = cliRequests(t, dir)
		if after["FORGET"] == before["FORGET"] {
			break
		}
		if try == 20 {
			t.Fatalf("the kernel forgot inodes during each of %d tries", try+1)
		}
		t.Logf("try %d: the kernel forgot inodes meanwhile; again", try)
	}
	t.Logf("requests: before %v, after %v", before, after)
	for _, op := range []string{"OPENDIR", "RELEASEDIR", "READDIR", "READDIRPLUS"} {
		if n := after[op] - before[op]; n != 0 {
			t.Errorf("%v %ss for %d warm walks over %d directories, want 0", n, op, rounds, dirs+1)
		}
	}
	if err := os.WriteFile(filepath.Join(mnt, "walk", "da", "g"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if n := walk(t, mnt); n != 2+2*dirs {
		t.Fatalf("walk after a create found %d names, want %d", n, 2+2*dirs)
	}
}
