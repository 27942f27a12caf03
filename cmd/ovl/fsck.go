package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ovl-project/ovl/fsck"
	"github.com/ovl-project/ovl/internal/mountopt"
)

func init() { addCommand(newFsckCommand) }

func newFsckCommand() *cobra.Command {
	var opts []string
	var no, preen, yes bool
	// Every failure to run is e2fsck's operational error, 8, usage
	// errors included (e2fsck's 16 is not one of the statuses ovl
	// fsck documents).
	fail := func(err error) error { return &statusError{code: fsck.ExitError, err: err} }
	c := &cobra.Command{
		Use:   "fsck [-n|-p|-y] -o lowerdir=L1[:L2...],upperdir=U,workdir=W[,OPTIONS]",
		Short: "check and repair the upper layer of an unmounted overlay",
		Long: `Checks the upper layer U and the work directory W of an overlay that is not
mounted against its lower layers, and repairs what is safe:
  -n  change nothing (the default)
  -p  repair what keeps the merged view as it is, as a mount would
  -y  also make the repairs that need a decision (each one explained), such
      as removing a stale volatile marker
No question is ever asked. Exit status, as e2fsck's: 0 clean, 1 repaired,
4 problems left uncorrected, 8 operational error. Give the options the
overlay is mounted with; without userxattr or nouserxattr, the namespace
is chosen as ovl mount chooses it.`,
		Example: `  ovl fsck -n -o lowerdir=l1:l2,upperdir=u,workdir=w
  ovl fsck -p -o lowerdir=l1:l2,upperdir=u,workdir=w,redirect_dir=on,metacopy=on`,
		Args: func(c *cobra.Command, args []string) error {
			if err := operands(0, 0, "")(c, args); err != nil {
				return fail(err)
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			mode := fsck.Check
			switch {
			case no && (preen || yes), preen && yes:
				return fail(errors.New("fsck: give only one of -n, -p and -y"))
			case preen:
				mode = fsck.Preen
			case yes:
				mode = fsck.Yes
			}
			code, err := runFsck(opts, mode)
			if err != nil {
				return fail(err)
			}
			if code != fsck.ExitClean {
				return &statusError{code: code}
			}
			return nil
		},
	}
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return fail(flagError(c, err)) })
	f := c.Flags()
	f.StringArrayVarP(&opts, "options", "o", nil, "layer `OPTIONS`, as for a mount (lowerdir=, upperdir=, workdir=, userxattr, redirect_dir=, metacopy=, index=); may be given several times")
	f.BoolVarP(&no, "no", "n", false, "check only: change nothing")
	f.BoolVarP(&preen, "preen", "p", false, "repair what keeps the merged view as it is")
	f.BoolVarP(&yes, "yes", "y", false, "repair everything fsck can repair safely")
	c.RegisterFlagCompletionFunc("options", completeOptions)
	return c
}

// runFsck checks (and repairs) the layers of opts and returns the exit
// status; err is an operational error.
func runFsck(opts []string, mode fsck.Mode) (int, error) {
	res, err := mountopt.ParseLayers(opts)
	if err != nil {
		return 0, fmt.Errorf("fsck: %w", err)
	}
	if res.Overlay.Upper == "" || res.Overlay.Work == "" {
		return 0, errors.New("fsck: needs upperdir= and workdir=")
	}
	if !res.XattrChosen && !privileged() {
		res.Overlay.UserXattr = true
	}
	rep, err := fsck.Run(fsck.Options{Config: res.Overlay, Mode: mode, Out: os.Stdout})
	if err != nil {
		return 0, fmt.Errorf("fsck: %w", err)
	}
	found, repaired := rep.Problems()
	switch {
	case found == 0:
		fmt.Println("clean")
	case mode == fsck.Check:
		fmt.Printf("%d problems, none repaired (-n)\n", found)
	default:
		fmt.Printf("%d problems, %d repaired\n", found, repaired)
	}
	return rep.ExitCode(), nil
}
