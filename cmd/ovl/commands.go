package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ovl-project/ovl"
	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/internal/mountopt"
)

// tools are the constructors of the commands that run by themselves (the
// layer tools, man). A file adds its command with one line:
//
//	func init() { addCommand(newDiffCommand) }
//
// A constructor makes a fresh command each time, as each command line
// gets its own tree. A command that takes layer options names its flag -o:
// then "ovl CMD -o ..." is that command, not a mount (route).
var tools []func() *cobra.Command

func addCommand(c func() *cobra.Command) { tools = append(tools, c) }

// layerTools are commands that parse their own flags (with the flag
// package), from before the command line was cobra's: each becomes a
// command that gets its arguments as they are, -o and --help included.
// New commands use addCommand.
var layerTools = map[string]func(args []string) error{}

func legacyCommand(name string, run func([]string) error) *cobra.Command {
	return &cobra.Command{
		Use:                name,
		DisableFlagParsing: true,
		RunE:               func(c *cobra.Command, args []string) error { return run(args) },
	}
}

// newRoot builds the command tree for one command line. The commands that
// act on mounts record what they were asked in inv, and run once the
// whole line is read (main.run); help records the command whose help was
// asked for. mountArgs are the arguments after "mount", if that is the
// command, for the order of operands and options.
func newRoot(inv *invocation, help **cobra.Command, mountArgs []string) *cobra.Command {
	var showVersion bool
	root := &cobra.Command{
		Use:   "ovl",
		Short: "the Linux kernel's overlay filesystem, served through FUSE",
		Long: `ovl mounts overlays in the format and with the behaviour of the Linux kernel's
overlayfs, served through FUSE, with or without root; it stands in for
fuse-overlayfs as containers-storage's mount_program. It also turns an upper
layer into an OCI layer tar and a layer tar into a layer directory.

Mount forms (all the same mount; "ovl mount --help" lists every option):
  ovl mount -o lowerdir=L1:L2,upperdir=U,workdir=W MOUNTPOINT
  ovl -o OPTIONS MOUNTPOINT                  fuse-overlayfs's form
  ovl SOURCE MOUNTPOINT -o OPTIONS           mount.fuse3's form (SOURCE is any word)
  mount.fuse.ovl SOURCE MOUNTPOINT -o OPTIONS   mount(8)'s helper for fuse.ovl
                                             (a symlink /sbin/mount.fuse.ovl -> ovl)`,
		Example: `  ovl mount -o lowerdir=lower,upperdir=upper,workdir=work merged
  ovl ls
  ovl umount merged
  ovl diff -o lowerdir=lower,upperdir=upper --output layer.tar.gz
  ovl apply layer.tar.gz newlayer`,
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
		Args:                       cobra.NoArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if showVersion {
				inv.cmd = "version"
			} else {
				inv.cmd = "usage"
			}
			return nil
		},
	}
	root.Flags().BoolVarP(&showVersion, "version", "V", false, "print ovl's version and commit")
	root.SetFlagErrorFunc(flagError)
	// During the parse, help is only recorded (parse restores cobra's own
	// function, which main.run calls once the whole line is read).
	root.SetHelpFunc(func(c *cobra.Command, _ []string) {
		inv.cmd = "help"
		*help = c
	})
	root.AddCommand(newMountCommand(inv, mountArgs), newUmountCommand(inv), newStatsCommand(inv), newLsCommand(inv),
		newDemoCommand(inv), newVersionCommand(inv))
	for _, t := range tools {
		root.AddCommand(t())
	}
	for name, run := range layerTools {
		root.AddCommand(legacyCommand(name, run))
	}
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	return root
}

// flagError rewrites pflag's errors as ovl's: one line, the flag named,
// with where to look.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	if m := shorthandRE.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("unknown flag %q", m[1])
	} else if s, ok := strings.CutPrefix(msg, "unknown flag: "); ok {
		msg = fmt.Sprintf("unknown flag %q", s)
	}
	return usagef("%s (see %s --help)", msg, c.CommandPath())
}

var shorthandRE = regexp.MustCompile(`^unknown shorthand flag: '.' in (-\S+)$`)

// operands checks the number of operands of a command, between lo and hi.
func operands(lo, hi int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		switch {
		case len(args) < lo:
			return usagef("%s: no %s given (usage: %s)", c.Name(), what, c.UseLine())
		case len(args) > hi:
			return usagef("%s: too many arguments: %s (usage: %s)", c.Name(), strings.Join(args[hi:], " "), c.UseLine())
		}
		return nil
	}
}

func newMountCommand(inv *invocation, rawArgs []string) *cobra.Command {
	var source string
	c := &cobra.Command{
		Use:   "mount -o OPTIONS [flags] MOUNTPOINT",
		Short: "mount an overlay (the default when -o is given)",
		Long: `Mounts the layers named by the options at MOUNTPOINT, an existing directory,
and returns once the mount is ready: a daemon serves it in the background
until "ovl umount" (or umount(8), fusermount3 -u, SIGTERM to the daemon).
Without root, ovl mounts through fusermount3 (the fuse3 package).

The forms "ovl -o OPTIONS MOUNTPOINT" and "ovl SOURCE MOUNTPOINT -o OPTIONS"
(mount.fuse3's, with the options after both operands) are this command;
SOURCE becomes the mount's source in /proc/mounts.`,
		Example: `  ovl mount -o lowerdir=l1:l2,upperdir=u,workdir=w merged
  ovl mount -o lowerdir=l1 -o lowerdir+=l2 ro-view      # read-only, two lowers
  ovl -o lowerdir=l,upperdir=u,workdir=w,volatile merged`,
		Args: func(c *cobra.Command, args []string) error {
			// A SOURCE comes first, with the options after both operands
			// (mount.fuse3's form); the daemon gets it with --source.
			if source != "" || optionsBeforeOperand(rawArgs) {
				if len(args) > 1 {
					return usagef("mount: too many arguments: %s (ovl mount takes one MOUNTPOINT; a SOURCE comes first, with the options after both: ovl SOURCE MOUNTPOINT -o OPTIONS)", strings.Join(args[1:], " "))
				}
			}
			return operands(1, 2, "mountpoint")(c, args)
		},
		RunE: func(c *cobra.Command, args []string) error {
			inv.cmd = "mount"
			if source != "" {
				args = append([]string{source}, args...)
			}
			inv.positional = args
			return nil
		},
	}
	f := c.Flags()
	f.StringArrayVarP(&inv.opts, "options", "o", nil, "comma-separated `OPTIONS` (listed below); may be given several times")
	f.BoolVarP(&inv.foreground, "foreground", "f", false, "serve in this process instead of starting a daemon")
	f.BoolVarP(&inv.debug, "debug", "d", false, "log every FUSE request (stays in the foreground unless --log is given)")
	f.StringVar(&inv.log, "log", "", "the daemon's log `FILE` (default: errors to the system log, /dev/log)")
	f.IntVar(&inv.readyFD, "ready-fd", -1, "internal: the pipe on which the daemon reports readiness")
	f.StringVar(&source, "source", "", "internal: the SOURCE operand, for the daemon")
	f.MarkHidden("ready-fd")
	f.MarkHidden("source")
	c.RegisterFlagCompletionFunc("options", completeOptions)
	c.SetHelpTemplate(c.HelpTemplate() + "\n" + mountopt.Help() + `
As root the mount allows other users and keeps setuid and device files; ask
for nosuid,nodev to turn them off. Unprivileged mounts get nosuid,nodev.
`)
	return c
}

func newUmountCommand(inv *invocation) *cobra.Command {
	c := &cobra.Command{
		Use:     "umount [-l] MOUNTPOINT",
		Aliases: []string{"unmount"},
		Short:   "unmount an ovl mount and wait for its daemon to exit",
		Long: `Unmounts the ovl mount at MOUNTPOINT and waits until its daemon has exited,
so that the same upper can be mounted again at once. Refuses what is not an
ovl mount (umount(8) unmounts those). A busy mount (a process inside it, a file open on it)
is refused; -l detaches it at once, and its daemon exits once the last user is
gone.`,
		Args:              operands(1, 1, "mountpoint"),
		ValidArgsFunction: completeMounts,
		RunE: func(c *cobra.Command, args []string) error {
			inv.cmd, inv.positional = "umount", args
			return nil
		},
	}
	c.Flags().BoolVarP(&inv.lazy, "lazy", "l", false, "detach a busy mount now (MNT_DETACH) and do not wait for the daemon")
	return c
}

func newStatsCommand(inv *invocation) *cobra.Command {
	c := &cobra.Command{
		Use:   "stats [--gc] MOUNTPOINT",
		Short: "print a mount's counters and its daemon's Go heap as JSON",
		Long: `Prints the counters of the daemon serving the ovl mount at MOUNTPOINT (pid,
copy-ups, whiteouts, lookups, nodes, ...) and its Go heap, as one JSON
object. "ovl ls" shows every mount with its layers.`,
		Args:              operands(1, 1, "mountpoint"),
		ValidArgsFunction: completeMounts,
		RunE: func(c *cobra.Command, args []string) error {
			inv.cmd, inv.positional = "stats", args
			return nil
		},
	}
	c.Flags().BoolVar(&inv.gc, "gc", false, "collect garbage first, so the heap figures show only what is reachable")
	return c
}

func newLsCommand(inv *invocation) *cobra.Command {
	c := &cobra.Command{
		Use:     "ls [--json]",
		Aliases: []string{"status"},
		Short:   "list the ovl mounts with their layers, options and counters",
		Long: `Lists the ovl mounts of this mount namespace: mountpoint, source, daemon pid,
layers, options and the main counters. --json prints an array with every
counter, as "ovl stats" names them.`,
		Args: operands(0, 0, ""),
		RunE: func(c *cobra.Command, args []string) error {
			inv.cmd = "ls"
			return nil
		},
	}
	c.Flags().BoolVar(&inv.json, "json", false, "print JSON")
	return c
}

func newDemoCommand(inv *invocation) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "show what ovl does, in a temporary directory",
		Long: `Copies two small example layers to a temporary directory, mounts ovl over
them, and shows step by step what a copy-up, a whiteout and an opaque
directory leave in the upper layer; then unmounts and removes it all.`,
		Args: operands(0, 0, ""),
		RunE: func(c *cobra.Command, args []string) error {
			inv.cmd = "demo"
			return nil
		},
	}
}

func newVersionCommand(inv *invocation) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print ovl's version and commit (as --version)",
		Args:  operands(0, 0, ""),
		RunE: func(c *cobra.Command, args []string) error {
			inv.cmd = "version"
			return nil
		},
	}
}

// completeOptions completes the option being typed after -o, the ones
// before its last comma kept: "lowerdir=a,up" offers "lowerdir=a,upperdir=".
func completeOptions(c *cobra.Command, args []string, typed string) ([]cobra.Completion, cobra.ShellCompDirective) {
	done := ""
	if i := strings.LastIndexByte(typed, ','); i >= 0 {
		done = typed[:i+1]
	}
	var out []cobra.Completion
	for _, n := range mountopt.Names() {
		if strings.HasPrefix(done+n, typed) {
			out = append(out, done+n)
		}
	}
	return out, cobra.ShellCompDirectiveNoSpace
}

// completeMounts offers the ovl mounts of this mount namespace.
func completeMounts(c *cobra.Command, args []string, typed string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, cobra.ShellCompDirectiveDefault
	}
	var out []cobra.Completion
	for _, m := range mounts {
		if m.FSType == ovl.FSType && strings.HasPrefix(m.MountPoint, typed) {
			out = append(out, m.MountPoint)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
