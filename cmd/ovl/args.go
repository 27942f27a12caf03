package main

import (
	"fmt"
	"strconv"
	"strings"
)

// invocation is a parsed command line.
type invocation struct {
	cmd        string   // mount, umount, stats, demo, help, version
	opts       []string // each -o value, in order
	foreground bool     // -f: serve in this process
	debug      bool     // -d: log every FUSE request
	log        string   // --log FILE: the daemon's stdout and stderr
	readyFD    int      // internal: the pipe on which a daemon reports readiness
	gc         bool     // stats --gc: collect garbage before reporting the heap
	fake       bool     // mount helper -f: check everything, mount nothing
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

var commands = map[string]bool{
	"mount": true, "umount": true, "unmount": true, "stats": true,
	"demo": true, "help": true, "version": true,
}

// parseArgs reads the command line by hand: flags and operands may come in
// any order (fuse-overlayfs is called as "PROG -o OPTS MNT", mount.fuse3 as
// "PROG SOURCE MNT -o OPTS"), which the flag package does not allow.
func parseArgs(args []string) (*invocation, error) {
	inv := &invocation{cmd: "mount", readyFD: -1}
	if len(args) > 0 && commands[args[0]] {
		inv.cmd = args[0]
		if inv.cmd == "unmount" {
			inv.cmd = "umount"
		}
		args = args[1:]
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		// value returns the argument of a flag given as "--flag=V", "-oV" or "--flag V".
		value := func(flag string) (string, error) {
			if v, ok := strings.CutPrefix(a, flag+"="); ok {
				return v, nil
			}
			if len(flag) == 2 && len(a) > 2 && strings.HasPrefix(a, flag) {
				return a[2:], nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("%s needs a value", flag)
			}
			i++
			return args[i], nil
		}
		var err error
		var v string
		switch {
		case a == "--":
			inv.positional = append(inv.positional, args[i+1:]...)
			i = len(args)
		case a == "-h" || a == "--help":
			inv.cmd = "help"
		case a == "-V" || a == "--version":
			inv.cmd = "version"
		case a == "-f" || a == "--foreground":
			inv.foreground = true
		case a == "-d" || a == "--debug":
			inv.debug = true
		case a == "--gc" && inv.cmd == "stats":
			inv.gc = true
		case takes(a, "-o"):
			v, err = value("-o")
			inv.opts = append(inv.opts, v)
		case takes(a, "--options"):
			v, err = value("--options")
			inv.opts = append(inv.opts, v)
		case takes(a, "--log"):
			v, err = value("--log")
			inv.log = v
		case takes(a, "--ready-fd"):
			v, err = value("--ready-fd")
			if err == nil {
				inv.readyFD, err = strconv.Atoi(v)
			}
		case len(a) > 1 && a[0] == '-':
			return nil, fmt.Errorf("unknown flag %q (see ovl --help)", a)
		default:
			inv.positional = append(inv.positional, a)
		}
		if err != nil {
			return nil, err
		}
	}
	return inv, nil
}

// takes reports whether argument a is flag, given alone ("-o"), with "="
// ("--log=F"), or, for a one-letter flag, with the value attached ("-oOPTS").
func takes(a, flag string) bool {
	if a == flag || strings.HasPrefix(a, flag+"=") {
		return true
	}
	return len(flag) == 2 && strings.HasPrefix(a, flag)
}
