package fsck

import (
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// checkWork checks workdir/work: it must hold nothing but the shared
// whiteout that the kernel and ovl keep there (a char 0/0 device that new
// whiteouts are links of) and no incompat feature.
func (c *checker) checkWork() error {
	wfd, err := format.OpenAt(c.work, format.WorkDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil // never mounted
	}
	if err != nil {
		return fmt.Errorf("open workdir/%s: %w", format.WorkDirName, err)
	}
	defer unix.Close(wfd)
	names, err := readNames(wfd)
	if err != nil {
		return fmt.Errorf("read workdir/%s: %w", format.WorkDirName, err)
	}
	for _, name := range names {
		where := "work:" + format.WorkDirName + "/" + name
		var st unix.Stat_t
		if err := format.Lstat(wfd, name, &st); err != nil {
			continue
		}
		if format.IsWhiteoutStat(&st) {
			continue // the shared whiteout
		}
		if name == format.IncompatDirName && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if c.checkIncompat(wfd, where) {
				continue
			}
		}
		c.say(Finding{Kind: WorkLeftover, Where: where,
			What: "leftover of a mount that stopped (a temporary; the next mount removes it)", Repair: "remove it"},
			Preen, func() error { return removeAll(wfd, name) })
	}
	return nil
}

// checkIncompat checks work/incompat, the marks of features with which
// the kernel refuses to mount the upper. It reports whether it held any.
func (c *checker) checkIncompat(wfd int, where string) bool {
	fd, err := format.OpenAt(wfd, format.IncompatDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	names, _ := readNames(fd)
	for _, name := range names {
		w := where + "/" + name
		if name != format.VolatileDirName {
			c.say(Finding{Kind: VolatileMarker, Where: w,
				What: fmt.Sprintf("incompat feature %q: the kernel and ovl refuse to mount this upper; fsck does not know the feature", name)}, Yes, nil)
			continue
		}
		c.say(Finding{Kind: VolatileMarker, Where: w,
			What: "a volatile mount used this upper and did not stop cleanly: the upper may have lost writes; " +
				"let an ovl mount check it (volatile_recovery=), or discard the upper" + c.volatileDetail(fd, name),
			Repair: "remove the marker, accepting the upper as it is (writes made before the stop may be missing)"},
			Yes, func() error { return removeAll(fd, name) })
	}
	if len(names) == 0 {
		return false // an empty work/incompat is a leftover
	}
	if c.opts.Mode == Yes {
		// Empty now, unless something stayed: then it stays too.
		if left, _ := readNames(fd); len(left) == 0 {
			unix.Unlinkat(wfd, format.IncompatDirName, unix.AT_REMOVEDIR)
		}
	}
	return true
}

func (c *checker) openIndex() error {
	fd, err := format.OpenAt(c.work, format.IndexDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open workdir/%s: %w", format.IndexDirName, err)
	}
	c.index = fd
	return nil
}

// checkIndex checks workdir/index (index=on): each entry is the upper copy
// of a lower hard link, named by the hex of its origin handle; its
// overlay.nlink counts the overlay's names of it.
func (c *checker) checkIndex() error {
	if c.index < 0 {
		return nil
	}
	c.checkIndexRoots()
	names, err := readNames(c.index)
	if err != nil {
		return fmt.Errorf("read workdir/%s: %w", format.IndexDirName, err)
	}
	for _, name := range names {
		where := "work:" + format.IndexDirName + "/" + name
		var st unix.Stat_t
		if err := format.Lstat(c.index, name, &st); err != nil {
			continue
		}
		if format.IsWhiteoutStat(&st) || st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue // nfs_export's entries: not written by ovl, not checked
		}
		raw, herr := hex.DecodeString(name)
		if _, _, _, ok := format.DecodeOrigin(raw); herr != nil || !ok {
			c.say(Finding{Kind: BadIndex, Where: where, What: "not an index entry: its name is no encoded file handle"}, Yes, nil)
			continue
		}
		if v, _ := format.GetxattrAt(c.index, name, c.names.Name(format.Origin)); v != nil && !sameBytes(v, raw) {
			c.say(Finding{Kind: BadIndex, Where: where, What: "its overlay.origin differs from its name"}, Yes, nil)
			continue
		}
		names := int64(st.Nlink) - 1 // its names in the upper
		count := names
		nv, _ := format.GetxattrAt(c.index, name, c.names.Name(format.Nlink))
		if nv != nil {
			n, ok := format.ParseNlink(nv, uint64(st.Nlink))
			if !ok {
				c.say(Finding{Kind: BadNlink, Where: where, What: fmt.Sprintf("overlay.nlink %q cannot be read", nv)}, Yes, nil)
				continue
			}
			count = n
		}
		if names == 0 && count <= 0 {
			// ovl leaves these until the next mount removes them
			// (overlay/index.go, as the kernel's ovl_indexdir_cleanup):
			// no problem, but the mount would remove it, so -p does.
			c.say(Finding{Kind: BadIndex, Where: where, Note: true, What: "orphan index entry: no name uses it (the next mount removes it)", Repair: "remove it"},
				Preen, func() error { return unix.Unlinkat(c.index, name, 0) })
			continue
		}
		var lower decoded
		if c.decode {
			lower = c.decodeOrigin(raw)
			if !lower.ok {
				if names == 0 {
					c.say(Finding{Kind: BadIndex, Where: where,
						What: "stale index entry: its lower file is gone and no upper name uses it (the next mount removes it)", Repair: "remove it"},
						Preen, func() error { return unix.Unlinkat(c.index, name, 0) })
				} else {
					c.say(Finding{Kind: BadIndex, Where: where,
						What: "index entry whose lower file is gone (a lower layer changed offline), still linked from the upper"}, Yes, nil)
				}
				continue
			}
		}
		if seen := int64(c.links[format.StatID(&st)]); seen != names {
			c.say(Finding{Kind: BadIndex, Where: where,
				What: fmt.Sprintf("the index entry has %d upper links, but the upper holds %d of its names", names, seen)}, Yes, nil)
		}
		switch {
		case count < names:
			c.say(Finding{Kind: BadNlink, Where: where,
				What: fmt.Sprintf("overlay.nlink %q gives %d names, fewer than the %d the upper holds", nv, count, names)}, Yes, nil)
		case lower.ok && count > names+int64(lower.st.Nlink):
			c.say(Finding{Kind: BadNlink, Where: where,
				What: fmt.Sprintf("overlay.nlink %q gives %d names, more than the upper's %d and the lower file's %d together", nv, count, names, lower.st.Nlink)}, Yes, nil)
		}
	}
	return nil
}

// checkIndexRoots checks that the upper belongs to these lower layers: an
// index=on mount recorded the first lower root in the upper root's
// overlay.origin and the upper root in the index's overlay.upper, and
// refuses other layers (kernel: ovl_verify_origin, ovl_verify_upper).
func (c *checker) checkIndexRoots() {
	if !c.decode {
		return
	}
	v, _ := format.Getxattr(c.upper, c.names.Name(format.Origin))
	if len(v) == 0 {
		return
	}
	d := c.decodeOrigin(v)
	var st unix.Stat_t
	if unix.Fstat(c.lowers[0].root, &st) != nil {
		return
	}
	if !d.ok || d.st.Dev != st.Dev || d.st.Ino != st.Ino {
		c.say(Finding{Kind: WrongLayers, Where: "upper:/",
			What: "the upper was made over other lower layers (its overlay.origin names another root): an index=on mount refuses it; give the layers it was made with"},
			Yes, nil)
	}
}

// volatileDetail says what ovl's record in work/incompat/volatile
// (format.VolatileRecord) tells: whether the upper's filesystem is still
// the one the mount wrote to, so that an ovl mount can check it
// (volatile_recovery=check), or not, so that writes may be lost for sure.
func (c *checker) volatileDetail(incompat int, name string) string {
	vfd, err := format.OpenAt(incompat, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(vfd)
	var st unix.Stat_t
	if format.Lstat(vfd, format.VolatileFailedName, &st) == nil {
		return " (ovl's record: the mount's own sync at its end failed, so writes are lost)"
	}
	rec, err := format.ReadVolatileRecord(vfd)
	if err != nil {
		return " (no ovl record: the kernel or an older ovl made the marker)"
	}
	cur, err := format.VolatileIdentity(c.opts.Config.Upper, c.upper)
	if err != nil {
		return fmt.Sprintf(" (ovl's record of the mount is there, but the upper's identity cannot be read: %v)", err)
	}
	if why := rec.Mismatch(cur); why != "" {
		return " (ovl's record: " + why + ", so writes may be lost)"
	}
	return " (ovl's record of the mount matches this filesystem: a mount with volatile_recovery=check checks it)"
}
