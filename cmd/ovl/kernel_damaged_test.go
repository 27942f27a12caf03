package main

import (
	"strings"
	"testing"

	"github.com/ovl-project/ovl/format"
	k "github.com/ovl-project/ovl/internal/kernelcmp"
)

// Damaged or hostile layer metadata: every overlay xattr ovl reads
// (redirect, opaque, whiteout, metacopy, origin, impure, nlink, upper),
// with empty, over-long, NUL-holding and garbage values, on files and
// directories, in the upper and in a lower layer. The kernel's overlayfs
// is the reference; every case runs the same ops on both.

// damagedCase is one damaged object in its own top-level directory (name):
// the entries of each layer (paths relative to that directory) and the
// object the ops look at.
type damagedCase struct {
	name      string
	upper, l1 k.Layer // upper, top lower
	l0        k.Layer // bottom lower
	obj       string  // relative to the case directory
	dir       bool    // obj is a directory
	// intended holds, by option set ("*": all), a difference kept on
	// purpose (docs/differences.md): there only that op runs, and each
	// side must answer exactly as recorded.
	intended map[string]damagedDiff
}

// damagedDiff is one documented difference: op (relative to the case
// directory) and each side's Result.String().
type damagedDiff struct {
	op             k.Op
	kernel, ovlOut string
}

// damagedValues are the classes of bad values each xattr gets.
var damagedValues = []struct{ name, v string }{
	{"empty", ""},
	{"long", "y" + strings.Repeat("z", 299)},
	{"nul", "y\x00z"},
	{"nulfirst", "\x00y"},
	{"garbage", "\xff\xfe\x01junk"},
}

// damagedCases builds the table: valid controls first, then each xattr
// with each bad value, where the kernel reads it.
func damagedCases() []damagedCase {
	var cs []damagedCase
	add := func(c damagedCase) { cs = append(cs, c) }

	// Redirects of a directory d with a lower d of its own and a lower t
	// it may point to; the case directory is the root of absolute ones.
	redirects := func(c string) []struct{ name, v string } {
		return []struct{ name, v string }{
			{"ok-rel", "t"}, {"ok-abs", "/" + c + "/t"},
			{"empty", ""}, {"nul", "t\x00junk"}, {"nulfirst", "\x00t"}, {"absnul", "/" + c + "/t\x00/x"},
			{"dotdot-abs", "/../" + c + "/t"}, {"dotdot-mid", "/" + c + "/../" + c + "/t"}, {"dotdot", ".."},
			{"dot", "."}, {"dot-abs", "/" + c + "/./t"}, {"slash", "/"}, {"trailing", "/" + c + "/t/"},
			{"double", "/" + c + "//t"}, {"relslash", "x/t"}, {"long", strings.Repeat("a", 300)},
			{"longabs", "/" + c + "/" + strings.Repeat("a", 300)}, {"garbage", "\xff\xfe\x01"},
			{"tofile", "tf"}, {"missing", "nothere"}, {"etc", "/../../etc"}, {"etcrel", "../../etc"},
		}
	}
	for _, r := range redirects("X") {
		// In the upper: a directory with a redirect and no origin.
		c := "rdu-" + r.name
		v := strings.ReplaceAll(r.v, "/X/", "/"+c+"/")
		add(damagedCase{name: c, dir: true, obj: "d",
			upper: k.Layer{k.Dir("d").Xattr("overlay.redirect", v).Xattr("user.k", "u"), k.File("d/up", "up")},
			l1: k.Layer{k.Dir("d"), k.File("d/own", "own"), k.Dir("t"), k.File("t/intgt", "tgt"),
				k.File("tf", "a file"), k.Dir("x"), k.Dir("x/t"), k.File("x/t/deep", "deep")},
		})
		// In a lower layer above another (the kernel follows redirects
		// of every lower but the last).
		c = "rdl-" + r.name
		v = strings.ReplaceAll(r.v, "/X/", "/"+c+"/")
		add(damagedCase{name: c, dir: true, obj: "d",
			l1: k.Layer{k.Dir("d").Xattr("overlay.redirect", v).Xattr("user.k", "l1"), k.File("d/inl1", "l1")},
			l0: k.Layer{k.Dir("d"), k.File("d/own", "own"), k.Dir("t"), k.File("t/intgt", "tgt"),
				k.File("tf", "a file"), k.Dir("x"), k.Dir("x/t"), k.File("x/t/deep", "deep")},
		})
	}
	// A redirect on a regular file (metacopy=on follows it) and on a
	// symlink (never read).
	for _, r := range []struct{ name, v string }{{"ok", "g"}, {"empty", ""}, {"nul", "g\x00x"}, {"dotdot", ".."}, {"garbage", "\xff"}} {
		add(damagedCase{name: "rdf-" + r.name, obj: "f",
			upper: k.Layer{k.File("f", "upper f").Xattr("overlay.redirect", r.v).Xattr("user.k", "u")},
			l1:    k.Layer{k.File("f", "lower f"), k.File("g", "lower g")},
		})
	}

	// overlay.opaque on an upper directory and on a lower one over
	// another, and on a file.
	opaques := append([]struct{ name, v string }{{"y", "y"}, {"x", "x"}, {"n", "n"}, {"yes", "yes"}}, damagedValues...)
	for _, v := range opaques {
		add(damagedCase{name: "opu-" + v.name, dir: true, obj: "d",
			upper: k.Layer{k.Dir("d").Xattr("overlay.opaque", v.v), k.File("d/up", "up")},
			l1:    k.Layer{k.Dir("d"), k.File("d/low", "low")},
		})
		add(damagedCase{name: "opl-" + v.name, dir: true, obj: "d",
			l1: k.Layer{k.Dir("d").Xattr("overlay.opaque", v.v), k.File("d/mid", "mid")},
			l0: k.Layer{k.Dir("d"), k.File("d/low", "low")},
		})
		add(damagedCase{name: "opf-" + v.name, obj: "f",
			upper: k.Layer{k.File("f", "up").Xattr("overlay.opaque", v.v)},
			l1:    k.Layer{k.File("f", "low")},
		})
	}

	// overlay.whiteout on an empty file (an xattr whiteout), with and
	// without the parent's opaque=x, in a lower over another and in the
	// upper; on a non-empty file; on a directory.
	whiteouts := append([]struct{ name, v string }{{"y", "y"}}, damagedValues...)
	for _, v := range whiteouts {
		add(damagedCase{name: "wol-" + v.name, obj: "f",
			l1: k.Layer{k.Dir(".").Xattr("overlay.opaque", "x"), k.File("f", "").Xattr("overlay.whiteout", v.v)},
			l0: k.Layer{k.File("f", "hidden")},
		})
		// Outside a directory marked opaque=x the kernel's lookup still
		// takes it for a whiteout, but its readdir lists it: ovl keeps it a
		// file in both (docs/differences.md).
		add(damagedCase{name: "wolnox-" + v.name, obj: "f",
			l1:       k.Layer{k.File("f", "").Xattr("overlay.whiteout", v.v)},
			l0:       k.Layer{k.File("f", "hidden")},
			intended: map[string]damagedDiff{"*": {kcOp("lstat", "f"), "ENOENT (2)", "ok out=file 0644 0:0 size=0 nlink=1"}},
		})
		// In the upper the kernel's readdir lists it, its lookup does
		// not find it; ovl hides it in both (docs/differences.md).
		add(damagedCase{name: "wou-" + v.name, obj: "f",
			upper:    k.Layer{k.Dir(".").Xattr("overlay.opaque", "x"), k.File("f", "").Xattr("overlay.whiteout", v.v)},
			l1:       k.Layer{k.File("f", "hidden")},
			intended: map[string]damagedDiff{"*": {kcOp("readdir", ""), "ok out=f:file", "ok"}},
		})
		add(damagedCase{name: "wofull-" + v.name, obj: "f",
			l1: k.Layer{k.Dir(".").Xattr("overlay.opaque", "x"), k.File("f", "data").Xattr("overlay.whiteout", v.v)},
			l0: k.Layer{k.File("f", "hidden")},
		})
		add(damagedCase{name: "wodir-" + v.name, obj: "d", dir: true,
			l1: k.Layer{k.Dir(".").Xattr("overlay.opaque", "x"), k.Dir("d").Xattr("overlay.whiteout", v.v), k.File("d/in", "in")},
			l0: k.Layer{k.Dir("d"), k.File("d/low", "low")},
		})
	}

	// overlay.metacopy: the kernel's is empty, or a struct ovl_metacopy
	// of 4 to 68 bytes (version 0, its length, flags, digest algorithm).
	metacopies := append([]struct{ name, v string }{{"ok", ""}, {"v0", "\x00\x04\x00\x00"},
		{"short", "ab"}, {"v1", "\x01\x04\x00\x00"}, {"badlen", "\x00\x09\x00\x00"}}, damagedValues[1:]...)
	for _, v := range metacopies {
		// A metacopy file in a lower layer over its data: ovl does not
		// serve it yet, and says so (docs/differences.md).
		var unserved map[string]damagedDiff
		if mc, _ := format.ParseMetacopy([]byte(v.v)); mc {
			unserved = map[string]damagedDiff{"metacopy": {kcOp("lstat", "f"), "ok out=file 0644 0:0 size=9 nlink=1", "ENOTSUP (95)"}}
		}
		add(damagedCase{name: "mcl-" + v.name, obj: "f",
			l1:       k.Layer{k.File("f", "lower one").Xattr("overlay.metacopy", v.v).Xattr("user.k", "l1")},
			l0:       k.Layer{k.File("f", "lower zero")},
			intended: unserved,
		})
		add(damagedCase{name: "mcbottom-" + v.name, obj: "f",
			l0: k.Layer{k.File("f", "bottom").Xattr("overlay.metacopy", v.v).Xattr("user.k", "l0")},
		})
		add(damagedCase{name: "mclast-" + v.name, obj: "f",
			l1: k.Layer{k.File("f", "only lower").Xattr("overlay.metacopy", v.v).Xattr("user.k", "l1")},
		})
		add(damagedCase{name: "mcu-" + v.name, obj: "f",
			upper: k.Layer{k.SparseFile("f", 10).Xattr("overlay.metacopy", v.v)},
			l1:    k.Layer{k.File("f", "lower data")},
		})
		if unserved != nil {
			unserved = map[string]damagedDiff{"metacopy": {kcOp("lstat", "f"), "ok out=file 0644 0:0 size=10 nlink=1", "ENOTSUP (95)"}}
		}
		add(damagedCase{name: "mcchain-" + v.name, obj: "f",
			upper:    k.Layer{k.SparseFile("f", 10).Xattr("overlay.metacopy", "")},
			l1:       k.Layer{k.SparseFile("f", 10).Xattr("overlay.metacopy", v.v)},
			l0:       k.Layer{k.File("f", "lower data")},
			intended: unserved,
		})
		add(damagedCase{name: "mcpure-" + v.name, obj: "p/f",
			upper: k.Layer{k.Dir("p"), k.SparseFile("p/f", 10).Xattr("overlay.metacopy", v.v)},
		})
		add(damagedCase{name: "mcunolow-" + v.name, obj: "f",
			upper: k.Layer{k.SparseFile("f", 10).Xattr("overlay.metacopy", v.v)},
		})
		add(damagedCase{name: "mcdir-" + v.name, obj: "d", dir: true,
			upper: k.Layer{k.Dir("d").Xattr("overlay.metacopy", v.v), k.File("d/up", "up")},
			l1:    k.Layer{k.Dir("d"), k.File("d/low", "low")},
		})
	}

	// overlay.origin, impure, nlink, upper: only hints to the kernel (inode
	// numbers, index=on); damaged, they must not break access.
	for _, v := range append([]struct{ name, v string }{{"ok", "y"}}, damagedValues...) {
		for _, x := range []string{"origin", "impure", "nlink", "upper"} {
			add(damagedCase{name: x + "f-" + v.name, obj: "f",
				upper: k.Layer{k.File("f", "up").Xattr("overlay."+x, v.v)},
				l1:    k.Layer{k.File("f", "low")},
			})
			add(damagedCase{name: x + "d-" + v.name, obj: "d", dir: true,
				upper: k.Layer{k.Dir("d").Xattr("overlay."+x, v.v), k.File("d/up", "up")},
				l1:    k.Layer{k.Dir("d"), k.File("d/low", "low"), k.File("d/h", "h"), k.Hardlink("d/h2", "d/h")},
			})
		}
	}
	return cs
}

// damagedOps are the ops run on one case, reads first.
func damagedOps(c damagedCase) []k.Op {
	p := c.name + "/" + c.obj
	ops := []k.Op{
		kcOp("lstat", p), kcOp("stat", p), kcOp("readdir", c.name),
		{Op: "getxattr", Path: p, Name: "user.k"}, kcOp("listxattr", p),
	}
	if c.dir {
		ops = append(ops, kcOp("readdir", p), kcOp("lstat", p+"/own"), kcOp("read", p+"/own"))
		ops = append(ops, k.Op{Op: "create", Path: p + "/new", Mode: 0o644}, kcOp("readdir", p))
	} else {
		ops = append(ops, kcOp("read", p), k.Op{Op: "append", Path: p, Data: "+"}, kcOp("read", p))
	}
	ops = append(ops, k.Op{Op: "rename", Path: p, Path2: p + ".mv"}, kcOp("lstat", p+".mv"), kcOp("lstat", p))
	if c.dir {
		ops = append(ops, kcOp("readdir", p+".mv"), kcOp("rmrf", p+".mv"))
	} else {
		ops = append(ops, kcOp("read", p+".mv"), kcOp("unlink", p+".mv"))
	}
	return append(ops, kcOp("readdir", c.name))
}

// TestKernelDamagedMetadata builds every damaged layer of damagedCases in
// one stack, mounts it with each option set that changes how the xattrs
// are read, and compares every op's errno and output with the kernel's.
func TestKernelDamagedMetadata(t *testing.T) {
	cases := damagedCases()
	var lay k.Layers
	lay.Lowers = make([]k.Layer, 2)
	for _, c := range cases {
		lay.Upper = append(lay.Upper, within(c.name, c.upper)...)
		lay.Lowers[0] = append(lay.Lowers[0], within(c.name, c.l1)...)
		lay.Lowers[1] = append(lay.Lowers[1], within(c.name, c.l0)...)
	}
	optSets := []struct {
		name string
		set  func(o *k.Options)
	}{
		{"default", func(o *k.Options) {}},
		{"follow", func(o *k.Options) { o.RedirectDir = "follow" }},
		{"nofollow", func(o *k.Options) { o.RedirectDir = "nofollow" }},
		{"metacopy", func(o *k.Options) { o.RedirectDir, o.Metacopy = "on", "on" }},
		{"index", func(o *k.Options) { o.Index = "on" }},
		{"userxattr", func(o *k.Options) { o.UserXattr = true }},
	}
	for _, set := range optSets {
		t.Run(set.name, func(t *testing.T) {
			opts := k.DefaultOptions()
			set.set(&opts)
			p := kcPair(t, opts, lay)
			for _, c := range cases {
				d, ok := c.intended[set.name]
				if !ok {
					d, ok = c.intended["*"]
				}
				if ok {
					op := d.op
					op.Path = c.name + "/" + op.Path
					ref, cand := op.Apply(p.Ref.Layout.Mnt).String(), op.Apply(p.Cand.Layout.Mnt).String()
					if ref != d.kernel || cand != d.ovlOut {
						t.Errorf("%s: documented difference changed: kernel %s, ovl %s; want kernel %s, ovl %s",
							op, ref, cand, d.kernel, d.ovlOut)
					}
					continue
				}
				ops := damagedOps(c)
				res := p.Ops(nil, ops...)
				if testing.Verbose() {
					var b strings.Builder
					for i, op := range ops {
						b.WriteString("\n  " + op.String() + ": " + res[i].String())
					}
					t.Logf("%s (kernel):%s", c.name, b.String())
				}
			}
			p.Unmount()
			p.Uppers("final")
		})
	}
}

// within puts a case's entries under its directory.
func within(dir string, l k.Layer) k.Layer {
	out := k.Layer{k.Dir(dir)}
	for _, e := range l {
		e.Path = dir + "/" + e.Path
		if e.Kind == k.KindHardlink {
			e.Target = dir + "/" + e.Target
		}
		out = append(out, e)
	}
	return out
}
