package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// invocation is a parsed command line.
type invocation struct {
	cmd        string   // mount, umount, stats, ls, demo, help, usage, version
	opts       []string // each -o value, in order
	foreground bool     // -f: serve in this process
	debug      bool     // -d: log every FUSE request
	log        string   // --log FILE: the daemon's stdout and stderr
	readyFD    int      // internal: the pipe on which a daemon reports readiness
	gc         bool     // stats --gc: collect garbage before reporting the heap
	fake       bool     // mount helper -f: check everything, mount nothing
	lazy       bool     // umount -l: detach a busy mount
	json       bool     // ls --json
	positional []string
}

// helperName is the name under which mount(8) runs ovl as its helper for
// the type fuse.ovl: it looks for /sbin/mount.fuse.ovl before falling back
// to mount.fuse3 (libmount, context_mount.c), so a symlink of that name to
// ovl makes "mount -t fuse.ovl" and fstab lines work without a shell and
// wherever ovl is installed.
const helperName = "mount.fuse.ovl"

// parseHelperArgs reads the command line of a mount(8) helper:
// "SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]" (mount(8), "External
// helpers"). The source names nothing for an overlay; it becomes the
// fsname, as with mount.fuse3.
func parseHelperArgs(args []string) (*invocation, error) {
	inv := &invocation{cmd: "mount", readyFD: -1}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-s" || a == "-n" || a == "-v":
			// sloppy, no mtab, verbose: nothing to do.
		case a == "-f":
			inv.fake = true
		case a == "-o" || a == "-t":
			if i+1 >= len(args) {
				return nil, fmt.Errorf("%s needs a value", a)
			}
			i++
			if a == "-o" {
				inv.opts = append(inv.opts, args[i])
			} else if t := args[i]; t != "fuse.ovl" && t != "ovl" {
				return nil, fmt.Errorf("%s mounts fuse.ovl, not %s", helperName, t)
			}
		case len(a) > 1 && a[0] == '-':
			return nil, fmt.Errorf("%s: unknown flag %q", helperName, a)
		default:
			inv.positional = append(inv.positional, a)
		}
	}
	if len(inv.positional) != 2 {
		return nil, fmt.Errorf("usage: %s SOURCE MOUNTPOINT [-o OPTIONS] (as mount(8) calls it)", helperName)
	}
	return inv, nil
}

// route settles what the first word of a command line is, before cobra
// reads it. fuse-overlayfs is called "PROG -o OPTS MNT" and mount.fuse3
// calls "PROG SOURCE MNT -o OPTS" with any word as SOURCE, so an argv with
// -o is the mount form whatever its first word, unless that word is a
// command that takes -o itself (mount, diff, ...; a layerTools command may:
// it parses its own flags). Otherwise the first
// word must be a command (or a flag of ovl itself: --help, --version).
func route(root *cobra.Command, args []string) ([]string, error) {
	if len(args) == 0 {
		return args, nil
	}
	first := args[0]
	if first == cobra.ShellCompRequestCmd || first == cobra.ShellCompNoDescRequestCmd {
		return args, nil // completion asks about the words after it
	}
	hasO := hasOptionsFlag(args)
	if c := subcommand(root, first); c != nil {
		if !hasO || c.DisableFlagParsing || c.Flags().ShorthandLookup("o") != nil {
			return args, nil
		}
		return append([]string{"mount"}, args...), nil
	}
	if hasO {
		return append([]string{"mount"}, args...), nil
	}
	if strings.HasPrefix(first, "-") {
		return args, nil
	}
	msg := fmt.Sprintf("unknown command %q", first)
	if s := closest(first, root.SuggestionsFor(first)); s != "" {
		msg += fmt.Sprintf(": did you mean %q?", s)
	}
	return nil, usagef("%s (ovl --help lists the commands; the mount form is ovl -o OPTIONS MOUNTPOINT)", msg)
}

// closest returns the candidate nearest to typed by edit distance (the
// first of equals), or "".
func closest(typed string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		if d := editDistance(typed, c); bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// subcommand returns the command of root named (or aliased) name.
func subcommand(root *cobra.Command, name string) *cobra.Command {
	for _, c := range root.Commands() {
		if c.Name() == name || c.HasAlias(name) {
			return c
		}
	}
	return nil
}

// hasOptionsFlag reports whether args hold -o ("-o V", "-oV") or
// --options before a "--".
func hasOptionsFlag(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if strings.HasPrefix(a, "-o") || a == "--options" || strings.HasPrefix(a, "--options=") {
			return true
		}
	}
	return false
}

// optionsBeforeOperand reports whether an -o comes before the first
// operand of "ovl mount ARGS": then the operands are MOUNTPOINT alone, and
// only the mount.fuse3 form, with the options after both, has a SOURCE.
func optionsBeforeOperand(args []string) bool {
	seen := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return seen
		case a == "-o" || a == "--options":
			seen = true
			i++
		case strings.HasPrefix(a, "-o") || strings.HasPrefix(a, "--options="):
			seen = true
		case a == "--log" || a == "--ready-fd" || a == "--source":
			i++
		case strings.HasPrefix(a, "-"):
		default:
			return seen
		}
	}
	return seen
}

// parse reads a command line into an invocation. The layer tools and
// other self-contained commands run here; the rest are left to run with
// the invocation. help is the command whose help to print for the
// invocations "help" and "usage".
func parse(args []string) (inv *invocation, help *cobra.Command, err error) {
	inv = &invocation{readyFD: -1}
	// The tree is built twice: route needs the command names, and the
	// mount command the arguments route settled on.
	routed, err := route(newRoot(&invocation{}, &help, nil), args)
	if err != nil {
		return nil, nil, err
	}
	var mountArgs []string
	if len(routed) > 0 && routed[0] == "mount" {
		mountArgs = routed[1:]
	}
	root := newRoot(inv, &help, mountArgs)
	root.SetArgs(routed)
	err = root.Execute()
	root.SetHelpFunc(nil)
	if err != nil {
		return nil, nil, err
	}
	if inv.cmd == "usage" {
		help = root
	}
	return inv, help, nil
}

// parseArgs reads a command line into an invocation.
func parseArgs(args []string) (*invocation, error) {
	inv, _, err := parse(args)
	return inv, err
}
