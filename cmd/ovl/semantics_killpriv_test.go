package main

import (
	"fmt"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// TestSemanticsKillSuidSgid: which chown, chmod, truncate, open(O_TRUNC)
// and write, by whom, clears setuid and setgid, compared with the kernel's
// overlayfs on lower (copied up by the change) and upper files, with
// passthrough on and off. The kernel decides in
// the VFS (chown_common, setattr_prepare, setattr_should_drop_sgid,
// should_remove_suid): chown of a non-directory always drops setuid, and
// setgid when the file is group-executable or the caller is neither in
// the file's group nor has CAP_FSETID, even when the owner stays the same.
// FUSE passes the chown to the daemon without that decision (fuse_setattr
// only keeps setgid+group-exec), so ovl must make it.
func TestSemanticsKillSuidSgid(t *testing.T) {
	modes := []uint32{0o4000, 0o2000, 0o2010, 0o6755, 0o0755, 0o6777, 0o2767, 0o2070}
	creds := map[string]*k.Cred{
		"owner":  {UID: 1000, GID: 1000},
		"member": {UID: 1000, GID: 1000, Groups: []uint32{2000}},
		"root":   {UID: 0, GID: 0},
		"other":  {UID: 3000, GID: 3000},
	}
	type change struct {
		name string
		op   func(path string, m uint32) k.Op
	}
	changes := []change{
		{"chown-same", func(p string, m uint32) k.Op { return k.Op{Op: "chown", Path: p, UID: 1000, GID: 2000} }},
		{"chown-keep", func(p string, m uint32) k.Op { return k.Op{Op: "chown", Path: p, UID: -1, GID: -1} }},
		{"chown-gid", func(p string, m uint32) k.Op { return k.Op{Op: "chown", Path: p, UID: -1, GID: 1000} }},
		{"chown-uid", func(p string, m uint32) k.Op { return k.Op{Op: "chown", Path: p, UID: 1000, GID: -1} }},
		{"chown-other", func(p string, m uint32) k.Op { return k.Op{Op: "chown", Path: p, UID: 3000, GID: 3000} }},
		{"chmod-same", func(p string, m uint32) k.Op { return k.Op{Op: "chmod", Path: p, Mode: m} }},
		{"truncate", func(p string, m uint32) k.Op { return k.Op{Op: "truncate", Path: p, Off: 1} }},
		{"otrunc", func(p string, m uint32) k.Op { return k.Op{Op: "open", Path: p, Flags: unix.O_WRONLY | unix.O_TRUNC} }},
		{"write", func(p string, m uint32) k.Op { return k.Op{Op: "write", Path: p, Data: "x"} }},
	}
	credNames := []string{"owner", "member", "root", "other"}
	var lay k.Layers
	lay.Lowers = make([]k.Layer, 1)
	var runs []killRun
	for _, where := range []string{"l", "u"} {
		for _, cn := range credNames {
			for _, ch := range changes {
				for _, m := range modes {
					name := fmt.Sprintf("%s-%s-%s-%04o", where, cn, ch.name, m)
					e := k.File(name, "data").Mode(m).Owner(1000, 2000)
					if where == "l" {
						lay.Lowers[0] = append(lay.Lowers[0], e)
					} else {
						lay.Upper = append(lay.Upper, e)
					}
					runs = append(runs, killRun{cn, ch.op(name, m)})
				}
			}
		}
	}
	for _, pt := range []string{"passthrough=off", ""} {
		t.Run("ovl-"+pt, func(t *testing.T) {
			opts := k.DefaultOptions()
			if pt != "" {
				opts.OvlExtra = []string{pt}
			}
			killPrivRun(t, opts, lay, runs, creds, credNames)
		})
	}
}

type killRun struct {
	cred string
	op   k.Op
}

func killPrivRun(t *testing.T, opts k.Options, lay k.Layers, runs []killRun, creds map[string]*k.Cred, credNames []string) {
	p := kcPair(t, opts, lay)
	for _, cn := range credNames {
		var ops []k.Op
		for _, r := range runs {
			if r.cred == cn {
				ops = append(ops, r.op, kcOp("lstat", r.op.Path))
			}
		}
		p.Ops(creds[cn], ops...)
	}
	// Absolute checks of the rules, so that a difference both sides share
	// shows too.
	res := p.Ops(nil,
		kcOp("lstat", "u-owner-chown-same-2000"),
		kcOp("lstat", "u-member-chown-same-2000"),
		kcOp("lstat", "u-root-chown-same-2000"),
		kcOp("lstat", "u-root-chown-same-2010"),
		kcOp("lstat", "l-owner-chown-keep-4000"),
		kcOp("lstat", "l-owner-chmod-same-2000"),
	)
	want := []string{
		"file 0000 1000:2000 size=4 nlink=1",
		"file 2000 1000:2000 size=4 nlink=1",
		"file 2000 1000:2000 size=4 nlink=1",
		"file 0010 1000:2000 size=4 nlink=1",
		"file 0000 1000:2000 size=4 nlink=1",
		"file 0000 1000:2000 size=4 nlink=1",
	}
	for i, w := range want {
		if res[i].Out != w {
			t.Errorf("lstat %s: %s, want %s", res[i].Out, res[i].Out, w)
		}
	}
	p.Unmount()
	p.Uppers("final")
}
