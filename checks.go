package ovl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/mountopt"
	"github.com/ovl-project/ovl/internal/privilege"
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

// chooseXattrNS settles the overlay xattr namespace. An explicit userxattr
// or nouserxattr is kept. Without either, ovl takes the kernel's default,
// trusted.overlay.*, when it holds the privilege trusted.* xattrs need
// (CAP_SYS_ADMIN in the initial user namespace), and user.overlay.*, as
// userxattr, when it does not: unprivileged users and root in a user
// namespace (rootless podman, whose containers-storage never passes
// userxattr) can neither write nor even read trusted.*. The kernel's
// overlayfs mounted there keeps trusted.overlay.* and fails to make opaque
// directories (EIO); ovl uses the one namespace it can read and write.
//
// The choice depends only on the privilege, never on what the layers hold:
// without the privilege trusted.* xattrs cannot be seen, so a layer written
// by a privileged mount (trusted.overlay.*) is read without its xattr
// markers, as by the kernel; and a privileged mount does not honour
// user.overlay.* markers, which any owner of a file in a layer may set (the
// kernel's reason to ignore redirects there). So the same storage must be
// mounted with the same privilege, or with the same explicit option.
//
// It returns a line for the daemon's log when it chose user.overlay.*.
func chooseXattrNS(res *mountopt.Result) (string, error) {
	cfg := &res.Overlay
	if res.XattrChosen && cfg.UserXattr {
		return "", nil
	}
	ok, why, err := privilege.SysAdmin()
	if err != nil {
		return "", fmt.Errorf("choosing the overlay xattr namespace: %w (give -o userxattr or -o nouserxattr)", err)
	}
	if ok {
		return "", nil // trusted.overlay.*, the kernel's default
	}
	if res.XattrChosen {
		return "", fmt.Errorf("nouserxattr: trusted.overlay.* xattrs need a privilege this process lacks: %s; "+
			"mount as root, or without nouserxattr to use user.overlay.*", why)
	}
	// Options that need trusted.overlay.*: say why they are refused here.
	for _, c := range []struct{ opt, val string }{{"redirect_dir", cfg.RedirectDir}, {"metacopy", cfg.Metacopy}} {
		if c.val == "on" || (c.opt == "redirect_dir" && c.val == "follow") {
			return "", fmt.Errorf("%s=%s needs trusted.overlay.* xattrs, and this process lacks the privilege for them (%s), "+
				"so ovl keeps its xattrs in user.overlay.* (as -o userxattr), where the kernel allows no redirects or metacopy", c.opt, c.val, why)
		}
	}
	cfg.UserXattr = true
	return fmt.Sprintf("overlay xattrs in user.overlay.* (as -o userxattr): %s, which trusted.overlay.* needs "+
		"(-o nouserxattr refuses to mount instead)", why), nil
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

// absPath makes p absolute, naming it in the error.
func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	return a, nil
}
