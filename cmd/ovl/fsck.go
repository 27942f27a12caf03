package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/ovl-project/ovl/fsck"
	"github.com/ovl-project/ovl/internal/mountopt"
)

func init() { layerTools["fsck"] = runFsck }

const fsckUsage = `Usage: ovl fsck [-n|-p|-y] -o lowerdir=L1[:L2...],upperdir=U,workdir=W[,userxattr,...]

Checks the upper layer U and the work directory W of an overlay that is not
mounted against its lower layers, and repairs what is safe:
  -n  change nothing (the default)
  -p  repair what keeps the merged view as it is, without asking
  -y  also make the repairs that need a decision (each one explained), such
      as removing a stale volatile marker
No question is ever asked. Exit status, as e2fsck's: 0 clean, 1 repaired,
4 problems left uncorrected, 8 operational error. Give the options the
overlay is mounted with; without userxattr or nouserxattr, the namespace
is chosen as ovl mount chooses it.

Flags:
`

// fsckExit is the exit status of the last fsck run, which main returns.
var fsckExit = -1

func runFsck(args []string) error {
	fs := flag.NewFlagSet("ovl fsck", flag.ContinueOnError)
	var opts stringsFlag
	fs.Var(&opts, "o", "layer options, as for a mount (lowerdir=, upperdir=, workdir=, userxattr, redirect_dir=, metacopy=, index=); may be given several times")
	no := fs.Bool("n", false, "check only: change nothing")
	preen := fs.Bool("p", false, "repair what keeps the merged view as it is")
	yes := fs.Bool("y", false, "repair everything fsck can repair safely")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), fsckUsage)
		fs.PrintDefaults()
	}
	fail := func(err error) error {
		fsckExit = fsck.ExitError
		return err
	}
	operands, err := parseTool(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fail(err)
	}
	if len(operands) > 0 {
		return fail(fmt.Errorf("fsck: unexpected argument %q (see ovl fsck --help)", operands[0]))
	}
	mode := fsck.Check
	switch {
	case *no && (*preen || *yes), *preen && *yes:
		return fail(errors.New("fsck: give only one of -n, -p and -y"))
	case *preen:
		mode = fsck.Preen
	case *yes:
		mode = fsck.Yes
	}
	res, err := mountopt.ParseLayers(opts)
	if err != nil {
		return fail(fmt.Errorf("fsck: %w", err))
	}
	if res.Overlay.Upper == "" || res.Overlay.Work == "" {
		return fail(errors.New("fsck: needs upperdir= and workdir="))
	}
	if !res.XattrChosen && !privileged() {
		res.Overlay.UserXattr = true
	}
	rep, err := fsck.Run(fsck.Options{Config: res.Overlay, Mode: mode, Out: os.Stdout})
	if err != nil {
		return fail(fmt.Errorf("fsck: %w", err))
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
	fsckExit = rep.ExitCode()
	return nil
}
