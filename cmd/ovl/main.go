// Command ovl mounts an overlay filesystem with the Linux kernel's overlayfs
// format and behaviour, served through FUSE. It takes the kernel's -o
// options, and can be used as containers-storage's mount_program in place of
// fuse-overlayfs.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
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
		fmt.Fprintf(os.Stderr, "ovl: %s\n", oneLine(err.Error()))
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 && layerTools[args[0]] != nil {
		return layerTools[args[0]](args[1:])
	}
	inv, err := parseArgs(args)
	if err != nil {
		return err
	}
	switch inv.cmd {
	case "help":
		fmt.Print(usage)
		return nil
	case "version":
		fmt.Printf("ovl %s (%s)\n", version(), runtime.Version())
		return nil
	case "umount":
		return runUmount(inv)
	case "stats":
		return runStats(inv)
	case "demo":
		return runDemo(inv)
	default:
		return runMount(inv)
	}
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

// version is the module version when built from a tagged module, else "devel".
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

const usage = `ovl - the Linux kernel's overlay filesystem, served through FUSE

Usage:
  ovl mount -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPTIONS] [-f] [-d] [--log FILE] MOUNTPOINT
  ovl -o OPTIONS MOUNTPOINT          same as "ovl mount" (fuse-overlayfs style)
  ovl umount MOUNTPOINT              unmount and wait for the daemon to exit
  ovl stats [--gc] MOUNTPOINT        print the daemon's counters and Go heap as JSON
                                     (--gc: after a garbage collection)
  ovl demo                           show what ovl does, in a temporary directory
  ovl diff -o lowerdir=..,upperdir=U [--output F] [--compress gzip|zstd|none]
                                     write the upper layer U as an OCI layer tar
  ovl apply [--userxattr] LAYER DIR  unpack an OCI layer tar into DIR as an overlay layer
  ovl merge -o lowerdir=..[,upperdir=U] DIR   flatten the stack into DIR, one plain lower layer
  ovl explain [--json] MOUNTPOINT/PATH | -o lowerdir=.. PATH
                                     which layer each part of PATH comes from, and why
  ovl --help | --version
  mount.fuse.ovl SOURCE MOUNTPOINT -o OPTIONS   as mount(8)'s helper for fuse.ovl
                                     (a symlink /sbin/mount.fuse.ovl -> ovl)

Mount flags:
  -o OPTIONS        comma-separated options; may be given several times
  -f, --foreground  serve in this process instead of starting a daemon
  -d, --debug       log every FUSE request (stays in the foreground unless --log is given)
  --log FILE        the daemon's log (default: none)

Options (as the kernel's overlayfs; "\" escapes "," and ":"):
  lowerdir=L1:L2    lower layers, topmost first (one lower alone gives a read-only view)
  upperdir=U, workdir=W   the writable layer and its work directory (same filesystem)
  userxattr         keep overlay xattrs in user.overlay.* (the default without
                    CAP_SYS_ADMIN in the initial user namespace)
  nouserxattr       keep them in trusted.overlay.* (the default as root)
  volatile, fsync=ordered|volatile   skip or keep fsync on the upper
  redirect_dir=on|follow|nofollow|off   directory renames by redirect (default on;
                    nofollow with userxattr)
  index=on|off      keep lower hard links one object across copy-up (default off)
  metacopy=on|off   copy up metadata only for chmod/chown/... (default off)
  nfs_export=off, uuid=null|off, verity=off,
  xino=off|auto     accepted; other values are not supported yet
  ro, rw, nosuid, suid, nodev, dev, noexec, exec, allow_other, allow_root,
  default_permissions, fsname=NAME, debug, log=FILE
  defaults, auto, noauto, nofail, _netdev, user, users, x-*, ...: for mount(8),
                    fstab and systemd; ignored
  As root the mount allows other users and keeps setuid and device files;
  ask for nosuid,nodev to turn them off. See README.md for the full table.
`
