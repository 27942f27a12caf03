package fsck_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/fsck"
	"github.com/ovl-project/ovl/internal/testutil"
	"github.com/ovl-project/ovl/overlay"
)

// brokenCase is an upper broken on purpose in one way.
type brokenCase struct {
	name  string
	build func(e *env)
	// kinds fsck -n must report (sorted; notes as "note:KIND").
	kinds []string
	// mode repairs with want exit status; after it, a run in Check
	// mode must give again (nil: no finding at all, exit 0).
	mode  fsck.Mode
	want  int
	again []string
	// check looks at the layers after the repair.
	check func(e *env)
}

var brokenCases = []brokenCase{{
	// A whiteout whose name no lower layer has: in a merged directory,
	// and in one only the upper has (where the kernel lists it as an
	// entry that cannot be stat'ed). Removed by -p; the one that hides a
	// lower file stays.
	name: "orphan-whiteout",
	build: func(e *env) {
		e.file("0", "d/real", "x")
		e.mkdir("u", "d")
		e.whiteout("u", "d/real")
		e.whiteout("u", "d/ghost")
		e.mkdir("u", "new")
		e.whiteout("u", "new/ghost")
		e.file("1", "e/x", "bottom")
		e.mkdir("0", "e")
		e.whiteout("0", "e/x") // the top lower whites it out already
		e.mkdir("u", "e")
		e.whiteout("u", "e/x")
	},
	kinds: []string{"orphan-whiteout", "orphan-whiteout", "orphan-whiteout"},
	mode:  fsck.Preen, want: fsck.ExitRepaired,
	check: func(e *env) {
		if !isWhiteout(e.p("u", "d/real")) || exists(e.p("u", "d/ghost")) || exists(e.p("u", "new/ghost")) || exists(e.p("u", "e/x")) {
			e.t.Error("wrong whiteouts removed")
		}
		if got := e.kernelList("new"); len(got) != 0 {
			e.t.Errorf("kernel lists %v in new/", got)
		}
	},
}, {
	// An opaque directory with no lower directory of its name is only a
	// note (the kernel makes such directories: mv of a new directory into
	// a merged one); -y removes the marker, -p leaves it.
	name: "useless-opaque",
	build: func(e *env) {
		e.mkdir("0", "lowdir")
		e.mkdir("u", "lowdir")
		e.set("u", "lowdir", format.Opaque, "y")
		e.mkdir("u", "nodir")
		e.set("u", "nodir", format.Opaque, "y")
	},
	kinds: []string{"note:useless-opaque"},
	mode:  fsck.Yes, want: fsck.ExitClean,
	check: func(e *env) {
		if _, ok := e.get("u", "nodir", format.Opaque); ok {
			e.t.Error("opaque not removed from nodir")
		}
		if v, _ := e.get("u", "lowdir", format.Opaque); v != "y" {
			e.t.Error("opaque removed from lowdir, which hides a lower directory")
		}
	},
}, {
	// Invalid redirects: a relative one with '/', an absolute one with
	// "..", which would leave the layers. The kernel fails their lookup;
	// -y drops them and makes the directories opaque.
	name: "invalid-redirect",
	build: func(e *env) {
		e.mkdir("0", "a")
		e.file("0", "a/f", "x")
		e.mkdir("u", "r1")
		e.set("u", "r1", format.Redirect, "a/b")
		e.mkdir("u", "r2")
		e.file("u", "r2/mine", "user data")
		e.set("u", "r2", format.Redirect, "/a/../../etc")
	},
	kinds: []string{"invalid-redirect", "invalid-redirect"},
	mode:  fsck.Yes, want: fsck.ExitRepaired,
	check: func(e *env) {
		for _, d := range []string{"r1", "r2"} {
			if _, ok := e.get("u", d, format.Redirect); ok {
				e.t.Errorf("%s keeps its redirect", d)
			}
		}
		if got := e.kernelList("r2"); !reflect.DeepEqual(got, []string{"mine"}) {
			e.t.Errorf("kernel lists %v in r2, want [mine]", got)
		}
	},
}, {
	// -p leaves an invalid redirect: its repair needs -y.
	name: "invalid-redirect-preen",
	build: func(e *env) {
		e.mkdir("u", "r1")
		e.set("u", "r1", format.Redirect, "")
	},
	kinds: []string{"invalid-redirect"},
	mode:  fsck.Preen, want: fsck.ExitUncorrected,
	again: []string{"invalid-redirect"},
}, {
	// A dangling redirect (no lower has its target): dropped by -p; where
	// a lower directory has the directory's own name, the directory is
	// marked opaque, so that the view stays the same.
	name: "dangling-redirect",
	build: func(e *env) {
		e.mkdir("0", "same")
		e.file("0", "same/hidden", "x")
		e.mkdir("u", "same")
		e.set("u", "same", format.Redirect, "/gone")
		e.mkdir("u", "other")
		e.set("u", "other", format.Redirect, "gone2")
		// The lower same/ is hidden: a whiteout in same/ hides nothing.
		e.whiteout("u", "same/hidden")
	},
	kinds: []string{"dangling-redirect", "dangling-redirect", "orphan-whiteout"},
	mode:  fsck.Preen, want: fsck.ExitRepaired,
	check: func(e *env) {
		if _, ok := e.get("u", "same", format.Redirect); ok {
			e.t.Error("redirect kept")
		}
		if v, _ := e.get("u", "same", format.Opaque); v != "y" {
			e.t.Error("same/ not made opaque")
		}
		if _, ok := e.get("u", "other", format.Opaque); ok {
			e.t.Error("other/ made opaque, though nothing is below it")
		}
		if got := e.kernelList("same"); len(got) != 0 {
			e.t.Errorf("kernel shows %v in same/ after the repair", got)
		}
	},
}, {
	// Two directories redirect to one lower directory: it shows twice.
	// fsck cannot tell which one is meant: reported, left (exit 4).
	name: "duplicate-redirect",
	build: func(e *env) {
		e.mkdir("0", "a")
		e.file("0", "a/f", "x")
		e.whiteout("u", "a")
		e.mkdir("u", "b")
		e.set("u", "b", format.Redirect, "/a")
		e.mkdir("u", "c")
		e.set("u", "c", format.Redirect, "a")
	},
	kinds: []string{"duplicate-redirect"},
	mode:  fsck.Yes, want: fsck.ExitUncorrected,
	again: []string{"duplicate-redirect"},
}, {
	// The redirect a lower directory's own name would give: a directory
	// renamed without the whiteout at its old name shows twice too.
	name: "duplicate-own-name",
	build: func(e *env) {
		e.mkdir("0", "a")
		e.mkdir("u", "b")
		e.set("u", "b", format.Redirect, "a")
	},
	kinds: []string{"duplicate-redirect"},
	mode:  fsck.Yes, want: fsck.ExitUncorrected,
	again: []string{"duplicate-redirect"},
}, {
	// Origins that no longer match: a lower file replaced offline (its
	// handle is stale), a lower directory replaced (the upper copy
	// merges a new one), an origin of a lower directory on an upper file
	// (the kernel answers EIO). -y removes the file origins and records
	// the directory merged now.
	name: "stale-origin",
	build: func(e *env) {
		e.file("0", "f", "old")
		e.copyUp("0", "f")
		e.must(os.Remove(e.p("0", "f")))
		e.file("0", "f", "new")
		e.mkdir("0", "d")
		e.copyUp("0", "d")
		e.must(os.Remove(e.p("0", "d")))
		e.mkdir("0", "d")
		e.mkdir("0", "somedir")
		e.file("u", "g", "x")
		e.must(unix.Lsetxattr(e.p("u", "g"), e.names.Name(format.Origin), e.origin("0", "somedir"), 0))
	},
	kinds: []string{"stale-origin", "stale-origin", "stale-origin"},
	mode:  fsck.Yes, want: fsck.ExitRepaired,
	check: func(e *env) {
		for _, f := range []string{"f", "g"} {
			if _, ok := e.get("u", f, format.Origin); ok {
				e.t.Errorf("%s keeps its stale origin", f)
			}
		}
		if v, _ := e.get("u", "d", format.Origin); v != string(e.origin("0", "d")) {
			e.t.Error("d/ does not record the lower directory merged now")
		}
	},
}, {
	// -p removes the stale file origins (the kernel ignores them) but
	// leaves the directory's: rewriting it is a decision.
	name: "stale-origin-preen",
	build: func(e *env) {
		e.file("0", "f", "old")
		e.copyUp("0", "f")
		e.must(os.Remove(e.p("0", "f")))
		e.mkdir("0", "d")
		e.copyUp("0", "d")
		e.must(os.Remove(e.p("0", "d")))
		e.mkdir("0", "d")
	},
	kinds: []string{"stale-origin", "stale-origin"},
	mode:  fsck.Preen, want: fsck.ExitUncorrected,
	again: []string{"stale-origin"},
}, {
	// A copied-up entry whose directory lacks overlay.impure: set by -p.
	// An impure marker nothing needs is a note.
	name: "impure",
	build: func(e *env) {
		e.file("0", "d/f", "x")
		e.copyUp("0", "d")
		e.copyUp("0", "d/f")
		e.must(unix.Lremovexattr(e.p("u", "d"), e.names.Name(format.Impure)))
		e.mkdir("u", "plain")
		e.set("u", "plain", format.Impure, "y")
	},
	kinds: []string{"missing-impure", "note:stale-impure"},
	mode:  fsck.Preen, want: fsck.ExitRepaired,
	again: []string{"note:stale-impure"},
	check: func(e *env) {
		if v, _ := e.get("u", "d", format.Impure); v != "y" {
			e.t.Error("impure not set on d/")
		}
	},
}, {
	// index=on: an orphan entry (no name uses it; removed by -p as the
	// next mount would), an entry whose overlay.nlink gives more names
	// than the upper and the lower have together (left: exit 4).
	name: "index",
	build: func(e *env) {
		e.file("0", "h1", "x")
		e.must(os.Link(e.p("0", "h1"), e.p("0", "h2")))
		o := e.copyUp("0", "h1")
		e.mkdir("w", "index")
		idx := e.p("w", "index/"+e.indexName(o))
		e.must(os.Link(e.p("u", "h1"), idx))
		e.set("u", "h1", format.Nlink, "U+7")
		e.file("0", "o1", "y")
		e.must(os.Link(e.p("0", "o1"), e.p("0", "o2")))
		oo := e.origin("0", "o1")
		e.file("w", "index/"+e.indexName(oo), "y")
		e.must(unix.Lsetxattr(e.p("w", "index/"+e.indexName(oo)), e.names.Name(format.Origin), oo, 0))
		e.set("w", "index/"+e.indexName(oo), format.Nlink, "U-1")
	},
	kinds: []string{"nlink", "note:index"},
	mode:  fsck.Preen, want: fsck.ExitUncorrected,
	again: []string{"nlink"},
	check: func(e *env) {
		names, _ := os.ReadDir(e.p("w", "index"))
		if len(names) != 1 {
			e.t.Errorf("index holds %d entries, want 1 (the orphan removed)", len(names))
		}
	},
}, {
	// A metacopy file whose data is in no lower layer: the data is lost,
	// nothing can be done but report it (exit 4 even with -y).
	name: "metacopy",
	build: func(e *env) {
		e.file("0", "m", "data")
		e.copyUp("0", "m")
		e.must(os.Truncate(e.p("u", "m"), 0))
		e.must(os.Truncate(e.p("u", "m"), 4))
		e.set("u", "m", format.Metacopy, "")
		e.must(os.Remove(e.p("0", "m")))
		e.file("u", "m2", "")
		e.set("u", "m2", format.Metacopy, "")
		e.set("u", "m2", format.Redirect, "/nowhere")
	},
	kinds: []string{"metacopy", "metacopy", "stale-origin"},
	mode:  fsck.Yes, want: fsck.ExitUncorrected,
	again: []string{"metacopy", "metacopy", "stale-origin"},
}, {
	// A metacopy file over lower data that changed offline: its origin
	// names a file that is no longer at its name (m1), or the data has
	// another size (m2). Reported, left.
	name: "metacopy-changed",
	build: func(e *env) {
		e.file("0", "m1", "data")
		e.copyUp("0", "m1")
		e.set("u", "m1", format.Metacopy, "")
		e.must(os.Rename(e.p("0", "m1"), e.p("0", "kept")))
		e.file("0", "m1", "othr")
		e.file("0", "m2", "data")
		e.copyUp("0", "m2")
		e.set("u", "m2", format.Metacopy, "")
		e.file("0", "m2", "longer data")
	},
	kinds: []string{"metacopy", "stale-origin"},
	mode:  fsck.Yes, want: fsck.ExitUncorrected,
	again: []string{"metacopy", "stale-origin"},
}, {
	// Leftovers of a mount that died: temporaries in work/work (a file
	// and a directory with content); the shared whiteout stays, as the
	// kernel and ovl keep it.
	name: "work-leftovers",
	build: func(e *env) {
		e.file("w", "work/#5", "partial copy")
		e.file("w", "work/#6/x", "y")
		e.whiteout("w", "work/#7")
	},
	kinds: []string{"work-leftover", "work-leftover"},
	mode:  fsck.Preen, want: fsck.ExitRepaired,
	check: func(e *env) {
		if exists(e.p("w", "work/#5")) || exists(e.p("w", "work/#6")) || !exists(e.p("w", "work/#7")) {
			e.t.Error("wrong work/ entries removed")
		}
	},
}, {
	// A stale volatile marker: -p leaves it (exit 4).
	name: "volatile-preen",
	build: func(e *env) {
		e.file("w", "work/incompat/volatile/dirty", "")
	},
	kinds: []string{"volatile-marker"},
	mode:  fsck.Preen, want: fsck.ExitUncorrected,
	again: []string{"volatile-marker"},
}, {
	// -y removes it, explaining the risk, and the kernel mounts again.
	name: "volatile-yes",
	build: func(e *env) {
		e.file("w", "work/incompat/volatile/dirty", "")
	},
	kinds: []string{"volatile-marker"},
	mode:  fsck.Yes, want: fsck.ExitRepaired,
	check: func(e *env) {
		if exists(e.p("w", "work/incompat")) {
			e.t.Error("work/incompat left")
		}
		e.kernelList(".")
	},
}, {
	// AUFS forms in the upper (a mount program wrote it): a whiteout of
	// a lower name becomes a kernel whiteout, one that hides nothing goes,
	// the opaque marker becomes overlay.opaque. -p leaves the whiteout
	// beside the object it hides (a decision: the object is removed).
	name: "aufs-preen",
	build: func(e *env) {
		e.file("0", "x", "lower")
		e.file("0", "d/y", "lower")
		e.file("0", "side", "lower")
		e.file("u", ".wh.x", "")
		e.file("u", ".wh.nothing", "")
		e.mkdir("u", "d")
		e.file("u", "d/.wh..wh..opq", "")
		e.file("u", "side", "hidden upper")
		e.file("u", ".wh.side", "")
	},
	kinds: []string{"aufs-whiteout", "aufs-whiteout", "aufs-whiteout", "aufs-whiteout"},
	mode:  fsck.Preen, want: fsck.ExitUncorrected,
	again: []string{"aufs-whiteout"},
	check: func(e *env) {
		if !isWhiteout(e.p("u", "x")) || exists(e.p("u", ".wh.x")) || exists(e.p("u", ".wh.nothing")) || exists(e.p("u", "nothing")) ||
			exists(e.p("u", "d/.wh..wh..opq")) {
			e.t.Error("AUFS entries not converted")
		}
		if v, _ := e.get("u", "d", format.Opaque); v != "y" {
			e.t.Error("d/ not made opaque")
		}
		if !exists(e.p("u", "side")) || !exists(e.p("u", ".wh.side")) {
			e.t.Error("-p removed what an AUFS whiteout hides")
		}
		got := e.kernelList(".")
		if slices.Contains(got, "x") || slices.Contains(got, ".wh.x") {
			e.t.Errorf("kernel shows %v", got)
		}
	},
}, {
	// -y also replaces the object an AUFS whiteout hides by a whiteout.
	name: "aufs-yes",
	build: func(e *env) {
		e.file("0", "side", "lower")
		e.file("u", "side", "hidden upper")
		e.file("u", ".wh.side", "")
	},
	kinds: []string{"aufs-whiteout"},
	mode:  fsck.Yes, want: fsck.ExitRepaired,
	check: func(e *env) {
		if !isWhiteout(e.p("u", "side")) || exists(e.p("u", ".wh.side")) {
			e.t.Error("not converted")
		}
	},
}}

// TestBroken builds each broken upper, checks that -n reports it and
// changes nothing, repairs it, and checks that a second run finds only
// what the repair mode leaves.
func TestBroken(t *testing.T) {
	testutil.RequireRoot(t)
	for _, bc := range brokenCases {
		t.Run(bc.name, func(t *testing.T) { testBroken(t, bc, false) })
	}
}

// TestBrokenUserxattr runs the cases that need no redirect, metacopy or
// index on an overlay with userxattr (user.overlay.*), where overlay
// xattrs in trusted.overlay.* mark nothing.
func TestBrokenUserxattr(t *testing.T) {
	testutil.RequireRoot(t)
	for _, bc := range brokenCases {
		switch bc.name {
		case "orphan-whiteout", "useless-opaque", "impure", "work-leftovers", "volatile-yes", "aufs-preen", "aufs-yes":
			t.Run(bc.name, func(t *testing.T) { testBroken(t, bc, true) })
		}
	}
}

func testBroken(t *testing.T, bc brokenCase, userxattr bool) {
	e := newEnv(t, 2)
	if userxattr {
		e.names = format.NewNames(true)
		e.cfg = overlay.Config{Lowers: e.lowers, Upper: e.upper, Work: e.work, UserXattr: true}
		// Marks of the other namespace are no marks: fsck must
		// not read them.
		e.mkdir("u", "trusted-marks")
		e.must(unix.Lsetxattr(e.p("u", "trusted-marks"), format.TrustedPrefix+format.Opaque, []byte("y"), 0))
		e.must(unix.Lsetxattr(e.p("u", "trusted-marks"), format.TrustedPrefix+format.Redirect, []byte("/nothing"), 0))
	}
	bc.build(e)
	before := e.dump()
	rep := e.run(fsck.Check)
	if got := kinds(rep); !reflect.DeepEqual(got, bc.kinds) {
		t.Errorf("-n found %v, want %v", got, bc.kinds)
	}
	wantN := fsck.ExitUncorrected
	if bc.kinds == nil || allNotes(bc.kinds) {
		wantN = fsck.ExitClean
	}
	if rep.ExitCode() != wantN {
		t.Errorf("-n: exit %d, want %d", rep.ExitCode(), wantN)
	}
	if after := e.dump(); after != before {
		t.Fatalf("-n changed the layers:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	rep = e.run(bc.mode)
	if rep.ExitCode() != bc.want {
		t.Errorf("mode %d: exit %d, want %d", bc.mode, rep.ExitCode(), bc.want)
	}
	for _, f := range rep.Findings {
		if f.Err != nil {
			t.Errorf("repair failed: %s", f)
		}
	}
	rep = e.run(fsck.Check)
	if got := kinds(rep); !reflect.DeepEqual(got, bc.again) {
		t.Errorf("second run found %v, want %v", got, bc.again)
	}
	// Idempotent: the same mode again changes nothing more.
	before = e.dump()
	e.run(bc.mode)
	if after := e.dump(); after != before {
		t.Errorf("a second repair changed the layers again:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if bc.check != nil {
		bc.check(e)
	}
}

func allNotes(ks []string) bool {
	for _, k := range ks {
		if len(k) < 5 || k[:5] != "note:" {
			return false
		}
	}
	return true
}

// TestInUse: fsck refuses an upper that a kernel overlay mount uses.
func TestInUse(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t, 1)
	e.file("0", "f", "x")
	mnt := filepath.Join(e.dir, "mnt")
	e.must(os.Mkdir(mnt, 0o755))
	e.must(unix.Mount("overlay", mnt, "overlay", 0, "lowerdir="+e.lowers[0]+",upperdir="+e.upper+",workdir="+e.work))
	defer unix.Unmount(mnt, 0)
	if _, err := fsck.Run(fsck.Options{Config: e.cfg, Mode: fsck.Yes}); err == nil {
		t.Fatal("fsck ran on an upper in use")
	} else {
		t.Logf("refused: %v", err)
	}
}

// TestVolatileRecord: the volatile marker's finding says what ovl's record
// of the mount tells (format.VolatileRecord, written by a volatile ovl
// mount next to the kernel's marker): another boot, device, mount or
// filesystem means writes may be lost; a record that matches this
// filesystem can be checked by a mount.
func TestVolatileRecord(t *testing.T) {
	testutil.RequireRoot(t)
	for _, c := range []struct {
		name   string
		change func(*format.VolatileRecord) // nil: no record
		want   string
	}{
		{"none", nil, "no ovl record"},
		{"rebooted", func(r *format.VolatileRecord) { r.BootID = "00000000-0000-0000-0000-000000000000" }, "rebooted since"},
		{"remounted", func(r *format.VolatileRecord) { r.MountID++ }, "mounted again since"},
		{"same", func(*format.VolatileRecord) {}, "volatile_recovery=check checks it"},
		{"sync failed", func(*format.VolatileRecord) {}, "own sync at its end failed"},
	} {
		e := newEnv(t, 1)
		e.file("w", "work/incompat/volatile/dirty", "")
		if c.change != nil {
			fd, err := unix.Open(e.upper, unix.O_PATH|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			rec, err := format.VolatileIdentity(e.upper, fd)
			unix.Close(fd)
			if err != nil {
				t.Fatal(err)
			}
			c.change(&rec)
			e.file("w", "work/incompat/volatile/"+format.VolatileRecordName, string(rec.Marshal()))
		}
		if c.name == "sync failed" {
			e.file("w", "work/incompat/volatile/"+format.VolatileFailedName, "fsync /u/f: input/output error\n")
		}
		rep := e.run(fsck.Check)
		if len(rep.Findings) != 1 || !strings.Contains(rep.Findings[0].What, c.want) {
			t.Errorf("%s: findings %v, want one saying %q", c.name, rep.Findings, c.want)
		}
	}
}

func bootID(t *testing.T) string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
