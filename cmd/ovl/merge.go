package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/ovl-project/ovl/internal/mountopt"
	"github.com/ovl-project/ovl/merge"
)

func init() { layerTools["merge"] = runMerge }

const mergeUsage = `Usage: ovl merge -o lowerdir=L1[:L2...][,upperdir=U[,workdir=W]][,userxattr,...] DIR

Flattens the stack (and the upper U, if given) into DIR, which must be
absent or empty: DIR then holds the merged view as a plain directory tree,
with owners, modes, times, xattrs, hard links, devices, FIFOs and symlinks,
and no whiteouts, opaque markers or overlay xattrs, so it can be the single
lower layer of a new overlay. File data is reflinked where the filesystem
allows (xfs, btrfs) and copied otherwise. Give the options the layers were
mounted with; workdir= is needed only with index=on, and then the stack
must not be mounted.

Flags:
`

func runMerge(args []string) error {
	fs := flag.NewFlagSet("ovl merge", flag.ContinueOnError)
	var opts stringsFlag
	fs.Var(&opts, "o", "layer options, as for a mount (lowerdir=, upperdir=, workdir=, userxattr, redirect_dir=, metacopy=, index=); may be given several times")
	noReflink := fs.Bool("no-reflink", false, "copy file data even where the filesystem could share it")
	keepGoing := fs.Bool("keep-going", false, "leave out the objects the layers' metadata makes the overlay refuse (as a mount refuses them), list them, and go on")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), mergeUsage)
		fs.PrintDefaults()
	}
	operands, err := parseTool(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if len(operands) != 1 {
		return fmt.Errorf("merge: want one target DIR, got %d arguments (see ovl merge --help)", len(operands))
	}
	res, err := mountopt.ParseLayers(opts)
	if err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	if !res.XattrChosen && !privileged() {
		// As a mount by this process would have written the layers.
		res.Overlay.UserXattr = true
	}
	bar := newProgress("merge")
	r, err := merge.Layers(operands[0], res.Overlay, merge.Options{Progress: bar.update, NoReflink: *noReflink, KeepGoing: *keepGoing})
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
