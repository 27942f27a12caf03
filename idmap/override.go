package idmap

import (
	"fmt"
	"strconv"
	"strings"
)

// The override xattrs: an object that carries one shows the owner, group and
// permission bits in it, not its inode's (fuse-overlayfs utils.h,
// containers-storage pkg/idtools). The file type always comes from the inode.
const (
	// PrivilegedOverride is where xattr_permissions=1 keeps them; only a
	// privileged process may set it, on objects of any type.
	PrivilegedOverride = "security.fuseoverlayfs.override_stat"
	// UserOverride is where fuse-overlayfs up to 1.13 keeps them with
	// xattr_permissions=2; user.* xattrs fit only regular files and
	// directories.
	UserOverride = "user.fuseoverlayfs.override_stat"
	// ContainersOverride is where containers-storage records the real
	// owner and mode of the files it stores with force_mask, and where
	// fuse-overlayfs 1.14 and later keep them with xattr_permissions=2.
	ContainersOverride = "user.containers.override_stat"
)

// OverrideNames are the override xattrs, in the order fuse-overlayfs
// prefers them when a layer root carries more than one
// (direct.c: direct_load_data_source).
var OverrideNames = []string{PrivilegedOverride, ContainersOverride, UserOverride}

// IsOverride reports whether name is one of the override xattrs.
func IsOverride(name string) bool {
	return name == PrivilegedOverride || name == UserOverride || name == ContainersOverride
}

// Override is the content of an override xattr.
type Override struct {
	UID, GID uint32
	// Mode holds the permission bits with setuid, setgid and sticky.
	Mode uint32
}

// ParseOverride reads "UID:GID:MODE": decimal IDs and an octal mode, as
// containers-storage writes it ("0:0:0755"), as fuse-overlayfs writes it
// (the mode may carry the file type bits, "0:0:100644", which are dropped),
// or in the extended form of containers-storage 1.56 and later with the
// file type after it ("0:0:0644:file"), whose type is not used: the type
// shown is the inode's.
func ParseOverride(v []byte) (Override, error) {
	s := strings.TrimRight(string(v), "\x00")
	f := strings.Split(s, ":")
	if len(f) < 3 {
		return Override{}, fmt.Errorf("override %q: want UID:GID:MODE", s)
	}
	uid, err1 := strconv.ParseUint(f[0], 10, 32)
	gid, err2 := strconv.ParseUint(f[1], 10, 32)
	mode, err3 := strconv.ParseUint(f[2], 8, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return Override{}, fmt.Errorf("override %q: want decimal UID and GID and an octal MODE", s)
	}
	return Override{UID: uint32(uid), GID: uint32(gid), Mode: uint32(mode) & 0o7777}, nil
}

// Value is the xattr value ovl writes: containers-storage's form, the
// permission bits alone ("0:0:0644"), which every reader of the three names
// understands.
func (o Override) Value() []byte {
	return fmt.Appendf(nil, "%d:%d:%04o", o.UID, o.GID, o.Mode&0o7777)
}
