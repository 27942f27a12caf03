package main

import (
	"fmt"
	"io"
	"log"
	"log/syslog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl"
)

// runDaemon mounts and serves until the filesystem is unmounted: by
// "ovl umount", by umount(8), or by this process on SIGTERM or SIGINT.
// ready, when not nil, is the pipe to the parent "ovl mount": it gets
// "ready" once the mount is usable, or "error MESSAGE".
//
// Its log goes to the --log file; a daemon in the background without one
// logs to the system log (syslog, which journald serves where it runs), so
// that a failure after the parent has returned is found somewhere.
func runDaemon(req *mountRequest, ready *os.File) error {
	dl := &daemonLog{}
	report := func(err error) error {
		if err != nil {
			dl.fatal(err)
		}
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
		dl.file = true
	} else if ready != nil {
		dl.openSyslog()
	}
	if ready != nil {
		// A daemon must not keep a directory busy: it would block the
		// unmount of whatever filesystem it started in.
		if err := os.Chdir("/"); err != nil {
			return report(err)
		}
	}
	for _, n := range req.plan.Notes {
		log.Print(n)
	}
	if len(req.plan.Ignored) > 0 {
		log.Printf("ignoring options: %s", strings.Join(req.plan.Ignored, ","))
	}

	srv, err := mountWithFusermountReason(req.plan)
	if err != nil {
		return report(err)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		log.Printf("%v: unmounting %s", sig, srv.Mountpoint())
		if err := srv.Unmount(); err != nil {
			// Busy: detach it, so new users cannot enter; the daemon
			// exits once the last open file is closed.
			log.Printf("%v; detaching", err)
			if err := srv.Detach(); err != nil {
				log.Printf("detach: %v", err)
			}
		}
	}()

	report(nil)
	err = srv.Wait()
	signal.Stop(sigs)
	if err != nil {
		dl.fatal(err)
	}
	return err
}

// daemonLog sends the daemon's log to the system log when it has no log
// file: the log package's lines at LOG_INFO, the error it exits with at
// LOG_ERR.
type daemonLog struct {
	w    *syslog.Writer // nil: no system log
	file bool           // the log goes to a --log file
}

// openSyslog connects to the system log (/dev/log) if there is one.
// Without one the log goes nowhere, as before.
func (d *daemonLog) openSyslog() {
	w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "ovl")
	if err != nil {
		return
	}
	d.w = w
	log.SetPrefix("") // syslog adds "ovl[PID]: "
	log.SetFlags(0)
	log.SetOutput(w)
}

// fatal logs the error the daemon exits with. In the foreground without a
// log file, main prints it.
func (d *daemonLog) fatal(err error) {
	switch {
	case d.w != nil:
		d.w.Err("error: " + oneLine(err.Error()))
	case d.file:
		log.Printf("error: %v", err)
	}
}

// mountWithFusermountReason mounts plan. Without root, go-fuse mounts with
// fusermount3, which prints why it refuses on its stderr (this process's)
// and exits 1, and go-fuse reports only the exit status. So the daemon's
// stderr is a pipe during the mount, and fusermount3's words become the
// error. Nothing else writes to stderr meanwhile: the log package writes to
// the log file or the system log.
func mountWithFusermountReason(plan *ovl.Plan) (*ovl.Server, error) {
	if os.Geteuid() == 0 {
		return plan.Mount()
	}
	r, w, err := os.Pipe()
	if err != nil {
		return plan.Mount()
	}
	saved, err := unix.Dup(2)
	if err != nil {
		r.Close()
		w.Close()
		return plan.Mount()
	}
	// The log package writes to stderr when there is no log file: keep
	// its lines out of the pipe.
	var keep *os.File
	if log.Writer() == os.Stderr {
		keep = os.NewFile(uintptr(saved), "stderr")
		log.SetOutput(keep)
	}
	unix.Dup2(int(w.Fd()), 2)
	w.Close()
	out := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
		io.Copy(io.Discard, r)
		out <- string(b)
	}()
	srv, err := plan.Mount()
	unix.Dup2(saved, 2) // closes the pipe's last write end: the reader ends
	if keep != nil {
		log.SetOutput(os.Stderr)
		keep.Close()
	} else {
		unix.Close(saved)
	}
	said := strings.TrimSpace(<-out)
	r.Close()
	if err != nil && said != "" && strings.Contains(err.Error(), "fusermount") {
		return nil, fmt.Errorf("mount %s: fusermount3 refused it: %s", plan.Mountpoint, fusermountWords(said))
	}
	if said != "" {
		fmt.Fprintln(os.Stderr, said) // not a refusal: stderr's after all
	}
	return srv, err
}

// fusermountWords drops the program name that fusermount3 puts before
// each message ("/usr/bin/fusermount3: user has no write access ...").
func fusermountWords(said string) string {
	var lines []string
	for _, l := range strings.Split(said, "\n") {
		if name, msg, ok := strings.Cut(l, ": "); ok && strings.HasPrefix(filepath.Base(name), "fusermount") {
			l = msg
		}
		lines = append(lines, l)
	}
	return oneLine(strings.Join(lines, "\n"))
}
