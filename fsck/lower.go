package fsck

import (
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// lowerDir is one lower directory an upper directory merges with.
type lowerDir struct {
	layer int
	fd    int    // O_PATH; owned by the stack that holds it, except layer roots
	path  string // in its layer, for messages
}

// closeStack closes the fds of a stack that are not layer roots.
func (c *checker) closeStack(s []lowerDir) {
	for _, d := range s {
		if d.fd != c.lowers[d.layer].root {
			unix.Close(d.fd)
		}
	}
}

// lowerOpaque reports whether a lower directory hides the layers below it,
// in any form ovl reads: overlay.opaque=y, fuse-overlayfs's opaque xattr,
// or the AUFS marker.
func (c *checker) lowerOpaque(fd int) bool {
	if v, _ := format.Getxattr(fd, c.names.Name(format.Opaque)); format.DirFlag(v) == format.OpaqueYes {
		return true
	}
	if v, _ := format.Getxattr(fd, format.FuseOverlayfsOpaque); format.ParseForeignOpaque(v) {
		return true
	}
	var st unix.Stat_t
	return format.Lstat(fd, format.AUFSOpaque, &st) == nil
}

// lowerWhiteout reports whether name in the lower directory dirfd is
// whited out there: a char 0/0, an xattr whiteout in a directory marked
// opaque=x, or an AUFS whiteout beside it.
func (c *checker) lowerWhiteout(dirfd int, name string, st *unix.Stat_t, exists bool) bool {
	var wst unix.Stat_t
	if format.Lstat(dirfd, format.AUFSWhiteout(name), &wst) == nil {
		return true
	}
	if !exists {
		return false
	}
	if format.IsWhiteoutStat(st) {
		return true
	}
	if format.MaybeXWhiteout(st) {
		if v, _ := format.Getxattr(dirfd, c.names.Name(format.Opaque)); format.DirFlag(v) == format.OpaqueXWhiteouts {
			if w, _ := format.GetxattrAt(dirfd, name, c.names.Name(format.Whiteout)); w != nil {
				return true
			}
		}
	}
	return false
}

// lowerHas reports whether the lower stack of a directory shows name: the
// first layer that has it, or whites it out, decides (kernel:
// ovl_lower_positive).
func (c *checker) lowerHas(stack []lowerDir, name string) bool {
	for _, d := range stack {
		var st unix.Stat_t
		err := format.Lstat(d.fd, name, &st)
		if c.lowerWhiteout(d.fd, name, &st, err == nil) {
			return false
		}
		if err == nil {
			return true
		}
	}
	return false
}

// found is the outcome of a lookup in the lower layers.
type found struct {
	dirs []lowerDir // the directories merged, topmost first
	// first is the mode of the topmost object found (0: none); for a
	// non-directory, data is the first regular file that is no metacopy
	// file, layer and fd (O_PATH, the caller closes it) or -1.
	first    uint32
	dataFd   int
	dataPath string
	// bad: a redirect met on the way is not valid (kernel: EINVAL, EACCES).
	bad bool
}

// lookup finds what the lower layers hold under an upper object: the
// object named name in the parent's stack, or, for redirect (an
// overlay.redirect the upper object carries), the object it names:
// absolute from the layer roots, relative in the parent's stack
// (kernel: ovl_lookup, ovl_lookup_layer, ovl_lookup_single). isDir asks
// for directories, which merge; otherwise the topmost object decides.
func (c *checker) lookup(parent []lowerDir, name, redirect string, isDir bool) found {
	res := found{dataFd: -1}
	comps := []string{name}
	bases := parent
	if redirect != "" {
		if strings.HasPrefix(redirect, "/") {
			comps = strings.Split(redirect[1:], "/")
			bases = c.roots
		} else {
			comps = []string{redirect}
		}
	}
	for _, cp := range comps {
		if !format.RedirectComponentOK(cp) || len(cp) > format.NameMax {
			res.bad = true
			return res
		}
	}
	for i := 0; i < len(bases); i++ {
		base := bases[i]
		cur := base.fd
		curPath := base.path
		stop, hit := false, false
		for j, cp := range comps {
			last := j == len(comps)-1
			var st unix.Stat_t
			err := format.Lstat(cur, cp, &st)
			if c.lowerWhiteout(cur, cp, &st, err == nil) {
				stop = true
				break
			}
			if err != nil {
				break // not in this layer
			}
			p := joinPath(curPath, cp)
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				if last && !isDir {
					if res.first == 0 {
						res.first = st.Mode & unix.S_IFMT
					}
					if st.Mode&unix.S_IFMT == unix.S_IFREG {
						if v, _ := format.GetxattrAt(cur, cp, c.names.Name(format.Metacopy)); v != nil {
							break // a metacopy file above its data: look on
						}
						if fd, err := format.OpenAt(cur, cp, unix.O_PATH|unix.O_NOFOLLOW, 0); err == nil {
							res.dataFd, res.dataPath = fd, p
						}
					}
				} else if last && res.first == 0 {
					res.first = st.Mode & unix.S_IFMT
				}
				stop = true
				break
			}
			if last && !isDir {
				if res.first == 0 {
					res.first = unix.S_IFDIR
				}
				stop = true
				break
			}
			fd, err := format.OpenAt(cur, cp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
			if err != nil {
				break
			}
			if cur != base.fd {
				unix.Close(cur)
			}
			cur, curPath = fd, p
			if c.lowerOpaque(fd) {
				stop = true
			}
			if last {
				hit = true
				if res.first == 0 {
					res.first = unix.S_IFDIR
				}
				// A redirect in a lower layer moves the lookup for the
				// layers below (a lower written by redirect_dir=on).
				if c.follow && i < len(bases)-1 {
					if v, _ := format.Getxattr(fd, c.names.Name(format.Redirect)); v != nil {
						r, err := format.ParseRedirect(v)
						if err != nil {
							res.bad = true
							stop = true
						} else if strings.HasPrefix(r, "/") {
							comps = strings.Split(r[1:], "/")
							bases = c.roots[base.layer:]
							i = 0
							res.dirs = append(res.dirs, lowerDir{layer: base.layer, fd: cur, path: curPath})
							cur = base.fd
							goto next
						} else {
							comps = append(append([]string{}, comps[:len(comps)-1]...), r)
						}
					}
				}
			}
		}
		if hit {
			res.dirs = append(res.dirs, lowerDir{layer: base.layer, fd: cur, path: curPath})
		} else if cur != base.fd {
			unix.Close(cur)
		}
	next:
		if stop {
			break
		}
	}
	return res
}

func joinPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
