package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/fusefs"
	"github.com/ovl-project/ovl/internal/privilege"
	"github.com/ovl-project/ovl/overlay"
)

// runDaemon mounts and serves until the filesystem is unmounted: by
// "ovl umount", by umount(8), or by this process on SIGTERM or SIGINT.
// ready, when not nil, is the pipe to the parent "ovl mount": it gets
// "ready" once the mount is usable, or "error MESSAGE".
func runDaemon(req *mountRequest, ready *os.File) error {
	report := func(err error) error {
		if ready != nil {
			if err != nil {
				fmt.Fprintf(ready, "error %s\n", oneLine(err.Error()))
			} else {
				fmt.Fprintln(ready, "ready")
			}
			ready.Close()
			ready = nil
		}
		return err
	}
	log.SetPrefix(fmt.Sprintf("ovl[%d]: ", os.Getpid()))
	if req.log != "" {
		f, err := os.OpenFile(req.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return report(fmt.Errorf("log file: %w", err))
		}
		// Also make it stderr, so a panic lands in the log too.
		if err := unix.Dup2(int(f.Fd()), 2); err != nil {
			return report(fmt.Errorf("log file: %w", err))
		}
		log.SetOutput(f)
	}
	if ready != nil {
		// A daemon must not keep a directory busy: it would block the
		// unmount of whatever filesystem it started in.
		if err := os.Chdir("/"); err != nil {
			return report(err)
		}
	}
	for _, n := range req.notes {
		log.Print(n)
	}
	if len(req.res.Ignored) > 0 {
		log.Printf("ignoring options: %s", strings.Join(req.res.Ignored, ","))
	}

	ov, err := overlay.New(req.res.Overlay)
	if err != nil {
		return report(err)
	}
	if ls := ov.MappedLowers(); len(ls) > 0 {
		log.Printf("lower layers on idmapped mounts show their owners as the kernel maps them, not mapped again: %s", strings.Join(ls, ":"))
	}
	srv, err := fusefs.Mount(req.mnt, ov, req.res.FUSE)
	if err != nil {
		ov.Close()
		return report(mountHint(err)) // fusefs.Mount names the mountpoint
	}

	m, err := findMount(req.mnt)
	var ln net.Listener
	if err == nil {
		ln, err = serveStats(m, ov)
	}
	if err != nil {
		// Fatal: "ovl stats" and the wait of "ovl umount" need it.
		if uerr := srv.Unmount(); uerr != nil {
			log.Printf("unmount: %v", uerr)
		} else {
			srv.Wait()
		}
		ov.Close()
		return report(fmt.Errorf("mount %s: %w", req.mnt, err))
	}
	defer ln.Close()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		log.Printf("%v: unmounting %s", sig, req.mnt)
		if err := srv.Unmount(); err != nil {
			// Busy: detach it, so new users cannot enter; the daemon
			// exits once the last open file is closed.
			log.Printf("unmount: %v; detaching", err)
			if err := unmount(req.mnt, true); err != nil {
				log.Printf("detach: %v", err)
			}
		}
	}()

	report(nil)
	srv.Wait()
	signal.Stop(sigs)
	if err := ov.Close(); err != nil {
		return fmt.Errorf("closing the overlay: %w", err)
	}
	return nil
}

// mountHint adds the likely cause to a mount that the kernel refused to
// root in a user namespace: FUSE may be mounted there only in a mount
// namespace that the user namespace owns (podman makes one; "unshare -U"
// alone does not), and fusermount3 is no help, as its setuid bit means
// nothing inside the namespace.
func mountHint(err error) error {
	if !errors.Is(err, syscall.EPERM) || os.Geteuid() != 0 {
		return err
	}
	if userns, nserr := privilege.InUserNamespace(); nserr != nil || !userns {
		return err
	}
	return fmt.Errorf("%w (in a user namespace a FUSE mount needs a mount namespace of that user namespace, as unshare -Um makes)", err)
}

// oneLine folds a message onto one line for the pipe and for stderr.
func oneLine(s string) string {
	lines := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	return strings.Join(lines, "; ")
}
