package main

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The loopback system is this program run again with these variables set:
// a plain go-fuse loopback of a directory, the floor for any FUSE
// filesystem. It takes ovl's caching choices (one-second entry and attribute
// timeouts, 1 MiB writes, direct mount as root) so that the two differ only
// in what the overlay does.
const (
	loopbackEnv    = "OVL_BENCH_LOOPBACK"     // the directory to serve
	loopbackMntEnv = "OVL_BENCH_LOOPBACK_MNT" // where
	loopbackName   = "bench-loopback"         // fuse.NAME in mountinfo
)

// serveLoopback serves until the mount is unmounted.
func serveLoopback(src, mnt string) error {
	root, err := fs.NewLoopbackRoot(src)
	if err != nil {
		return err
	}
	sec := time.Second
	srv, err := fs.Mount(mnt, root, &fs.Options{
		EntryTimeout:    &sec,
		AttrTimeout:     &sec,
		NegativeTimeout: &sec,
		MountOptions: fuse.MountOptions{
			FsName:            src,
			Name:              loopbackName,
			AllowOther:        true,
			MaxWrite:          1 << 20,
			DirectMountStrict: true,
			DirectMountFlags:  syscall.MS_MGC_VAL,
			Options:           []string{"default_permissions"},
		},
	})
	if err != nil {
		return fmt.Errorf("loopback mount %s: %w", mnt, err)
	}
	fmt.Println("ready")
	srv.Wait()
	return nil
}

// maybeServeLoopback runs the loopback server and exits if this process
// was started as one.
func maybeServeLoopback() {
	src := os.Getenv(loopbackEnv)
	if src == "" {
		return
	}
	if err := serveLoopback(src, os.Getenv(loopbackMntEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "bench loopback:", err)
		os.Exit(1)
	}
	os.Exit(0)
}
