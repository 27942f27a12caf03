package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/ovl-project/ovl/layertar"
)

const applyUsage = `Usage: ovl apply [--userxattr] LAYER.tar[.gz|.zst] DIR

Unpacks an OCI image layer (LAYER, or "-" for standard input; gzip and zstd
are told by their first bytes) into the directory DIR in the kernel's
overlay format, so that the kernel and ovl mount it as a layer: whiteouts
become character devices 0/0, opaque directories get overlay.opaque
(trusted.overlay.*, or user.overlay.* with --userxattr or without the
privilege for trusted.* xattrs, as ovl mount chooses).
Entries that would reach outside DIR are refused.

Flags:
`

func runApply(args []string) error {
	fs := flag.NewFlagSet("ovl apply", flag.ContinueOnError)
	userxattr := fs.Bool("userxattr", false, "write overlay markers as user.overlay.* (for mounts with userxattr; the default without the privilege for trusted.* xattrs)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), applyUsage)
		fs.PrintDefaults()
	}
	operands, err := parseTool(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if len(operands) != 2 {
		return fmt.Errorf("apply: want LAYER and DIR, got %d arguments (see ovl apply --help)", len(operands))
	}
	var in io.Reader = os.Stdin
	if operands[0] != "-" {
		f, err := os.Open(operands[0])
		if err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		defer f.Close()
		in = f
	}
	tr, _, err := layertar.Decompress(in)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	defer tr.Close()
	res, err := layertar.Apply(tr, operands[1], layertar.ApplyOptions{UserXattr: *userxattr || !privileged()})
	if err != nil {
		return err
	}
	if res.XattrWhiteouts > 0 {
		fmt.Fprintf(os.Stderr, "ovl apply: mknod of whiteouts was refused: %d written as xattr whiteouts; %s can only be a lower layer\n", res.XattrWhiteouts, operands[1])
	}
	return nil
}
