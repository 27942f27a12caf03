package overlay

import (
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/layerindex"
)

// DirEntry is one name of a merged directory listing.
type DirEntry struct {
	Name string
	Ino  uint64
	Type uint32 // S_IFMT bits
}

// ReadDir lists the merged directory n (kernel: ovl_iterate, ovl_dir_read_merged):
// the upper first, then each lower; each name once, the topmost wins;
// whiteouts hide the name in the layers below and are never listed; a
// non-directory in a higher layer hides a directory below. AUFS whiteouts
// hide their name in their own layer too, and no AUFS name is listed
// (format/aufs.go). "." and ".." are the caller's business. The cost is
// linear in the number of entries; only names that start with ".wh."
// cost more than a prefix check for the AUFS format.
func (n *Node) ReadDir() ([]DirEntry, error) {
	if !n.IsDir() {
		return nil, unix.ENOTDIR
	}
	o := n.o
	n.mu.Lock()
	upperFd, upperXWh, upperAufs, lowers, released := n.upperFd, n.upperXWh, n.upperAufs, n.lowers, n.released
	n.mu.Unlock()
	if released {
		return nil, unix.ESTALE
	}

	type layerDir struct {
		fd   int
		l    *layer
		xwh  bool
		aufs *aufsDir
		idx  *layerindex.Dir // lower directories: the index's record (cache.go)
	}
	var dirs []layerDir
	if upperFd >= 0 {
		dirs = append(dirs, layerDir{upperFd, o.upper, upperXWh, upperAufs, nil})
	}
	for _, lr := range lowers {
		dirs = append(dirs, layerDir{lr.fd, lr.layer, lr.xwh, lr.aufs, lr.idx})
	}
	// seen maps a listed name to its index in out. fix marks upper entries
	// whose inode number only a lookup can tell: any directory of a
	// merged directory (it may merge with one below, or have moved here
	// from a name of this directory with a redirect, which marks no
	// parent impure), any entry of an impure directory (a copied-up
	// object or one moved there has an origin). Kernel: ovl_calc_d_ino.
	seen := make(map[string]int)
	var out []DirEntry
	var fix []int
	n.mu.Lock()
	impure := n.impure
	n.mu.Unlock()
	type dirent struct {
		name  string
		ino   uint64
		dtype uint8
	}
	var ents []dirent
	for i, d := range dirs {
		last := i == len(dirs)-1
		upper := d.l == o.upper
		// The whole listing first: an AUFS whiteout hides its name in
		// its own layer too, wherever the name comes in the listing.
		gen := d.aufs.snapshot()
		var marks format.Markers
		ents = ents[:0]
		add := func(name string, ino uint64, dtype uint8) error {
			if !marks.Add(name) {
				ents = append(ents, dirent{name, ino, dtype})
			}
			return nil
		}
		if d.idx != nil {
			for _, e := range d.idx.Entries() {
				add(e.Name, e.Stat.Ino, modeToDtype(e.Stat.Mode))
			}
		} else if err := readDirFd(d.fd, add); err != nil {
			return nil, err
		}
		d.aufs.fill(marks, gen)
		known := &aufsDir{state: aufsKnown, m: marks}
		for name := range marks.Hidden {
			if _, dup := seen[name]; !dup {
				seen[name] = -1
			}
		}
		for _, e := range ents {
			name, ino, dtype := e.name, e.ino, e.dtype
			if j, dup := seen[name]; dup {
				if j >= 0 && out[j].Type == unix.S_IFDIR && dtype == unix.DT_DIR {
					seen[name] = -1 // in fix already
				}
				continue
			}
			if !last {
				seen[name] = -1
			}
			typ := dtypeToMode(dtype)
			switch {
			case dtype == unix.DT_CHR || dtype == unix.DT_UNKNOWN || (d.xwh && dtype == unix.DT_REG):
				var st unix.Stat_t
				k, _, err := o.probeCached(d.idx, d.fd, d.xwh, known, name, &st)
				if err != nil {
					return nil, err
				}
				if k == entryWhiteout || k == entryNone {
					continue
				}
				typ = st.Mode & unix.S_IFMT
			}
			if upper && !last {
				seen[name] = len(out)
			}
			if upper && (impure || typ == unix.S_IFDIR && !last) {
				// Directories of an impure one too: one moved here with a
				// redirect has its origin's number and merges with nothing
				// of this name (kernel: ovl_iterate_real, the impure cache).
				fix = append(fix, len(out))
			}
			out = append(out, DirEntry{Name: name, Ino: o.inoFor(d.l, ino), Type: typ})
		}
	}
	var st unix.Stat_t
	for _, j := range fix {
		if child, err := n.LookupStat(out[j].Name, &st); err == nil {
			out[j].Ino = child.Ino()
			child.Forget()
		}
	}
	return out, nil
}

// readDirFd calls fn for each entry of the directory dirfd (O_PATH is
// fine), skipping "." and "..".
func readDirFd(dirfd int, fn func(name string, ino uint64, dtype uint8) error) error {
	fd, err := format.OpenAt(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	buf := make([]byte, 64<<10)
	for {
		nb, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if nb <= 0 {
			return nil
		}
		for off := 0; off < nb; {
			// struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name
			rec := buf[off:]
			ino := le64(rec[0:8])
			reclen := int(rec[16]) | int(rec[17])<<8
			dtype := rec[18]
			nameb := rec[19:reclen]
			for i, c := range nameb {
				if c == 0 {
					nameb = nameb[:i]
					break
				}
			}
			off += reclen
			name := string(nameb)
			if name == "." || name == ".." {
				continue
			}
			if err := fn(name, ino, dtype); err != nil {
				return err
			}
		}
	}
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func readNames(dirfd int) ([]string, error) {
	var names []string
	err := readDirFd(dirfd, func(name string, _ uint64, _ uint8) error {
		names = append(names, name)
		return nil
	})
	return names, err
}

// modeToDtype is the kernel's IFTODT: a d_type is the file type bits of
// st_mode, shifted down.
func modeToDtype(m uint32) uint8 { return uint8(m & unix.S_IFMT >> 12) }

func dtypeToMode(t uint8) uint32 {
	switch t {
	case unix.DT_DIR:
		return unix.S_IFDIR
	case unix.DT_REG:
		return unix.S_IFREG
	case unix.DT_LNK:
		return unix.S_IFLNK
	case unix.DT_CHR:
		return unix.S_IFCHR
	case unix.DT_BLK:
		return unix.S_IFBLK
	case unix.DT_FIFO:
		return unix.S_IFIFO
	case unix.DT_SOCK:
		return unix.S_IFSOCK
	}
	return 0
}

// isEmpty reports whether the merged directory shows no entries (kernel:
// ovl_check_empty_dir).
func (n *Node) isEmpty() (bool, error) {
	ents, err := n.ReadDir()
	if err != nil {
		return false, err
	}
	return len(ents) == 0, nil
}
