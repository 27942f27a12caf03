package overlay

// Owners (Config.IDs, Config.XattrPermissions): what the mount shows as an
// object's owner, group and permission bits when the layers store others,
// and what it stores for the IDs that come in. The rules are
// fuse-overlayfs's (package idmap has the mapping itself):
//
//   - An object's owner and mode are its override xattr's, if it has one
//     (read on every layer when xattr_permissions is set, else on the layers
//     whose root has one, as fuse-overlayfs decides per layer), else its
//     inode's. Either way they are IDs as stored, which the mount shows
//     mapped (and squashed): the one exception is the inode IDs of a lower
//     layer on an idmapped mount, which the kernel has mapped already and
//     which are only squashed (see format.IDMapped).
//   - IDs that come in (a caller's fsuid and fsgid for a new object, a chown,
//     the qualifiers of a POSIX ACL) are stored mapped back; squashing does
//     not change them.
//   - With xattr_permissions, a regular file or directory that ovl makes or
//     copies up in the upper keeps its owner and mode in the override xattr
//     of that option, and its inode keeps the daemon's owner and its mode
//     widened to 0755 without special bits (as fuse-overlayfs makes them),
//     so that a storage shared by several users stays readable. An object
//     that already has an override keeps its owner there; everything else
//     keeps it in its inode.
//   - The override xattrs are ovl's own: never listed, read or set through
//     the mount, never copied up as such (copy-up writes the effective
//     owner).

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/idmap"
)

// owner is an object's owner, group and permission bits as its layer has
// them.
type owner struct {
	uid, gid, perm uint32
	// from names the override xattr they come from ("": the inode).
	from string
	// mapped: uid and gid are the mount's already (the inode of a lower on
	// an idmapped mount); override values never are.
	mapped bool
}

// ownerOf reads the owner of a real object of layer l with attributes st.
// The object is fd, or name in the directory fd when name is not empty.
func (o *Overlay) ownerOf(l *layer, st *unix.Stat_t, fd int, name string) (owner, error) {
	ow := owner{uid: st.Uid, gid: st.Gid, perm: st.Mode & 0o7777, mapped: l != nil && l.mapped}
	if l == nil || len(l.overrides) == 0 {
		return ow, nil
	}
	for _, x := range l.overrides {
		var v []byte
		var err error
		if name == "" && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			v, err = format.GetxattrFile(fd, x)
		} else if name == "" {
			v, err = format.Getxattr(fd, x)
		} else {
			v, err = format.GetxattrAt(fd, name, x)
		}
		if err != nil {
			if err == unix.EPERM || err == unix.EACCES {
				continue // a security.* name the filesystem keeps from us
			}
			return ow, err
		}
		if v == nil {
			continue
		}
		ov, err := idmap.ParseOverride(v)
		if err != nil {
			// A damaged layer: say so, as the kernel does for a damaged
			// overlay xattr, rather than show its forced mode.
			return ow, fmt.Errorf("%s of %s: %v: %w", x, name, err, unix.EIO)
		}
		return owner{uid: ov.UID, gid: ov.GID, perm: ov.Mode, from: x}, nil
	}
	return ow, nil
}

// present puts ow into st as the mount shows it.
func (o *Overlay) present(st *unix.Stat_t, ow owner) {
	if !o.owners {
		return
	}
	if ow.mapped {
		st.Uid, st.Gid = o.ids.Squash(ow.uid, ow.gid)
	} else {
		st.Uid, st.Gid = o.ids.ShowUID(ow.uid), o.ids.ShowGID(ow.gid)
	}
	st.Mode = st.Mode&unix.S_IFMT | ow.perm
}

// show is ownerOf and present: st, the attributes of a real object of l
// (fd, or name in fd), becomes what the mount shows.
func (o *Overlay) show(l *layer, st *unix.Stat_t, fd int, name string) error {
	if !o.owners {
		return nil
	}
	ow, err := o.ownerOf(l, st, fd, name)
	if err != nil {
		return err
	}
	o.present(st, ow)
	return nil
}

// upperIDs is how the upper stores the owner ow of an object being copied
// up.
func (o *Overlay) upperIDs(ow owner) (uint32, uint32) {
	if ow.mapped {
		return o.ids.StoreUID(ow.uid), o.ids.StoreGID(ow.gid)
	}
	return ow.uid, ow.gid
}

// keepsOverride reports whether an upper object of type kind that has no
// override yet gets one (xattr_permissions): regular files and
// directories, the types every override name fits.
func (o *Overlay) keepsOverride(kind uint32) bool {
	return o.ovName != "" && (kind == unix.S_IFREG || kind == unix.S_IFDIR)
}

// backingPerm is the inode mode of an upper object whose owner and mode are
// in its override: readable and searchable by all, writable by the daemon,
// never setuid (fuse-overlayfs: mode | 0755).
func backingPerm(perm uint32) uint32 { return perm&0o777 | 0o755 }

// writeOverride records uid, gid and perm in the override xattr name of fd.
func writeOverride(fd int, name string, uid, gid, perm uint32) error {
	v := idmap.Override{UID: uid, GID: gid, Mode: perm}.Value()
	if err := format.Setxattr(fd, name, v, 0); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// setUpperOwner gives the upper object fd (O_PATH) of type kind its owner
// and mode (stored IDs): in its override, where cur (its current owner)
// comes from one or keepsOverride says so, else in its inode, whose mode
// is set only if chmod. An inode owner that the daemon may not set (a
// rootless mount) is left alone when it is the daemon's own.
func (o *Overlay) setUpperOwner(fd int, kind uint32, cur owner, uid, gid, perm uint32, chmod bool) error {
	name := cur.from
	if o.keepsOverride(kind) {
		name = o.ovName
	}
	if name != "" {
		if name == o.ovName && cur.from != o.ovName {
			// Its inode mode becomes the backing one.
			if err := unix.Chmod(format.ProcPath(fd), backingPerm(perm)); err != nil {
				return fmt.Errorf("chmod: %w", err)
			}
		}
		return writeOverride(fd, name, uid, gid, perm)
	}
	if uid != cur.uid || gid != cur.gid {
		err := unix.Fchownat(fd, "", int(uid), int(gid), unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
		if !o.chownDone(err, uid) {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if chmod && kind != unix.S_IFLNK {
		if err := unix.Chmod(format.ProcPath(fd), perm); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	return nil
}

// chownDone says whether a chown of an upper object to uid that ended with
// err leaves nothing to report: it worked; or the daemon may not give
// owners (rootless) and the object is its own already; or owners are
// squashed, which shows every object with one owner anyway
// (fuse-overlayfs: do_fchown).
func (o *Overlay) chownDone(err error, uid uint32) bool {
	if err == nil {
		return true
	}
	if err != unix.EPERM && err != unix.EINVAL {
		return false
	}
	return uint32(unix.Geteuid()) == uid || o.ids.Squashed()
}

// setupOwners prepares Config.IDs and Config.XattrPermissions once the
// layers are open: which lowers are already mapped, which layers carry
// overrides, and the override of the upper root.
func (o *Overlay) setupOwners() error {
	cfg := o.cfg
	if !cfg.IDs.Identity() {
		o.ids = cfg.IDs
	}
	switch cfg.XattrPermissions {
	case 0:
	case 1:
		o.ovName = idmap.PrivilegedOverride
	case 2:
		// fuse-overlayfs up to 1.13 reads this name in the upper, and
		// ovl reads all three: a storage switched between them keeps
		// its owners either way.
		o.ovName = idmap.UserOverride
	default:
		return fmt.Errorf("xattr_permissions=%d: want 0, 1 or 2", cfg.XattrPermissions)
	}
	layers := o.lowers
	if o.upper != nil {
		layers = append([]*layer{o.upper}, o.lowers...)
	}
	for _, l := range layers {
		if o.ids != nil && l != o.upper {
			m, err := format.IDMapped(l.path)
			if err != nil {
				return fmt.Errorf("lowerdir %s: %w", l.path, err)
			}
			l.mapped = m
		}
		if o.ovName != "" || rootOverride(l.root) != "" {
			l.overrides = idmap.OverrideNames
			if l == o.upper && o.ovName != "" {
				// What ovl writes first: a copy-up may carry an older one.
				l.overrides = append([]string{o.ovName}, without(idmap.OverrideNames, o.ovName)...)
			}
		}
		o.owners = o.owners || len(l.overrides) > 0
	}
	o.owners = o.owners || o.ids != nil
	if o.upper != nil && o.ovName != "" && rootOverride(o.upper.root) == "" {
		// The merged root shows the upper root: give it the owner of the
		// image's root, as fuse-overlayfs does, from the first lower root
		// that has an override.
		for _, l := range o.lowers {
			if x := rootOverride(l.root); x != "" {
				v, err := format.Getxattr(l.root, x)
				if err != nil {
					return fmt.Errorf("lowerdir %s: read %s: %w", l.path, x, err)
				}
				ov, err := idmap.ParseOverride(v)
				if err != nil {
					return fmt.Errorf("lowerdir %s: %v", l.path, err)
				}
				if err := writeOverride(o.upper.root, o.ovName, ov.UID, ov.GID, ov.Mode); err != nil {
					return fmt.Errorf("upperdir %s: %w", o.upper.path, err)
				}
				break
			}
		}
	}
	return nil
}

// rootOverride is the first override name a layer root carries, or "".
func rootOverride(root int) string {
	for _, x := range idmap.OverrideNames {
		if v, err := format.Getxattr(root, x); err == nil && v != nil {
			return x
		}
	}
	return ""
}

func without(names []string, drop string) []string {
	var out []string
	for _, n := range names {
		if n != drop {
			out = append(out, n)
		}
	}
	return out
}

// MappedLowers lists the lower layers found on idmapped mounts, whose
// owners the mount does not map again.
func (o *Overlay) MappedLowers() []string {
	var out []string
	for _, l := range o.lowers {
		if l.mapped {
			out = append(out, l.path)
		}
	}
	return out
}

// POSIX ACL xattrs hold user and group IDs (include/uapi/linux/posix_acl_xattr.h).
const (
	aclAccess  = "system.posix_acl_access"
	aclDefault = "system.posix_acl_default"
	aclUser    = 0x02
	aclGroup   = 0x08
)

// mapACL rewrites the IDs of the named user and group entries of a POSIX
// ACL xattr value v with fu and fg. A value it cannot parse is left alone:
// the filesystem below refuses it.
func mapACL(v []byte, fu, fg func(uint32) uint32) []byte {
	if len(v) < 4 || (len(v)-4)%8 != 0 {
		return v
	}
	out := append([]byte(nil), v...)
	for off := 4; off < len(out); off += 8 {
		id := out[off+4 : off+8]
		switch binary.LittleEndian.Uint16(out[off:]) {
		case aclUser:
			binary.LittleEndian.PutUint32(id, fu(binary.LittleEndian.Uint32(id)))
		case aclGroup:
			binary.LittleEndian.PutUint32(id, fg(binary.LittleEndian.Uint32(id)))
		}
	}
	return out
}

// isACL reports whether an xattr name holds a POSIX ACL.
func isACL(name string) bool { return name == aclAccess || name == aclDefault }
