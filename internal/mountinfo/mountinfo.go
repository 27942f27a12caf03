// Package mountinfo parses /proc/self/mountinfo (proc(5)), the one parser
// ovl, its tests and its benchmark use. Reading the table sends no request
// to any FUSE server, so it is safe while a daemon hangs.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Entry is one line of the table.
type Entry struct {
	ID, Parent uint64
	Dev        string // "major:minor", the st_dev of files in the mount
	Root       string // the directory of the filesystem mounted here
	MountPoint string
	Options    []string // per-mount flags: rw, nosuid, nodev, ...
	FSType     string
	Source     string
	SuperOpts  []string
}

// HasOption reports whether the per-mount flags include opt.
func (e *Entry) HasOption(opt string) bool { return slices.Contains(e.Options, opt) }

// Read parses /proc/self/mountinfo.
func Read() ([]Entry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f)
}

// Parse parses a mountinfo table; malformed lines are skipped.
func Parse(r io.Reader) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// Optional fields end with "-", at index 6 or later.
		sep := slices.Index(f, "-")
		if sep < 6 || len(f) < sep+4 {
			continue
		}
		id, err1 := strconv.ParseUint(f[0], 10, 64)
		parent, err2 := strconv.ParseUint(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, Entry{
			ID: id, Parent: parent, Dev: f[2],
			Root: Unescape(f[3]), MountPoint: Unescape(f[4]),
			Options: strings.Split(f[5], ","),
			FSType:  f[sep+1], Source: Unescape(f[sep+2]),
			SuperOpts: strings.Split(f[sep+3], ","),
		})
	}
	return out, sc.Err()
}

// Unescape undoes the kernel's \ooo escapes of space, tab, newline and
// backslash in the table's path fields.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ResolveMountPoint makes path absolute and resolves its symlinks without
// looking anything up inside a mount at path: a stat of the mount's root
// goes to its FUSE daemon and hangs when the daemon does. readlink of a
// mountpoint does not (a directory is not a link), so a symlink as the last
// part is followed with readlink alone.
func ResolveMountPoint(path string) (string, error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	for range 40 { // the kernel's limit on nested symlinks
		dir, base := filepath.Split(p)
		realDir, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return "", err
		}
		if base == "" {
			return realDir, nil
		}
		p = filepath.Join(realDir, base)
		target, err := os.Readlink(p)
		if err != nil {
			return p, nil // not a symlink
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(realDir, target)
		}
		p = filepath.Clean(target)
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", path)
}

// Find returns the topmost mount at path (as mountinfo lists mounts in the
// order they were made), or an error if nothing is mounted there. It sends
// no request to the filesystem mounted at path.
func Find(path string) (*Entry, error) {
	mp, err := ResolveMountPoint(path)
	if err != nil {
		return nil, err
	}
	mounts, err := Read()
	if err != nil {
		return nil, err
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].MountPoint == mp {
			return &mounts[i], nil
		}
	}
	return nil, fmt.Errorf("%s is not a mount point", path)
}
