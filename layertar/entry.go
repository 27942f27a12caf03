package layertar

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// entry is one object to write.
type entry struct {
	name     string // path in the layer, without a trailing slash
	st       unix.Stat_t
	xattrs   []xattr
	target   string // symlink target
	fd       int    // regular files: open for reading
	id       objID  // identity, when linkable
	linkable bool   // a non-directory with several links
}

// Whiteout names (image-spec layer.md).
const (
	whiteoutPrefix = format.AUFSPrefix
	opaqueMarker   = format.AUFSOpaque
)

// write writes one entry: a hard link to the first name of its object if
// that was written before, else the object itself.
func (d *differ) write(e *entry) error {
	hdr := &tar.Header{
		Name:    e.name,
		Mode:    int64(e.st.Mode & 0o7777),
		Uid:     int(e.st.Uid),
		Gid:     int(e.st.Gid),
		ModTime: time.Unix(e.st.Mtim.Sec, e.st.Mtim.Nsec),
		Format:  tar.FormatPAX,
	}
	if len(e.xattrs) > 0 {
		sort.Slice(e.xattrs, func(i, j int) bool { return e.xattrs[i].name < e.xattrs[j].name })
		hdr.PAXRecords = make(map[string]string, len(e.xattrs))
		for _, x := range e.xattrs {
			hdr.PAXRecords[paxXattr+x.name] = string(x.value)
		}
	}
	if e.linkable {
		d.linkNames[e.id]++
		if first, ok := d.links[e.id]; ok {
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
			hdr.PAXRecords = nil // the object's, written with its first name
			return d.header(hdr)
		}
		d.links[e.id] = e.name
	}
	switch e.st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		hdr.Typeflag, hdr.Name = tar.TypeDir, e.name+"/"
	case unix.S_IFREG:
		hdr.Typeflag, hdr.Size = tar.TypeReg, e.st.Size
	case unix.S_IFLNK:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if e.st.Mode&unix.S_IFMT == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(e.st.Rdev)), int64(unix.Minor(e.st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		return pathErr("write", e.name, fmt.Errorf("cannot be written to a tar (mode %#o)", e.st.Mode))
	}
	if err := d.header(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
		return nil
	}
	n, err := io.CopyBuffer(d.tw, io.LimitReader(fdReader(e.fd), hdr.Size), d.buf)
	if err != nil {
		return pathErr("read", e.name, err)
	}
	if n != hdr.Size {
		return pathErr("read", e.name, fmt.Errorf("%d bytes read, %d expected: the file changed while it was read", n, hdr.Size))
	}
	return nil
}

// paxXattr is the PAX record prefix of an xattr (GNU tar, bsdtar, and the
// container tools all read it).
const paxXattr = "SCHILY.xattr."

// marker writes an empty ".wh." entry. Its attributes mean nothing, so they
// are fixed: the bytes do not depend on when the whiteout was made.
func (d *differ) marker(name string) error {
	return d.header(&tar.Header{Name: name, Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0), Format: tar.FormatPAX})
}

func (d *differ) header(hdr *tar.Header) error {
	if err := d.tw.WriteHeader(hdr); err != nil {
		return pathErr("write", hdr.Name, err)
	}
	d.entries++
	if d.progress != nil {
		d.progress(d.tarBytes.n, d.entries)
	}
	return nil
}

// checkName refuses a name the image spec reserves for whiteouts: in a
// layer it would hide the lower name instead of being a file.
func checkName(p string) error {
	if strings.HasPrefix(filepath.Base(p), whiteoutPrefix) {
		return pathErr("write", p, fmt.Errorf("a name beginning with %q cannot be an entry of an OCI layer (the prefix marks whiteouts)", whiteoutPrefix))
	}
	return nil
}

// readNames lists the directory dirfd (O_PATH is fine), sorted bytewise.
func readNames(dirfd int) ([]string, error) {
	fd, err := format.OpenAt(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

type fdReader int

func (r fdReader) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(b) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// pathErr is an error about the object at p of the merged view (the
// path as a mount shows it), so that a caller can tell which.
func pathErr(op, p string, err error) error {
	return &fs.PathError{Op: op, Path: p, Err: err}
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func show(rel string) string {
	if rel == "" {
		return "/"
	}
	return rel
}
