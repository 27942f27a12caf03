package overlay

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/internal/fault"
)

// Cred is who asks for a new object: its owner, and a umask to apply.
// The FUSE binding fills it from the request header (the caller's fsuid and
// fsgid); the kernel has applied the caller's umask to the mode already.
type Cred struct {
	Uid, Gid uint32
	Umask    uint32
}

// upperDir returns the directory's upper fd, copying it up first. The
// caller must not hold any dirMu (copy-up takes the parent's).
func (n *Node) upperDir() (int, error) {
	if !n.IsDir() {
		return -1, unix.ENOTDIR
	}
	if err := n.copyUp(copyAll); err != nil {
		return -1, err
	}
	n.mu.Lock()
	fd := n.upperFd
	n.mu.Unlock()
	if fd < 0 {
		return -1, unix.ENOENT
	}
	// The upper directory must still be where the overlay sees it: if it
	// was moved or replaced underneath the mount, a change made through its
	// descriptor would land somewhere else (kernel: the upper parent checks
	// in ovl_remove_upper and ovl_rename).
	if parent, name := n.location(); parent != nil {
		parent.mu.Lock()
		pfd := parent.upperFd
		parent.mu.Unlock()
		var here, st unix.Stat_t
		if pfd < 0 || unix.Fstat(fd, &here) != nil || format.Lstat(pfd, name, &st) != nil ||
			st.Ino != here.Ino || st.Dev != here.Dev {
			return -1, unix.ESTALE
		}
	}
	// Every caller changes the directory's entries.
	n.noteUpper(fd)
	return fd, nil
}

// lowerPositive reports whether name in directory n shows something from a
// lower layer (kernel: ovl_lower_positive): the first lower entry found,
// top-down, is not a whiteout.
func (n *Node) lowerPositive(name string) (bool, error) {
	n.mu.Lock()
	lowers := n.lowers
	n.mu.Unlock()
	var st unix.Stat_t
	for _, lr := range lowers {
		k, err := n.o.probe(lr.fd, lr.xwh, lr.aufs, name, &st)
		if err != nil {
			return false, err
		}
		switch k {
		case entryNone:
			continue
		case entryWhiteout:
			return false, nil
		}
		return true, nil
	}
	return false, nil
}

// tempWhiteout makes a whiteout in work/ and returns its name. Where the
// upper allows it, whiteouts are hard links of one shared whiteout inode in
// work/, as the kernel's since 5.8 (ovl_whiteout): a link is one directory
// entry, where a device node costs an inode allocation, which made unlink
// of lower files the dearest part of rm -rf. A whiteout's link count carries
// no meaning; work/ is emptied at mount, which drops the shared inode's name.
func (o *Overlay) tempWhiteout() (string, error) {
	tmp := format.TempName(o.tempSeq.Add(1))
	o.whMu.Lock()
	defer o.whMu.Unlock()
	if o.whShared == "" {
		if err := format.MakeWhiteout(o.work, tmp); err != nil {
			return "", fmt.Errorf("create whiteout: %w", err)
		}
		if o.whNoShare {
			o.stats.whiteouts.Add(1)
			return tmp, nil
		}
		o.whShared, tmp = tmp, format.TempName(o.tempSeq.Add(1))
	}
	o.stats.whiteouts.Add(1)
	err := unix.Linkat(o.work, o.whShared, o.work, tmp, 0)
	if err == nil {
		return tmp, nil
	}
	if err != unix.EMLINK && err != unix.ENOSPC && err != unix.EDQUOT {
		// Not EMLINK (the inode's link count is full; a fresh one follows
		// next time) nor a lack of space (tmpfs counts links as inodes; a
		// full directory block fails a link too): this upper cannot link
		// whiteouts at all.
		o.whNoShare = true
	}
	// The shared whiteout itself becomes this one.
	tmp, o.whShared = o.whShared, ""
	return tmp, nil
}

// removeTemp deletes work/tmp, whatever it is.
func (o *Overlay) removeTemp(tmp string) {
	if unix.Unlinkat(o.work, tmp, 0) == nil {
		return
	}
	if fd, err := format.OpenAt(o.work, tmp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0); err == nil {
		removeContents(fd)
		unix.Close(fd)
	}
	unix.Unlinkat(o.work, tmp, unix.AT_REMOVEDIR)
}

// maker creates one object at name in dirfd.
type maker func(dirfd int, name string) error

// place puts a new entry at name in n's upper directory (kernel:
// ovl_create_or_link, ovl_create_upper, ovl_create_over_whiteout). mk makes
// it, fix finishes it before it can be seen where that is possible. Where
// the upper holds a whiteout, the entry is made in work/ and exchanged with
// it; a new directory there is made opaque. The caller holds no dirMu.
func (n *Node) place(name string, isDir bool, mk maker, fix maker) error {
	o := n.o
	if format.IsAUFSName(name) {
		return unix.EINVAL // see LookupStat
	}
	pfd, err := n.upperDir()
	if err != nil {
		return err
	}
	n.dirMu.Lock()
	defer n.dirMu.Unlock()
	// An AUFS whiteout becomes the kernel's, which the code below knows.
	if _, err := n.upperAUFSWhiteout(pfd, name); err != nil {
		return err
	}
	var st unix.Stat_t
	k, err := o.probe(pfd, n.upperXWh, n.upperAufsDir(), name, &st)
	if err != nil {
		return err
	}
	if k == entryDir || k == entryOther {
		return unix.EEXIST
	}
	if k == entryNone {
		if pos, err := n.lowerPositive(name); err != nil {
			return err
		} else if pos {
			return unix.EEXIST
		}
		if err := mk(pfd, name); err != nil {
			return err
		}
		if err := fix(pfd, name); err != nil {
			unix.Unlinkat(pfd, name, 0)
			unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR)
			return err
		}
		if isDir && !o.offlineChanges() && len(n.lowers) > 0 {
			// A lower directory may later be found under this name (a
			// redirect, a changed lower); a new directory must not merge
			// with it. The kernel sets this where it forbids offline
			// changes to the lower layers (ovl_create_upper); failure is
			// harmless.
			o.setOpaque(pfd, name)
		}
		return nil
	}
	tmp := format.TempName(o.tempSeq.Add(1))
	if err := mk(o.work, tmp); err != nil {
		return err
	}
	err = fix(o.work, tmp)
	if err == nil && isDir {
		err = o.setOpaque(o.work, tmp)
	}
	if err == nil {
		fault.Hit("create.temp")
		err = unix.Renameat2(o.work, tmp, pfd, name, unix.RENAME_EXCHANGE)
	}
	if err == nil {
		fault.Hit("create.exchanged")
	}
	o.removeTemp(tmp) // on success, the whiteout
	return err
}

// create makes a new object at name in n for the caller c, with mk, which
// gets the mode to make it with. Its owner is set before the name appears
// where it can; setuid and setgid bits only after the owner is right. The
// owner is the caller's, stored mapped back, and kept in an override where
// the mount keeps them (owner.go).
func (n *Node) create(name string, kind uint32, mode uint32, c Cred, mk func(dirfd int, name string, mode uint32) error) (*Node, error) {
	o := n.o
	if _, err := n.upperDir(); err != nil {
		return nil, err
	}
	// The upper filesystem gives a new object the group of a setgid
	// directory; otherwise it gets the caller's.
	var pst unix.Stat_t
	if err := unix.Fstat(n.upperFd, &pst); err != nil {
		return nil, err
	}
	pow, err := o.ownerOf(o.upper, &pst, n.upperFd, "")
	if err != nil {
		return nil, err
	}
	uid, gid := o.ids.StoreUID(c.Uid), o.ids.StoreGID(c.Gid)
	mode &^= c.Umask
	special := mode & (unix.S_ISUID | unix.S_ISGID)
	if pow.perm&unix.S_ISGID != 0 {
		// Set explicitly: over a whiteout the object is made in work/,
		// which is not setgid (kernel: inode_init_owner on the overlay).
		gid = pow.gid
		if kind == unix.S_IFDIR {
			special |= unix.S_ISGID
		}
	}
	mkObj := func(dirfd int, nm string) error { return mk(dirfd, nm, mode&0o1777) }
	setOwner := func(dirfd int, nm string) error {
		if err := unix.Fchownat(dirfd, nm, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); !o.chownDone(err, uid) {
			return fmt.Errorf("chown new %s: %w", nm, err)
		}
		if special != 0 && kind != unix.S_IFLNK {
			var s unix.Stat_t
			if err := unix.Fstatat(dirfd, nm, &s, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
			return unix.Fchmodat(dirfd, nm, s.Mode&0o7777|special, 0)
		}
		return nil
	}
	if o.keepsOverride(kind) {
		// The inode keeps the daemon's owner and the backing mode.
		mkObj = func(dirfd int, nm string) error { return mk(dirfd, nm, backingPerm(mode)) }
		setOwner = func(dirfd int, nm string) error {
			fd, err := format.OpenAt(dirfd, nm, unix.O_PATH|unix.O_NOFOLLOW, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return writeOverride(fd, o.ovName, uid, gid, mode&0o7777|special)
		}
	}
	if err := n.place(name, kind == unix.S_IFDIR, mkObj, setOwner); err != nil {
		return nil, err
	}
	return n.adopt(name, kind)
}

func (o *Overlay) setOpaque(dirfd int, name string) error {
	fd, err := format.OpenAt(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	o.note(fd)
	if err := format.Setxattr(fd, o.names.Name(format.Opaque), format.OpaqueValue(), 0); err != nil {
		return fmt.Errorf("mark %s opaque: %w", name, err)
	}
	return nil
}

// adopt returns the node of an object just made in n's upper directory,
// with one reference, the caller's. It is upper-only: a new directory is
// pure or opaque.
func (n *Node) adopt(name string, kind uint32) (*Node, error) {
	o := n.o
	var st unix.Stat_t
	if err := format.Lstat(n.upperFd, name, &st); err != nil {
		return nil, err
	}
	o.noteAt(n.upperFd, name)
	child := &Node{o: o, kind: st.Mode & unix.S_IFMT, upperFd: -1, realIno: st.Ino, inUpper: true, parent: n, name: name}
	// A new symlink or special file is made durable by its directory's
	// fsync; a later change of its metadata is not (syncSet.add).
	child.noted.Store(o.syncs != nil && (child.kind == unix.S_IFREG || child.kind == unix.S_IFDIR))
	child.setIno(o.inoFor(o.upper, st.Ino))
	o.born(child)
	if child.kind == unix.S_IFDIR {
		fd, err := openReal(n.upperFd, name, unix.S_IFDIR, &st)
		if err != nil {
			child.Forget()
			return nil, err
		}
		child.upperFd, child.upperAufs = fd, emptyAufsDir()
	}
	return child, nil
}

// Create makes a regular file and opens it with flags; it returns the node
// and the open file descriptor.
func (n *Node) Create(name string, flags int, mode uint32, c Cred) (*Node, int, error) {
	fd := -1
	flags = flags&^(unix.O_CREAT|unix.O_EXCL|unix.O_NOCTTY) | unix.O_CREAT | unix.O_EXCL
	child, err := n.create(name, unix.S_IFREG, mode&0o7777, c, func(dirfd int, nm string, m uint32) error {
		// An O_CREAT open returns a descriptor with the access asked for,
		// whatever the new mode allows.
		f, err := format.OpenAt(dirfd, nm, flags, m)
		if err != nil {
			return err
		}
		fd = f
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, -1, err
	}
	return child, fd, nil
}

// Mkdir makes a directory.
func (n *Node) Mkdir(name string, mode uint32, c Cred) (*Node, error) {
	return n.create(name, unix.S_IFDIR, mode&0o7777, c, func(dirfd int, nm string, m uint32) error {
		return unix.Mkdirat(dirfd, nm, m)
	})
}

// Mknod makes a device node, FIFO or socket.
func (n *Node) Mknod(name string, mode uint32, rdev uint64, c Cred) (*Node, error) {
	kind := mode & unix.S_IFMT
	return n.create(name, kind, mode&0o7777, c, func(dirfd int, nm string, m uint32) error {
		return unix.Mknodat(dirfd, nm, kind|m, int(rdev))
	})
}

// Symlink makes a symbolic link to target.
func (n *Node) Symlink(target, name string, c Cred) (*Node, error) {
	return n.create(name, unix.S_IFLNK, 0o777, Cred{Uid: c.Uid, Gid: c.Gid}, func(dirfd int, nm string, _ uint32) error {
		return unix.Symlinkat(target, dirfd, nm)
	})
}

// Link makes name in n a new hard link to target, after copying target up
// (kernel: ovl_link). It returns target, without a new reference.
func (n *Node) Link(target *Node, name string) (*Node, error) {
	if target.IsDir() {
		return nil, unix.EPERM
	}
	if err := target.copyUp(copyMeta); err != nil {
		return nil, err
	}
	if target.isMetacopy() {
		// Its upper links may end up in other directories than its data.
		if err := n.o.setRedirect(target, false); err != nil {
			return nil, err
		}
	}
	tfd, done, err := target.real()
	if err != nil {
		return nil, err
	}
	defer done()
	// Link the inode the node holds, not whatever its name holds now.
	link := func(dirfd int, nm string) error {
		return unix.Linkat(unix.AT_FDCWD, format.ProcPath(tfd), dirfd, nm, unix.AT_SYMLINK_FOLLOW)
	}
	target.mu.Lock()
	origin := len(target.lowers) > 0
	target.mu.Unlock()
	if !origin {
		// Moved, or looked up by a later mount: no lower part found, but
		// the upper object keeps its origin (kernel: ovl_type_origin).
		v, _ := format.Getxattr(tfd, n.o.names.Name(format.Origin))
		origin = len(v) > 0
	}
	if origin {
		// The new name has an origin: its number comes from it, and only
		// an impure directory's entries are looked up for one. Marked
		// before the link, so that no crash leaves it unmarked (kernel:
		// ovl_create_or_link marks the new parent impure first).
		if _, err := n.upperDir(); err != nil {
			return nil, err
		}
		n.o.markImpure(n)
	}
	if err := n.place(name, false, link, func(int, string) error { return nil }); err != nil {
		return nil, err
	}
	target.noteUpper(tfd) // its link count changed
	return target, nil
}

// Unlink removes the non-directory name from n.
func (n *Node) Unlink(name string) error { return n.remove(name, false) }

// Rmdir removes the directory name from n; it must look empty.
func (n *Node) Rmdir(name string) error { return n.remove(name, true) }

// remove deletes name (kernel: ovl_do_remove). Where a lower layer still
// shows the name, a whiteout takes its place, atomically: the whiteout is
// made in work/ and exchanged with the upper entry, or renamed over the
// empty spot.
func (n *Node) remove(name string, isDir bool) error {
	o := n.o
	pfd, err := n.upperDir()
	if err != nil {
		return err
	}
	if !isDir && o.indexOn {
		// A name of an indexed lower hard link is copied up before it
		// goes, as by the kernel (ovl_nlink_start): its index entry then
		// records the link count the other names show.
		if child, err := n.Lookup(name); err == nil {
			if child.indexedLower() {
				err = child.copyUp(copyMeta)
			}
			child.Forget()
			if err != nil {
				return err
			}
		}
	}
	n.dirMu.Lock()
	defer n.dirMu.Unlock()
	child, err := n.Lookup(name)
	if err != nil {
		return err
	}
	defer child.Forget()
	if isDir && !child.IsDir() {
		return unix.ENOTDIR
	}
	if !isDir && child.IsDir() {
		return unix.EISDIR
	}
	if isDir {
		empty, err := child.isEmpty()
		if err != nil {
			return err
		}
		if !empty {
			return unix.ENOTEMPTY
		}
	}
	pos, err := n.lowerPositive(name)
	if err != nil {
		return err
	}
	if !pos {
		// Upper only: a plain removal. A directory may still hold whiteouts
		// of names it no longer shows: move it aside and clear it.
		if !isDir {
			return unix.Unlinkat(pfd, name, 0)
		}
		err := unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR)
		if err == unix.ENOTEMPTY || err == unix.EEXIST {
			tmp := format.TempName(o.tempSeq.Add(1))
			if err := unix.Renameat2(pfd, name, o.work, tmp, unix.RENAME_NOREPLACE); err != nil {
				return err
			}
			fault.Hit("rmdir.aside")
			o.removeTemp(tmp)
			return nil
		}
		return err
	}
	wh, err := o.tempWhiteout()
	if err != nil {
		return err
	}
	fault.Hit("whiteout.temp")
	if child.inUpper {
		if err := unix.Renameat2(o.work, wh, pfd, name, unix.RENAME_EXCHANGE); err != nil {
			o.removeTemp(wh)
			return fmt.Errorf("whiteout %s: %w", name, err)
		}
		fault.Hit("whiteout.placed")
		o.removeTemp(wh) // now the removed object
		return nil
	}
	if err := unix.Renameat2(o.work, wh, pfd, name, unix.RENAME_NOREPLACE); err != nil {
		o.removeTemp(wh)
		return fmt.Errorf("whiteout %s: %w", name, err)
	}
	if child.inIndex {
		// A name of an indexed hard link that was never linked up went.
		o.addNlink(child, -1)
	}
	return nil
}

// indexedLower reports whether n is a name of a lower hard link with
// index=on that is not in the upper yet: removing it or renaming over it
// changes the link count its other names show, which only its index entry
// can record.
func (n *Node) indexedLower() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.IsDir() && n.indexName != "" && !n.inUpper
}

// offlineChanges reports whether the lower layers may change while the
// overlay is not mounted (kernel: ovl_allow_offline_changes): not once a
// feature that records lower identities or paths in the upper is on.
func (o *Overlay) offlineChanges() bool {
	return !o.indexOn && !o.metacopyOn && !o.createRedirects
}
