package layertar_test

import (
	"archive/tar"
	"fmt"
	"io"
	"sort"
	"strings"
)

// readEntries describes each entry of a tar in one line: type, name,
// mode, owner, size, mtime, link target, xattrs, data (short files).
func readEntries(r io.Reader) ([]string, error) {
	tr := tar.NewReader(r)
	var out []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return out, err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%c %s %04o %d:%d", hdr.Typeflag, short(hdr.Name), hdr.Mode, hdr.Uid, hdr.Gid)
		if hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock {
			fmt.Fprintf(&b, " dev=%d:%d", hdr.Devmajor, hdr.Devminor)
		}
		if hdr.Linkname != "" {
			fmt.Fprintf(&b, " -> %s", short(hdr.Linkname))
		}
		var xs []string
		for k, v := range hdr.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				xs = append(xs, x+"="+v)
			}
		}
		sort.Strings(xs)
		if len(xs) > 0 {
			fmt.Fprintf(&b, " xattrs=%s", strings.Join(xs, ","))
		}
		if hdr.Typeflag == tar.TypeReg && len(data) <= 32 {
			fmt.Fprintf(&b, " data=%q", data)
		} else if hdr.Typeflag == tar.TypeReg {
			fmt.Fprintf(&b, " size=%d", len(data))
		}
		out = append(out, b.String())
	}
}

// short abbreviates long names: a 255-byte one is "<255:nnnnnnnn>".
func short(p string) string {
	parts := strings.Split(p, "/")
	for i, c := range parts {
		if len(c) > 16 {
			parts[i] = fmt.Sprintf("<%d:%s>", len(c), c[:8])
		}
	}
	return strings.Join(parts, "/")
}
