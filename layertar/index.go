package layertar

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/overlay"
)

// The hard-link index (index=on, workdir/index) keeps the names of a
// lower hard link one object across copy-up: a lower name not linked up
// yet shows the index entry, the upper copy, not the lower file (kernel:
// ovl_lookup_index). Diff reads the index when it is given the workdir
// (overlay.Config.Work) and index=on, and writes such a name as a link of
// the upper copy:
//   - inside a directory written in full, where the name is met;
//   - elsewhere, after the walk: the lower layers are searched for the
//     names of each index entry whose overlay link count (overlay.nlink)
//     is more than its names in the upper; each one the merged view shows
//     is written, after the directories on its way that the upper lacks
//     (with the lower layers' attributes, as copy-up makes them).
//
// Entries are matched by file handle, without the filesystem UUID, which
// the kernel leaves null with uuid=off.

// indexEntry is one entry of the index: the upper copy of a lower file.
type indexEntry struct {
	name  string // in workdir/index
	id    objID  // its inode, which its upper names share
	nlink int64  // the overlay's link count
}

// loadIndex reads workdir/index, if Diff is to use it.
func (d *differ) loadIndex() error {
	if d.cfg.Index != "on" || d.cfg.Work == "" {
		return nil
	}
	work, err := unix.Open(d.cfg.Work, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("workdir %s: %w", d.cfg.Work, err)
	}
	defer unix.Close(work)
	fd, err := format.OpenAt(work, format.IndexDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("workdir %s: index: %w", d.cfg.Work, err)
	}
	d.indexFd = fd
	names, err := readNames(fd)
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	d.index = map[string]*indexEntry{}
	for _, name := range names {
		var st unix.Stat_t
		if format.Lstat(fd, name, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue // a directory's or a removed object's entry: no file data
		}
		raw, err := hex.DecodeString(name)
		if err != nil {
			continue
		}
		typ, handle, _, ok := format.DecodeOrigin(raw)
		if !ok {
			continue
		}
		nlink := int64(st.Nlink) - 1
		if v, _ := format.GetxattrAt(fd, name, d.names.Name(format.Nlink)); v != nil {
			if n, ok := format.ParseNlink(v, uint64(st.Nlink)); ok {
				nlink = n
			}
		}
		d.index[handleKey(typ, handle)] = &indexEntry{name: name, id: objID{st.Dev, st.Ino}, nlink: nlink}
	}
	return nil
}

func handleKey(typ int32, handle []byte) string { return fmt.Sprintf("%d:%x", typ, handle) }

// indexed returns the index entry of the lower file open at fd, or nil.
func (d *differ) indexed(fd int) *indexEntry {
	if len(d.index) == 0 {
		return nil
	}
	h, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return nil
	}
	return d.index[handleKey(h.Type(), h.Bytes())]
}

// indexObject is the entry of the index entry ie at p: its attributes,
// xattrs and data are the upper copy's.
func (d *differ) indexObject(ie *indexEntry, p string) (*entry, error) {
	var st unix.Stat_t
	if err := format.Lstat(d.indexFd, ie.name, &st); err != nil {
		return nil, pathErr("read index entry", p, err)
	}
	raw, err := format.ListxattrAt(d.indexFd, ie.name)
	if err != nil {
		return nil, pathErr("read index entry", p, err)
	}
	if err := d.override(d.indexFd, ie.name, raw, &st); err != nil {
		return nil, pathErr("read index entry", p, err)
	}
	e := &entry{name: p, st: st, id: ie.id, linkable: true, fd: -1}
	if _, seen := d.links[ie.id]; seen {
		return e, nil
	}
	if e.xattrs, err = d.userXattrs(d.indexFd, ie.name, raw); err != nil {
		return nil, pathErr("read index entry", p, err)
	}
	if e.fd, err = format.OpenAt(d.indexFd, ie.name, unix.O_RDONLY|unix.O_NOFOLLOW, 0); err != nil {
		return nil, pathErr("read index entry", p, err)
	}
	return e, nil
}

// indexAliases writes, after the walk, the lower names of indexed objects
// that the merged view shows and the walk did not meet.
func (d *differ) indexAliases() error {
	pending := map[objID]bool{}
	for _, ie := range d.index {
		if ie.nlink > int64(d.linkNames[ie.id]) {
			pending[ie.id] = true
		}
	}
	if len(pending) == 0 {
		return nil
	}
	root, err := d.lowerRoot()
	if err != nil {
		return err
	}
	type alias struct {
		path string
		ie   *indexEntry
	}
	var found []alias
	var search func(n *overlay.Node, p string) error
	search = func(n *overlay.Node, p string) error {
		ents, err := n.ReadDir()
		if err != nil {
			return pathErr("read lower directory", show(p), err)
		}
		for _, e := range ents {
			if e.Type != unix.S_IFDIR && e.Type != unix.S_IFREG {
				continue
			}
			cp := join(p, e.Name)
			child, err := n.Lookup(e.Name)
			if err != nil {
				continue // the merged view refuses it; so it shows no alias there
			}
			if child.IsDir() {
				err = search(child, cp)
			} else if fd, oerr := child.Open(unix.O_RDONLY); oerr == nil {
				if ie := d.indexed(fd); ie != nil && pending[ie.id] {
					found = append(found, alias{cp, ie})
				}
				unix.Close(fd)
			}
			child.Forget()
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := search(root, ""); err != nil {
		return err
	}
	sort.Slice(found, func(i, j int) bool { return found[i].path < found[j].path })
	for _, a := range found {
		missing, visible, err := d.upperCovers(a.path)
		if err != nil || !visible {
			if err != nil {
				return err
			}
			continue
		}
		for _, dir := range missing {
			if err := d.copiedDir(dir); err != nil {
				return err
			}
		}
		e, err := d.indexObject(a.ie, a.path)
		if err != nil {
			return err
		}
		err = d.write(e)
		if e.fd >= 0 {
			unix.Close(e.fd)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// upperCovers says whether the lower name p shows in the merged view at p:
// no upper entry on its way hides it (a whiteout, a non-directory, an
// opaque or redirected directory) and the upper has no entry at p itself.
// missing are the directories on its way the upper lacks.
func (d *differ) upperCovers(p string) (missing []string, visible bool, err error) {
	comps := strings.Split(p, "/")
	cur, err := format.OpenAt(d.upper, ".", unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, false, err
	}
	defer func() { unix.Close(cur) }()
	xwh := d.rootXWh
	for i, c := range comps {
		var st unix.Stat_t
		err := format.Lstat(cur, c, &st)
		if errors.Is(err, unix.ENOENT) {
			for j := i + 1; j < len(comps); j++ {
				missing = append(missing, strings.Join(comps[:j], "/"))
			}
			return missing, true, nil
		}
		if err != nil {
			return nil, false, pathErr("read upper", filepath.Join(comps[:i+1]...), err)
		}
		if i == len(comps)-1 || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil, false, nil // an upper entry, or a whiteout or file on the way
		}
		raw, _ := format.ListxattrAt(cur, c)
		if d.isWhiteout(cur, c, &st, xwh, raw) {
			return nil, false, nil
		}
		if has(raw, d.names.Name(format.Redirect)) {
			return nil, false, nil // its lower part is elsewhere: written in full
		}
		var opaque bool
		if has(raw, d.names.Name(format.Opaque)) {
			v, _ := format.GetxattrAt(cur, c, d.names.Name(format.Opaque))
			opaque, xwh = format.ParseOpaque(v)
		} else {
			xwh = false
		}
		if opaque {
			return nil, false, nil
		}
		next, err := format.OpenAt(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return nil, false, pathErr("read upper", filepath.Join(comps[:i+1]...), err)
		}
		unix.Close(cur)
		cur = next
	}
	return nil, false, nil
}

// copiedDir writes the lower directory at p, which the upper lacks, with
// its attributes, as copy-up would make it: once.
func (d *differ) copiedDir(p string) error {
	if d.copied[p] {
		return nil
	}
	d.copied[p] = true
	n, err := d.lookupAbs("/" + p)
	if err != nil {
		return pathErr("read lower", p, err)
	}
	if n == nil {
		return pathErr("read lower", p, unix.ENOENT)
	}
	defer n.Forget()
	var st unix.Stat_t
	if err := n.Getattr(&st); err != nil {
		return pathErr("read lower", p, err)
	}
	xattrs, err := d.nodeXattrs(n)
	if err != nil {
		return pathErr("read lower", p, err)
	}
	return d.write(&entry{name: p, st: st, xattrs: xattrs})
}
