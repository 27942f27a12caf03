package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/overlay"
)

// makeAbsolute turns every layer path absolute. containers-storage passes
// layers relative to its working directory, and the daemon changes to "/".
func makeAbsolute(cfg *overlay.Config) error {
	abs := func(p *string) error {
		if *p == "" {
			return nil
		}
		a, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("layer %q: %w", *p, err)
		}
		*p = a
		return nil
	}
	for i := range cfg.Lowers {
		if err := abs(&cfg.Lowers[i]); err != nil {
			return err
		}
	}
	if err := abs(&cfg.Upper); err != nil {
		return err
	}
	return abs(&cfg.Work)
}

// preflight checks what only the command line can: the mountpoint, layers
// hidden under it, and the means to mount FUSE at all. Checks of the layers
// themselves are overlay.New's. It returns the mountpoint with symlinks
// resolved, the path that mountinfo will show.
func preflight(mnt string, cfg *overlay.Config) (string, error) {
	st, err := os.Stat(mnt)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("mountpoint %s does not exist", mnt)
	case err != nil:
		return "", fmt.Errorf("mountpoint: %w", err)
	case !st.IsDir():
		return "", fmt.Errorf("mountpoint %s is not a directory", mnt)
	}
	realMnt, err := filepath.EvalSymlinks(mnt)
	if err != nil {
		return "", fmt.Errorf("mountpoint: %w", err)
	}
	// A layer under the mountpoint would be hidden by the mount and reached
	// through it: lookups would recurse into ovl itself. The reverse (the
	// mountpoint inside a layer) is fine, as in the kernel.
	check := func(kind, layer string) error {
		real, err := filepath.EvalSymlinks(layer)
		if err != nil {
			return nil // missing: overlay.New says so with its own words
		}
		if real == realMnt || strings.HasPrefix(real, realMnt+"/") || realMnt == "/" {
			return fmt.Errorf("%s %s is inside the mountpoint %s", kind, layer, mnt)
		}
		return nil
	}
	for _, l := range cfg.Lowers {
		if err := check("lowerdir", l); err != nil {
			return "", err
		}
	}
	if cfg.Upper != "" {
		if err := check("upperdir", cfg.Upper); err != nil {
			return "", err
		}
		if err := check("workdir", cfg.Work); err != nil {
			return "", err
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "", fmt.Errorf("no /dev/fuse (%v): load the fuse module or give the container the device", err)
	}
	if os.Geteuid() != 0 {
		if _, err := fusermountBinary(); err != nil {
			return "", fmt.Errorf("not root and no fusermount3 in PATH: install fuse3 (it has the setuid helper fusermount3) or mount as root")
		}
		// fusermount3 opens /dev/fuse with the caller's rights; say so
		// here rather than let it fail with an exit code.
		if err := unix.Access("/dev/fuse", unix.R_OK|unix.W_OK); err != nil {
			return "", fmt.Errorf("cannot open /dev/fuse (%v): unprivileged mounts need it mode 0666", err)
		}
	}
	return realMnt, nil
}

// fusermountBinary finds the setuid helper that unprivileged users mount
// and unmount FUSE with, preferring the FUSE 3 one as go-fuse does.
func fusermountBinary() (string, error) {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("fusermount3 not found in PATH")
}
