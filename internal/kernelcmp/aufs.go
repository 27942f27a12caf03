package kernelcmp

// AUFS forms of whiteouts and opaque directories (issue 18). A layer entry
// may ask for one (Entry.AUFS): sides whose mounter reads them (ovl,
// fuse-overlayfs) get that form, the kernel's overlayfs the kernel's
// equivalent (ToKernelForm), so that the same layers mean the same view on
// both. Before the upper layers are compared and the sides read each
// other's layers, the AUFS sides' layers are rewritten in the kernel's
// form too (Pair.KernelForm): that is what they mean.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// The AUFS forms an Entry may take (Entry.AUFS).
const (
	// AUFSFile: a whiteout is a file ".wh.NAME" (with the entry's Data), an
	// opaque directory holds a file ".wh..wh..opq".
	AUFSFile = "wh"
	// AUFSFuseXattr: an opaque directory carries user.fuseoverlayfs.opaque=y.
	AUFSFuseXattr = "fuseoverlayfs"
)

// AUFSForms are the forms of an opaque directory.
var AUFSForms = []string{AUFSFile, AUFSFuseXattr}

// AUFSWhiteout is a whiteout written as the AUFS file ".wh.NAME".
func AUFSWhiteout(path string) Entry {
	return Entry{Path: path, Kind: KindWhiteout, AUFS: AUFSFile}
}

// AUFSOpaqueDir is an opaque directory marked in an AUFS form.
func AUFSOpaqueDir(path, form string) Entry {
	e := OpaqueDir(path)
	e.AUFS = form
	return e
}

// readsAUFS reports whether a mounter reads the AUFS forms: all but the
// kernel's overlayfs.
func readsAUFS(m Mounter) bool {
	_, kernel := m.(Kernel)
	return !kernel
}

// HasAUFS reports whether an entry of the layers takes an AUFS form.
func (ls Layers) HasAUFS() bool {
	for _, l := range append([]Layer{ls.Upper}, ls.Lowers...) {
		for _, e := range l {
			if e.AUFS != "" {
				return true
			}
		}
	}
	return false
}

// WithoutAUFS returns the layers with every entry in the kernel's form:
// the same stack for tools that read only that form.
func (ls Layers) WithoutAUFS() Layers {
	strip := func(l Layer) Layer {
		out := append(Layer(nil), l...)
		for i := range out {
			out[i].AUFS = ""
		}
		return out
	}
	res := Layers{Upper: strip(ls.Upper)}
	for _, l := range ls.Lowers {
		res.Lowers = append(res.Lowers, strip(l))
	}
	return res
}

// aufsPath is where Build puts entry e (at p) in its AUFS form: the
// whiteout file for a whiteout; p itself otherwise.
func aufsPath(p string, e Entry) string {
	if e.Kind == KindWhiteout && e.AUFS != "" {
		return filepath.Join(filepath.Dir(p), format.AUFSWhiteout(filepath.Base(p)))
	}
	return p
}

// aufsOpaque marks the directory p opaque in form, for a layer whose
// overlay xattrs have prefix.
func aufsOpaque(p, prefix, form string) error {
	switch form {
	case AUFSFile:
		return writeFile(filepath.Join(p, format.AUFSOpaque), Entry{})
	case AUFSFuseXattr:
		return unix.Lsetxattr(p, format.FuseOverlayfsOpaque, []byte("y"), 0)
	}
	return fmt.Errorf("unknown AUFS form %q", form)
}

// ToKernelForm rewrites the AUFS markers of the layer dir in the kernel's
// form, as format/aufs.go reads them: ".wh.NAME" becomes a char 0/0
// whiteout NAME (replacing a NAME beside it), ".wh..wh..opq" and
// user.fuseoverlayfs.opaque become overlay.opaque=y under prefix, and the
// rest of fuse-overlayfs's xattrs go (they are private to it).
// Directories keep their times.
func ToKernelForm(dir, prefix string) error {
	var walk func(d string) error
	walk = func(d string) error {
		var st unix.Stat_t
		if err := unix.Lstat(d, &st); err != nil {
			return err
		}
		ents, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		opaque := false
		v := make([]byte, 64)
		if n, err := unix.Lgetxattr(d, format.FuseOverlayfsOpaque, v); err == nil {
			opaque = format.ParseForeignOpaque(v[:n])
			if err := unix.Lremovexattr(d, format.FuseOverlayfsOpaque); err != nil {
				return fmt.Errorf("%s: remove %s: %w", d, format.FuseOverlayfsOpaque, err)
			}
		}
		for _, e := range ents {
			name := e.Name()
			if name == format.AUFSOpaque {
				opaque = true
			}
			hidden, ok := format.AUFSWhiteoutOf(name)
			if !format.IsAUFSName(name) {
				continue
			}
			if err := os.RemoveAll(filepath.Join(d, name)); err != nil {
				return err
			}
			if !ok || format.IsAUFSName(hidden) {
				continue // hides a name no view shows anyway
			}
			if err := os.RemoveAll(filepath.Join(d, hidden)); err != nil {
				return err
			}
			if err := unix.Mknod(filepath.Join(d, hidden), unix.S_IFCHR, 0); err != nil {
				return fmt.Errorf("%s: whiteout %s: %w", d, hidden, err)
			}
		}
		if opaque {
			if err := unix.Lsetxattr(d, prefix+format.Opaque, []byte("y"), 0); err != nil {
				return fmt.Errorf("%s: opaque: %w", d, err)
			}
		}
		ents, err = os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.Type().IsDir() {
				if err := walk(filepath.Join(d, e.Name())); err != nil {
					return err
				}
			}
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		return unix.UtimesNanoAt(unix.AT_FDCWD, d, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	return walk(dir)
}

// KernelForm rewrites, after Unmount, the AUFS markers in the layers of
// each side that reads them (ToKernelForm), when the layers had any and
// the other side is the kernel's overlayfs: the upper layers then compare
// by meaning, and the kernel can read them in Interchange.
func (p *Pair) KernelForm() error {
	if !p.aufs || readsAUFS(p.Ref.M) == readsAUFS(p.Cand.M) {
		return nil
	}
	for _, s := range p.Sides() {
		if !readsAUFS(s.M) {
			continue
		}
		dirs := append([]string{s.Layout.Upper}, s.Layout.Lowers...)
		for _, d := range dirs {
			if d == "" {
				continue
			}
			if err := ToKernelForm(d, p.Cfg.Options.Prefix()); err != nil {
				return fmt.Errorf("%s: kernel form of %s: %w", s.Name, d, err)
			}
		}
	}
	return nil
}

// FuseOverlayfs mounts fuse-overlayfs, the reference for the AUFS format
// (issue 18). It takes only the layers from the options.
type FuseOverlayfs struct {
	// NoMknod makes it write AUFS whiteouts in the upper, as it does
	// where mknod fails (FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT).
	NoMknod bool
}

// Name implements Mounter.
func (FuseOverlayfs) Name() string { return "fuse-overlayfs" }

// Mount implements Mounter.
func (m FuseOverlayfs) Mount(l Layout, o Options) error {
	opts := "lowerdir=" + strings.Join(l.Lowers, ":")
	if l.Upper != "" {
		opts += ",upperdir=" + l.Upper + ",workdir=" + l.Work
	}
	cmd := exec.Command("fuse-overlayfs", "-o", opts, l.Mnt)
	cmd.Env = os.Environ()
	if m.NoMknod {
		cmd.Env = append(cmd.Env, "FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT=1")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("fuse-overlayfs -o %s %s: %v\n%s", opts, l.Mnt, err, out)
	}
	return nil
}

// Unmount implements Mounter.
func (FuseOverlayfs) Unmount(mnt string) error {
	if out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); err != nil {
		_ = unix.Unmount(mnt, unix.MNT_DETACH)
		return fmt.Errorf("fusermount3 -u %s: %v\n%s", mnt, err, out)
	}
	// fusermount3 returns once the mount is gone; fuse-overlayfs wrote
	// everything to the upper before answering.
	for deadline := time.Now().Add(60 * time.Second); mounted(mnt); {
		if time.Now().After(deadline) {
			return errors.New("fuse-overlayfs: " + mnt + " still mounted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// dropQuirks leaves out of a side's walk problems those of fuse-overlayfs
// that are not the subject of a comparison: its root lists no "..".
func dropQuirks(side string, problems []string) []string {
	if side != (FuseOverlayfs{}).Name() {
		return problems
	}
	var out []string
	for _, pr := range problems {
		if !strings.HasPrefix(pr, ": readdir lacks . or .. (got .=true ..=false)") {
			out = append(out, pr)
		}
	}
	return out
}
