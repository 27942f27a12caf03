package fusefs

import (
	"errors"

	"github.com/ovl-project/ovl/overlay"
)

// Options are the FUSE-level mount options.
type Options struct {
	// AllowOther lets users other than the mounter use the mount (default as root).
	AllowOther bool
	// NoSuid and NoDev ask for the nosuid and nodev mount flags; ovl leaves them
	// off by default because a container root needs setuid binaries and devices.
	NoSuid, NoDev, NoExec bool
	// ReadOnly mounts read-only (always so without an upper layer).
	ReadOnly bool
	// FsName is the "source" shown in /proc/mounts.
	FsName string
	// Debug logs every FUSE request.
	Debug bool
}

// Server is a mounted overlay.
type Server struct{}

// Mount serves ov at mountpoint and returns once the mount is ready.
func Mount(mountpoint string, ov *overlay.Overlay, opts Options) (*Server, error) {
	return nil, errors.New("not yet")
}

// Wait blocks until the filesystem is unmounted.
func (s *Server) Wait() {}

// Unmount unmounts the filesystem; Wait then returns.
func (s *Server) Unmount() error { return nil }
