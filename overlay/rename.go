package overlay

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/internal/fault"
)

// mergeOrLower reports whether a directory has a lower part: renaming it
// would need a redirect (kernel: ovl_type_merge_or_lower).
func (n *Node) mergeOrLower() bool { return len(n.lowers) > 0 }

// Rename moves name in n to newName in newParent (kernel: ovl_rename).
// old is the node of the source and target that of the destination (nil if
// none); callers that track nodes pass theirs so copy-up and locations
// update the objects they hold. flags are RENAME_NOREPLACE and
// RENAME_EXCHANGE. A directory with a lower part moves by recording a
// redirect (see redirect.go); without redirects it cannot move: EXDEV.
func (n *Node) Rename(name string, old *Node, newParent *Node, newName string, target *Node, flags uint32) error {
	o := n.o
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		return unix.EINVAL
	}
	if flags&unix.RENAME_NOREPLACE != 0 && flags&unix.RENAME_EXCHANGE != 0 {
		return unix.EINVAL
	}
	if format.IsAUFSName(name) || format.IsAUFSName(newName) {
		return unix.EINVAL // see LookupStat
	}
	if o.upper == nil {
		return unix.EROFS
	}
	o.renameMu.Lock()
	defer o.renameMu.Unlock()
	var err error
	if old == nil {
		if old, err = n.Lookup(name); err != nil {
			return err
		}
		defer old.Forget()
	}
	if target == nil {
		if target, err = newParent.Lookup(newName); err != nil && err != unix.ENOENT {
			return err
		} else if err == nil {
			defer target.Forget()
		}
	}
	exchange := flags&unix.RENAME_EXCHANGE != 0
	if target == old {
		return nil
	}
	if exchange && target == nil {
		return unix.ENOENT
	}
	if flags&unix.RENAME_NOREPLACE != 0 && target != nil {
		return unix.EEXIST
	}
	if old.IsDir() && old.mergeOrLower() && !o.createRedirects {
		return unix.EXDEV
	}
	if exchange && target.IsDir() && target.mergeOrLower() && !o.createRedirects {
		return unix.EXDEV
	}
	// A pure upper target directory that is not empty fails in the final
	// rename, after the source got its markers, as in the kernel (whose
	// vfs_rename reports it); one with a lower part fails here.
	lateNotEmpty := false
	if target != nil && !exchange {
		switch {
		case old.IsDir() && !target.IsDir():
			return unix.ENOTDIR
		case !old.IsDir() && target.IsDir():
			return unix.EISDIR
		case target.IsDir():
			empty, err := target.isEmpty()
			if err != nil {
				return err
			}
			if !empty && target.mergeOrLower() {
				return unix.ENOTEMPTY
			}
			lateNotEmpty = !empty
		}
	}
	if err := old.copyUp(copyMeta); err != nil {
		return err
	}
	ofd, err := n.upperDir()
	if err != nil {
		return err
	}
	nfd, err := newParent.upperDir()
	if err != nil {
		return err
	}
	if n != newParent {
		// A directory moved to another parent changes its ".." entry.
		moved := []*Node{old}
		if exchange {
			moved = append(moved, target)
		}
		for _, d := range moved {
			if d.IsDir() {
				d.mu.Lock()
				fd := d.upperFd
				d.mu.Unlock()
				d.noteUpper(fd)
			}
		}
	}
	if exchange || target != nil && target.indexedLower() {
		if err := target.copyUp(copyMeta); err != nil {
			return err
		}
	}
	samedir := n == newParent
	if old.IsDir() && old.mergeOrLower() || old.isMetacopy() {
		if err := o.setRedirect(old, samedir && !old.lowerHardlink()); err != nil {
			return err
		}
	}
	if exchange && (target.IsDir() && target.mergeOrLower() || target.isMetacopy()) {
		if err := o.setRedirect(target, samedir && !target.lowerHardlink()); err != nil {
			return err
		}
	}
	fault.Hit("rename.redirect")

	// Lock the directories in a fixed order.
	if n == newParent {
		n.dirMu.Lock()
		defer n.dirMu.Unlock()
	} else {
		a, b := n, newParent
		if a.key > b.key {
			a, b = b, a
		}
		a.dirMu.Lock()
		defer a.dirMu.Unlock()
		b.dirMu.Lock()
		defer b.dirMu.Unlock()
	}

	// An AUFS whiteout at the target becomes the kernel's, which the code
	// below knows.
	if _, err := newParent.upperAUFSWhiteout(nfd, newName); err != nil {
		return err
	}
	var st unix.Stat_t
	newKind, err := o.probe(nfd, newParent.upperXWh, newParent.upperAufsDir(), newName, &st)
	if err != nil {
		return err
	}
	rflags := uint(flags &^ unix.RENAME_NOREPLACE)
	cleanupWhiteout := false
	var cleared string // the target directory's old self, in work/
	if !exchange {
		if target != nil && target.IsDir() && newKind == entryDir && !lateNotEmpty {
			// The target directory may still hold whiteouts of a lower part it
			// no longer shows: exchange it with an empty opaque copy, which
			// the rename can replace (kernel: ovl_clear_empty). Moving it
			// aside instead would uncover its lower part until the rename,
			// and for good after a crash in between.
			if err := unix.Unlinkat(nfd, newName, unix.AT_REMOVEDIR); err == unix.ENOTEMPTY || err == unix.EEXIST {
				cleared = format.TempName(o.tempSeq.Add(1))
				err := o.emptyLike(nfd, newName, cleared)
				if err == nil {
					err = unix.Renameat2(o.work, cleared, nfd, newName, unix.RENAME_EXCHANGE)
				}
				if err != nil {
					o.removeTemp(cleared)
					return fmt.Errorf("rename %s: clear %s: %w", name, newName, err)
				}
				fault.Hit("rename.cleared")
			} else if err != nil {
				return err
			} else {
				newKind = entryNone
			}
		}
		pos, err := n.lowerPositive(name)
		if err != nil {
			return err
		}
		switch {
		case pos && newKind == entryWhiteout:
			rflags |= unix.RENAME_EXCHANGE // switch whiteouts
		case pos:
			rflags |= unix.RENAME_WHITEOUT
		case old.IsDir() && newKind == entryWhiteout:
			rflags |= unix.RENAME_EXCHANGE
			cleanupWhiteout = true
		}
	}
	// A pure upper directory moving under a merged parent must not start
	// merging with what the lower layers hold there.
	// (kernel: ovl_set_opaque_xerr in ovl_rename, whenever the new parent merges).
	if old.IsDir() && !old.mergeOrLower() && len(newParent.lowers) > 0 && !o.dirOpaque(old.upperFd) {
		old.noteUpper(old.upperFd)
		if err := format.Setxattr(old.upperFd, o.names.Name(format.Opaque), format.OpaqueValue(), 0); err != nil {
			return unix.EXDEV
		}
	}
	if exchange && target.IsDir() && !target.mergeOrLower() && len(n.lowers) > 0 && !o.dirOpaque(target.upperFd) {
		target.noteUpper(target.upperFd)
		if err := format.Setxattr(target.upperFd, o.names.Name(format.Opaque), format.OpaqueValue(), 0); err != nil {
			return unix.EXDEV
		}
	}
	fault.Hit("rename.opaque")
	// As the kernel (ovl_type_origin in ovl_rename), by the origin the
	// upper object records: a copied-up file that moved before, or that a
	// later mount looked up, has no lower part here but keeps its origin.
	if n != newParent && (len(old.lowers) > 0 || o.hasOrigin(ofd, name)) {
		o.markImpure(newParent)
	}
	if exchange && n != newParent && (len(target.lowers) > 0 || o.hasOrigin(nfd, newName)) {
		o.markImpure(n)
	}
	fault.Hit("rename.impure")

	if lateNotEmpty {
		return unix.ENOTEMPTY
	}
	o.treeMu.Lock()
	err = nil
	if rflags&unix.RENAME_WHITEOUT != 0 {
		err = fault.Hit("rename.whiteout")
	}
	if err == nil {
		err = unix.Renameat2(ofd, name, nfd, newName, rflags)
	}
	if err == unix.EINVAL && rflags&unix.RENAME_WHITEOUT != 0 {
		// A filesystem without RENAME_WHITEOUT: rename, then whiteout.
		err = unix.Renameat2(ofd, name, nfd, newName, rflags&^unix.RENAME_WHITEOUT)
		if err == nil {
			fault.Hit("rename.fallback")
			err = format.MakeWhiteout(ofd, name)
		}
	}
	var dropped []*Node // parents whose references the moved nodes give back
	if err == nil {
		if old.parent != newParent {
			newParent.Ref()
			dropped = append(dropped, old.parent)
		}
		old.parent, old.name = newParent, newName
		if exchange && target.parent != n {
			n.Ref()
			dropped = append(dropped, target.parent)
		}
		if exchange {
			target.parent, target.name = n, name
		}
	}
	o.treeMu.Unlock()
	for _, p := range dropped {
		if p != nil {
			p.Forget()
		}
	}
	if err != nil {
		if cleared != "" {
			// Put the target back; its empty copy goes.
			unix.Renameat2(o.work, cleared, nfd, newName, unix.RENAME_EXCHANGE)
			o.removeTemp(cleared)
		}
		return err
	}
	if rflags&unix.RENAME_WHITEOUT != 0 {
		o.stats.whiteouts.Add(1)
	}
	if cleanupWhiteout {
		unix.Unlinkat(ofd, name, 0)
	}
	if cleared != "" {
		o.removeTemp(cleared)
	}
	return nil
}

// emptyLike makes tmp in work/ an empty opaque directory with the xattrs
// (not the overlay's own), owner, mode and times of the directory name in
// dirfd (kernel: ovl_clear_empty).
func (o *Overlay) emptyLike(dirfd int, name, tmp string) error {
	src, err := format.OpenAt(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(src)
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return err
	}
	if err := unix.Mkdirat(o.work, tmp, 0o700); err != nil {
		return err
	}
	dst, err := format.OpenAt(o.work, tmp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dst)
	names, err := format.Listxattr(src)
	if err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, x := range names {
		if o.names.IsPrivate(x) {
			continue
		}
		if v, err := format.Getxattr(src, x); err != nil {
			return fmt.Errorf("read xattr %s: %w", x, err)
		} else if v != nil {
			if err := format.Setxattr(dst, x, v, 0); err != nil {
				return fmt.Errorf("write xattr %s: %w", x, err)
			}
		}
	}
	if err := format.Setxattr(dst, o.names.Name(format.Opaque), format.OpaqueValue(), 0); err != nil {
		return err
	}
	if err := unix.Fchownat(o.work, tmp, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if err := unix.Fchmodat(o.work, tmp, st.Mode&0o7777, 0); err != nil {
		return err
	}
	return unix.UtimesNanoAt(o.work, tmp, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
}

// hasOrigin reports whether the upper object name in dirfd records a
// known origin (a non-empty overlay.origin).
func (o *Overlay) hasOrigin(dirfd int, name string) bool {
	v, _ := format.GetxattrAt(dirfd, name, o.names.Name(format.Origin))
	return len(v) > 0
}

func (o *Overlay) markImpure(dir *Node) {
	dir.mu.Lock()
	defer dir.mu.Unlock()
	if dir.impure || dir.upperFd < 0 {
		return
	}
	dir.noteUpper(dir.upperFd)
	if format.Setxattr(dir.upperFd, o.names.Name(format.Impure), format.ImpureValue(), 0) == nil {
		dir.impure = true
	}
}
