package overlay

import (
	"errors"
	"log"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/layerindex"
)

// The lower cache (Config.LowerCache) answers lookups and listings of
// lower directories from each lower's index (package layerindex), so that
// a cold walk reads one file instead of every inode. Its rules:
//   - An index serves a layer only while the layer's identity (root
//     filesystem, inode and change stamps) is the one it was built for,
//     and a directory only while that directory, opened for real as every
//     directory a lookup finds still is, has the inode number and ctime
//     recorded: a directory whose entries changed is read for real, and so
//     is everything below it.
//   - A damaged, truncated or mismatched index is never used: the mount
//     logs one line, builds a new one and uses that; a layer that cannot
//     be indexed is read for real.
//   - Only a name's own lookup in its parent's lower directory is
//     answered from the index (not a path an absolute redirect walks), and
//     only the xattrs the index records (layerindex.Recorded); data,
//     readlink, getattr and every other xattr go to the real object.
//   - The attributes a lookup reports are those of the index: a file
//     changed in place in a lower layer (chmod, a write, a read that moves
//     its atime) shows its old attributes until the kernel asks again with
//     getattr. Lower layers are read-only by contract; containers-storage
//     never changes a committed layer.

// loadCaches opens, or builds and opens, the index of each lower layer.
func (o *Overlay) loadCaches() {
	dir := o.cfg.LowerCache
	if dir == "" {
		return
	}
	if o.owners {
		// Owners and modes may come from override xattrs the index does
		// not record: every lookup reads them for real anyway.
		log.Printf("lowercache: not used with owner mapping or xattr_permissions")
		return
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Printf("lowercache %s: %v; lower layers are read without an index", dir, err)
		return
	}
	// An index says what the layers hold: only the mounter may write one.
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil || st.Uid != uint32(os.Geteuid()) || st.Mode&0o022 != 0 {
		log.Printf("lowercache %s: not a directory only this user can write; lower layers are read without an index", dir)
		return
	}
	for _, l := range o.lowers {
		ix, err := layerindex.Load(dir, l.root)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				log.Printf("lowercache: index of %s ignored (%v); building it again", l.path, err)
			}
			start := time.Now()
			if err = layerindex.Save(dir, l.root); err == nil {
				ix, err = layerindex.Load(dir, l.root)
			}
			if err == nil {
				log.Printf("lowercache: indexed %s in %.2f s", l.path, time.Since(start).Seconds())
			}
		}
		if err != nil {
			log.Printf("lowercache: no index for %s: %v", l.path, err)
			continue
		}
		l.cache, l.cacheFile = ix, filepath.Join(dir, ix.Identity().Key())
	}
}

// cacheRoot returns the index record of the root of layer l, when it
// matches st, the real root's attributes; nil otherwise.
func cacheRoot(l *layer, st *unix.Stat_t) *layerindex.Dir {
	if l.cache == nil {
		return nil
	}
	d, err := l.cache.Root()
	if err != nil || !d.Matches(st) {
		return nil
	}
	return d
}

// cacheSub returns the index record of the directory e of the indexed
// directory parent, when it matches st, the real directory's attributes;
// nil otherwise, and where parent or e is nil.
func cacheSub(l *layer, parent *layerindex.Dir, e *layerindex.Entry, st *unix.Stat_t) *layerindex.Dir {
	if parent == nil || e == nil {
		return nil
	}
	d, err := parent.Sub(e)
	if err != nil || d == nil || !d.Matches(st) {
		if l.staleLogged.CompareAndSwap(false, true) {
			log.Printf("lowercache: %s changed since it was indexed (%s); changed directories are read for real, and the index is built again at the next mount",
				l.path, e.Name)
			// Its next mount builds it again.
			os.Remove(l.cacheFile)
		}
		return nil
	}
	return d
}

// cachedAufs returns the AUFS markers of the indexed directory d, known
// from its listing (nil d: unknown yet, probed or read as they come).
func cachedAufs(d *layerindex.Dir) *aufsDir {
	if d == nil {
		return &aufsDir{}
	}
	a := &aufsDir{state: aufsKnown}
	for _, e := range d.Entries() {
		a.m.Add(e.Name)
	}
	return a
}

// probeCached is probe of name in the lower directory lr (its fd is
// dirfd), answered from lr's index record where it has one; it also
// returns the name's index entry (nil: none, or not from the index).
func (o *Overlay) probeCached(idx *layerindex.Dir, dirfd int, xwh bool, a *aufsDir, name string, st *unix.Stat_t) (entryKind, *layerindex.Entry, error) {
	if idx == nil {
		k, err := o.probe(dirfd, xwh, a, name, st)
		return k, nil, err
	}
	if format.IsAUFSName(name) {
		return entryNone, nil, nil
	}
	if hidden, err := a.hides(dirfd, name); err != nil {
		return entryNone, nil, err
	} else if hidden {
		return entryWhiteout, nil, nil
	}
	e := idx.Lookup(name)
	if e == nil {
		return entryNone, nil, nil
	}
	*st = e.Stat
	switch {
	case format.IsWhiteoutStat(st):
		return entryWhiteout, e, nil
	case xwh && format.MaybeXWhiteout(st):
		if cachedXattr(e, dirfd, name, o.names.Name(format.Whiteout)) != nil {
			return entryWhiteout, e, nil
		}
		return entryOther, e, nil
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return entryDir, e, nil
	}
	return entryOther, e, nil
}

// cachedXattr reads xattr x of name in dirfd, from the index entry e
// where it records x; nil where absent.
func cachedXattr(e *layerindex.Entry, dirfd int, name, x string) []byte {
	if e != nil && layerindex.Recorded(x) {
		return e.Xattr(x)
	}
	v, _ := format.GetxattrAt(dirfd, name, x)
	return v
}
