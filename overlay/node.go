package overlay

import (
	"encoding/binary"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/layerindex"
)

// Node is one overlay object. It stays the same object across copy-up:
// copy-up changes where its data lives, not its identity (Key), nor its
// inode number except for a name of a lower hard link (see ino.go).
//
// A Node is reference counted (see Ref and Forget): whoever holds one holds
// a reference, and the last one to go releases its descriptors. After that
// every method fails with ESTALE; none may panic.
type Node struct {
	o *Overlay
	// key identifies the object among the overlay's (see ino.go); immutable.
	key uint64
	// ino is its st_ino, which copy-up changes for a name of a lower hard
	// link (see ino.go).
	ino  atomic.Uint64
	kind uint32 // S_IFMT bits, immutable

	// refs counts the references: one per holder (each FUSE inode that
	// stands for the node, each lookup or request in progress that uses
	// it, each child node whose parent it is, the overlay for the root).
	// Atomic, so that taking or dropping one never waits for a copy-up.
	refs atomic.Int32

	mu sync.Mutex // copy-up lock; guards the fields below (written also under parent's dirMu)
	// upperFd is the O_PATH fd of the upper directory (directories), or -1.
	upperFd int
	// realIno is the inode number of a non-directory's topmost real object,
	// which checks that its name still holds it (see real).
	realIno uint64
	// indexName, for a lower hard link with index=on, names its entry in
	// the index directory; inIndex says the entry exists, so the object's
	// data is there even where this name is not linked in the upper yet.
	indexName string
	lowerIno  uint64 // the lower inode number of an indexed object
	// pinFd, when pinned, holds a non-directory whose name is going away
	// (see Pin).
	pinFd int
	// lowers: for a directory, the lower directories it merges, top first,
	// ending at an opaque one; for a non-directory, at most the one it comes from.
	lowers []lowerRef
	// upperAufs caches the AUFS markers of the upper directory (aufs.go);
	// nil: probe them.
	upperAufs *aufsDir
	// redirect: the directory's overlay.redirect, where its lower part is
	// (relative: a name in the parent's lower directories; absolute: a path
	// from the lower roots).
	redirect string
	// The flags come together, after the words, so that the node has no
	// padding between fields: it is made for every object the kernel
	// looks up (issue 21, bytes per object).
	//
	// released: the last reference went and the descriptors are closed.
	released bool
	inIndex  bool
	// metacopy: the upper file holds metadata only; its data is the lower
	// file lowers[0] (see metacopy.go).
	metacopy bool
	pinned   bool
	// inUpper: the object exists in the upper layer.
	inUpper bool
	// upperXWh: the upper directory holds xattr whiteouts (opaque=x).
	upperXWh bool
	// impure: the upper directory is marked overlay.impure.
	impure bool

	dirMu sync.Mutex // directories: serialises namespace changes inside

	// parent and name locate the object (any one link of a hard-linked
	// file); guarded by Overlay.treeMu. The root has no parent. The node
	// holds a reference on its parent, as a dentry does on its parent's:
	// a parent's descriptors are where a non-directory is found.
	parent *Node
	name   string

	keptAs uint64 // the upper inode number under which o.kept holds n, or 0; guarded by Overlay.keptMu

	// noted: the upper object is in the volatile sync set already
	// (volatile.go), so a change costs no system call to record.
	noted atomic.Bool
}

// lowerRef is an object's presence in one lower layer.
type lowerRef struct {
	layer *layer
	fd    int             // directories: O_PATH fd; non-directories: -1 (reached via the parent)
	xwh   bool            // directories: holds xattr whiteouts (opaque=x)
	aufs  *aufsDir        // directories: its AUFS markers (aufs.go); nil: probe them
	idx   *layerindex.Dir // directories: the layer index's record of it (cache.go); nil: none
}

// Ino is the object's inode number (st_ino, d_ino). Several objects may
// share one: the names of a lower hard link before copy-up (see ino.go).
func (n *Node) Ino() uint64 { return n.ino.Load() }

// Key identifies the object: no two live objects share one, and it never
// changes. It equals Ino, except for a name of a lower hard link, whose key
// is a name key (see IsNameKey).
func (n *Node) Key() uint64 { return n.key }

// setIno gives a new node its key and number, both ino.
func (n *Node) setIno(ino uint64) {
	n.key = ino
	n.ino.Store(ino)
}

// IsDir reports whether the node is a directory.
func (n *Node) IsDir() bool { return n.kind == unix.S_IFDIR }

// Kind returns the S_IFMT bits of the node's type.
func (n *Node) Kind() uint32 { return n.kind }

// Overlay returns the overlay the node belongs to.
func (n *Node) Overlay() *Overlay { return n.o }

// born counts n, a new node, and gives it its first reference, the
// caller's; its parent, if any, gets a reference from it.
func (o *Overlay) born(n *Node) *Node {
	n.refs.Store(1)
	o.stats.nodes.Add(1)
	if n.parent != nil {
		n.parent.Ref()
	}
	return n
}

func (o *Overlay) newRoot() (*Node, error) {
	n := o.born(&Node{o: o, kind: unix.S_IFDIR, upperFd: -1})
	if o.upper != nil {
		fd, err := format.OpenAt(o.upper.root, ".", unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return nil, err
		}
		n.upperFd, n.inUpper, n.upperAufs = fd, true, &aufsDir{}
		n.upperXWh = o.dirXWhiteouts(fd)
		n.impure = o.impureDir(fd)
	}
	// The roots of all layers always merge; the kernel does not look at
	// opaque markers on layer roots.
	for _, l := range o.lowers {
		fd, err := format.OpenAt(l.root, ".", unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			n.Forget()
			return nil, err
		}
		var lst unix.Stat_t
		var idx *layerindex.Dir
		if l.cache != nil && unix.Fstat(fd, &lst) == nil {
			idx = cacheRoot(l, &lst)
		}
		n.lowers = append(n.lowers, lowerRef{layer: l, fd: fd, xwh: o.dirXWhiteouts(fd), aufs: cachedAufs(idx), idx: idx})
	}
	var st unix.Stat_t
	if err := unix.Fstat(n.realFd(), &st); err != nil {
		n.Forget()
		return nil, err
	}
	n.setIno(1)
	return n, nil
}

// realFd is the fd of a directory's topmost real directory, or -1 once the
// node is released. The caller holds n.mu.
func (n *Node) realFd() int {
	if n.upperFd >= 0 {
		return n.upperFd
	}
	if len(n.lowers) == 0 {
		return -1
	}
	return n.lowers[0].fd
}

// impureDir reports overlay.impure=y, as the kernel reads it
// (ovl_is_impuredir: one byte).
func (o *Overlay) impureDir(fd int) bool {
	v, _ := format.Getxattr(fd, o.names.Name(format.Impure))
	return format.ParseImpure(v)
}

// dirXWhiteouts reports whether a layer directory is marked as holding
// xattr whiteouts (overlay.opaque=x).
func (o *Overlay) dirXWhiteouts(fd int) bool {
	_, x := o.opaqueOf(fd)
	return x
}

// opaque reports overlay.opaque=y.
func (o *Overlay) opaque(fd int) bool {
	y, _ := o.opaqueOf(fd)
	return y
}

// opaqueOf reads a layer directory's overlay.opaque once: whether it hides
// the layers below, and whether it holds xattr whiteouts.
func (o *Overlay) opaqueOf(fd int) (opaque, xwhiteouts bool) {
	v, _ := format.Getxattr(fd, o.names.Name(format.Opaque))
	return format.ParseOpaque(v)
}

// dirOpaque reports whether a layer directory hides the layers below it.
func (o *Overlay) dirOpaque(fd int) bool {
	v, _ := format.Getxattr(fd, o.names.Name(format.Opaque))
	y, _ := format.ParseOpaque(v)
	return y
}

// Ref takes one more reference on n for a new holder, who gives it back
// with Forget. The caller must hold a reference already (a node whose last
// reference went cannot come back): a binding that finds a node it had
// handed out asks for it under the lock that orders its own Forget calls.
func (n *Node) Ref() {
	if n.refs.Add(1) <= 1 {
		panic("overlay: Ref of a released node")
	}
}

// Forget drops one reference on n. The last releases the node's file
// descriptors and its reference on its parent; the node must not be used
// after that (its methods then fail with ESTALE).
func (n *Node) Forget() {
	switch r := n.refs.Add(-1); {
	case r == 0:
		n.release()
	case r < 0:
		panic("overlay: Forget of a released node")
	}
}

// release closes the descriptors of a node whose last reference went.
func (n *Node) release() {
	n.mu.Lock()
	n.released = true
	if n.pinned {
		unix.Close(n.pinFd)
		n.pinned = false
	}
	if n.upperFd >= 0 {
		unix.Close(n.upperFd)
		n.upperFd = -1
	}
	for i := range n.lowers {
		if n.lowers[i].fd >= 0 {
			unix.Close(n.lowers[i].fd)
			n.lowers[i].fd = -1
		}
	}
	n.lowers = nil
	n.mu.Unlock()
	kept := n.o.unkeep(n)
	n.o.treeMu.Lock()
	parent := n.parent
	n.parent = nil
	n.o.treeMu.Unlock()
	n.o.stats.nodes.Add(-1)
	if parent != nil {
		if f := n.o.renumbered.Load(); kept && f != nil {
			(*f)(parent)
		}
		parent.Forget()
	}
}

// live reports whether n still holds its descriptors; a released node
// answers ESTALE. With the references counted right no request reaches
// one: this is the guard that turns a mistake into an error, not a panic.
func (n *Node) live() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.released {
		return unix.ESTALE
	}
	return nil
}

// entryKind classifies a name found in one layer directory.
type entryKind int

const (
	entryNone     entryKind = iota // absent
	entryWhiteout                  // a whiteout: hides the layers below
	entryDir
	entryOther
)

// probe looks at one name in one layer directory: dirfd is that directory,
// xwh tells whether it may hold xattr whiteouts (kernel: ovl_lookup_single),
// a caches its AUFS markers (nil: probe them). An AUFS whiteout hides the
// name even where the layer holds it too, as in fuse-overlayfs; an AUFS
// name itself is never an object.
func (o *Overlay) probe(dirfd int, xwh bool, a *aufsDir, name string, st *unix.Stat_t) (entryKind, error) {
	if format.IsAUFSName(name) {
		return entryNone, nil
	}
	if hidden, err := a.hides(dirfd, name); err != nil {
		return entryNone, err
	} else if hidden {
		return entryWhiteout, nil
	}
	if err := format.Lstat(dirfd, name, st); err != nil {
		if err == unix.ENOENT || err == unix.ENOTDIR || err == unix.ENAMETOOLONG {
			return entryNone, nil
		}
		return entryNone, err
	}
	switch {
	case format.IsWhiteoutStat(st):
		return entryWhiteout, nil
	case xwh && format.MaybeXWhiteout(st):
		if v, _ := format.GetxattrAt(dirfd, name, o.names.Name(format.Whiteout)); v != nil {
			return entryWhiteout, nil
		}
		return entryOther, nil
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return entryDir, nil
	}
	return entryOther, nil
}

// Lookup finds name in the directory n (kernel: ovl_lookup). It returns a
// new Node with one reference, the caller's; callers that keep a table of
// nodes by Key use it to find one they already have, and Forget the new
// one.
func (n *Node) Lookup(name string) (*Node, error) {
	var st unix.Stat_t
	return n.LookupStat(name, &st)
}

// LookupStat is Lookup that also returns the new node's attributes, as
// Getattr would, without a second stat.
func (n *Node) LookupStat(name string, out *unix.Stat_t) (*Node, error) {
	o := n.o
	o.stats.lookups.Add(1)
	if !n.IsDir() {
		return nil, unix.ENOTDIR
	}
	if len(name) > format.NameMax {
		// Kernel: ovl_lookup checks ofs->namelen before any layer.
		return nil, unix.ENAMETOOLONG
	}
	if name == "" || name == "." || name == ".." {
		return nil, unix.ENOENT
	}
	if format.IsAUFSName(name) {
		// The AUFS format's names are never objects (as fuse-overlayfs).
		return nil, unix.EINVAL
	}
	n.mu.Lock()
	upperFd, upperXWh, upperAufs, impure := n.upperFd, n.upperXWh, n.upperAufs, n.impure
	lowers, released := n.lowers, n.released
	// The fds stay open while n is alive (the caller holds a reference);
	// n.mu only guards the slice header.
	n.mu.Unlock()
	if released {
		return nil, unix.ESTALE
	}

	child := o.born(&Node{o: o, upperFd: -1, parent: n, name: name})
	var st unix.Stat_t
	var topSt unix.Stat_t // stat of the topmost real object
	var topOwner owner    // its owner (owner.go)
	var lowerDirIno uint64
	found := false
	merge := true      // whether lower layers still count
	hasXattrs := false // the upper directory has overlay xattrs
	// above is the directory found last, in the upper or a lower layer,
	// whose AUFS opaque marker is yet to be read: only when a directory
	// below would merge with it (aufsOpaqueAbove).
	var above lowerRef
	above.fd = -1

	if upperFd >= 0 {
		k, err := o.probe(upperFd, upperXWh, upperAufs, name, &st)
		if err != nil {
			return nil, err
		}
		switch k {
		case entryWhiteout:
			return nil, unix.ENOENT
		case entryDir:
			fd, err := openReal(upperFd, name, unix.S_IFDIR, &st)
			if err == nil && o.trapped(st.Dev, st.Ino) {
				unix.Close(fd)
				err = unix.ELOOP // a layer root: see overlap.go
			}
			if err != nil {
				return nil, err
			}
			child.kind, child.upperFd, child.inUpper = unix.S_IFDIR, fd, true
			child.upperAufs = &aufsDir{}
			ours, foreign := format.DirXattrs(fd, o.names.Prefix(), foreignOpaqueXattrs)
			opaque, xwh := false, false
			if ours {
				opaque, xwh = o.opaqueOf(fd)
			}
			opaque = opaque || foreign && o.foreignOpaque(fd)
			child.upperXWh = xwh
			child.impure = ours && o.impureDir(fd)
			hasXattrs = ours
			merge = !opaque
			above = lowerRef{fd: fd, aufs: child.upperAufs}
		case entryOther:
			child.kind, child.inUpper, child.realIno = st.Mode&unix.S_IFMT, true, st.Ino
			merge = false
		}
		if k != entryNone {
			found, topSt = true, st
			at, nm := upperFd, name
			if k == entryDir {
				at, nm = child.upperFd, ""
			}
			if topOwner, err = o.ownerOf(o.upper, &st, at, nm); err != nil {
				child.Forget()
				return nil, err
			}
		}
	}
	// Where the lower layers hold the object: look is the name in the
	// parent's lower directories, or an absolute path from the lower roots
	// once an absolute redirect was met (kernel: ovl_lookup, d.name and
	// poe = roe).
	look, cands, fromRoot := name, lowers, false
	if merge && child.upperFd >= 0 && hasXattrs && (o.followRedirects || len(lowers) > 0) {
		// An opaque directory's redirect is not read (kernel:
		// ovl_lookup_single stops at an opaque directory).
		if opq, err := above.aufs.opaque(above.fd); err != nil {
			child.Forget()
			return nil, err
		} else if opq {
			merge = false
		}
	}
	if merge && child.upperFd >= 0 && hasXattrs && (o.followRedirects || len(lowers) > 0) {
		// Read also where redirects are not followed: an invalid one is
		// EINVAL, a valid one EPERM (see redirect.go). Not followed, it is
		// not read under a parent without a lower part (kernel:
		// ovl_lookup, d.last = !ovl_numlower(poe)).
		r, ok, err := o.redirectOf(child.upperFd)
		if err != nil {
			child.Forget()
			return nil, err
		}
		if ok {
			child.redirect, look = r, r
			if strings.HasPrefix(r, "/") {
				cands, fromRoot = o.root.lowers, true
			}
			if !o.followRedirects && len(cands) > 0 {
				child.Forget()
				return nil, o.redirectRefused(name)
			}
		}
	}
	for i := 0; merge && i < len(cands); i++ {
		lr := cands[i]
		w, err := o.walkLower(lr, look)
		if err != nil {
			child.Forget()
			return nil, err
		}
		k := entryNone
		var ce *layerindex.Entry // the name's record in lr's index
		if w.found {
			idx := lr.idx
			if w.owned {
				idx = nil // walked from the lower root: see cache.go
			}
			k, ce, err = o.probeCached(idx, w.dirfd, w.xwh, w.aufs, w.leaf, &st)
		}
		if err != nil || k == entryNone || k == entryWhiteout {
			w.close()
			if err != nil {
				child.Forget()
				return nil, err
			}
			if k == entryWhiteout {
				break
			}
			continue
		}
		if found && (child.kind != unix.S_IFDIR || k != entryDir) {
			// A non-directory below a directory ends the merge (kernel:
			// ovl_lookup stops at a non-dir under a dir).
			w.close()
			break
		}
		if found && above.fd >= 0 {
			// A directory would merge with the one above: unless that one
			// is opaque in the AUFS form.
			opq, err := above.aufs.opaque(above.fd)
			if err != nil || opq {
				w.close()
				if err != nil {
					child.Forget()
					return nil, err
				}
				break
			}
		}
		if k != entryDir && st.Mode&unix.S_IFMT == unix.S_IFREG {
			mc, err := o.metacopyAt(w.dirfd, w.leaf, ce)
			if err == nil && mc {
				err = o.lowerMetacopy(name, look, i, cands)
			}
			if err != nil {
				w.close()
				child.Forget()
				return nil, err
			}
		}
		if k != entryDir {
			// Non-directories hold no descriptor: they are found by name
			// in their parent's layer directory (see Node.real).
			child.kind, child.realIno = st.Mode&unix.S_IFMT, st.Ino
			child.lowers = []lowerRef{{layer: lr.layer, fd: -1}}
			found, topSt = true, st
			if topOwner, err = o.ownerOf(lr.layer, &st, w.dirfd, w.leaf); err != nil {
				w.close()
				child.Forget()
				return nil, err
			}
			if o.indexOn && st.Nlink > 1 {
				o.lookupIndex(child, lr.layer, w.dirfd, w.leaf, &topSt)
			}
			w.close()
			break
		}
		fd, err := openReal(w.dirfd, w.leaf, unix.S_IFDIR, &st)
		w.close()
		if err == nil && o.trapped(st.Dev, st.Ino) {
			unix.Close(fd)
			err = unix.ELOOP // a layer root: see overlap.go
		}
		if err != nil {
			child.Forget()
			return nil, err
		}
		if len(child.lowers) == 0 {
			lowerDirIno = o.inoFor(lr.layer, st.Ino)
		}
		ours, foreign := format.DirXattrs(fd, o.names.Prefix(), foreignOpaqueXattrs)
		opaque, xwh := false, false
		if ours {
			opaque, xwh = o.opaqueOf(fd)
		}
		opaque = opaque || foreign && o.foreignOpaque(fd)
		idx := cacheSub(lr.layer, lr.idx, ce, &st)
		ref := lowerRef{layer: lr.layer, fd: fd, xwh: xwh, aufs: cachedAufs(idx), idx: idx}
		child.lowers = append(child.lowers, ref)
		above = ref
		if !found {
			found, topSt, child.kind = true, st, unix.S_IFDIR
			if topOwner, err = o.ownerOf(lr.layer, &st, fd, ""); err != nil {
				child.Forget()
				return nil, err
			}
		}
		if opaque || w.stop {
			break
		}
		if o.lastLower(lr, i, cands) || !ours {
			continue
		}
		if opq, err := ref.aufs.opaque(fd); err != nil {
			child.Forget()
			return nil, err
		} else if opq {
			break // an opaque directory's redirect is not read
		}
		// A lower layer written by another overlay may redirect too.
		r, ok, err := o.redirectOf(fd)
		if err == nil && ok && !o.followRedirects {
			err = o.redirectRefused(name)
		}
		if err != nil {
			child.Forget()
			return nil, err
		}
		switch {
		case !ok:
		case strings.HasPrefix(r, "/"):
			look = r
			if !fromRoot {
				cands, fromRoot = o.root.lowers, true
				for j, rl := range cands {
					if rl.layer == lr.layer {
						i = j
					}
				}
			}
		case look[0] == '/':
			look = look[:strings.LastIndexByte(look, '/')+1] + r
		default:
			look = r
		}
	}
	if !found {
		child.Forget()
		return nil, unix.ENOENT
	}
	switch {
	case child.IsDir() && len(child.lowers) > 0:
		// A merged or lower directory has the number of its topmost lower
		// directory, whether or not it has been copied up (kernel: the
		// origin's st_ino for directories).
		child.setIno(lowerDirIno)
	case child.inUpper && !impure:
		// Only an impure directory holds copied-up objects, whose
		// origin says their number (kernel: ovl_set_impure).
		child.setIno(o.inoFor(o.upper, topSt.Ino))
	case child.inUpper:
		child.setIno(o.upperIno(upperFd, name, &topSt, lowers))
		if key, ino, ok := o.keptIno(topSt.Ino); ok && !child.IsDir() {
			child.key = key
			child.ino.Store(ino)
		}
		if o.indexOn {
			o.upperIndex(child, upperFd, name, &topSt)
		}
	case child.indexName != "":
		child.setIno(o.inoFor(child.lowers[0].layer, child.lowerIno))
	case topSt.Nlink > 1 && o.upper != nil:
		// Without an index, copy-up of one name of a lower hard link
		// splits the link, as in the kernel with index=off, so each name is
		// its own object, with its own key; all of them show the lower
		// number until copied up (kernel: ovl_hash_bylower says no).
		child.key = nameKey(n.key, name)
		child.ino.Store(o.inoFor(child.lowers[0].layer, topSt.Ino))
	default:
		// Also every name of a lower hard link without an upper layer:
		// nothing splits it, so they are one object (kernel: one inode,
		// hashed by the lower).
		child.setIno(o.inoFor(child.lowers[0].layer, topSt.Ino))
	}
	if child.inUpper && topSt.Mode&unix.S_IFMT == unix.S_IFREG {
		// Every upper regular file, not only those of impure directories:
		// the kernel reads overlay.metacopy on each (ovl_lookup_single).
		if _, err := o.lookupMetacopy(child, upperFd, name, lowers); err != nil {
			child.Forget()
			return nil, err
		}
	}
	*out = topSt
	o.present(out, topOwner)
	out.Ino = child.Ino()
	if child.IsDir() && (child.inUpper && len(child.lowers) > 0 || len(child.lowers) > 1) {
		out.Nlink = 1 // merged: see Getattr
	}
	return child, nil
}

// lastLower says whether lookup ignores the redirect of the lower
// directory lr, cands[i]: only one in the mount's bottom layer, where
// there is nothing left to follow it into. A redirect in any other layer
// is read, checked and followed even when the parent has no lower part
// below it, so an absolute one is walked in the layers below (kernel:
// ovl_lookup sets d.last from the layer's index among the root's lowers
// when redirects are followed). Without follow the kernel stops at the
// parent's last lower directory.
func (o *Overlay) lastLower(lr lowerRef, i int, cands []lowerRef) bool {
	if !o.followRedirects {
		return i == len(cands)-1
	}
	roots := o.root.lowers
	return lr.layer == roots[len(roots)-1].layer
}

// openReal opens name in dirfd as an O_PATH descriptor and checks that it
// is still of type kind (the layer was not changed between stat and open);
// st receives its attributes.
func openReal(dirfd int, name string, kind uint32, st *unix.Stat_t) (int, error) {
	flags := unix.O_PATH | unix.O_NOFOLLOW
	if kind == unix.S_IFDIR {
		flags |= unix.O_DIRECTORY
	}
	fd, err := format.OpenAt(dirfd, name, flags, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Fstat(fd, st); err != nil || st.Mode&unix.S_IFMT != kind {
		unix.Close(fd)
		return -1, unix.ESTALE
	}
	return fd, nil
}

// location returns the node's parent and name.
func (n *Node) location() (*Node, string) {
	n.o.treeMu.RLock()
	defer n.o.treeMu.RUnlock()
	return n.parent, n.name
}

// SetLocation records that the node is reachable as name in parent; a
// FUSE binding calls it when a lookup through another hard link finds a node
// it already has, so the node stays reachable after the old link goes away
// (also after Detach: the object had links the binding did not know).
// The caller holds references on n and parent.
func (n *Node) SetLocation(parent *Node, name string) {
	if parent == nil || n == n.o.root {
		return
	}
	parent.Ref()
	n.o.treeMu.Lock()
	old := n.parent
	n.parent, n.name = parent, name
	n.o.treeMu.Unlock()
	if old != nil {
		old.Forget()
	}
}

// nameKey is the key of one name of a multiply-linked lower file: stable
// for (parent, name), in a range real inode numbers do not reach (a name
// key). Two names of one lower file are two objects until there is an
// index (kernel: index=on) that keeps them one across copy-up.
func nameKey(parent uint64, name string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], parent)
	h.Write(b[:])
	h.Write([]byte(name))
	return nameKeyTag | h.Sum64()&(1<<56-1)
}

// nameKeyTag marks name keys: bits 56-62 set, bit 63 clear.
const nameKeyTag = 0x7f << 56

// IsNameKey reports whether key has the form of a name key, the only keys
// that may differ from their object's Ino: where it is false, the key is
// the object's inode number.
func IsNameKey(key uint64) bool { return key>>56 == 0x7f }
