package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	dev        string // "major:minor", the st_dev of files in the mount
	mountPoint string
	options    []string // per-mount flags: rw, nosuid, nodev, ...
	fsType     string
	source     string
	superOpts  []string
}

// hasOption reports whether the per-mount flags include opt.
func (m *mountEntry) hasOption(opt string) bool {
	for _, o := range m.options {
		if o == opt {
			return true
		}
	}
	return false
}

// readMountInfo parses /proc/self/mountinfo. Reading it sends no request to
// any FUSE server, so it is safe even when a daemon hangs.
func readMountInfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || len(fields) < sep+4 {
			continue
		}
		out = append(out, mountEntry{
			dev:        fields[2],
			mountPoint: unescapeOctal(fields[4]),
			options:    strings.Split(fields[5], ","),
			fsType:     fields[sep+1],
			source:     unescapeOctal(fields[sep+2]),
			superOpts:  strings.Split(fields[sep+3], ","),
		})
	}
	return out, sc.Err()
}

// unescapeOctal undoes the kernel's \ooo escapes of space, tab, newline
// and backslash in mountinfo.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// resolveMountPoint makes path absolute and resolves its symlinks without
// looking anything up inside a mount at path: a stat of the mount's root
// goes to its FUSE daemon and hangs when the daemon does. readlink of a
// mountpoint does not (a directory is not a link), so a symlink as the last
// part is followed with readlink alone.
func resolveMountPoint(path string) (string, error) {
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

// findMount returns the topmost mount at path (as mountinfo lists mounts
// in the order they were made), or an error if nothing is mounted there.
func findMount(path string) (*mountEntry, error) {
	mp, err := resolveMountPoint(path)
	if err != nil {
		return nil, err
	}
	mounts, err := readMountInfo()
	if err != nil {
		return nil, err
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].mountPoint == mp {
			return &mounts[i], nil
		}
	}
	return nil, fmt.Errorf("%s is not a mount point", path)
}
