package kernelcmp

// Observation helpers for the identity, lock, inotify and directory tests
// (cmd/ovl/identity_test.go and friends): layers on other filesystems, a
// second mount over the same lowers, and a walk that records what a mount
// says about each object's identity.

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// PutLowerOn moves lower layer i of both sides onto a fresh filesystem of
// the given kind: "tmpfs", or "ext4" (a small image on the temp dir's disk,
// loop-mounted). Fresh filesystems number their inodes from small values,
// so two such layers have colliding inode numbers. Both sides are unmounted
// while the layer moves and mounted again afterwards; the filesystems are
// detached at test cleanup (lazily: the overlays still hold them then).
func (p *Pair) PutLowerOn(i int, kind string) {
	p.T.Helper()
	p.Unmount()
	for _, s := range p.Sides() {
		dir := filepath.Join(s.Dir, fmt.Sprintf("fs-l%d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			p.T.Fatal(err)
		}
		if err := mountFresh(kind, dir); err != nil {
			p.T.Fatalf("%s: lower %d on %s: %v", s.Name, i, kind, err)
		}
		p.T.Cleanup(func() {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				p.T.Errorf("cleanup: umount %s: %v", dir, err)
			}
		})
		// Nothing of the fresh filesystem may show through the overlay.
		if err := os.RemoveAll(filepath.Join(dir, "lost+found")); err != nil {
			p.T.Fatal(err)
		}
		old := s.Layout.Lowers[i]
		if out, err := exec.Command("cp", "-a", old+"/.", dir).CombinedOutput(); err != nil {
			p.T.Fatalf("cp -a %s %s: %v\n%s", old, dir, err, out)
		}
		if err := os.RemoveAll(old); err != nil {
			p.T.Fatal(err)
		}
		s.Layout.Lowers[i] = dir
	}
	p.Mount()
}

func mountFresh(kind, dir string) error {
	switch kind {
	case "tmpfs":
		return unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755")
	case "ext4":
		img := dir + ".img"
		f, err := os.Create(img)
		if err != nil {
			return err
		}
		err = f.Truncate(64 << 20)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
			return fmt.Errorf("mkfs.ext4: %v\n%s", err, out)
		}
		// mount(8) sets up the loop device with autoclear: it goes away
		// with the last unmount.
		if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
			return fmt.Errorf("mount -o loop: %v\n%s", err, out)
		}
		return nil
	}
	return fmt.Errorf("unknown filesystem kind %q", kind)
}

// MountShared mounts s's lower layers a second time, with a fresh upper and
// work directory, at a new mount point named after name, with the mounter and
// options of the pair. The mount is undone at test cleanup.
func (p *Pair) MountShared(s *Side, name string) Layout {
	p.T.Helper()
	l := Layout{Lowers: append([]string(nil), s.Layout.Lowers...)}
	l.Mnt = filepath.Join(s.Dir, name+"-mnt")
	if !p.Cfg.Options.ReadOnly {
		l.Upper = filepath.Join(s.Dir, name+"-upper")
		l.Work = filepath.Join(s.Dir, name+"-work")
	}
	for _, d := range []string{l.Mnt, l.Upper, l.Work} {
		if d == "" {
			continue
		}
		if err := os.Mkdir(d, 0o755); err != nil {
			p.T.Fatal(err)
		}
	}
	if err := s.M.Mount(l, p.Cfg.Options); err != nil {
		p.T.Fatalf("%s: second mount: %v", s.Name, err)
	}
	p.T.Cleanup(func() {
		if mounted(l.Mnt) {
			if err := s.M.Unmount(l.Mnt); err != nil {
				p.T.Errorf("cleanup: %v", err)
			}
		}
	})
	if err := checkFsType(s.M, l.Mnt); err != nil {
		p.T.Fatalf("%s: second mount: %v", s.Name, err)
	}
	return l
}

// ID is what a mount says about one object's identity: its lstat and the
// directory entries that name it.
type ID struct {
	Path  string // relative to the root, "" for the root
	Type  string // as Node.Type
	Dev   uint64 // st_dev
	Ino   uint64 // st_ino
	Nlink uint64 // st_nlink
	// DIno is d_ino of the object's entry in its parent's getdents64 (0 for
	// the root, whose entry is outside the mount).
	DIno uint64
	// Directories: d_ino of "." and ".." in their own listing, and how many
	// subdirectories the listing holds (for the link count).
	DotIno, DotDotIno uint64
	Subdirs           int
}

// WalkIDs lists every object under root (root included) with its identity,
// by path. It does not follow symlinks; nothing may be mounted inside root.
func WalkIDs(root string) (map[string]*ID, error) {
	out := map[string]*ID{}
	var walk func(rel string, dino uint64) error
	walk = func(rel string, dino uint64) error {
		p := filepath.Join(root, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("lstat %s: %w", rel, err)
		}
		id := &ID{Path: rel, Type: typeName(st.Mode, st.Rdev), Dev: st.Dev, Ino: st.Ino, Nlink: uint64(st.Nlink), DIno: dino}
		out[rel] = id
		if id.Type != "dir" {
			return nil
		}
		ents, err := ReadDir(p)
		if err != nil {
			return fmt.Errorf("readdir %s: %w", rel, err)
		}
		sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
		for _, e := range ents {
			switch e.Name {
			case ".":
				id.DotIno = e.Ino
				continue
			case "..":
				id.DotDotIno = e.Ino
				continue
			}
			if e.Type == unix.DT_DIR {
				id.Subdirs++
			}
			crel := path.Join(rel, e.Name)
			if err := walk(crel, e.Ino); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk("", 0); err != nil {
		return out, err
	}
	return out, nil
}

// SortedIDPaths returns the paths of ids in order.
func SortedIDPaths(ids map[string]*ID) []string {
	ps := make([]string, 0, len(ids))
	for p := range ids {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}
