// Package layertar moves overlay layers to and from OCI image layers: Diff
// writes the upper layer of an overlay as a layer tar (the image spec's
// changeset, image-spec layer.md), Apply unpacks a layer tar into a
// directory in the kernel's overlayfs format, which the kernel and ovl
// then mount as an upper or lower layer. It reaches layers only through
// package format (directory descriptors, openat2 RESOLVE_BENEATH) and asks
// package overlay, opened read-only on the lower layers, what they show
// where a rule needs it. It never mounts anything.
//
// Diff makes one walk of the upper layer, depth first, each directory's
// names sorted bytewise, and writes one entry per object:
//   - A whiteout (a character device 0/0, or an xattr whiteout in a
//     directory marked overlay.opaque=x) is an empty file ".wh.NAME",
//     except in or below an opaque directory, where it hides nothing.
//   - An opaque directory (overlay.opaque=y) is the directory followed by
//     ".wh..wh..opq" inside it.
//   - A directory whose overlay.redirect the overlay follows (renamed with
//     redirect_dir=on) is written in full under its new name: its upper
//     part merged with the lower part the redirect names, as the overlay
//     merges them, and marked opaque, so that nothing found at the new name
//     in the lower layers shows through. Its old name is hidden by the
//     whiteout the rename left there (kernel: ovl_rename with
//     RENAME_WHITEOUT), which the walk writes like any other; an upper that
//     lacks it shows the lower directory at the old name as well, and so
//     does the layer, since the layer must give the view the upper gave.
//   - A metacopy file (overlay.metacopy) is written with its data, read
//     from the lower layers where the overlay finds it.
//   - An object with several links (links in the upper, or names sharing
//     an index entry, index.go) is written once, at its first name in
//     entry order; its other names are tar hard links to it. Whiteouts are
//     never links: the kernel may make every whiteout a link of one inode.
//     A layer holds names, not link counts: where the merged view counts
//     names it does not show (a lower hard link whose other name the upper
//     covers, or that a renamed directory written in full leaves behind),
//     the layer's file counts the names the layer holds.
//   - Every entry has its owner (numbers only, no user or group names),
//     mode with the setuid, setgid and sticky bits, mtime to the
//     nanosecond, xattrs, and device numbers for devices. Overlay xattrs
//     are left out, those of both namespaces (trusted.overlay.* and
//     user.overlay.*), so a layer means the same whichever way it is
//     mounted; an escaped name (trusted.overlay.overlay.X, which users of
//     the mount see as trusted.overlay.X, Linux 6.7+) is written as users
//     see it.
//   - Where the overlay reads owners and modes from override xattrs
//     (xattr_permissions=, or an upper root that carries one; see
//     overlay/owner.go), the entry has those, and the override xattrs,
//     which users of the mount never see, are left out. IDs are written as
//     the layers store them: the mount's uidmapping= does not apply.
//   - The layer root is not an entry, and sockets are left out (a tar
//     cannot hold one), as GNU tar leaves them out. A name that begins with
//     ".wh." cannot be written (the image spec reserves them): Diff fails.
//
// The output is deterministic: the same upper gives the same bytes for the
// same ovl version, compression and level. Headers are PAX (records in key
// order, no atime or ctime), whiteouts and opaque markers have fixed
// attributes, and the order of entries is fixed as above.
//
// Apply unpacks a layer into DIR, which it never leaves:
//   - Each name is cleaned ("./" and empty components dropped) and refused
//     when it is absolute, holds "..", or has a component longer than
//     NAME_MAX or is longer than PATH_MAX; every directory on the way is
//     opened beneath DIR without following symlinks or crossing mounts
//     (format.OpenAt), so an entry, or a hard link target, reached through
//     a symlink that an earlier entry made is refused. A new object
//     replaces what was at its name (never written through: it is
//     unlinked first); a directory replaces only an empty directory.
//   - ".wh.NAME" becomes a character device 0/0 (which an unprivileged
//     process may make since Linux 5.8); where mknod is refused, an xattr
//     whiteout in a parent marked overlay.opaque=x, which only a lower
//     layer may hold (Documentation/filesystems/overlayfs.rst), reported in
//     ApplyResult. A whiteout of a directory that the layer itself holds
//     makes that directory opaque; of a non-directory, it changes nothing;
//     in an opaque directory none is made (and one made before the marker
//     is removed): it would hide nothing, and the kernel lists the
//     whiteouts of a directory that merges with nothing.
//     ".wh..wh..opq" marks its directory overlay.opaque=y. Both are written
//     under trusted.overlay.*, or user.overlay.* with ApplyOptions.UserXattr.
//     Other ".wh..wh." names (aufs metadata) are skipped.
//   - A character device 0/0 that is not a ".wh." name is refused: in a
//     layer it would be a whiteout. Device nodes need CAP_MKNOD; without it
//     they are refused. Overlay xattrs in the layer are escaped
//     (trusted.overlay.X is stored as trusted.overlay.overlay.X), so a layer
//     can never carry overlay metadata, only what users of a mount see.
//   - Owners, modes, xattrs and mtimes are set as the entries say;
//     directories get their modes and times last, so that entries made in
//     them change neither.
package layertar

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// Compression is how a layer's tar is compressed.
type Compression int

// The compressions of OCI layers (media types ...tar, ...tar+gzip,
// ...tar+zstd).
const (
	None Compression = iota
	Gzip
	Zstd
)

func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return "none"
}

// ParseCompression reads "gzip", "zstd" or "none".
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "gzip":
		return Gzip, nil
	case "zstd":
		return Zstd, nil
	case "none", "":
		return None, nil
	}
	return None, fmt.Errorf("unknown compression %q (want gzip, zstd or none)", s)
}

// zstdConcurrency is fixed, not the machine's core count, so that the
// encoder's options, and with them its output, are the same everywhere.
const zstdConcurrency = 2

// compressor wraps w in c's encoder.
func compressor(w io.Writer, c Compression) (io.WriteCloser, error) {
	switch c {
	case Gzip:
		// No name, no mtime in the gzip header: the bytes depend on the
		// data alone.
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case Zstd:
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(zstdConcurrency))
	}
	return nopCloser{w}, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Magic numbers of the compressed formats.
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Decompress returns the tar stream inside r, whose compression it tells
// by its first bytes, not by a file name.
func Decompress(r io.Reader) (io.ReadCloser, Compression, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	head, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return nil, None, fmt.Errorf("read layer: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, Gzip, fmt.Errorf("read gzip layer: %w", err)
		}
		return zr, Gzip, nil
	case bytes.HasPrefix(head, zstdMagic):
		// A frame may ask for a window of up to 3.75 TiB; zstd --long=27
		// uses 128 MiB, and nothing larger is needed for a layer.
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return nil, Zstd, fmt.Errorf("read zstd layer: %w", err)
		}
		return zr.IOReadCloser(), Zstd, nil
	}
	return io.NopCloser(br), None, nil
}

// Result describes a layer Diff wrote.
type Result struct {
	// Digest is the sha256 of the bytes written (the compressed layer):
	// the layer's descriptor digest in an image manifest.
	Digest digest.Digest
	// DiffID is the sha256 of the uncompressed tar: the layer's entry in
	// an image config's rootfs.diff_ids.
	DiffID digest.Digest
	// Size is the number of bytes written.
	Size int64
	// Entries is the number of tar entries.
	Entries int
}

// counter counts the bytes written through it.
type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
