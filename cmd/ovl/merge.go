package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ovl-project/ovl/internal/mountopt"
	"github.com/ovl-project/ovl/merge"
)

func init() { addCommand(newMergeCommand) }

func newMergeCommand() *cobra.Command {
	var opts []string
	var noReflink, keepGoing bool
	c := &cobra.Command{
		Use:   "merge -o lowerdir=L1[:L2...][,upperdir=U[,workdir=W]][,OPTIONS] DIR",
		Short: "flatten a stack of layers into one plain directory",
		Long: `Flattens the stack (and the upper U, if given) into DIR, which must be
absent or empty: DIR then holds the merged view as a plain directory tree,
with owners, modes, times, xattrs, hard links, devices, FIFOs and symlinks,
and no whiteouts, opaque markers or overlay xattrs, so it can be the single
lower layer of a new overlay. File data is reflinked where the filesystem
allows (xfs, btrfs) and copied otherwise. Give the options the layers were
mounted with; workdir= is needed only with index=on, and then the stack
must not be mounted.`,
		Example: `  ovl merge -o lowerdir=l1:l2:l3,upperdir=u flat`,
		Args:    operands(1, 1, "target DIR"),
		RunE: func(c *cobra.Command, args []string) error {
			return runMerge(opts, args[0], noReflink, keepGoing)
		},
	}
	f := c.Flags()
	f.StringArrayVarP(&opts, "options", "o", nil, "layer `OPTIONS`, as for a mount (lowerdir=, upperdir=, workdir=, userxattr, redirect_dir=, metacopy=, index=); may be given several times")
	f.BoolVar(&noReflink, "no-reflink", false, "copy file data even where the filesystem could share it")
	f.BoolVar(&keepGoing, "keep-going", false, "leave out the objects the layers' metadata makes the overlay refuse (as a mount refuses them), list them, and go on")
	return c
}

func runMerge(opts []string, dir string, noReflink, keepGoing bool) error {
	res, err := mountopt.ParseLayers(opts)
	if err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	if !res.XattrChosen && !privileged() {
		// As a mount by this process would have written the layers.
		res.Overlay.UserXattr = true
	}
	bar := newProgress("merge")
	r, err := merge.Layers(dir, res.Overlay, merge.Options{Progress: bar.update, NoReflink: noReflink, KeepGoing: keepGoing})
	bar.finish()
	if err != nil {
		return err
	}
	for _, err := range r.Refused {
		fmt.Fprintf(os.Stderr, "ovl merge: left out: %v\n", err)
	}
	fmt.Fprintf(os.Stderr, "entries: %d\nlinks: %d\nbytes: %d\nreflinked: %d\n", r.Entries, r.Links, r.Bytes, r.Reflinked)
	return nil
}
