// Command ovl mounts an overlay filesystem with the Linux kernel's overlayfs
// format and behaviour, served through FUSE. It takes the kernel's -o
// options, and can be used as containers-storage's mount_program in place of
// fuse-overlayfs. It also turns layers into OCI layer tars and back.
//
// The command line is a cobra command tree (commands.go); the mount form
// of fuse-overlayfs and mount.fuse3 ("ovl -o OPTS MNT", "ovl SOURCE MNT -o
// OPTS") is routed to "ovl mount" before cobra sees it (route), and
// mount(8)'s helper form (mount.fuse.ovl) is parsed by hand (args.go).
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// stdPath is the search path when the environment has none: mount(8)
// clears the environment of its helpers, and ovl then finds fusermount3
// where a shell would.
const stdPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func main() {
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", stdPath)
	}
	run := run
	if filepath.Base(os.Args[0]) == helperName {
		run = runHelper
	}
	if err := run(os.Args[1:]); err != nil {
		if msg := oneLine(err.Error()); msg != "" {
			fmt.Fprintf(os.Stderr, "ovl: %s\n", msg)
		}
		os.Exit(exitCode(err))
	}
}

// usageError is a command line that ovl cannot read: exit code 2, as
// getopt-style tools use for usage errors (podman, like ovl, prints the
// usage and fails when given no command; it exits 125, its code for its
// own errors, which ovl does not have).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

func exitCode(err error) int {
	var u *usageError
	var s *statusError
	switch {
	case errors.As(err, &s):
		return s.code
	case errors.As(err, &u):
		return 2
	}
	return 1
}

// statusError is a command's own exit status (ovl fsck's, as e2fsck's),
// with an error to print or none.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

func (e *statusError) Unwrap() error { return e.err }

// run parses the command line and runs the command it names.
func run(args []string) error {
	inv, help, err := parse(args)
	if err != nil {
		return err
	}
	switch inv.cmd {
	case "help":
		return help.Help()
	case "usage":
		help.SetOut(os.Stdout)
		help.Help()
		return usagef("missing command (see the list above; the mount form is ovl -o OPTIONS MOUNTPOINT)")
	case "version":
		fmt.Print(versionText())
		return nil
	case "umount":
		return runUmount(inv)
	case "stats":
		return runStats(inv)
	case "ls":
		return runLs(inv)
	case "demo":
		return runDemo(inv)
	case "mount":
		return runMount(inv)
	}
	return nil // a command that ran inside parse (the layer tools, completion, man)
}

// runHelper serves mount(8) as /sbin/mount.fuse.ovl.
func runHelper(args []string) error {
	inv, err := parseHelperArgs(args)
	if err != nil {
		return err
	}
	if inv.fake {
		_, err := prepareMount(inv)
		return err
	}
	return runMount(inv)
}

// oneLine folds a message onto one line for the pipe and for stderr.
func oneLine(s string) string {
	lines := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	return strings.Join(lines, "; ")
}
