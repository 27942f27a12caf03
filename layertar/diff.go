package layertar

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/idmap"
	"github.com/ovl-project/ovl/overlay"
)

// DiffOptions say how Diff writes the layer.
type DiffOptions struct {
	Compression Compression
	// Progress, if set, is called after each entry with the bytes of tar
	// written so far (before compression) and the number of entries.
	Progress func(tarBytes int64, entries int)
}

// Diff writes the upper layer of cfg to w as an OCI image layer (see the
// package doc for the rules). cfg names the layers as a mount would
// (Lowers, Upper) and the options that change how they read (UserXattr,
// RedirectDir, Metacopy, Index); Work is read only with Index "on", for
// the hard-link index (index.go). The upper must not be mounted while Diff
// reads it. Diff clears no umask and writes nothing but w.
func Diff(w io.Writer, cfg overlay.Config, o DiffOptions) (*Result, error) {
	if cfg.Upper == "" {
		return nil, errors.New("diff: no upper layer given (upperdir=)")
	}
	if len(cfg.Lowers) == 0 {
		return nil, errors.New("diff: no lower layer given (lowerdir=)")
	}
	_, follow, err := cfg.Redirects()
	if err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	upper, err := filepath.Abs(cfg.Upper)
	if err != nil {
		return nil, fmt.Errorf("diff: upperdir %s: %w", cfg.Upper, err)
	}
	// As root, a detached read-only noatime clone: the walk never enters
	// a mount inside the upper and leaves its atimes alone.
	root, _, err := format.OpenLayerRoot(upper)
	if err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	defer unix.Close(root)

	// Entries are written in pieces of a few hundred bytes: one write to
	// w per piece would cost a system call each.
	bw := bufio.NewWriterSize(w, 1<<20)
	out := &counter{w: bw}
	layerDigest := digest.Canonical.Digester()
	cw, err := compressor(io.MultiWriter(out, layerDigest.Hash()), o.Compression)
	if err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	// Uncompressed, the layer is the tar: one hash serves as both.
	diffID := layerDigest
	tarBytes := &counter{w: cw}
	if o.Compression != None {
		diffID = digest.Canonical.Digester()
		tarBytes.w = io.MultiWriter(cw, diffID.Hash())
	}
	names := format.NewNames(cfg.UserXattr)
	d := &differ{
		cfg:       cfg,
		names:     names,
		other:     format.NewNames(!cfg.UserXattr),
		follow:    follow,
		metacopy:  cfg.Metacopy == "on",
		tw:        tar.NewWriter(tarBytes),
		tarBytes:  tarBytes,
		progress:  o.Progress,
		links:     map[objID]string{},
		linkNames: map[objID]int{},
		copied:    map[string]bool{},
		buf:       make([]byte, 1<<20),
		upper:     root,
		indexFd:   -1,
	}
	defer d.close()
	if err := d.loadIndex(); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	v, err := format.Getxattr(root, names.Name(format.Opaque))
	if err != nil {
		return nil, fmt.Errorf("diff: upper root: %w", err)
	}
	_, d.rootXWh = format.ParseOpaque(v)
	if d.overrides, err = upperOverrides(root, cfg.XattrPermissions); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	if err := d.walk(root, "", d.rootXWh, true); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	if err := d.indexAliases(); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	if err := d.tw.Close(); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	if err := cw.Close(); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	return &Result{Digest: layerDigest.Digest(), DiffID: diffID.Digest(), Size: out.n, Entries: d.entries}, nil
}

// objID is a real object's identity: the key of hard links.
type objID struct{ dev, ino uint64 }

// differ is one Diff in progress.
type differ struct {
	cfg      overlay.Config
	names    format.Names // the mount's overlay xattrs
	other    format.Names // the other namespace's, left out as well
	follow   bool         // lookups follow overlay.redirect
	metacopy bool         // metacopy=on: metacopy files are followed to their data
	tw       *tar.Writer
	tarBytes *counter
	progress func(int64, int)
	entries  int
	links    map[objID]string // first entry name of each object with several links
	buf      []byte
	upper    int  // the upper root
	rootXWh  bool // the upper root holds xattr whiteouts
	// overrides are the override xattrs that hold the owners and modes of
	// upper objects, in the order they are read (nil: the inodes hold
	// them); see owner.go.
	overrides []string

	// linkNames counts the names written of each object with several
	// links; copied are the directories copiedDir wrote.
	linkNames map[objID]int
	copied    map[string]bool
	// index is the hard-link index by lower file handle (index.go), and
	// indexFd its directory; nil and -1 without one.
	index   map[string]*indexEntry
	indexFd int

	// lowers is the lower layers as one read-only overlay, opened the
	// first time a rule needs them (lowerRoot).
	lowers    *overlay.Overlay
	lowersErr error
	// cached is the lower directory last looked up by path (lowerAt),
	// with one reference held for the cache.
	cachedPath string
	cached     *overlay.Node
}

func (d *differ) close() {
	if d.indexFd >= 0 {
		unix.Close(d.indexFd)
	}
	if d.cached != nil {
		d.cached.Forget()
	}
	if d.lowers != nil {
		d.lowers.Close()
	}
}

// lowerRoot opens the lower layers on first use.
func (d *differ) lowerRoot() (*overlay.Node, error) {
	if d.lowers == nil && d.lowersErr == nil {
		// Owners as the layers store them (no IDs mapping): a layer holds
		// stored IDs. Override xattrs are read as the mount reads them.
		cfg := overlay.Config{Lowers: d.cfg.Lowers, UserXattr: d.cfg.UserXattr, RedirectDir: d.cfg.RedirectDir,
			Metacopy: d.cfg.Metacopy, XattrPermissions: d.cfg.XattrPermissions}
		// overlay.New clears the umask for the mount it serves; Diff
		// serves none and leaves the caller's as it was.
		umask := syscall.Umask(0)
		d.lowers, d.lowersErr = overlay.New(cfg)
		syscall.Umask(umask)
		if d.lowersErr != nil {
			d.lowersErr = fmt.Errorf("open the lower layers: %w", d.lowersErr)
		}
	}
	if d.lowersErr != nil {
		return nil, d.lowersErr
	}
	return d.lowers.Root(), nil
}

// lookupAbs looks up the absolute path p ("/a/b") in the lower layers, as
// the overlay follows an absolute redirect. It returns the node with a
// reference for the caller, or nil where nothing is found.
func (d *differ) lookupAbs(p string) (*overlay.Node, error) {
	root, err := d.lowerRoot()
	if err != nil {
		return nil, err
	}
	root.Ref()
	cur := root
	for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if c == "" && p == "/" {
			break
		}
		if !format.RedirectComponentOK(c) {
			cur.Forget()
			return nil, fmt.Errorf("lower path %q: %w", p, unix.EACCES)
		}
		child, err := cur.Lookup(c)
		cur.Forget()
		if err != nil {
			if notFound(err) {
				return nil, nil
			}
			return nil, fmt.Errorf("lower path %q: %w", p, err)
		}
		cur = child
	}
	return cur, nil
}

// lowerAt is the lower directory at the path rel of the merged view, where
// no directory of the upper on the way redirects or hides it; nil where the
// lower layers have no directory there. The node is borrowed: it stays
// valid until the next call.
func (d *differ) lowerAt(rel string) (*overlay.Node, error) {
	if d.cached != nil && d.cachedPath == rel {
		return d.cached, nil
	}
	n, err := d.lookupAbs("/" + rel)
	if err != nil {
		return nil, err
	}
	if n != nil && !n.IsDir() {
		n.Forget()
		n = nil
	}
	if d.cached != nil {
		d.cached.Forget()
	}
	d.cached, d.cachedPath = n, rel
	return n, nil
}

// notFound reports a lookup that found nothing: a redirect to a name too
// long for any layer finds nothing either (redirect.go in overlay).
func notFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENAMETOOLONG)
}

// lowerFunc returns a directory's lower part, borrowed, or nil.
type lowerFunc func() (*overlay.Node, error)

func noLower() (*overlay.Node, error) { return nil, nil }

// walk writes the contents of the upper directory dirfd at rel ("" for the
// root). xwh says it may hold xattr whiteouts; lowerOK that its lower part
// is at the same path in the lower layers (no opaque directory above it).
func (d *differ) walk(dirfd int, rel string, xwh, lowerOK bool) error {
	names, err := readNames(dirfd)
	if err != nil {
		return pathErr("read upper directory", show(rel), err)
	}
	parentLower := lowerFunc(noLower)
	if lowerOK {
		parentLower = func() (*overlay.Node, error) { return d.lowerAt(rel) }
	}
	for _, name := range names {
		p := join(rel, name)
		var st unix.Stat_t
		if err := format.Lstat(dirfd, name, &st); err != nil {
			return pathErr("read upper", p, err)
		}
		raw, err := format.ListxattrAt(dirfd, name)
		if err != nil {
			return pathErr("listxattr upper", p, err)
		}
		if err := d.override(dirfd, name, raw, &st); err != nil {
			return pathErr("read upper", p, err)
		}
		if d.isWhiteout(dirfd, name, &st, xwh, raw) {
			// Under an opaque directory a whiteout hides nothing, and the
			// kernel lists the whiteouts of a directory it does not take
			// for one that may hold them (ovl_get_inode: OVL_WHITEOUTS,
			// which the dropped overlay.origin gave the upper's).
			if !lowerOK {
				continue
			}
			if err := d.marker(join(rel, whiteoutPrefix+name)); err != nil {
				return err
			}
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = d.upperDir(dirfd, name, p, &st, raw, parentLower, false, lowerOK)
		} else {
			err = d.upperFile(dirfd, name, p, &st, raw, parentLower)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// isWhiteout reports whether the upper entry is a whiteout: a character
// device 0/0, or an xattr whiteout in a directory marked opaque=x (read in
// the upper as ovl reads it, docs/differences.md).
func (d *differ) isWhiteout(dirfd int, name string, st *unix.Stat_t, xwh bool, raw []string) bool {
	if format.IsWhiteoutStat(st) {
		return true
	}
	if !xwh || !format.MaybeXWhiteout(st) || !has(raw, d.names.Name(format.Whiteout)) {
		return false
	}
	v, _ := format.GetxattrAt(dirfd, name, d.names.Name(format.Whiteout))
	return v != nil
}

// upperDir writes the upper directory name in dirfd, at p, and what it
// holds. parentLower is the parent's lower part. inMerged says the parent
// is written in full (a redirected directory or inside one): then every
// directory below is written merged with its lower part.
func (d *differ) upperDir(dirfd int, name, p string, st *unix.Stat_t, raw []string, parentLower lowerFunc, inMerged, lowerOK bool) error {
	fd, err := format.OpenAt(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return pathErr("read upper", p, err)
	}
	defer unix.Close(fd)
	var opaque, xwh bool
	if has(raw, d.names.Name(format.Opaque)) {
		v, err := format.Getxattr(fd, d.names.Name(format.Opaque))
		if err != nil {
			return pathErr("read upper", p, err)
		}
		opaque, xwh = format.ParseOpaque(v)
	}
	xattrs, err := d.userXattrs(dirfd, name, raw)
	if err != nil {
		return pathErr("read upper", p, err)
	}
	// The overlay reads a redirect only where the directory is not opaque
	// (kernel: ovl_lookup, d.stop) and, when it does not follow
	// redirects, only where the parent has a lower part (d.last).
	read := !opaque && has(raw, d.names.Name(format.Redirect))
	if read && !d.follow {
		pl, err := parentLower()
		if err != nil {
			return pathErr("find lower part", p, err)
		}
		read = pl != nil
	}
	if read {
		v, err := format.Getxattr(fd, d.names.Name(format.Redirect))
		if err != nil {
			return pathErr("read upper", p, err)
		}
		r, err := format.ParseRedirect(v)
		if err != nil {
			return pathErr("redirect", p, fmt.Errorf("invalid %s %q: %w", d.names.Name(format.Redirect), v, err))
		}
		lower, err := d.redirected(p, r, parentLower)
		if err != nil {
			return err
		}
		if lower != nil {
			defer lower.Forget()
		}
		return d.writeMerged(fd, xwh, lower, p, st, xattrs, true)
	}
	if inMerged {
		var lower *overlay.Node
		if !opaque {
			if lower, err = childDir(parentLower, name); err != nil {
				return pathErr("read lower", p, err)
			}
			if lower != nil {
				defer lower.Forget()
			}
		}
		return d.writeMerged(fd, xwh, lower, p, st, xattrs, false)
	}
	if err := d.write(&entry{name: p, st: *st, xattrs: xattrs}); err != nil {
		return err
	}
	if opaque {
		if err := d.marker(join(p, opaqueMarker)); err != nil {
			return err
		}
	}
	return d.walk(fd, p, xwh, lowerOK && !opaque)
}

// redirected finds the lower part of the directory at p that redirects to
// r, with a reference for the caller; nil where the lower layers have none.
// Without redirects followed, the overlay refuses such a directory (kernel:
// ovl_lookup, "refusing to follow redirect"), and so does Diff.
func (d *differ) redirected(p, r string, parentLower lowerFunc) (*overlay.Node, error) {
	if !d.follow {
		return nil, pathErr("redirect", p, fmt.Errorf("refusing to follow redirect %q (redirect_dir=nofollow or userxattr): %w", r, unix.EPERM))
	}
	if strings.HasPrefix(r, "/") {
		n, err := d.lookupAbs(r)
		if err != nil {
			return nil, pathErr("read upper", p, err)
		}
		if n != nil && !n.IsDir() {
			n.Forget()
			return nil, nil
		}
		return n, nil
	}
	if !format.RedirectComponentOK(r) {
		return nil, pathErr("redirect", p, fmt.Errorf("%q: %w", r, unix.EACCES))
	}
	n, err := childDir(parentLower, r)
	if err != nil {
		return nil, pathErr("find lower part", p, err)
	}
	return n, nil
}

// childDir looks up the directory name in the lower part parentLower
// returns; the node has a reference for the caller, or is nil where no
// directory is there.
func childDir(parentLower lowerFunc, name string) (*overlay.Node, error) {
	pl, err := parentLower()
	if err != nil || pl == nil {
		return nil, err
	}
	n, err := pl.Lookup(name)
	if err != nil {
		if notFound(err) {
			return nil, nil
		}
		return nil, err
	}
	if !n.IsDir() {
		n.Forget()
		return nil, nil
	}
	return n, nil
}

// writeMerged writes the directory at p whose upper directory is ufd (-1:
// none) and whose lower part is lower (nil: none), and everything below
// it, merged as the overlay merges them: upper names first, whiteouts
// hiding lower names, lower directories merged with upper ones. st and
// xattrs are the directory's own. mark gives it an opaque marker, which
// hides whatever the lower layers hold at p itself.
func (d *differ) writeMerged(ufd int, uxwh bool, lower *overlay.Node, p string, st *unix.Stat_t, xattrs []xattr, mark bool) error {
	if err := d.write(&entry{name: p, st: *st, xattrs: xattrs}); err != nil {
		return err
	}
	if mark {
		if err := d.marker(join(p, opaqueMarker)); err != nil {
			return err
		}
	}
	const inUpper, inLower = 1, 2
	where := map[string]int{}
	if ufd >= 0 {
		names, err := readNames(ufd)
		if err != nil {
			return pathErr("read upper directory", p, err)
		}
		for _, n := range names {
			where[n] |= inUpper
		}
	}
	if lower != nil {
		ents, err := lower.ReadDir()
		if err != nil {
			return pathErr("read lower directory", p, err)
		}
		for _, e := range ents {
			where[e.Name] |= inLower
		}
	}
	names := make([]string, 0, len(where))
	for n := range where {
		names = append(names, n)
	}
	sort.Strings(names)
	parentLower := func() (*overlay.Node, error) { return lower, nil }
	for _, name := range names {
		cp := join(p, name)
		if where[name]&inUpper != 0 {
			var cst unix.Stat_t
			if err := format.Lstat(ufd, name, &cst); err != nil {
				return pathErr("read upper", cp, err)
			}
			raw, err := format.ListxattrAt(ufd, name)
			if err != nil {
				return pathErr("listxattr upper", cp, err)
			}
			if err := d.override(ufd, name, raw, &cst); err != nil {
				return pathErr("read upper", cp, err)
			}
			switch {
			case d.isWhiteout(ufd, name, &cst, uxwh, raw):
				// Hides the lower name; the directory is written whole.
			case cst.Mode&unix.S_IFMT == unix.S_IFDIR:
				err = d.upperDir(ufd, name, cp, &cst, raw, parentLower, true, false)
			default:
				err = d.upperFile(ufd, name, cp, &cst, raw, parentLower)
			}
			if err != nil {
				return err
			}
			continue
		}
		child, err := lower.Lookup(name)
		if err != nil {
			if notFound(err) {
				continue
			}
			return pathErr("read lower", cp, err)
		}
		err = d.lowerObject(child, cp)
		child.Forget()
		if err != nil {
			return err
		}
	}
	return nil
}

// lowerObject writes n, an object only the lower layers hold, at p.
func (d *differ) lowerObject(n *overlay.Node, p string) error {
	var st unix.Stat_t
	if err := n.Getattr(&st); err != nil {
		return pathErr("read lower", p, err)
	}
	xattrs, err := d.nodeXattrs(n)
	if err != nil {
		return pathErr("read lower", p, err)
	}
	if n.IsDir() {
		return d.writeMerged(-1, false, n, p, &st, xattrs, false)
	}
	if err := checkName(p); err != nil {
		return err
	}
	e := &entry{name: p, st: st, xattrs: xattrs}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
		return nil
	case unix.S_IFLNK:
		if e.target, err = n.Readlink(); err != nil {
			return pathErr("read lower", p, err)
		}
	case unix.S_IFREG:
		fd, err := n.Open(unix.O_RDONLY)
		if err != nil {
			return pathErr("read lower", p, err)
		}
		defer unix.Close(fd)
		e.fd = fd
		if st.Nlink > 1 {
			if ie := d.indexed(fd); ie != nil {
				// Copied up with index=on: the name shows the upper copy.
				ix, err := d.indexObject(ie, p)
				if err != nil {
					return err
				}
				if ix.fd >= 0 {
					defer unix.Close(ix.fd)
				}
				return d.write(ix)
			}
			// The overlay numbers each name of a lower hard link apart;
			// the real file says which names are one object.
			var rst unix.Stat_t
			if err := unix.Fstat(fd, &rst); err != nil {
				return pathErr("read lower", p, err)
			}
			e.id, e.linkable = objID{rst.Dev, rst.Ino}, true
		}
	}
	return d.write(e)
}

// upperFile writes the upper non-directory name in dirfd at p.
// parentLower is its parent's lower part, where a metacopy file's data is.
func (d *differ) upperFile(dirfd int, name, p string, st *unix.Stat_t, raw []string, parentLower lowerFunc) error {
	if err := checkName(p); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFSOCK {
		return nil
	}
	xattrs, err := d.userXattrs(dirfd, name, raw)
	if err != nil {
		return pathErr("read upper", p, err)
	}
	e := &entry{name: p, st: *st, xattrs: xattrs}
	if st.Nlink > 1 {
		e.id, e.linkable = objID{st.Dev, st.Ino}, true
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		if e.target, err = readlinkAt(dirfd, name); err != nil {
			return pathErr("read upper", p, err)
		}
	case unix.S_IFREG:
		if e.linkable {
			if _, seen := d.links[e.id]; seen {
				return d.write(e) // a hard link: no data to read
			}
		}
		src, err := d.metacopySource(dirfd, name, p, raw, parentLower)
		if err != nil {
			return err
		}
		var fd int
		if src != nil {
			fd, err = src.Open(unix.O_RDONLY)
			src.Forget()
		} else {
			fd, err = format.OpenAt(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
		}
		if err != nil {
			return pathErr("open", p, err)
		}
		defer unix.Close(fd)
		e.fd = fd
	}
	return d.write(e)
}

// metacopySource returns the lower file that holds the data of the upper
// regular file name in dirfd, with a reference for the caller, or nil when
// the file holds its own data (it is no metacopy file). The data is where
// the overlay finds it (kernel: ovl_lookup with a metacopy upper): the
// file's redirect, absolute or a name in the parent's lower part, or its
// own name there.
func (d *differ) metacopySource(dirfd int, name, p string, raw []string, parentLower lowerFunc) (*overlay.Node, error) {
	if !has(raw, d.names.Name(format.Metacopy)) {
		return nil, nil
	}
	v, err := format.GetxattrAt(dirfd, name, d.names.Name(format.Metacopy))
	if err != nil {
		return nil, pathErr("read upper", p, err)
	}
	mc, err := format.ParseMetacopy(v)
	if err != nil {
		return nil, pathErr("metacopy", p, fmt.Errorf("%s: %w", d.names.Name(format.Metacopy), err))
	}
	if !mc {
		return nil, nil
	}
	if !d.metacopy {
		return nil, pathErr("metacopy", p, fmt.Errorf("a metacopy file, which the overlay follows to its data only with metacopy=on: %w", unix.EPERM))
	}
	look := name
	if has(raw, d.names.Name(format.Redirect)) {
		v, err := format.GetxattrAt(dirfd, name, d.names.Name(format.Redirect))
		if err != nil {
			return nil, pathErr("read upper", p, err)
		}
		if look, err = format.ParseRedirect(v); err != nil {
			return nil, pathErr("redirect", p, fmt.Errorf("invalid %s %q: %w", d.names.Name(format.Redirect), v, err))
		}
	}
	var n *overlay.Node
	if strings.HasPrefix(look, "/") {
		n, err = d.lookupAbs(look)
	} else if !format.RedirectComponentOK(look) {
		err = fmt.Errorf("redirect %q: %w", look, unix.EACCES)
	} else {
		var pl *overlay.Node
		if pl, err = parentLower(); err == nil && pl != nil {
			if n, err = pl.Lookup(look); notFound(err) {
				n, err = nil, nil
			}
		}
	}
	if err != nil {
		return nil, pathErr("metacopy", p, fmt.Errorf("lower data: %w", err))
	}
	if n == nil || n.Kind() != unix.S_IFREG {
		if n != nil {
			n.Forget()
		}
		return nil, pathErr("metacopy", p, fmt.Errorf("no lower data: %w", unix.EIO))
	}
	return n, nil
}

// xattr is one extended attribute, named as users of the mount see it.
type xattr struct {
	name  string
	value []byte
}

// keepXattr says whether the layer xattr name goes into the tar, and
// under which name.
func (d *differ) keepXattr(name string) (string, bool) {
	if d.other.IsPrivate(name) || idmap.IsOverride(name) {
		return "", false
	}
	return d.names.Unescape(name)
}

// userXattrs reads the xattrs of the upper entry name in dirfd, listed in
// raw, that go into the tar.
func (d *differ) userXattrs(dirfd int, name string, raw []string) ([]xattr, error) {
	var out []xattr
	for _, x := range raw {
		shown, ok := d.keepXattr(x)
		if !ok {
			continue
		}
		v, err := format.GetxattrAt(dirfd, name, x)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", x, err)
		}
		if v == nil {
			continue // removed meanwhile
		}
		out = append(out, xattr{shown, v})
	}
	return out, nil
}

// nodeXattrs reads the xattrs of a lower object that go into the tar (the
// overlay has hidden its own and unescaped the escaped ones).
func (d *differ) nodeXattrs(n *overlay.Node) ([]xattr, error) {
	names, err := n.Listxattr()
	if err != nil {
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	var out []xattr
	for _, x := range names {
		if d.other.IsPrivate(x) {
			continue
		}
		v, err := n.Getxattr(x)
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				continue
			}
			return nil, fmt.Errorf("getxattr %s: %w", x, err)
		}
		out = append(out, xattr{x, v})
	}
	return out, nil
}
