package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/ovl-project/ovl/layertar"
)

func init() { addCommand(newApplyCommand) }

func newApplyCommand() *cobra.Command {
	var userxattr bool
	c := &cobra.Command{
		Use:   "apply [--userxattr] LAYER.tar[.gz|.zst] DIR",
		Short: "unpack an OCI layer tar into a directory as an overlay layer",
		Long: `Unpacks an OCI image layer (LAYER, or "-" for standard input; gzip and zstd
are told by their first bytes) into the directory DIR in the kernel's
overlay format, so that the kernel and ovl mount it as a layer: whiteouts
become character devices 0/0, opaque directories get overlay.opaque
(trusted.overlay.*, or user.overlay.* with --userxattr or without the
privilege for trusted.* xattrs, as ovl mount chooses).
Entries that would reach outside DIR are refused.`,
		Example: `  ovl apply layer.tar.gz newlayer`,
		Args:    operands(2, 2, "LAYER and DIR"),
		RunE: func(c *cobra.Command, args []string) error {
			return runApply(args, userxattr)
		},
	}
	c.Flags().BoolVar(&userxattr, "userxattr", false, "write overlay markers as user.overlay.* (for mounts with userxattr; the default without the privilege for trusted.* xattrs)")
	return c
}

func runApply(operands []string, userxattr bool) error {
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
	res, err := layertar.Apply(tr, operands[1], layertar.ApplyOptions{UserXattr: userxattr || !privileged()})
	if err != nil {
		return err
	}
	if res.XattrWhiteouts > 0 {
		fmt.Fprintf(os.Stderr, "ovl apply: mknod of whiteouts was refused: %d written as xattr whiteouts; %s can only be a lower layer\n", res.XattrWhiteouts, operands[1])
	}
	return nil
}
