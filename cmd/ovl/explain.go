package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ovl-project/ovl"
	"github.com/ovl-project/ovl/explain"
	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/internal/mountopt"
	"github.com/ovl-project/ovl/overlay"
)

func init() { addCommand(newExplainCommand) }

func newExplainCommand() *cobra.Command {
	var opts []string
	var asJSON bool
	c := &cobra.Command{
		Use:   "explain [--json] MOUNTPOINT/PATH | -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPTIONS] PATH",
		Short: "tell which layer each part of a path comes from, and why",
		Long: `Tells, for each component of PATH, which layer it comes from and why: the
whiteout or opaque directory that hides the layers below, the redirect a
renamed directory follows, the origin of a copied-up object, the index
entry of a hard link, and where a metacopy file's metadata and data are.
The first form asks the ovl daemon serving the mount for its layers; the
second reads the layers given (PATH is then relative to the overlay's root).
Nothing is written.`,
		Example: `  ovl explain /mnt/merged/etc/passwd
  ovl explain --json -o lowerdir=l1:l2,upperdir=u,workdir=w etc/passwd`,
		Args: operands(1, 1, "PATH"),
		RunE: func(c *cobra.Command, args []string) error {
			return runExplain(opts, args[0], asJSON)
		},
	}
	f := c.Flags()
	f.StringArrayVarP(&opts, "options", "o", nil, "layer `OPTIONS`, as for a mount (lowerdir=, upperdir=, workdir=, userxattr, redirect_dir=, metacopy=, index=); may be given several times")
	f.BoolVar(&asJSON, "json", false, "print the explanation as JSON")
	return c
}

// layersOf asks the daemon serving mnt for its layers and the options
// that change how they read.
func layersOf(mnt string) (overlay.Config, error) {
	info, err := ovl.ReadInfo(mnt)
	if err != nil {
		return overlay.Config{}, err
	}
	if len(info.Lowers) == 0 {
		return overlay.Config{}, fmt.Errorf("the daemon of %s does not tell its layers (an older ovl?): give them with -o", mnt)
	}
	return overlay.Config{Lowers: info.Lowers, Upper: info.Upper, Work: info.Work, UserXattr: info.UserXattr,
		RedirectDir: info.RedirectDir, Metacopy: info.Metacopy, Index: info.Index}, nil
}

func runExplain(opts []string, path string, asJSON bool) error {
	var cfg overlay.Config
	if len(opts) > 0 {
		res, err := mountopt.ParseLayers(opts)
		if err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		if !res.XattrChosen && !privileged() {
			res.Overlay.UserXattr = true
		}
		cfg = res.Overlay
	} else {
		mnt, rel, err := ovlMountOf(path)
		if err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		if cfg, err = layersOf(mnt); err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		path = rel
	}
	ex, err := explain.Path(cfg, path)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	if asJSON {
		out, err := json.MarshalIndent(ex, "", "  ")
		if err != nil {
			return err
		}
		fmt.Println(string(out))
		return nil
	}
	fmt.Print(ex.Text())
	return nil
}

// ovlMountOf finds the FUSE mount that holds path (the one with the
// longest mount point above it) and returns its mount point and path's
// path inside it. path's last component is not resolved: it may be a
// symlink of the overlay, which explain explains itself.
func ovlMountOf(path string) (mnt, rel string, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", "", err
	}
	dir, base := filepath.Split(abs)
	if rd, err := filepath.EvalSymlinks(dir); err == nil {
		abs = filepath.Join(rd, base)
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return "", "", err
	}
	best := ""
	for _, m := range mounts {
		mp := m.MountPoint
		if abs != mp && !strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/") {
			continue
		}
		if len(mp) >= len(best) {
			best = mp
			if m.FSType != "fuse" && !strings.HasPrefix(m.FSType, "fuse.") {
				best = "!" + mp
			}
		}
	}
	if best == "" || strings.HasPrefix(best, "!") {
		return "", "", fmt.Errorf("%s is not in an ovl mount (give the layers with -o)", path)
	}
	rel, _ = filepath.Rel(best, abs)
	if rel == "." {
		rel = ""
	}
	return best, rel, nil
}
