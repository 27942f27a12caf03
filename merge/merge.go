// Package merge flattens an overlay stack (lower layers and an optional
// upper) into one new directory that holds the merged view as a plain
// tree, usable as a single lower layer. It reads the stack through package
// overlay, opened without a mount, and writes through package format's
// descriptor-relative calls; it never mounts anything.
//
// The rules:
//   - The new directory holds exactly what a mount of the stack shows:
//     each object's content, owner, mode (setuid, setgid and sticky
//     included), mtime to the nanosecond, and the xattrs users of the
//     mount see; device numbers of devices; FIFOs, sockets and symlinks.
//     Whiteouts, opaque directories, redirects, metacopy files and index
//     entries are resolved: the result holds none of them, and no overlay
//     xattr, so it means the same as a lower layer of any overlay. An
//     xattr users of the mount see in the overlay's own namespace (stored
//     escaped, trusted.overlay.overlay.X, Linux 6.7+) is stored escaped
//     again, so that a mount of the result shows it as the stack did.
//   - Names that are one object in the stack (Node.RealID: an upper or
//     lower hard link, names sharing an index entry) are hard links of one
//     file in the result.
//   - File data is shared with the layers where the filesystem allows
//     (FICLONE: xfs, btrfs) and copied otherwise (copy_file_range, which
//     keeps holes, and a plain copy where that is refused). A FICLONE that
//     fails between two filesystems is not tried again between them.
//   - The target must be absent or an empty directory. On an error, what
//     was written stays: the caller removes it.
//   - An upper is read as a mount reads it, with a work directory: the
//     caller's, which index=on needs (its index/ holds the objects of
//     lower hard links), or else a temporary one made beside the upper and
//     removed after. The stack must not be mounted meanwhile: opening it
//     takes the locks a mount takes. Nothing in the layers is written.
package merge

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/overlay"
)

// Options say how Layers works.
type Options struct {
	// Progress, if set, is called after each object with the bytes of
	// file data written so far and the number of objects.
	Progress func(bytes int64, entries int)
	// NoReflink copies all data with read and write, even where FICLONE
	// or copy_file_range would share extents.
	NoReflink bool
	// KeepGoing leaves out the objects the overlay refuses to look up
	// (damaged or hostile layer metadata, which a mount refuses too) and
	// lists them in Result.Refused, instead of failing on the first.
	KeepGoing bool
}

// Result describes a merge.
type Result struct {
	Entries   int   // objects written, the root included
	Bytes     int64 // bytes of file data, reflinked or copied
	Reflinked int64 // bytes of it shared by FICLONE
	Links     int   // names written as hard links of an earlier one
	// Refused are the objects left out with KeepGoing, and why.
	Refused []error
}

// Layers writes the merged view of cfg (Lowers, and Upper with Work when
// index=on, as for a mount; UserXattr, RedirectDir, Metacopy, Index as
// the layers were written) into the new directory dst.
func Layers(dst string, cfg overlay.Config, o Options) (*Result, error) {
	if len(cfg.Lowers) == 0 {
		return nil, errors.New("merge: no lower layer given (lowerdir=)")
	}
	if cfg.Upper != "" && cfg.Work == "" {
		if cfg.Index == "on" {
			return nil, errors.New("merge: index=on needs workdir= (its index/ holds objects of the upper)")
		}
		// The overlay reads an upper only with a work directory, which
		// must be on the upper's mount: a temporary one beside it.
		work, err := os.MkdirTemp(filepath.Dir(filepath.Clean(cfg.Upper)), ".ovl-merge-work-")
		if err != nil {
			return nil, fmt.Errorf("merge: a work directory beside the upper (or give workdir=): %w", err)
		}
		defer os.RemoveAll(work)
		cfg.Work = work
	}
	if err := outsideLayers(dst, cfg); err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	if err := prepareTarget(dst); err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	dfd, err := unix.Open(dst, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("merge: open %s: %w", dst, err)
	}
	defer unix.Close(dfd)
	// overlay.New clears the umask for the mount it serves; merge serves
	// none, but sets every mode itself, so the cleared umask only keeps
	// modes exact while it runs.
	umask := syscall.Umask(0)
	defer syscall.Umask(umask)
	ov, err := overlay.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("merge: open the layers: %w", err)
	}
	defer ov.Close()
	m := &merger{
		root:    dfd,
		opts:    o,
		names:   format.NewNames(cfg.UserXattr),
		links:   map[objID]string{},
		noClone: map[[2]uint64]bool{},
		res:     &Result{},
	}
	root := ov.Root()
	if err := m.dir(root, dfd, ""); err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	var st unix.Stat_t
	if err := root.Getattr(&st); err != nil {
		return nil, fmt.Errorf("merge: stat the root: %w", err)
	}
	if err := m.attrs(root, dfd, "", &st); err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	m.res.Entries++
	m.progress()
	return m.res, nil
}

// outsideLayers refuses a target inside a layer or the work directory,
// which the merge would read while it writes it, or one that holds a layer.
func outsideLayers(dst string, cfg overlay.Config) error {
	real := func(p string) (string, error) {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		// dst may not exist yet: resolve its parent.
		dir, err := filepath.EvalSymlinks(filepath.Dir(abs))
		if err != nil {
			return "", err
		}
		return filepath.Join(dir, filepath.Base(abs)), nil
	}
	d, err := real(dst)
	if err != nil {
		return err
	}
	inside := func(a, b string) bool { return a == b || strings.HasPrefix(a, strings.TrimSuffix(b, "/")+"/") }
	layers := append([]string{cfg.Upper, cfg.Work}, cfg.Lowers...)
	for _, l := range layers {
		if l == "" {
			continue
		}
		r, err := real(l)
		if err != nil {
			return err
		}
		if inside(d, r) || inside(r, d) {
			return fmt.Errorf("target %s and layer %s overlap: the target must be outside every layer", dst, l)
		}
	}
	return nil
}

// prepareTarget makes dst, or checks that it is an empty directory.
func prepareTarget(dst string) error {
	err := os.Mkdir(dst, 0o700)
	if err == nil || !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dst)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", dst)
	}
	ents, err := os.ReadDir(dst)
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return fmt.Errorf("%s is not empty", dst)
	}
	return nil
}

// objID is a real object's identity: the key of hard links.
type objID struct{ dev, ino uint64 }

type merger struct {
	root  int // the target directory
	opts  Options
	names format.Names
	// links maps each object with several names to the first path
	// written for it.
	links map[objID]string
	// noClone holds the (source, target) filesystem pairs where FICLONE
	// failed.
	noClone map[[2]uint64]bool
	res     *Result
}

func (m *merger) progress() {
	if m.opts.Progress != nil {
		m.opts.Progress(m.res.Bytes, m.res.Entries)
	}
}

// dir writes the entries of the merged directory n into the directory
// dfd, which is at path rel ("" for the root) in the target.
func (m *merger) dir(n *overlay.Node, dfd int, rel string) error {
	ents, err := n.ReadDir()
	if err != nil {
		return &os.PathError{Op: "readdir", Path: show(rel), Err: err}
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
	for _, e := range ents {
		p := filepath.Join(rel, e.Name)
		var st unix.Stat_t
		child, err := n.LookupStat(e.Name, &st)
		if err != nil {
			err = &os.PathError{Op: "lookup", Path: show(p), Err: err}
			if m.opts.KeepGoing {
				m.res.Refused = append(m.res.Refused, err)
				continue
			}
			return err
		}
		err = m.entry(child, dfd, e.Name, p, &st)
		child.Forget()
		if err != nil {
			return err
		}
		m.res.Entries++
		m.progress()
	}
	return nil
}

// entry writes the object n, with attributes st, as name in dfd.
func (m *merger) entry(n *overlay.Node, dfd int, name, rel string, st *unix.Stat_t) error {
	kind := st.Mode & unix.S_IFMT
	if kind == unix.S_IFDIR {
		if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
			return &os.PathError{Op: "mkdir", Path: show(rel), Err: err}
		}
		sub, err := format.OpenAt(dfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: show(rel), Err: err}
		}
		defer unix.Close(sub)
		if err := m.dir(n, sub, rel); err != nil {
			return err
		}
		// Attributes last: entries made inside change the mtime.
		return m.attrs(n, sub, rel, st)
	}
	if st.Nlink > 1 {
		dev, ino, err := n.RealID()
		if err != nil {
			return &os.PathError{Op: "stat", Path: show(rel), Err: err}
		}
		id := objID{dev, ino}
		if first, ok := m.links[id]; ok {
			// Both names are beneath the target root: link through its
			// /proc path, as linkat takes no openat2 rules.
			if err := m.link(dfd, first, name); err != nil {
				return &os.PathError{Op: "link", Path: show(rel), Err: err}
			}
			m.res.Links++
			return nil
		}
		m.links[id] = rel
	}
	switch kind {
	case unix.S_IFREG:
		if err := m.file(n, dfd, name, rel, st); err != nil {
			return err
		}
	case unix.S_IFLNK:
		target, err := n.Readlink()
		if err != nil {
			return &os.PathError{Op: "readlink", Path: show(rel), Err: err}
		}
		if err := unix.Symlinkat(target, dfd, name); err != nil {
			return &os.PathError{Op: "symlink", Path: show(rel), Err: err}
		}
	default: // devices, FIFOs, sockets
		if err := unix.Mknodat(dfd, name, kind|0o600, int(st.Rdev)); err != nil {
			return &os.PathError{Op: "mknod", Path: show(rel), Err: err}
		}
	}
	fd, err := format.OpenAt(dfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: show(rel), Err: err}
	}
	defer unix.Close(fd)
	return m.attrs(n, fd, rel, st)
}

// link makes name in dfd a hard link of first, a path the merge wrote
// beneath the target root. It is found beneath the root without following
// symlinks, and linked through its /proc path, which needs no privilege
// (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
func (m *merger) link(dfd int, first, name string) error {
	src, err := format.OpenAt(m.root, first, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(src)
	return unix.Linkat(unix.AT_FDCWD, format.ProcPath(src), dfd, name, unix.AT_SYMLINK_FOLLOW)
}
