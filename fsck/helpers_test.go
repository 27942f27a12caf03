package fsck_test

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/fsck"
	"github.com/ovl-project/ovl/overlay"
)

// env is an overlay's directories, built entry by entry.
type env struct {
	t                testing.TB
	dir, upper, work string
	lowers           []string
	names            format.Names
	cfg              overlay.Config
}

func newEnv(t testing.TB, nLowers int) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, upper: filepath.Join(dir, "upper"), work: filepath.Join(dir, "work"), names: format.NewNames(false)}
	for i := 0; i < nLowers; i++ {
		e.lowers = append(e.lowers, filepath.Join(dir, fmt.Sprintf("l%d", i)))
	}
	for _, d := range append([]string{e.upper, e.work, filepath.Join(e.work, "work")}, e.lowers...) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.cfg = overlay.Config{Lowers: e.lowers, Upper: e.upper, Work: e.work, RedirectDir: "on", Metacopy: "on"}
	return e
}

// p names rel in a layer: "u" (upper), "w" (workdir), "0", "1" (lowers).
func (e *env) p(layer, rel string) string {
	switch layer {
	case "u":
		return filepath.Join(e.upper, rel)
	case "w":
		return filepath.Join(e.work, rel)
	}
	var i int
	fmt.Sscan(layer, &i)
	return filepath.Join(e.lowers[i], rel)
}

func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) mkdir(layer, rel string) { e.must(os.MkdirAll(e.p(layer, rel), 0o755)) }

func (e *env) file(layer, rel, data string) {
	e.must(os.MkdirAll(filepath.Dir(e.p(layer, rel)), 0o755))
	e.must(os.WriteFile(e.p(layer, rel), []byte(data), 0o644))
}

func (e *env) whiteout(layer, rel string) {
	e.must(unix.Mknod(e.p(layer, rel), unix.S_IFCHR, 0))
}

// set sets the overlay xattr suffix on rel ("" value: empty).
func (e *env) set(layer, rel, suffix, value string) {
	e.must(unix.Lsetxattr(e.p(layer, rel), e.names.Name(suffix), []byte(value), 0))
}

func (e *env) get(layer, rel, suffix string) (string, bool) {
	buf := make([]byte, 512)
	n, err := unix.Lgetxattr(e.p(layer, rel), e.names.Name(suffix), buf)
	if err != nil {
		return "", false
	}
	return string(buf[:n]), true
}

// origin is the overlay.origin value of a lower object, as the kernel
// encodes it (name_to_handle_at and the filesystem's UUID).
func (e *env) origin(layer, rel string) []byte {
	e.t.Helper()
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, e.p(layer, rel), 0)
	e.must(err)
	fd, err := unix.Open(e.p(layer, "."), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	e.must(err)
	defer unix.Close(fd)
	uuid, ok := format.FSUUID(fd)
	if !ok {
		e.t.Fatalf("no filesystem UUID for %s", e.p(layer, "."))
	}
	return format.EncodeOrigin(h.Type(), h.Bytes(), uuid)
}

// copyUp makes rel of lower layer as an upper copy with its origin, as
// a copy-up does; the parent gets overlay.impure.
func (e *env) copyUp(layer, rel string) []byte {
	e.t.Helper()
	o := e.origin(layer, rel)
	var st unix.Stat_t
	e.must(unix.Lstat(e.p(layer, rel), &st))
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		e.mkdir("u", rel)
	} else {
		data, err := os.ReadFile(e.p(layer, rel))
		e.must(err)
		e.file("u", rel, string(data))
	}
	e.must(unix.Lsetxattr(e.p("u", rel), e.names.Name(format.Origin), o, 0))
	if dir := filepath.Dir(rel); dir != "." {
		e.set("u", dir, format.Impure, "y")
	} else {
		e.set("u", ".", format.Impure, "y")
	}
	return o
}

func (e *env) indexName(origin []byte) string { return hex.EncodeToString(origin) }

// run runs fsck in mode and returns its report.
func (e *env) run(mode fsck.Mode) *fsck.Report {
	e.t.Helper()
	var out strings.Builder
	rep, err := fsck.Run(fsck.Options{Config: e.cfg, Mode: mode, Out: &out})
	if err != nil {
		e.t.Fatalf("fsck: %v\n%s", err, out.String())
	}
	e.t.Logf("fsck mode %d:\n%s", mode, out.String())
	return rep
}

// dump describes every entry of the upper and the workdir: type, mode,
// inode, links, size, device, xattrs, data of small files; what any
// change made by fsck changes.
func (e *env) dump() string {
	e.t.Helper()
	var lines []string
	for _, root := range []string{e.upper, e.work} {
		err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			l := fmt.Sprintf("%s mode=%o ino=%d nlink=%d size=%d rdev=%d", p, st.Mode, st.Ino, st.Nlink, st.Size, st.Rdev)
			sz, _ := unix.Llistxattr(p, nil)
			if sz > 0 {
				buf := make([]byte, sz)
				n, _ := unix.Llistxattr(p, buf)
				names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
				sort.Strings(names)
				for _, x := range names {
					v := make([]byte, 512)
					m, _ := unix.Lgetxattr(p, x, v)
					l += fmt.Sprintf(" %s=%q", x, v[:max(m, 0)])
				}
			}
			if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size < 64 {
				data, _ := os.ReadFile(p)
				l += fmt.Sprintf(" data=%q", data)
			}
			lines = append(lines, l)
			return nil
		})
		e.must(err)
	}
	return strings.Join(lines, "\n")
}

// kinds lists the kinds of a report's findings, notes marked "note:".
func kinds(r *fsck.Report) []string {
	var ks []string
	for _, f := range r.Findings {
		k := string(f.Kind)
		if f.Note {
			k = "note:" + k
		}
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func exists(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil
}

func isWhiteout(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && format.IsWhiteoutStat(&st)
}

// kernelList mounts the kernel's overlayfs on e's layers and lists dir.
func (e *env) kernelList(dir string) []string {
	e.t.Helper()
	mnt := filepath.Join(e.dir, "mnt")
	e.must(os.MkdirAll(mnt, 0o755))
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on,metacopy=on", strings.Join(e.lowers, ":"), e.upper, e.work)
	if e.cfg.UserXattr {
		opts = fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,userxattr", strings.Join(e.lowers, ":"), e.upper, e.work)
	}
	if err := unix.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
		e.t.Fatalf("mount -t overlay -o %s: %v", opts, err)
	}
	defer func() { e.must(unix.Unmount(mnt, 0)) }()
	ents, err := os.ReadDir(filepath.Join(mnt, dir))
	e.must(err)
	var names []string
	for _, de := range ents {
		if _, err := os.Lstat(filepath.Join(mnt, dir, de.Name())); err != nil {
			names = append(names, de.Name()+"(!"+err.Error()+")")
			continue
		}
		names = append(names, de.Name())
	}
	return names
}
