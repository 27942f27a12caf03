package overlay

import (
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// Inode numbers follow the kernel's xino rules (ovl_map_dev_ino), and come
// from the layers, never from memory, so a node can be forgotten and found
// again under the same number:
//   - st_ino is a real inode number with the index of its real filesystem in
//     the high bits (inoFor), so numbers from different filesystems never
//     collide; on one filesystem it is the real number, as the kernel's with
//     xino=off. st_dev is the mount's own.
//   - A directory with a lower part has the number of its topmost lower
//     directory, before and after copy-up.
//   - An upper non-directory whose overlay.origin names a lower object with
//     one link has that object's number, so copy-up does not change it.
//   - Every name of a lower file with several links has the lower number,
//     as in the kernel. Without an index each name is its own object (as in
//     the kernel with index=off): copy-up of one name splits the link, and
//     the copy has its own upper number from then on, so that two
//     different objects never share a number after a change; the other
//     names keep the lower number.
//   - Anything else has the number of its topmost real object.
//
// The number is not the object's identity: several objects may share one.
// Key is: FUSE needs one inode per object, and go-fuse keys its inodes by
// StableAttr.Ino. An object's key is its inode number, except for a name of
// a lower hard link without an index, whose key is made from its parent
// and name (nameKey) and stays across its copy-up. Without an upper layer
// nothing splits a link, so its names are one object, keyed by the lower
// number (kernel: ovl_hash_bylower).
//
// While a node lives, its object keeps the node's key and number, also for
// new lookups of its upper object under any name (keep): a name of a split
// lower hard link is keyed by name before copy-up and by its upper inode
// number after, and two keys would be two FUSE inodes for one upper
// object, each with its own cached attributes.
//
// readdir reports the same numbers (ReadDir), so d_ino equals st_ino; when
// a node that kept its number is released, OnRenumber tells the binding to
// drop the listings of its directory, which hold the number it kept.

// upperIno is the inode number of the upper non-directory name in the upper
// directory dirfd, with attributes st. lowers are the parent's lower
// directories, where the origin is checked by name when handles cannot be
// opened (without CAP_DAC_READ_SEARCH).
func (o *Overlay) upperIno(dirfd int, name string, st *unix.Stat_t, lowers []lowerRef) uint64 {
	def := o.inoFor(o.upper, st.Ino)
	origin, _ := format.GetxattrAt(dirfd, name, o.names.Name(format.Origin))
	if len(origin) == 0 {
		return def
	}
	var lst unix.Stat_t
	l, byName := o.originStat(origin, &lst, lowers, name)
	// Checked by name, an upper object with several names matches its
	// origin under one of them only: number it by its upper inode, so that
	// all its names share one number as tools that count links need (the
	// kernel decodes the handle and shows the lower number for all).
	if byName && st.Nlink > 1 {
		return def
	}
	// With an index, every name of a lower hard link stays one object.
	if l == nil || (lst.Nlink != 1 && !o.indexOn) || lst.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT {
		return def
	}
	return o.inoFor(l, lst.Ino)
}

// originStat finds the lower object an overlay.origin value names and stats
// it into st; it returns its layer, or nil when the origin names nothing in
// the lower layers any more, and whether it was checked by name (handles
// cannot be opened).
func (o *Overlay) originStat(origin []byte, st *unix.Stat_t, lowers []lowerRef, name string) (*layer, bool) {
	typ, handle, uuid, ok := format.DecodeOrigin(origin)
	if !ok {
		return nil, false
	}
	for _, l := range o.lowers {
		if !l.hasID || l.uuid != uuid {
			continue
		}
		mfd := l.mountFd()
		if mfd < 0 {
			break
		}
		fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(typ, handle), unix.O_PATH|unix.O_NOFOLLOW)
		if err == unix.EPERM || err == unix.ENOSYS || err == unix.EOPNOTSUPP {
			break // cannot open handles: check by name below
		}
		if err != nil {
			continue // a stale handle, or one of another layer on the same filesystem
		}
		err = unix.Fstat(fd, st)
		unix.Close(fd)
		if err != nil {
			return nil, false
		}
		return l, false
	}
	// Without handles: the origin counts when the same name in the lower
	// layers is the object it names (kernel: ovl_check_origin).
	for _, lr := range lowers {
		k, err := o.probe(lr.fd, lr.xwh, lr.aufs, name, st)
		if err != nil || k == entryNone {
			continue
		}
		if k != entryOther {
			return nil, true
		}
		if enc := o.encodeOriginAt(lr.layer, lr.fd, name); enc != nil && format.SameOrigin(enc, origin) {
			return lr.layer, true
		}
		return nil, true
	}
	return nil, true
}

// encodeOrigin encodes the file handle of the object open at fd on layer l,
// or returns nil.
func (o *Overlay) encodeOrigin(l *layer, fd int) []byte {
	return o.encodeOriginAt(l, fd, "")
}

// encodeOriginAt encodes the file handle of name in dirfd ("": dirfd
// itself) on layer l, or returns nil.
func (o *Overlay) encodeOriginAt(l *layer, dirfd int, name string) []byte {
	if !l.hasID {
		return nil
	}
	flags := 0
	if name == "" {
		flags = unix.AT_EMPTY_PATH
	}
	h, _, err := unix.NameToHandleAt(dirfd, name, flags)
	if err != nil {
		return nil
	}
	return format.EncodeOrigin(h.Type(), h.Bytes(), l.uuid)
}

// mountFd is a descriptor of the layer root that open_by_handle_at accepts
// (not O_PATH), opened on first use; -1 if it cannot be opened.
func (l *layer) mountFd() int {
	l.mountOnce.Do(func() {
		l.mfd = -1
		if fd, err := format.OpenAt(l.root, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
			l.mfd = fd
		}
	})
	return l.mfd
}

// keep records that n, just copied up to the upper inode upperIno, keeps
// its key and number for lookups of that upper object while n lives (see
// above).
func (o *Overlay) keep(n *Node, upperIno uint64) {
	if n.IsDir() || o.inoFor(o.upper, upperIno) == n.key {
		return
	}
	o.keptMu.Lock()
	if o.kept == nil {
		o.kept = map[uint64]*Node{}
	}
	o.kept[upperIno] = n
	n.keptAs = upperIno
	o.keptMu.Unlock()
}

// keptIno returns the key and number of a node that lives and keeps them
// for the upper object with inode number upperIno, if there is one.
func (o *Overlay) keptIno(upperIno uint64) (key, ino uint64, ok bool) {
	o.keptMu.Lock()
	defer o.keptMu.Unlock()
	if n := o.kept[upperIno]; n != nil {
		return n.key, n.Ino(), true
	}
	return 0, 0, false
}

// unkeep ends keep when n is forgotten or its object loses its last name
// (the upper inode number may then be reused by another object); it
// reports whether n kept a number.
func (o *Overlay) unkeep(n *Node) bool {
	o.keptMu.Lock()
	kept := n.keptAs != 0
	if kept && o.kept[n.keptAs] == n {
		delete(o.kept, n.keptAs)
	}
	n.keptAs = 0
	o.keptMu.Unlock()
	return kept
}

// OnRenumber sets f to be called with the directory of a node that kept
// its number (keep) when that node is released: a new lookup of its object
// may give another number from then on, so listings of the directory taken
// while it lived hold a stale d_ino. f runs with no overlay lock held and
// the directory referenced; it must not call back into the overlay.
func (o *Overlay) OnRenumber(f func(dir *Node)) { o.renumbered.Store(&f) }
