package overlay

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// The inode index (kernel: index=on) keeps the names of a lower hard link
// one object across copy-up:
//   - Copying up a lower file with more than one link puts the copy in
//     workdir/index/ under the hex of its origin handle first, then links it
//     at the name copied up. Its other names still show the lower file until
//     they are looked up: a lookup of a lower hard link finds the index entry
//     and uses it as the object's data; changing such a name links the index
//     entry to it ("link-up"), without copying data.
//   - The upper file records the overlay's link count in overlay.nlink, as
//     "U%+d": the difference to the upper's own count, which includes the
//     index entry. Unlink of a name that only a lower layer holds lowers it.
//   - Every name of a lower hard link has the lower inode number, before and
//     after copy-up.
//   - The upper root records the first lower root's handle in
//     overlay.origin and the index directory the upper root's in
//     overlay.upper, so that the upper is not mounted over other lowers
//     (kernel: ovl_verify_origin, ovl_verify_upper).
//   - At mount, index entries whose overlay link count reached zero are
//     removed (kernel: ovl_indexdir_cleanup).

var errNoHandles = errors.New("index=on needs file handles and filesystem UUIDs on the upper and the first lower layer (use index=off)")

// fhFlagPathUpper marks a handle of an upper object (OVL_FH_FLAG_PATH_UPPER).
const fhFlagPathUpper = 1 << 2

// setupIndex opens (making it if needed) workdir/index and checks or records
// which layers the upper belongs to.
func (o *Overlay) setupIndex(wfd int) error {
	lroot := o.encodeOrigin(o.lowers[0], o.lowers[0].root)
	uroot := o.encodeOrigin(o.upper, o.upper.root)
	if lroot == nil || uroot == nil {
		return errNoHandles
	}
	uroot[3] |= fhFlagPathUpper
	if err := unix.Mkdirat(wfd, format.IndexDirName, 0); err != nil && err != unix.EEXIST {
		return fmt.Errorf("create index: %w", err)
	}
	fd, err := format.OpenAt(wfd, format.IndexDirName, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open index: %w", err)
	}
	o.index = fd
	check := func(fd int, what string, want []byte) error {
		name := o.names.Name(what)
		v, _ := format.Getxattr(fd, name)
		switch {
		case v == nil:
			return format.Setxattr(fd, name, want, 0)
		case !bytes.Equal(v, want):
			return fmt.Errorf("index=on: the upper was made over other layers (%s differs); mount with its own layers, or index=off", name)
		}
		return nil
	}
	if err := check(o.upper.root, format.Origin, lroot); err != nil {
		return err
	}
	if err := check(o.index, format.Upper, uroot); err != nil {
		return err
	}
	return o.cleanIndex()
}

// cleanIndex removes index entries that no name uses any more.
func (o *Overlay) cleanIndex() error {
	names, err := readNames(o.index)
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	for _, name := range names {
		var st unix.Stat_t
		if format.Lstat(o.index, name, &st) != nil || st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		v, _ := format.GetxattrAt(o.index, name, o.names.Name(format.Nlink))
		if n, ok := parseNlink(v, uint64(st.Nlink)); ok && n <= 0 {
			unix.Unlinkat(o.index, name, 0)
		}
	}
	return nil
}

// indexName is the index entry name of a lower object, from its origin.
func indexName(origin []byte) string { return hex.EncodeToString(origin) }

// parseNlink reads an overlay.nlink value "U%+d" against the upper's own
// link count.
func parseNlink(v []byte, upper uint64) (int64, bool) {
	if len(v) < 3 || v[0] != 'U' || (v[1] != '+' && v[1] != '-') {
		return 0, false
	}
	d, err := strconv.ParseInt(string(v[1:]), 10, 64)
	if err != nil {
		return 0, false
	}
	return int64(upper) + d, true
}

// setNlink records the overlay link count n of the index entry name.
func (o *Overlay) setNlink(name string, n int64) error {
	fd, err := format.OpenAt(o.index, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	o.note(fd)
	return format.Setxattr(fd, o.names.Name(format.Nlink), fmt.Appendf(nil, "U%+d", n-int64(st.Nlink)), 0)
}

// lookupIndex notes that child, a lower file with several links found as
// leaf in the lower directory dirfd of layer l, is indexed, and uses the
// index entry as its data when there is one; st becomes what Getattr
// reports.
func (o *Overlay) lookupIndex(child *Node, l *layer, dirfd int, leaf string, st *unix.Stat_t) {
	origin := o.encodeOriginAt(l, dirfd, leaf)
	if origin == nil {
		return
	}
	child.indexName, child.lowerIno = indexName(origin), st.Ino
	var ist unix.Stat_t
	if format.Lstat(o.index, child.indexName, &ist) != nil || ist.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT {
		return
	}
	child.inIndex, child.realIno = true, ist.Ino
	if ist.Mode&unix.S_IFMT == unix.S_IFREG && o.metacopyOn {
		// The kernel copies a hard link up as metadata only too
		// (ovl_nlink_start): its data is then still this lower file's.
		child.metacopy, _ = o.metacopyAt(o.index, child.indexName, nil)
	}
	*st = ist
	storeNlink(&st.Nlink, o.overlayNlinkAt(o.index, child.indexName, &ist))
}

// upperIndex notes that child, an upper file found as name in the upper
// directory dirfd, is the copy of an indexed lower hard link, and fixes
// its link count in st.
func (o *Overlay) upperIndex(child *Node, dirfd int, name string, st *unix.Stat_t) {
	origin, _ := format.GetxattrAt(dirfd, name, o.names.Name(format.Origin))
	if len(origin) == 0 {
		return
	}
	in := indexName(origin)
	var ist unix.Stat_t
	if format.Lstat(o.index, in, &ist) != nil || ist.Ino != st.Ino {
		return
	}
	child.indexName, child.inIndex = in, true
	storeNlink(&st.Nlink, o.overlayNlinkAt(o.index, in, &ist))
}

// storeNlink stores n in a stat's link count, whose width is the
// architecture's (uint64 on amd64, uint32 on arm64).
func storeNlink[T ~uint32 | ~uint64](p *T, n uint64) { *p = T(n) }

// overlayNlinkAt is overlayNlink for name in dirfd.
func (o *Overlay) overlayNlinkAt(dirfd int, name string, st *unix.Stat_t) uint64 {
	v, _ := format.GetxattrAt(dirfd, name, o.names.Name(format.Nlink))
	if n, ok := parseNlink(v, uint64(st.Nlink)); ok && n > 0 {
		return uint64(n)
	}
	return uint64(st.Nlink)
}

// addNlink changes the overlay link count of the indexed object n by d,
// where d names come or go without the upper's own count changing.
func (o *Overlay) addNlink(n *Node, d int64) {
	var st unix.Stat_t
	if format.Lstat(o.index, n.indexName, &st) != nil {
		return
	}
	o.setNlink(n.indexName, int64(o.overlayNlinkAt(o.index, n.indexName, &st))+d)
}
