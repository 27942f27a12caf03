package format

import (
	"strings"
)

// AUFS whiteouts are the other whiteout format: the OCI image spec's
// (image-spec layer.md, "Whiteouts"), in which containers-storage applies
// layer tars when a mount program serves its mounts, and which
// fuse-overlayfs reads in every layer and writes in its upper where it may
// not mknod. ovl reads them in every layer, the upper included, and never
// writes them: what it writes stays in the kernel's format. The rules are
// fuse-overlayfs's (main.c: do_lookup_file, load_dir, is_directory_opaque):
//
//   - An entry ".wh.NAME" of any type and size hides NAME in its own layer
//     (a NAME beside it included) and in the layers below.
//   - ".wh..wh..opq" (of any type) makes its directory opaque, and so does
//     user.fuseoverlayfs.opaque starting with 'y', which fuse-overlayfs
//     sets where it may not set trusted.overlay.opaque. The overlay.opaque
//     of the mount's namespace keeps the kernel's rule (exactly "y", see
//     DirFlag); that of the other namespace is no mark, as for the kernel:
//     it belongs to another overlay, such as one nested in this mount.
//   - Every name that starts with ".wh." is the format's: never shown in
//     a merged view, and neither looked up nor created through it.
//   - fuse-overlayfs's xattr namespace is private, as the overlay's own
//     (IsForeign): hidden from users, refused to them (EPERM, as
//     fuse-overlayfs answers), never copied up.
//
// As for the kernel's markers, opaque marks on a layer root are ignored:
// the roots of all layers always merge.
const (
	AUFSPrefix = ".wh."
	AUFSOpaque = ".wh..wh..opq"
)

// FuseOverlayfsPrefix is fuse-overlayfs's own xattr namespace (origin,
// opaque, override_stat): private as the overlay's own, so that a layer
// it wrote shows through ovl what it showed through fuse-overlayfs.
const FuseOverlayfsPrefix = "user.fuseoverlayfs."

// FuseOverlayfsOpaque is fuse-overlayfs's own opaque xattr.
const FuseOverlayfsOpaque = FuseOverlayfsPrefix + Opaque

// IsAUFSName reports whether a name belongs to the AUFS format: a whiteout
// or the opaque marker. Such a name is never an object of a merged view.
func IsAUFSName(name string) bool { return strings.HasPrefix(name, AUFSPrefix) }

// AUFSWhiteoutOf returns the name an AUFS entry hides; ok is false for a
// name that is no AUFS whiteout. The opaque marker hides ".wh..opq" too,
// as in fuse-overlayfs, which no lookup reaches anyway.
func AUFSWhiteoutOf(name string) (hidden string, ok bool) {
	if !IsAUFSName(name) || len(name) == len(AUFSPrefix) {
		return "", false
	}
	return name[len(AUFSPrefix):], true
}

// AUFSWhiteout is the name of the AUFS whiteout of name.
func AUFSWhiteout(name string) string { return AUFSPrefix + name }

// IsForeign reports whether an xattr name is private to another overlay
// implementation: in fuse-overlayfs's namespace.
func IsForeign(name string) bool { return strings.HasPrefix(name, FuseOverlayfsPrefix) }

// ParseForeignOpaque interprets a user.fuseoverlayfs.opaque value:
// fuse-overlayfs reads up to 16 bytes and looks at the first.
func ParseForeignOpaque(v []byte) bool {
	return len(v) > 0 && len(v) <= 16 && v[0] == OpaqueYes
}

// Markers are the AUFS entries of one layer directory.
type Markers struct {
	// Opaque: the directory holds AUFSOpaque.
	Opaque bool
	// Hidden holds the names its AUFS whiteouts hide (nil when none).
	Hidden map[string]struct{}
}

// Add records name if it is an AUFS entry and reports whether it is one.
// Only names that start with ".wh." cost more than a prefix check.
func (m *Markers) Add(name string) bool {
	h, ok := AUFSWhiteoutOf(name)
	if !ok {
		return IsAUFSName(name)
	}
	if name == AUFSOpaque {
		m.Opaque = true
	}
	if m.Hidden == nil {
		m.Hidden = make(map[string]struct{})
	}
	m.Hidden[h] = struct{}{}
	return true
}

// Hides reports whether an AUFS whiteout of the directory hides name.
func (m *Markers) Hides(name string) bool {
	_, ok := m.Hidden[name]
	return ok
}
