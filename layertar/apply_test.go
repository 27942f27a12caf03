package layertar_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
	"github.com/ovl-project/ovl/layertar"
)

// ent is one entry of a tar built for a test.
type ent struct {
	name, link string
	typ        byte
	data       string
	mode       int64
	pax        map[string]string
	major      int64
	owner      int // uid and gid
}

func reg(name, data string) ent { return ent{name: name, typ: tar.TypeReg, data: data, mode: 0o644} }
func dirEnt(name string) ent    { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func sym(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hard(name, target string) ent {
	return ent{name: name, typ: tar.TypeLink, link: target, mode: 0o644}
}

// paxRecord is one PAX extended header record, "LEN KEY=VALUE\n".
func paxRecord(key, value string) string {
	rec := " " + key + "=" + value + "\n"
	n := len(rec)
	for len(fmt.Sprint(n))+len(rec) != n {
		n = len(fmt.Sprint(n)) + len(rec)
	}
	return fmt.Sprint(n) + rec
}

// rawHeader is a ustar header block that archive/tar would not write (a
// PAX header too large for its reader).
func rawHeader(name string, typ byte, size int) []byte {
	h := make([]byte, 512)
	copy(h, name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], "00000000000\x00")
	h[156] = typ
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func buildTar(t *testing.T, ents ...ent) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		if e.typ == tar.TypeXHeader {
			tw.Flush()
			b.Write(rawHeader("PaxHeaders/"+e.name, tar.TypeXHeader, len(e.data)))
			b.WriteString(e.data)
			b.Write(make([]byte, (512-len(e.data)%512)%512))
			continue
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.data)),
			PAXRecords: e.pax, Devmajor: e.major, Uid: e.owner, Gid: e.owner, Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// snapshotDir records every object below root, except the subtree skip:
// type, mode, owner, size, mtime, content, target and xattrs.
func snapshotDir(t *testing.T, root, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		st := fi.Sys().(*syscall.Stat_t)
		s := fmt.Sprintf("%v %d:%d %d %d", fi.Mode(), st.Uid, st.Gid, fi.Size(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s += fmt.Sprintf(" %q", b)
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			s += " -> " + target
		}
		sz, _ := unix.Llistxattr(p, nil)
		if sz > 0 {
			buf := make([]byte, sz)
			n, _ := unix.Llistxattr(p, buf)
			names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
			sort.Strings(names)
			s += " xattrs=" + strings.Join(names, ",")
		}
		out[p] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestApplyHostile applies layers built to write outside the directory
// they are applied to. Each must be refused with an error that says why,
// and nothing outside the directory may change: the test records the
// whole tree around it (a sentinel directory with a file, next to it)
// before and after.
func TestApplyHostile(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		ents   []ent
		refuse string // a part of the error; "" when the layer is fine (and still stays inside)
	}{
		{"dotdot", []ent{reg("../outside/evil", "x")}, "leaves the layer"},
		{"dotdot-inside", []ent{dirEnt("a/"), reg("a/../../outside/evil", "x")}, "leaves the layer"},
		{"absolute", []ent{reg(outside+"/evil", "x")}, "absolute"},
		{"through-symlink", []ent{sym("ln", "../outside"), reg("ln/evil", "x")}, "symlink"},
		{"through-abs-symlink", []ent{sym("ln", outside), reg("ln/evil", "x")}, "symlink"},
		{"dir-through-symlink", []ent{sym("ln", "../outside"), dirEnt("ln/sub/")}, "symlink"},
		{"hardlink-outside", []ent{hard("h", "../outside/victim")}, "leaves the layer"},
		{"hardlink-absolute", []ent{hard("h", victim)}, "absolute"},
		{"hardlink-through-symlink", []ent{sym("ln", "../outside"), hard("h", "ln/victim")}, "symlink"},
		{"hardlink-to-dir", []ent{dirEnt("d/"), hard("h", "d")}, "directory"},
		{"whiteout-through-symlink", []ent{sym("ln", "../outside"), reg("ln/.wh.victim", "")}, "symlink"},
		{"opaque-through-symlink", []ent{sym("ln", "../outside"), reg("ln/.wh..wh..opq", "")}, "symlink"},
		{"whiteout-dotdot", []ent{reg(".wh..", "")}, "whiteout"},
		{"whiteout-of-dotdot", []ent{dirEnt("a/"), reg("a/.wh...", "")}, "whiteout"},
		{"whiteout-of-dot-in-dir", []ent{dirEnt("a/"), reg("a/.wh..", "")}, "whiteout"},
		{"char-0-0", []ent{{name: "x", typ: tar.TypeChar, mode: 0o644}}, "whiteout"},
		{"name-too-long", []ent{reg(strings.Repeat("n", 256), "x")}, "NAME_MAX"},
		{"whiteout-name-too-long", []ent{reg(".wh."+strings.Repeat("n", 256), "")}, "NAME_MAX"},
		{"path-too-long", []ent{reg(strings.Repeat("d/", 2100)+"f", "x")}, "PATH_MAX"},
		{"huge-header", []ent{{name: "f", typ: tar.TypeXHeader, data: paxRecord("comment", strings.Repeat("x", 2<<20))}, reg("f", "x")}, "read layer"},
		// Allowed, and must stay inside: a later entry replaces a symlink
		// or a link to one, never writing through it.
		{"replace-symlink", []ent{sym("ln", "../outside/victim"), reg("ln", "pwned")}, ""},
		{"replace-link-of-symlink", []ent{sym("s", "../outside/victim"), hard("h", "s"), reg("h", "pwned"), reg("s", "pwned")}, ""},
		{"dir-over-symlink", []ent{sym("d", "../outside"), dirEnt("d/"), reg("d/victim", "pwned")}, ""},
		{"overlay-xattr-escaped", []ent{{name: "e/", typ: tar.TypeDir, mode: 0o755,
			pax: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.trusted.overlay.redirect": "/outside"}}}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			layer := filepath.Join(base, "layer-"+c.name)
			if err := os.Mkdir(layer, 0o755); err != nil {
				t.Fatal(err)
			}
			before := snapshotDir(t, base, layer)
			_, err := layertar.Apply(bytes.NewReader(buildTar(t, c.ents...)), layer, layertar.ApplyOptions{})
			switch {
			case c.refuse == "" && err != nil:
				t.Errorf("apply: %v", err)
			case c.refuse != "" && err == nil:
				t.Errorf("apply succeeded, want a refusal (%s)", c.refuse)
			case c.refuse != "" && !strings.Contains(err.Error(), c.refuse):
				t.Errorf("apply: %v, want an error about %q", err, c.refuse)
			default:
				t.Logf("apply: %v", err)
			}
			after := snapshotDir(t, base, layer)
			for p, s := range after {
				if before[p] != s {
					t.Errorf("outside the layer: %s changed: %q -> %q", p, before[p], s)
				}
			}
			for p := range before {
				if _, ok := after[p]; !ok {
					t.Errorf("outside the layer: %s is gone", p)
				}
			}
		})
	}
	// The escaped overlay xattrs are user data: no overlay metadata.
	e := filepath.Join(base, "layer-overlay-xattr-escaped", "e")
	for name, want := range map[string]bool{"trusted.overlay.opaque": false, "trusted.overlay.redirect": false,
		"trusted.overlay.overlay.opaque": true, "trusted.overlay.overlay.redirect": true} {
		_, err := unix.Lgetxattr(e, name, nil)
		if (err == nil) != want {
			t.Errorf("%s: xattr %s present=%v, want %v", e, name, err == nil, want)
		}
	}
}

// TestApplyFormat checks the overlay format Apply writes: whiteouts as
// char 0/0, opaque markers, a whiteout of a directory the layer holds
// (opaque), a directory over a whiteout (opaque), no whiteouts in opaque
// directories, owners, modes, times, hard links, and that directory times
// survive the entries made in them.
func TestApplyFormat(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	layer := buildTar(t,
		ent{name: "d/", typ: tar.TypeDir, mode: 0o1750, pax: map[string]string{"SCHILY.xattr.user.k": "v"}},
		reg("d/.wh.gone", ""),
		reg("d/f", "data"),
		hard("d/f2", "d/f"),
		reg("o/.wh..wh..opq", ""),
		reg(".wh.w", ""),
		dirEnt("w/"),
		dirEnt("kept/"),
		reg(".wh.kept", ""),
		ent{name: "dev", typ: tar.TypeBlock, mode: 0o600, major: 7},
		reg(".wh..wh.plnk", ""),
		reg("o2/.wh.x", ""),
		reg("o2/.wh..wh..opq", ""),
		reg("o/.wh.y", ""),
	)
	res, err := layertar.Apply(bytes.NewReader(layer), dir, layertar.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 14 || res.XattrWhiteouts != 0 {
		t.Errorf("result %+v", res)
	}
	var st unix.Stat_t
	check := func(p string, mode uint32) {
		t.Helper()
		if err := unix.Lstat(filepath.Join(dir, p), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode != mode {
			t.Errorf("%s: mode %#o, want %#o", p, st.Mode, mode)
		}
	}
	check("d", unix.S_IFDIR|0o1750)
	check("d/gone", unix.S_IFCHR)
	if st.Rdev != 0 {
		t.Errorf("d/gone: rdev %d", st.Rdev)
	}
	check("d/f", unix.S_IFREG|0o644)
	if st.Nlink != 2 {
		t.Errorf("d/f: %d links, want 2", st.Nlink)
	}
	check("dev", unix.S_IFBLK|0o600)
	if st.Mtim.Sec != 0 {
		// Unset mtimes are the epoch, as the tar says.
		t.Errorf("dev: mtime %d", st.Mtim.Sec)
	}
	for _, p := range []string{"o", "w", "kept"} {
		v := make([]byte, 8)
		n, err := unix.Lgetxattr(filepath.Join(dir, p), "trusted.overlay.opaque", v)
		if err != nil || string(v[:n]) != "y" {
			t.Errorf("%s: trusted.overlay.opaque %q, %v; want y", p, v[:n], err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, ".wh..wh.plnk")); err == nil {
		t.Errorf("aufs metadata applied")
	}
	// In an opaque directory a whiteout hides nothing: none is left,
	// whether it came before the marker or after.
	for _, p := range []string{"o2/x", "o/y"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s: a whiteout in an opaque directory", p)
		}
	}
	if err := unix.Lstat(filepath.Join(dir, "d"), &st); err != nil || st.Mtim.Sec != 0 {
		t.Errorf("d: mtime %d (%v), want the tar's, set after its entries", st.Mtim.Sec, err)
	}
}

// TestApplyUnprivileged runs "ovl apply" as an unprivileged user: whiteouts
// are char 0/0 devices all the same (Linux 5.8+), opaque markers go to
// user.overlay.* (with --userxattr or without it), and a device node and
// root's owners are refused with an error that says why, leaving nothing
// outside the directory.
func TestApplyUnprivileged(t *testing.T) {
	testutil.RequireRoot(t) // to become another user
	// Not t.TempDir: its parent is private to root.
	base, err := os.MkdirTemp("", "layertar-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	// A copy of the binary that the user may run.
	bin := filepath.Join(base, "ovl")
	if out, err := exec.Command("cp", testutil.Binary(t), bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	// prep makes dir (the user's) and its layer file; apply runs ovl.
	prep := func(layer []byte, dir string) string {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		f := dir + ".tar"
		if err := os.WriteFile(f, layer, 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	apply := func(f, dir string, args ...string) (string, error) {
		cmd := exec.Command(bin, append(append([]string{"apply"}, args...), f, dir)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	run := func(layer []byte, dir string, args ...string) (string, error) {
		return apply(prep(layer, dir), dir, args...)
	}
	ok := filepath.Join(base, "ok")
	out, err := run(buildTar(t, ent{name: "d/", typ: tar.TypeDir, mode: 0o755, owner: 65534}, reg("d/.wh.x", ""), reg("d/.wh..wh..opq", ""),
		ent{name: "e/", typ: tar.TypeDir, mode: 0o755, owner: 65534}, reg("e/.wh.y", "")), ok, "--userxattr")
	if err != nil {
		t.Fatalf("ovl apply --userxattr as nobody: %v\n%s", err, out)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(ok, "e/y"), &st); err != nil || st.Mode != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("e/y: mode %#o rdev %d (%v): want a whiteout", st.Mode, st.Rdev, err)
	}
	v := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(ok, "d"), "user.overlay.opaque", v); err != nil || string(v[:n]) != "y" {
		t.Errorf("d: user.overlay.opaque %q, %v", v[:n], err)
	}

	// Without --userxattr, as ovl mount chooses: user.overlay.* for a
	// process without the privilege for trusted.*.
	auto := filepath.Join(base, "auto")
	if out, err := run(buildTar(t, ent{name: "d/", typ: tar.TypeDir, mode: 0o755, owner: 65534}, reg("d/.wh..wh..opq", "")), auto); err != nil {
		t.Fatalf("ovl apply as nobody: %v\n%s", err, out)
	}
	if n, err := unix.Lgetxattr(filepath.Join(auto, "d"), "user.overlay.opaque", v); err != nil || string(v[:n]) != "y" {
		t.Errorf("d: user.overlay.opaque %q, %v", v[:n], err)
	}
	// Root's files are root's: refused with the way out.
	if out, err := run(buildTar(t, reg("g", "x")), filepath.Join(base, "owners")); err == nil || !strings.Contains(out, "user namespace") {
		t.Errorf("ovl apply of root's file as nobody: %v\n%s\nwant a refusal", err, out)
	}
	bad := filepath.Join(base, "bad")
	f := prep(buildTar(t, ent{name: "f", typ: tar.TypeReg, mode: 0o644, owner: 65534}, ent{name: "sda", typ: tar.TypeBlock, mode: 0o600, major: 8, owner: 65534}), bad)
	before := snapshotDir(t, base, bad)
	out, err = apply(f, bad)
	if err == nil || !strings.Contains(out, "CAP_MKNOD") {
		t.Errorf("ovl apply of a device node as nobody: %v\n%s\nwant a refusal naming CAP_MKNOD", err, out)
	}
	if _, err := os.Lstat(filepath.Join(bad, "sda")); err == nil {
		t.Errorf("the device node was made")
	}
	after := snapshotDir(t, base, bad)
	for p, s := range after {
		if before[p] != s {
			t.Errorf("outside the layer: %s changed", p)
		}
	}
}
