package merge

import (
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/overlay"
)

// file writes the regular file n as name in dfd, with its data.
func (m *merger) file(n *overlay.Node, dfd int, name, rel string, st *unix.Stat_t) error {
	in, err := n.Open(unix.O_RDONLY | unix.O_NOATIME)
	if err == unix.EPERM {
		// O_NOATIME needs ownership or CAP_FOWNER.
		in, err = n.Open(unix.O_RDONLY)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: show(rel), Err: err}
	}
	defer unix.Close(in)
	out, err := format.OpenAt(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: show(rel), Err: err}
	}
	defer unix.Close(out)
	if err := m.copyData(in, out, st.Size); err != nil {
		return &os.PathError{Op: "copy", Path: show(rel), Err: err}
	}
	return nil
}

// copyData fills out with the size bytes of in: one FICLONE where the
// filesystems share extents, else copy_file_range per data extent (holes
// stay holes; on one xfs or btrfs the kernel still shares extents there),
// else read and write.
func (m *merger) copyData(in, out int, size int64) error {
	if size == 0 {
		return nil
	}
	var sin, sout unix.Stat_t
	if err := unix.Fstat(in, &sin); err != nil {
		return err
	}
	if err := unix.Fstat(out, &sout); err != nil {
		return err
	}
	pair := [2]uint64{sin.Dev, sout.Dev}
	if !m.opts.NoReflink && !m.noClone[pair] {
		if err := unix.IoctlFileClone(out, in); err == nil {
			m.res.Bytes += size
			m.res.Reflinked += size
			return nil
		}
		// EXDEV (other filesystem, or another mount of it: FICLONE wants
		// one mount), EOPNOTSUPP, EINVAL: the same for every file of the
		// pair.
		m.noClone[pair] = true
	}
	off := int64(0)
	for off < size {
		data, err := unix.Seek(in, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // a hole up to the end
		}
		if err != nil {
			data = off // no SEEK_DATA: all data
		}
		hole, err := unix.Seek(in, data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		if m.opts.NoReflink {
			// copy_file_range shares extents on xfs and btrfs too.
			if err := copyPlain(in, out, data, hole-data); err != nil {
				return err
			}
			m.res.Bytes += hole - data
			off = hole
			continue
		}
		for pos := data; pos < hole; {
			roff, woff := pos, pos
			n, err := unix.CopyFileRange(in, &roff, out, &woff, int(min(hole-pos, 1<<30)), 0)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EXDEV || err == unix.EINVAL || err == unix.ENOSYS || err == unix.EOPNOTSUPP:
				if err := copyPlain(in, out, pos, hole-pos); err != nil {
					return err
				}
				m.res.Bytes += hole - pos
				pos = hole
				continue
			case err != nil:
				return err
			case n == 0:
				return io.ErrUnexpectedEOF // the layer changed under us
			}
			pos += int64(n)
			m.res.Bytes += int64(n)
		}
		off = hole
	}
	return unix.Ftruncate(out, size)
}

func copyPlain(in, out int, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k, err := unix.Pread(in, buf[:min(n, int64(len(buf)))], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return io.ErrUnexpectedEOF
		}
		if _, err := unix.Pwrite(out, buf[:k], off); err != nil {
			return err
		}
		off += int64(k)
		n -= int64(k)
	}
	return nil
}
