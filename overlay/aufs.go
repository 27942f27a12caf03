package overlay

import (
	"errors"
	"fmt"
	"maps"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// AUFS whiteouts (format/aufs.go) are found by name: ".wh.NAME" beside
// NAME, ".wh..wh..opq" in an opaque directory. A lookup probes for the
// whiteout of its name in each layer directory it searches: one more
// fstatat there. A directory's markers are kept (aufsDir) once they are
// known for free, from a readdir of it, which sees every name anyway; or
// once the directory proves busy (aufsProbeFirst lookups), by reading its
// names, which then spares every later lookup in it the probe. Reading
// stops at aufsScanMax entries: a huge directory stays probed, as does one
// that cannot be read and any directory without a cache (a nil *aufsDir),
// which is always correct. In short: at most aufsProbeFirst probes and one
// bounded listing per layer directory of a node, and no probe once a
// directory was listed.
//
// Lower layers do not change. In the upper layer, only ovl removes AUFS
// entries (it never writes them; their names cannot be created through
// the mount), under the directory's dirMu, and it tells the cache
// (forget); a new upper directory holds none (emptyAufsDir).

// aufsScanMax is the number of entries past which a directory is probed
// name by name rather than read: it bounds what reading one costs.
const aufsScanMax = 4096

// aufsProbeFirst is the number of lookups in a layer directory that probe
// before its names are read: most directories see few lookups, for which
// reading all names would cost more than the probes.
const aufsProbeFirst = 16

// aufsDir caches the AUFS markers of one layer directory.
type aufsDir struct {
	mu     sync.Mutex
	state  aufsState
	gen    uint64 // counts changes, so that a read raced by one is not kept
	probes int    // lookups that probed while the state was unknown
	m      format.Markers
}

type aufsState int

const (
	aufsUnknown aufsState = iota // not read yet
	aufsKnown                    // m holds the markers
	aufsProbe                    // probe name by name
)

// emptyAufsDir is the cache of a directory ovl has just made: it holds no
// AUFS entry.
func emptyAufsDir() *aufsDir { return &aufsDir{state: aufsKnown} }

var errTooBig = errors.New("directory too big to read for AUFS markers")

// known reports whether the markers of dirfd are known, reading them
// when the directory has seen aufsProbeFirst lookups. The caller does not
// hold a.mu.
func (a *aufsDir) known(dirfd int) bool {
	a.mu.Lock()
	state, gen := a.state, a.gen
	if state == aufsUnknown && a.probes < aufsProbeFirst {
		a.probes++
		state = aufsProbe
	}
	a.mu.Unlock()
	switch state {
	case aufsKnown:
		return true
	case aufsProbe:
		return false
	}
	var m format.Markers
	n := 0
	err := readDirFd(dirfd, func(name string, _ uint64, _ uint8) error {
		if n++; n > aufsScanMax {
			return errTooBig
		}
		m.Add(name)
		return nil
	})
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state == aufsUnknown && a.gen == gen {
		if err != nil {
			a.state = aufsProbe
		} else {
			a.state, a.m = aufsKnown, m
		}
	}
	return a.state == aufsKnown
}

// hides reports whether an AUFS whiteout in the layer directory dirfd
// hides name (a may be nil: probe).
func (a *aufsDir) hides(dirfd int, name string) (bool, error) {
	if a != nil && a.known(dirfd) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.state == aufsKnown {
			return a.m.Hides(name), nil
		}
	}
	return probeAUFS(dirfd, format.AUFSWhiteout(name))
}

// opaque reports whether the layer directory dirfd holds the AUFS opaque
// marker (a may be nil: probe).
func (a *aufsDir) opaque(dirfd int) (bool, error) {
	if a != nil && a.known(dirfd) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.state == aufsKnown {
			return a.m.Opaque, nil
		}
	}
	return probeAUFS(dirfd, format.AUFSOpaque)
}

// probeAUFS reports whether the AUFS entry name exists in dirfd.
func probeAUFS(dirfd int, name string) (bool, error) {
	var st unix.Stat_t
	switch err := format.Lstat(dirfd, name, &st); err {
	case nil:
		return true, nil
	case unix.ENOENT, unix.ENOTDIR, unix.ENAMETOOLONG:
		return false, nil
	default:
		return false, fmt.Errorf("look for %s: %w", name, err)
	}
}

// snapshot returns the change count, for fill.
func (a *aufsDir) snapshot() uint64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gen
}

// fill records markers that a complete listing of the directory found,
// unless they are known already or the directory changed since gen.
func (a *aufsDir) fill(m format.Markers, gen uint64) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state == aufsUnknown && a.gen == gen {
		// A copy: the caller goes on reading its own.
		a.state, a.m = aufsKnown, format.Markers{Opaque: m.Opaque, Hidden: maps.Clone(m.Hidden)}
	}
}

// forget records that the AUFS whiteout of name is gone from the layer.
func (a *aufsDir) forget(name string) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
	if a.state == aufsKnown {
		delete(a.m.Hidden, name)
	}
}

// foreignOpaqueXattrs are the opaque marks of other implementations, which
// a directory's one listxattr tells are there (format.DirXattrs).
var foreignOpaqueXattrs = []string{format.FuseOverlayfsOpaque}

// foreignOpaque reports whether fuse-overlayfs's opaque xattr marks the
// layer directory fd opaque.
func (o *Overlay) foreignOpaque(fd int) bool {
	v, _ := format.Getxattr(fd, format.FuseOverlayfsOpaque)
	return format.ParseForeignOpaque(v)
}

// anyOpaque reports whether a layer directory is opaque in any form: the
// kernel's overlay.opaque=y, user.fuseoverlayfs.opaque, or the AUFS
// marker (a may be nil). Lookup checks the forms one at a time, as late
// as it can; this is for the rare paths.
func (o *Overlay) anyOpaque(fd int, a *aufsDir) (bool, error) {
	if o.dirOpaque(fd) || o.foreignOpaque(fd) {
		return true, nil
	}
	return a.opaque(fd)
}

// upperAUFSWhiteout turns an AUFS whiteout of name in n's upper directory
// pfd into the kernel's form, so that what ovl does next (create over a
// whiteout, rename onto one) works on a whiteout it knows, and so that the
// layer says what the view shows to every reader, fuse-overlayfs and the
// kernel alike: name becomes a char 0/0 whiteout (replacing what the
// AUFS whiteout hid beside it), and then ".wh.NAME" goes. At every step
// the name stays hidden. It reports whether there was an AUFS whiteout.
// The caller holds n.dirMu.
func (n *Node) upperAUFSWhiteout(pfd int, name string) (bool, error) {
	o := n.o
	a := n.upperAufsDir()
	hidden, err := a.hides(pfd, name)
	if err != nil || !hidden {
		return false, err
	}
	var st unix.Stat_t
	err = format.Lstat(pfd, name, &st)
	switch {
	case err == unix.ENOENT:
		wh, err := o.tempWhiteout()
		if err != nil {
			return false, err
		}
		if err := unix.Renameat2(o.work, wh, pfd, name, unix.RENAME_NOREPLACE); err != nil {
			o.removeTemp(wh)
			return false, fmt.Errorf("whiteout %s: %w", name, err)
		}
	case err != nil:
		return false, err
	case !format.IsWhiteoutStat(&st):
		// An object the AUFS whiteout beside it hides: out of the way.
		wh, err := o.tempWhiteout()
		if err != nil {
			return false, err
		}
		if err := unix.Renameat2(o.work, wh, pfd, name, unix.RENAME_EXCHANGE); err != nil {
			o.removeTemp(wh)
			return false, fmt.Errorf("whiteout %s: %w", name, err)
		}
		o.removeTemp(wh) // now the hidden object
	}
	if err := o.removeUpperEntry(pfd, format.AUFSWhiteout(name)); err != nil {
		return false, fmt.Errorf("remove %s: %w", format.AUFSWhiteout(name), err)
	}
	a.forget(name)
	return true, nil
}

// removeUpperEntry deletes name in the upper directory pfd, whatever it
// is: a directory goes to work/ first and is emptied there.
func (o *Overlay) removeUpperEntry(pfd int, name string) error {
	err := unix.Unlinkat(pfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	tmp := format.TempName(o.tempSeq.Add(1))
	if err := unix.Renameat2(pfd, name, o.work, tmp, unix.RENAME_NOREPLACE); err != nil {
		return err
	}
	o.removeTemp(tmp)
	return nil
}

// upperAufsDir returns the cache of n's upper directory's AUFS markers.
func (n *Node) upperAufsDir() *aufsDir {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.upperAufs
}
