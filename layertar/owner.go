package layertar

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/idmap"
)

// upperOverrides are the override xattrs read on the upper's objects, as
// the overlay reads them (overlay/owner.go, after fuse-overlayfs): all of
// them, the one xattr_permissions names first, when it is set or the upper
// root carries one; none otherwise.
func upperOverrides(root, xattrPermissions int) ([]string, error) {
	var first string
	switch xattrPermissions {
	case 0:
	case 1:
		first = idmap.PrivilegedOverride
	case 2:
		first = idmap.UserOverride
	default:
		return nil, fmt.Errorf("xattr_permissions=%d: want 0, 1 or 2", xattrPermissions)
	}
	onRoot := false
	for _, x := range idmap.OverrideNames {
		if v, err := format.Getxattr(root, x); err == nil && v != nil {
			onRoot = true
		}
	}
	if first == "" && !onRoot {
		return nil, nil
	}
	out := []string{}
	if first != "" {
		out = append(out, first)
	}
	for _, x := range idmap.OverrideNames {
		if x != first {
			out = append(out, x)
		}
	}
	return out, nil
}

// override puts the owner and mode of the upper entry name in dirfd, from
// the first override xattr it carries (listed in raw), into st.
func (d *differ) override(dirfd int, name string, raw []string, st *unix.Stat_t) error {
	for _, x := range d.overrides {
		if !has(raw, x) {
			continue
		}
		v, err := format.GetxattrAt(dirfd, name, x)
		if err != nil || v == nil {
			return err
		}
		ov, err := idmap.ParseOverride(v)
		if err != nil {
			return err
		}
		st.Uid, st.Gid = ov.UID, ov.GID
		st.Mode = st.Mode&unix.S_IFMT | ov.Mode
		return nil
	}
	return nil
}
