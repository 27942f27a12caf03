package overlay

import (
	"errors"
	"fmt"
	"os"

	"github.com/ovl-project/ovl/format"
)

// Overlapping layers (kernel: fs/overlayfs/super.c, ovl_setup_trap,
// ovl_get_layers, ovl_check_layer, ovl_check_overlapping_layers). Layers are
// compared as directories (device and inode number, of the layer and of its
// ancestors in its filesystem), never as path strings, so symlinks and bind
// mounts change nothing.
//   - Refused at mount: a lower given twice, or that is the upper or the
//     workdir ("conflicting lowerdir path"); a lower inside another lower,
//     the upper or the workdir ("overlapping lowerdir path"); upper and
//     workdir the same or one inside the other ("workdir and upperdir must
//     be separate subtrees").
//   - Allowed: an upper or workdir inside a lower (kernel commit "ovl: allow
//     upperdir inside lowerdir", 5.2). The lower then holds them; every
//     layer root and the work directories are traps, and a lookup through
//     the overlay that meets one answers ELOOP (ovl_lookup_single), so no
//     path through the mount reaches a layer directory. Readdir still lists
//     the name, as the kernel's does.
//
// ovl checks everything before it writes anything: the kernel empties
// work/ first, and would empty a lower inside it.

// layerDir is one layer directory as given, with its place in its
// filesystem.
type layerDir struct {
	kind, path string
	id         format.DirID
	ancestors  []format.DirID
}

func (l *layerDir) inside(d *layerDir) bool {
	for _, a := range l.ancestors {
		if a == d.id {
			return true
		}
	}
	return false
}

func (l *layerDir) String() string { return l.kind + " " + l.path }

// placeLayer finds where a layer directory is.
func placeLayer(kind, path string) (*layerDir, error) {
	id, anc, err := format.Ancestry(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s %s: %w", kind, path, err)
	}
	return &layerDir{kind: kind, path: path, id: id, ancestors: anc}, nil
}

// checkLayers refuses overlapping layers, in the kernel's order, and
// returns the traps: the identities of the layer roots and the workdir.
// The work directories made inside the workdir are added once they exist.
func checkLayers(cfg Config) (map[format.DirID]bool, error) {
	traps := map[format.DirID]bool{}
	var upper, work *layerDir
	if cfg.Upper != "" {
		var err error
		if upper, err = placeLayer("upperdir", cfg.Upper); err != nil {
			return nil, err
		}
		if work, err = placeLayer("workdir", cfg.Work); err != nil {
			return nil, err
		}
		switch {
		case upper.id == work.id:
			return nil, fmt.Errorf("upperdir %s and workdir %s are the same directory (they must be separate subtrees)", upper.path, work.path)
		case work.inside(upper):
			return nil, fmt.Errorf("workdir %s is inside upperdir %s (they must be separate subtrees)", work.path, upper.path)
		case upper.inside(work):
			return nil, fmt.Errorf("upperdir %s is inside workdir %s (they must be separate subtrees)", upper.path, work.path)
		}
	}
	// ovl_setup_trap: each layer root is a trap; meeting one that is
	// already set is a conflict.
	var set []*layerDir
	for _, l := range []*layerDir{upper, work} {
		if l != nil {
			set = append(set, l)
			traps[l.id] = true
		}
	}
	for _, p := range cfg.Lowers {
		l, err := placeLayer("lowerdir", p)
		if err != nil {
			return nil, err
		}
		for _, o := range set {
			if o.id == l.id {
				return nil, fmt.Errorf("%s and %s are the same directory", o, l)
			}
		}
		set = append(set, l)
		traps[l.id] = true
	}
	// ovl_check_overlapping_layers: no lower may lie under another trap.
	// An upper or workdir under a lower is allowed (see above).
	for _, l := range set {
		if l.kind != "lowerdir" {
			continue
		}
		for _, o := range set {
			if o != l && l.inside(o) {
				return nil, fmt.Errorf("%s is inside %s (overlapping layers)", l, o)
			}
		}
	}
	return traps, nil
}

// trapped reports whether a directory that a lookup found in a layer, by
// its device and inode number, is a layer root or a work directory of this overlay (kernel:
// ovl_lookup_trap_inode in ovl_lookup_single). The lookup answers ELOOP.
func (o *Overlay) trapped(dev, ino uint64) bool {
	return o.traps[format.DirID{Dev: dev, Ino: ino}]
}
