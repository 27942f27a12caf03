package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ovl-project/ovl/internal/mountinfo"
)

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
func findMount(path string) (*mountinfo.Entry, error) {
	mp, err := resolveMountPoint(path)
	if err != nil {
		return nil, err
	}
	mounts, err := mountinfo.Read()
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
