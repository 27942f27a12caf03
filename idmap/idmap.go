// Package idmap holds what a mount shows as an object's owner when the
// layers store another one: fuse-overlayfs's dynamic ID mapping
// (uidmapping=, gidmapping=), owner squashing (squash_to_uid=,
// squash_to_gid=, squash_to_root), and the override xattrs that keep an
// owner and mode apart from the inode (xattr_permissions=, containers-storage's
// force_mask). It knows nothing of layers or FUSE; package overlay applies it
// where attributes leave the overlay and where IDs come in.
//
// The rules, as fuse-overlayfs has them (main.c: find_mapping, get_uid):
//   - A range D:S:N says that the IDs D..D+N-1 stored in the layers show as
//     S..S+N-1 through the mount ("disk" and "shown" IDs). Ranges may not
//     overlap on either side, so every ID maps back to where it came from.
//   - A stored ID outside every range shows as the overflow ID
//     (/proc/sys/kernel/overflowuid, 65534 by default), and so does a shown
//     ID outside every range when it is stored (a new object's owner, a
//     chown): both directions are total. Without ranges an ID is unchanged.
//   - Squashing changes only what is shown: every object shows the squash
//     owner; stored IDs still follow the ranges.
package idmap

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Range maps Size consecutive IDs: Disk+i in the layers shows as Shown+i.
type Range struct {
	Disk, Shown, Size uint32
}

func (r Range) String() string { return fmt.Sprintf("%d:%d:%d", r.Disk, r.Shown, r.Size) }

// Map is the whole mapping of one mount. The zero Map shows every ID as it
// is stored.
type Map struct {
	// UIDs and GIDs map user and group IDs; empty maps nothing.
	UIDs, GIDs []Range
	// SquashUID and SquashGID, when set, are what every object shows as its
	// owner and group (squash_to_uid=, squash_to_gid=, squash_to_root).
	SquashUID, SquashGID *uint32
	// OverflowUID and OverflowGID stand for IDs that have no mapping.
	OverflowUID, OverflowGID uint32
}

// ParseRanges reads fuse-overlayfs's uidmapping=/gidmapping= value: ranges
// "D:S:N" joined by colons, "D1:S1:N1:D2:S2:N2", with an optional leading
// colon (containers-storage writes ":0:100000:65536").
func ParseRanges(v string) ([]Range, error) {
	s := strings.TrimPrefix(v, ":")
	if s == "" {
		return nil, fmt.Errorf("mapping %q is empty: want DISK:SHOWN:SIZE[:DISK:SHOWN:SIZE...]", v)
	}
	f := strings.Split(s, ":")
	if len(f)%3 != 0 {
		return nil, fmt.Errorf("mapping %q has %d numbers: want groups of three, DISK:SHOWN:SIZE", v, len(f))
	}
	var out []Range
	for i := 0; i < len(f); i += 3 {
		var n [3]uint32
		for j := range n {
			x, err := strconv.ParseUint(f[i+j], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("mapping %q: %q is not an ID (a decimal number below 2^32)", v, f[i+j])
			}
			n[j] = uint32(x)
		}
		r := Range{Disk: n[0], Shown: n[1], Size: n[2]}
		if r.Size == 0 {
			return nil, fmt.Errorf("mapping %q: range %s has size 0", v, r)
		}
		if uint64(r.Disk)+uint64(r.Size) > 1<<32 || uint64(r.Shown)+uint64(r.Size) > 1<<32 {
			return nil, fmt.Errorf("mapping %q: range %s goes past ID 2^32-1", v, r)
		}
		for _, o := range out {
			if overlaps(o.Disk, o.Size, r.Disk, r.Size) || overlaps(o.Shown, o.Size, r.Shown, r.Size) {
				return nil, fmt.Errorf("mapping %q: ranges %s and %s overlap, so some ID would map two ways", v, o, r)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func overlaps(a, an, b, bn uint32) bool {
	return uint64(a) < uint64(b)+uint64(bn) && uint64(b) < uint64(a)+uint64(an)
}

// ParseID reads a squash_to_uid=/squash_to_gid= value.
func ParseID(v string) (uint32, error) {
	x, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not an ID (a decimal number below 2^32)", v)
	}
	return uint32(x), nil
}

// FormatRanges is the option value that ParseRanges reads back.
func FormatRanges(rs []Range) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.String())
	}
	return strings.Join(s, ":")
}

// SystemOverflow returns the kernel's overflow IDs, 65534 where they cannot
// be read (as fuse-overlayfs reads them: read_overflowids).
func SystemOverflow() (uid, gid uint32) {
	read := func(p string) uint32 {
		b, err := os.ReadFile(p)
		if err != nil {
			return 65534
		}
		x, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
		if err != nil {
			return 65534
		}
		return uint32(x)
	}
	return read("/proc/sys/kernel/overflowuid"), read("/proc/sys/kernel/overflowgid")
}

// Identity reports whether m shows every object as stored.
func (m *Map) Identity() bool {
	return m == nil || len(m.UIDs) == 0 && len(m.GIDs) == 0 && m.SquashUID == nil && m.SquashGID == nil
}

// Squashed reports whether a squash option is set.
func (m *Map) Squashed() bool { return m != nil && (m.SquashUID != nil || m.SquashGID != nil) }

func show(rs []Range, id, overflow uint32) uint32 {
	if len(rs) == 0 {
		return id
	}
	for _, r := range rs {
		if id >= r.Disk && id-r.Disk < r.Size {
			return r.Shown + (id - r.Disk)
		}
	}
	return overflow
}

func store(rs []Range, id, overflow uint32) uint32 {
	if len(rs) == 0 {
		return id
	}
	for _, r := range rs {
		if id >= r.Shown && id-r.Shown < r.Size {
			return r.Disk + (id - r.Shown)
		}
	}
	return overflow
}

// ShowUID is the owner shown for a stored uid: the squash owner, else the
// mapped uid.
func (m *Map) ShowUID(uid uint32) uint32 {
	if m == nil {
		return uid
	}
	if m.SquashUID != nil {
		return *m.SquashUID
	}
	return show(m.UIDs, uid, m.OverflowUID)
}

// ShowGID is ShowUID for groups.
func (m *Map) ShowGID(gid uint32) uint32 {
	if m == nil {
		return gid
	}
	if m.SquashGID != nil {
		return *m.SquashGID
	}
	return show(m.GIDs, gid, m.OverflowGID)
}

// Squash is ShowUID and ShowGID for IDs that are already the mount's (read
// through an idmapped mount): only squashing applies.
func (m *Map) Squash(uid, gid uint32) (uint32, uint32) {
	if m != nil && m.SquashUID != nil {
		uid = *m.SquashUID
	}
	if m != nil && m.SquashGID != nil {
		gid = *m.SquashGID
	}
	return uid, gid
}

// MapUID maps a stored uid through the ranges only, never squashed: for IDs
// that are data, such as the qualifiers of POSIX ACL entries.
func (m *Map) MapUID(uid uint32) uint32 {
	if m == nil {
		return uid
	}
	return show(m.UIDs, uid, m.OverflowUID)
}

// MapGID is MapUID for groups.
func (m *Map) MapGID(gid uint32) uint32 {
	if m == nil {
		return gid
	}
	return show(m.GIDs, gid, m.OverflowGID)
}

// StoreUID is the uid stored for a shown one (a caller's fsuid, a chown).
func (m *Map) StoreUID(uid uint32) uint32 {
	if m == nil {
		return uid
	}
	return store(m.UIDs, uid, m.OverflowUID)
}

// StoreGID is StoreUID for groups.
func (m *Map) StoreGID(gid uint32) uint32 {
	if m == nil {
		return gid
	}
	return store(m.GIDs, gid, m.OverflowGID)
}

// String describes m as mount options.
func (m *Map) String() string {
	if m == nil {
		return ""
	}
	var s []string
	if len(m.UIDs) > 0 {
		s = append(s, "uidmapping="+FormatRanges(m.UIDs))
	}
	if len(m.GIDs) > 0 {
		s = append(s, "gidmapping="+FormatRanges(m.GIDs))
	}
	if m.SquashUID != nil {
		s = append(s, fmt.Sprintf("squash_to_uid=%d", *m.SquashUID))
	}
	if m.SquashGID != nil {
		s = append(s, fmt.Sprintf("squash_to_gid=%d", *m.SquashGID))
	}
	return strings.Join(s, ",")
}
