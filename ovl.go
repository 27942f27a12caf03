// Package ovl mounts the Linux kernel's overlay filesystem, served through
// FUSE, for programs that embed it: a build tool, a test harness, a
// container runtime written in Go. The ovl command is built on it.
//
// A mount is made from a Config, with the kernel's overlayfs options:
//
//	srv, err := ovl.Mount(ovl.Config{
//		Mountpoint: "/tmp/merged",
//		Lowers:     []string{"/tmp/lower1", "/tmp/lower2"},
//		Upper:      "/tmp/upper",
//		Work:       "/tmp/work",
//	})
//	...
//	defer srv.Unmount()
//
// Rules:
//   - Mount serves the overlay from the calling process until Unmount, or
//     until someone else unmounts it (umount(8), "ovl umount"); Wait
//     returns then. Only one mount may use an upper directory at a time.
//   - Mounting needs root, or fusermount3 (the fuse3 package) and
//     /dev/fuse for everyone; an unprivileged mount keeps its overlay
//     xattrs in user.overlay.* (as userxattr), as the command does.
//   - The serving process may use the mount itself, from any goroutine
//     (go-fuse serves each request on its own), but must not hold a lock
//     that serving a request needs while it does.
//   - A mount answers "ovl stats" and "ovl ls" like one made by the
//     command, and "ovl umount" unmounts it.
//   - The layers' on-disk format is the kernel's: a layer written through
//     a mount can be mounted by the kernel's overlayfs and the other way
//     round.
//
// Data flows one way: cmd/ovl uses this package, which uses fusefs (the
// FUSE binding), which uses overlay (the merged view), which uses format
// (the layers on disk).
package ovl

import (
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/ovl-project/ovl/fusefs"
	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/internal/mountopt"
	"github.com/ovl-project/ovl/internal/privilege"
	"github.com/ovl-project/ovl/overlay"
)

// Config says what to mount where.
type Config struct {
	// Mountpoint is an existing directory.
	Mountpoint string
	// Lowers are the lower layers, topmost first. They may also be given
	// in Options as lowerdir=; these come first, so an option wins.
	Lowers []string
	// Upper and Work are the writable layer and its work directory, an
	// empty directory on the same filesystem. Without them the overlay
	// is read-only.
	Upper, Work string
	// Options are further options, as given to "ovl mount -o" (each
	// string may hold several, comma-separated): "volatile",
	// "metacopy=on", "userxattr", "nosuid", "uidmapping=0:1000:1", ...
	// "ovl mount --help" lists them all.
	Options []string
	// Source is the mount's source in /proc/mounts (default "ovl").
	Source string
	// Debug logs every FUSE request to the log package's output.
	Debug bool
	// Daemon says that the process exits once the mount is gone, as the
	// daemon of "ovl mount" does: Unmount by path then waits for that
	// exit, not only for the serving to end.
	Daemon bool
}

// options returns the Config as -o strings, the layers first.
func (c *Config) options() []string {
	var items []string
	if len(c.Lowers) > 0 {
		ls := make([]string, len(c.Lowers))
		for i, l := range c.Lowers {
			ls[i] = escape(l)
		}
		items = append(items, "lowerdir="+strings.Join(ls, ":"))
	}
	if c.Upper != "" {
		items = append(items, "upperdir="+escape(c.Upper))
	}
	if c.Work != "" {
		items = append(items, "workdir="+escape(c.Work))
	}
	opts := []string{}
	if len(items) > 0 {
		opts = append(opts, strings.Join(items, ","))
	}
	return append(opts, c.Options...)
}

// escape protects the characters the option parser splits at, as the
// kernel's overlayfs takes them.
func escape(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `:`, `\:`)
	return r.Replace(p)
}

// Plan is a checked Config: the options parsed and the layers, the
// mountpoint and the means to mount FUSE checked, nothing mounted yet.
type Plan struct {
	// Mountpoint is absolute, with symlinks resolved: as mountinfo shows it.
	Mountpoint string
	// Log is the log file asked for with -o log=FILE ("" if none),
	// absolute.
	Log string
	// Debug is set when every FUSE request is to be logged.
	Debug bool
	// Notes are choices ovl made for the caller (the xattr namespace), and
	// Ignored the options accepted without effect: lines for a log.
	Notes, Ignored []string

	res    *mountopt.Result
	daemon bool
}

// Prepare parses and checks cfg without mounting: options, mountpoint,
// layers hidden under it, and the means to mount FUSE. The layers
// themselves are checked by Mount.
func Prepare(cfg Config) (*Plan, error) {
	if cfg.Mountpoint == "" {
		return nil, errors.New("no mountpoint given")
	}
	res, err := mountopt.Parse(cfg.options(), os.Geteuid() == 0)
	if err != nil {
		return nil, err
	}
	if cfg.Debug {
		res.FUSE.Debug = true
	}
	if res.FUSE.FsName == "" {
		res.FUSE.FsName = cfg.Source
	}
	if err := makeAbsolute(&res.Overlay); err != nil {
		return nil, err
	}
	p := &Plan{res: res, Debug: res.FUSE.Debug, Ignored: res.Ignored, daemon: cfg.Daemon}
	note, err := chooseXattrNS(res)
	if err != nil {
		return nil, err
	}
	if note != "" {
		p.Notes = append(p.Notes, note)
	}
	if res.Log != "" {
		if p.Log, err = absPath(res.Log); err != nil {
			return nil, err
		}
	}
	mnt, err := absPath(cfg.Mountpoint)
	if err != nil {
		return nil, err
	}
	if p.Mountpoint, err = preflight(mnt, &res.Overlay); err != nil {
		return nil, err
	}
	return p, nil
}

// Server is a mounted overlay, served by this process.
type Server struct {
	plan *Plan
	ov   *overlay.Overlay
	fs   *fusefs.Server
	ln   net.Listener

	closeOnce sync.Once
	closeErr  error         // set by closeOnce
	closed    chan struct{} // closed by closeOnce, once the layers are closed
}

// Mount mounts cfg and returns once the mount is ready to use.
func Mount(cfg Config) (*Server, error) {
	p, err := Prepare(cfg)
	if err != nil {
		return nil, err
	}
	return p.Mount()
}

// Mount opens the layers and mounts them, and returns once the mount is
// ready to use. The mount answers "ovl stats" from then on.
func (p *Plan) Mount() (*Server, error) {
	if p.daemon {
		daemonGC()
	}
	ov, err := overlay.New(p.res.Overlay)
	if err != nil {
		return nil, err
	}
	if ls := ov.MappedLowers(); len(ls) > 0 {
		log.Printf("lower layers on idmapped mounts show their owners as the kernel maps them, not mapped again: %s", strings.Join(ls, ":"))
	}
	fsrv, err := fusefs.Mount(p.Mountpoint, ov, p.res.FUSE)
	if err != nil {
		ov.Close()
		return nil, mountHint(err) // fusefs.Mount names the mountpoint
	}
	s := &Server{plan: p, ov: ov, fs: fsrv, closed: make(chan struct{})}
	m, err := mountinfo.Find(p.Mountpoint)
	if err == nil {
		s.ln, err = serveStats(m, s)
	}
	if err != nil {
		// Without its socket, "ovl stats" and the wait of "ovl umount"
		// would fail for the whole life of the mount.
		if uerr := fsrv.Unmount(); uerr != nil {
			log.Printf("unmount: %v", uerr)
		} else {
			fsrv.Wait()
		}
		ov.Close()
		return nil, fmt.Errorf("mount %s: %w", p.Mountpoint, err)
	}
	return s, nil
}

// Mountpoint returns where the overlay is mounted (absolute, symlinks
// resolved).
func (s *Server) Mountpoint() string { return s.plan.Mountpoint }

// Unmount unmounts the overlay, waits until the last request is served and
// closes the layers. A busy mount (a file open on it, a process inside it)
// is not unmounted: see Detach.
func (s *Server) Unmount() error {
	if err := s.fs.Unmount(); err != nil {
		return fmt.Errorf("unmount %s: %w", s.plan.Mountpoint, err)
	}
	return s.Wait()
}

// Detach unmounts the overlay lazily (MNT_DETACH): it leaves the
// directory tree at once, and Wait returns once its last user is gone.
func (s *Server) Detach() error {
	return unmountPath(s.plan.Mountpoint, true)
}

// Wait blocks until the overlay is unmounted, by Unmount or by anyone
// else, then closes the layers (releasing the upper for another mount).
func (s *Server) Wait() error {
	s.fs.Wait()
	s.closeOnce.Do(func() {
		if err := s.ov.Close(); err != nil {
			s.closeErr = fmt.Errorf("closing the overlay: %w", err)
		}
		close(s.closed) // the upper is free: answer the waiting Unmounts
		s.ln.Close()
	})
	return s.closeErr
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
