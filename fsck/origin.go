package fsck

import (
	"bytes"
	"encoding/hex"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// decoded is what an origin file handle names in the lower layers.
type decoded struct {
	ok    bool // the handle names an object of a lower layer
	st    unix.Stat_t
	layer int
}

// decodeOrigin opens the lower object an overlay.origin value names
// (kernel: ovl_decode_real_fh): on a lower layer whose filesystem has the
// handle's UUID, or any lower where the UUID is null (uuid=off).
func (c *checker) decodeOrigin(v []byte) decoded {
	typ, handle, uuid, ok := format.DecodeOrigin(v)
	if !ok {
		return decoded{}
	}
	var zero [16]byte
	tried := map[uint64]bool{}
	for i, l := range c.lowers {
		if uuid != zero && (!l.hasUUID || l.uuid != uuid) {
			continue
		}
		if tried[l.dev] {
			continue
		}
		tried[l.dev] = true
		fd, err := unix.OpenByHandleAt(l.mfd, unix.NewFileHandle(typ, handle), unix.O_PATH|unix.O_CLOEXEC)
		if err != nil {
			continue
		}
		var d decoded
		err = unix.Fstat(fd, &d.st)
		unix.Close(fd)
		if err == nil {
			d.ok, d.layer = true, i
			return d
		}
	}
	return decoded{}
}

// encodeOrigin is the origin value of the object fd in lower layer l, as
// a copy-up would record it now; nil where it cannot be encoded.
func (c *checker) encodeOrigin(fd int, l *layer) []byte {
	if !l.hasUUID {
		return nil
	}
	h, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil {
		return nil
	}
	return format.EncodeOrigin(h.Type(), h.Bytes(), l.uuid)
}

// checkOrigin checks the overlay.origin of the upper object name in dirfd
// (st is its stat). For a directory, merged is the topmost lower directory
// it merges with, or nil. It reports whether the object has an origin the
// kernel uses (so that its parent must be impure).
func (c *checker) checkOrigin(dirfd int, name, where string, st *unix.Stat_t, merged *lowerDir, metacopy bool) bool {
	attr := c.names.Name(format.Origin)
	v, _ := format.GetxattrAt(dirfd, name, attr)
	if len(v) == 0 {
		return false // none, or "copied up, origin unknown"
	}
	if !c.decode {
		return true // cannot tell: assume it is good
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	remove := func() error { return removexattrAt(dirfd, name, attr) }
	d := c.decodeOrigin(v)
	indexed := c.indexedBy(v, st)
	switch {
	case d.ok && d.st.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT:
		// The kernel fails the lookup: "invalid origin", EIO.
		f := Finding{Kind: StaleOrigin, Where: where, What: "overlay.origin names a lower object of another type (the kernel answers EIO)",
			Repair: "remove overlay.origin"}
		if metacopy || indexed {
			f.Repair = ""
			c.say(f, Yes, nil)
			return false
		}
		c.say(f, Preen, remove)
		return false
	case !d.ok:
		f := Finding{Kind: StaleOrigin, Where: where, What: "overlay.origin names no object of the lower layers (a lower layer changed offline; the kernel ignores it)",
			Repair: "remove overlay.origin"}
		if metacopy || indexed {
			f.Repair = ""
			c.say(f, Yes, nil)
			return false
		}
		if isDir && merged != nil {
			if nv := c.encodeOrigin(merged.fd, c.lowers[merged.layer]); nv != nil {
				f.Repair = "record the lower directory merged now, " + merged.path + ", as overlay.origin"
				c.say(f, Yes, func() error { return setxattrAt(dirfd, name, attr, nv) })
				return true
			}
		}
		c.say(f, Preen, remove)
		return false
	case isDir && merged != nil:
		var mst unix.Stat_t
		if unix.Fstat(merged.fd, &mst) == nil && (mst.Dev != d.st.Dev || mst.Ino != d.st.Ino) {
			f := Finding{Kind: StaleOrigin, Where: where,
				What: "overlay.origin names another lower directory than the one merged, " + merged.path + " (a lower layer changed offline)"}
			if nv := c.encodeOrigin(merged.fd, c.lowers[merged.layer]); nv != nil && !indexed {
				f.Repair = "record " + merged.path + " as overlay.origin"
				c.say(f, Yes, func() error { return setxattrAt(dirfd, name, attr, nv) })
				return true
			}
			c.say(f, Yes, nil)
		}
	}
	return true
}

// indexedBy reports whether the index holds an entry for the origin v of
// an upper object with several links.
func (c *checker) indexedBy(v []byte, st *unix.Stat_t) bool {
	if c.index < 0 || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return false
	}
	var ist unix.Stat_t
	return format.Lstat(c.index, hex.EncodeToString(v), &ist) == nil
}

// sameBytes is bytes.Equal, named for what the index check asks.
func sameBytes(a, b []byte) bool { return bytes.Equal(a, b) }

func removexattrAt(dirfd int, name, attr string) error {
	var err error
	if name == "" {
		err = format.Removexattr(dirfd, attr)
	} else {
		err = unix.Lremovexattr(format.ProcPath(dirfd)+"/"+name, attr)
	}
	if err == unix.ENODATA {
		return nil
	}
	return err
}

func setxattrAt(dirfd int, name, attr string, v []byte) error {
	if name == "" {
		return format.Setxattr(dirfd, attr, v, 0)
	}
	return format.SetxattrAt(dirfd, name, attr, v, 0)
}
