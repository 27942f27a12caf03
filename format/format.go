// Package format holds the Linux kernel overlayfs on-disk format, and nothing
// else knows it: the overlay xattr names and values, the two whiteout forms,
// opaque markers, the origin file-handle encoding and the work directory
// layout; and the AUFS whiteouts of container images, which ovl reads too
// (aufs.go). The rules it enforces are the kernel's
// (Documentation/filesystems/overlayfs.rst, fs/overlayfs/overlayfs.h):
//
//   - A whiteout is a character device 0/0, or a zero-size regular file with
//     the overlay.whiteout xattr inside a directory marked overlay.opaque=x
//     (the "xattr whiteout" the kernel reads but never writes).
//   - A directory with overlay.opaque=y hides everything below it; "x" means
//     "not opaque, but holds xattr whiteouts". The value is exactly one byte:
//     the kernel reads one (ovl_get_dir_xattr_val), so "yes", "y\0" or an
//     empty value mark nothing. overlay.impure is read the same way.
//   - overlay.redirect is a name without '/', or an absolute path without
//     empty components; like the kernel (ovl_get_redirect_xattr), the value
//     ends at its first NUL, and an empty one is invalid (EINVAL).
//   - overlay.metacopy is empty, or a struct ovl_metacopy of at least 4
//     bytes; 1 to 3 bytes is a corrupted layer (EIO), as in
//     ovl_check_metacopy_xattr.
//   - Overlay xattrs live under trusted.overlay., or user.overlay. with the
//     userxattr option; they are private: never listed, never set by users.
//   - The work directory holds work/ (temporaries, emptied at mount) and later
//     index/; nothing else of ours goes there. A volatile mount leaves
//     work/incompat/volatile/dirty, and a work/incompat/ that holds any entry
//     refuses the mount: the upper may be inconsistent after a crash.
//   - ovl's own addition, next to that marker: a volatile ovl mount writes
//     work/incompat/volatile/ovl-record (the identity of the upper's
//     filesystem: boot id, st_dev, mount id, fsid, UUID) and ovl-journal
//     (file handles of the upper objects it changed), and removes
//     work/incompat/volatile at a clean unmount once those are synced.
//     VolatileRecord, ReadVolatileRecord, ReadVolatileJournal,
//     VolatileIdentity and VolatileRecord.Mismatch read and judge them
//     (volatile.go); a stale marker is one whose record does not match.
package format

import (
	"bytes"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Prefixes of the overlay xattr namespaces.
const (
	TrustedPrefix = "trusted.overlay."
	UserPrefix    = "user.overlay."
)

// Suffixes of the overlay xattrs (fs/overlayfs/overlayfs.h, ovl_xattr).
const (
	Opaque   = "opaque"
	Whiteout = "whiteout"
	Redirect = "redirect"
	Origin   = "origin"
	Impure   = "impure"
	Nlink    = "nlink"
	Upper    = "upper"
	UUID     = "uuid"
	Metacopy = "metacopy"
	Protattr = "protattr"
)

// Opaque values: the first byte of overlay.opaque.
const (
	OpaqueYes         = 'y' // hides the layers below
	OpaqueXWhiteouts  = 'x' // not opaque; holds xattr whiteouts
	opaqueValueString = "y"
)

// Names are the overlay xattr names of one mount: trusted.overlay.* by
// default, user.overlay.* with userxattr.
type Names struct {
	prefix string
}

// NewNames returns the names for the trusted or the user namespace.
func NewNames(userxattr bool) Names {
	if userxattr {
		return Names{prefix: UserPrefix}
	}
	return Names{prefix: TrustedPrefix}
}

// Prefix is the namespace prefix, e.g. "trusted.overlay.".
func (n Names) Prefix() string { return n.prefix }

// Name returns the full xattr name for a suffix such as Opaque.
func (n Names) Name(suffix string) string { return n.prefix + suffix }

// IsPrivate reports whether an xattr name stored on a layer is the
// overlay's own, which users may neither see nor change, nor copy up (kernel:
// ovl_is_private_xattr), or one private to another implementation
// (IsForeign). Escaped names (see Escape) are not private.
func (n Names) IsPrivate(name string) bool {
	return strings.HasPrefix(name, n.prefix) && !strings.HasPrefix(name, n.prefix+"overlay.") || IsForeign(name)
}

// Escape maps an xattr name a user of the overlay asks for to the name
// stored on the layer: the overlay's own prefix gains one more "overlay.",
// so that an overlay can be a layer of another (kernel: ovl_xattr_escape,
// Linux 6.7+). Other names are unchanged.
func (n Names) Escape(name string) string {
	if strings.HasPrefix(name, n.prefix) {
		return n.prefix + "overlay." + name[len(n.prefix):]
	}
	return name
}

// Unescape maps a name stored on a layer to what users of the overlay see;
// ok is false for the overlay's own names and those private to other
// implementations (IsForeign), which are hidden.
func (n Names) Unescape(name string) (string, bool) {
	if !strings.HasPrefix(name, n.prefix) {
		return name, !IsForeign(name)
	}
	rest := name[len(n.prefix):]
	if !strings.HasPrefix(rest, "overlay.") {
		return "", false
	}
	return n.prefix + rest[len("overlay."):], true
}

// OpaqueValue is what ovl writes to mark a directory opaque.
func OpaqueValue() []byte { return []byte(opaqueValueString) }

// DirFlag is the value of a one-byte directory marker (overlay.opaque,
// overlay.impure), or 0. The kernel reads such a marker into a one-byte
// buffer (fs/overlayfs/util.c: ovl_get_dir_xattr_val): a longer value
// fails with ERANGE there, and so marks nothing, whatever its first byte.
func DirFlag(v []byte) byte {
	if len(v) != 1 {
		return 0
	}
	return v[0]
}

// ParseOpaque interprets an overlay.opaque value: opaque reports "y",
// xwhiteouts reports "x". Anything else means neither (see DirFlag).
func ParseOpaque(v []byte) (opaque, xwhiteouts bool) {
	f := DirFlag(v)
	return f == OpaqueYes, f == OpaqueXWhiteouts
}

// ImpureValue marks an upper directory that may hold copied-up entries.
func ImpureValue() []byte { return []byte("y") }

// ParseImpure reports whether an overlay.impure value marks the directory
// impure: exactly "y", as the kernel reads it (ovl_is_impuredir).
func ParseImpure(v []byte) bool { return DirFlag(v) == 'y' }

// ParseRedirect checks an overlay.redirect value and returns the redirect
// it means, as the kernel reads it (fs/overlayfs/util.c:
// ovl_get_redirect_xattr, namei.c: ovl_check_redirect): the value is a C
// string, so it ends at its first NUL; an empty value, an absolute one with
// an empty component ("/", "/a//b", "/a/") and a relative one holding '/'
// are invalid (EINVAL). What is left may still hold "", "." or ".."
// components: the walk refuses those (see RedirectComponentOK).
func ParseRedirect(v []byte) (string, error) {
	if len(v) == 0 {
		return "", unix.EINVAL
	}
	if i := bytes.IndexByte(v, 0); i >= 0 {
		v = v[:i]
	}
	r := string(v)
	if strings.HasPrefix(r, "/") {
		for _, c := range strings.Split(r[1:], "/") {
			if c == "" {
				return "", unix.EINVAL
			}
		}
		return r, nil
	}
	if strings.ContainsRune(r, '/') {
		return "", unix.EINVAL
	}
	return r, nil
}

// RedirectComponentOK reports whether one name of a redirect may be looked
// up: the kernel's lookup_one refuses "", "." and ".." with EACCES, so a
// redirect can never leave the layer or stay in place.
func RedirectComponentOK(c string) bool {
	return c != "" && c != "." && c != ".."
}

// ParseMetacopy interprets an overlay.metacopy value (present: v is not
// nil): an empty value or a struct ovl_metacopy (4 to 68 bytes; the kernel
// does not look inside at lookup) marks a metacopy file; 1 to 3 bytes is a
// corrupted layer, EIO (ovl_check_metacopy_xattr: "has too small xattr").
func ParseMetacopy(v []byte) (bool, error) {
	switch {
	case v == nil:
		return false, nil
	case len(v) > 0 && len(v) < metacopyMinSize:
		return false, unix.EIO
	}
	return true, nil
}

// metacopyMinSize is OVL_METACOPY_MIN_SIZE: version, len, flags, digest_algo.
const metacopyMinSize = 4

// Origin file handle (struct ovl_fb on disk: no padding before it).
const (
	fhVersion      = 0
	fhMagic        = 0xfb
	fhFlagBigEnd   = 1 << 0
	fhFlagAnyEnd   = 1 << 1
	fhHeaderLen    = 21 // version, magic, len, flags, type, uuid[16]
	fhMaxHandleLen = 255 - fhHeaderLen
)

// EncodeOrigin builds an overlay.origin value from a lower object's file
// handle (as name_to_handle_at returns it) and its filesystem's UUID. The
// kernel writes the same bytes (ovl_encode_real_fh): a little-endian host
// leaves the endian flag clear.
func EncodeOrigin(handleType int32, handle []byte, fsUUID [16]byte) []byte {
	if len(handle) > fhMaxHandleLen {
		return nil
	}
	b := make([]byte, 0, fhHeaderLen+len(handle))
	b = append(b, fhVersion, fhMagic, byte(fhHeaderLen+len(handle)), 0, byte(handleType))
	b = append(b, fsUUID[:]...)
	return append(b, handle...)
}

// DecodeOrigin parses an overlay.origin value. ok is false for an empty value
// (the kernel's "copied up, origin unknown") and for a malformed one.
func DecodeOrigin(v []byte) (handleType int32, handle []byte, fsUUID [16]byte, ok bool) {
	if len(v) < fhHeaderLen || v[0] != fhVersion || v[1] != fhMagic || int(v[2]) != len(v) {
		return 0, nil, fsUUID, false
	}
	if v[3]&^(fhFlagBigEnd|fhFlagAnyEnd|1<<2) != 0 {
		return 0, nil, fsUUID, false
	}
	copy(fsUUID[:], v[5:21])
	return int32(v[4]), v[21:], fsUUID, true
}

// SameOrigin reports whether two origin values name the same object.
func SameOrigin(a, b []byte) bool { return bytes.Equal(a, b) }

// Work directory layout.
const (
	WorkDirName  = "work"  // temporaries: created, filled, renamed into the upper
	IndexDirName = "index" // hard-link index (index=on); ovl does not write it yet

	// Inside work/: one entry per incompatible feature a mount used; the
	// kernel refuses to mount while any is there (OVL_INCOMPATDIR_NAME,
	// ovl_workdir_cleanup_recurse).
	IncompatDirName = "incompat"
	// work/incompat/volatile/dirty marks an upper written by a volatile
	// mount (kernel: ovl_create_volatile_dirty).
	VolatileDirName = "volatile"
	DirtyName       = "dirty"
)

// NameMax is the longest name a layer holds (NAME_MAX of ext4, xfs, btrfs
// and tmpfs); a longer one is ENAMETOOLONG, as the kernel's ovl_lookup
// answers from ofs->namelen before it looks in any layer.
const NameMax = 255

// ParseNlink reads an overlay.nlink value of an indexed upper file, "U%+d":
// the overlay's link count as a difference to the upper file's own count
// (which includes the index entry); ok is false for anything else (kernel:
// ovl_get_nlink).
func ParseNlink(v []byte, upperNlink uint64) (int64, bool) {
	if len(v) < 3 || v[0] != 'U' || (v[1] != '+' && v[1] != '-') {
		return 0, false
	}
	d, err := strconv.ParseInt(string(v[1:]), 10, 64)
	if err != nil {
		return 0, false
	}
	return int64(upperNlink) + d, true
}
