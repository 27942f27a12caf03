package overlay

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// Redirects (kernel: redirect_dir=on) let a directory with a lower part be
// renamed in O(1): the upper directory records in overlay.redirect where
// its lower part is, and lookups follow it.
//   - Renamed within its parent, a directory records its old name
//     (relative); moved to another parent, the absolute path of its lower
//     part from the layer roots (kernel: ovl_set_redirect, ovl_get_redirect).
//   - Damaged values are answered as the kernel answers them (checked on
//     6.18 by TestKernelDamagedMetadata): the value ends at its first NUL;
//     an empty value, an absolute one with an empty component and a
//     relative one holding '/' are EINVAL (format.ParseRedirect); a ".",
//     ".." or empty name met while walking it is EACCES, as lookup_one
//     refuses it, so no redirect leaves a layer or names its own
//     directory; a name that is too long is not found.
//   - Without redirect_dir=on or follow (nofollow, and userxattr), a valid
//     redirect is not followed: a directory that carries one and would be
//     looked up in the layers below is EPERM (kernel: ovl_lookup, "refusing
//     to follow redirect").
//   - Followed, a redirect is read on every directory but one in the
//     mount's bottom layer, even where the parent has no lower part below
//     it; not followed, only where the parent's lower part goes on below
//     (kernel: ovl_lookup, d.last; see Overlay.lastLower).
//   - An absolute redirect restarts the lookup at the lower roots, even
//     under an opaque directory; an opaque directory met on its path stops
//     the layers below.

// redirectMax is the kernel's redirect_max default: a longer redirect makes
// the rename fall back to EXDEV.
const redirectMax = 256

// redirectOf reads and checks a directory's overlay.redirect; ok is false
// when there is none. A value that starts with NUL is a redirect to the
// empty name (ok, r == ""), which the walk refuses (EACCES), as the
// kernel's does.
func (o *Overlay) redirectOf(fd int) (r string, ok bool, err error) {
	v, err := format.Getxattr(fd, o.names.Name(format.Redirect))
	if err != nil || v == nil {
		return "", false, nil
	}
	return o.parseRedirect(v)
}

// redirectAt is redirectOf for name in dirfd.
func (o *Overlay) redirectAt(dirfd int, name string) (r string, ok bool, err error) {
	v, err := format.GetxattrAt(dirfd, name, o.names.Name(format.Redirect))
	if err != nil || v == nil {
		return "", false, nil
	}
	return o.parseRedirect(v)
}

func (o *Overlay) parseRedirect(v []byte) (string, bool, error) {
	r, err := format.ParseRedirect(v)
	if err != nil {
		return "", false, fmt.Errorf("invalid %s %q: %w", o.names.Name(format.Redirect), v, err)
	}
	return r, true, nil
}

// redirectRefused is the error for a redirect that nofollow does not
// follow (kernel: ovl_check_nextredirect).
func (o *Overlay) redirectRefused(name string) error {
	return fmt.Errorf("refusing to follow the redirect of %s: %w", name, unix.EPERM)
}

// walked is where a lookup in one lower layer ends: the directory and leaf
// name to probe.
type walked struct {
	dirfd int
	owned bool // dirfd was opened by walkLower
	xwh   bool
	aufs  *aufsDir // dirfd's AUFS markers (nil: probe them)
	leaf  string
	found bool // every directory on the way exists
	stop  bool // an opaque directory on the way hides the layers below
}

func (w walked) close() {
	if w.owned {
		unix.Close(w.dirfd)
	}
}

// walkLower finds the directory that holds look in the lower directory lr:
// lr itself for a name, or the directories of an absolute path from the
// layer root lr.
//
// A name that may not be looked up ("", "." or "..", left in a redirect)
// is EACCES where the walk meets it, as the kernel's lookup_one answers:
// a walk never leaves the layer root it starts from.
func (o *Overlay) walkLower(lr lowerRef, look string) (walked, error) {
	if look == "" || look[0] != '/' {
		if !format.RedirectComponentOK(look) {
			return walked{}, fmt.Errorf("redirect %q: %w", look, unix.EACCES)
		}
		return walked{dirfd: lr.fd, xwh: lr.xwh, aufs: lr.aufs, leaf: look, found: true}, nil
	}
	comps := strings.Split(look[1:], "/")
	w := walked{dirfd: lr.fd, xwh: lr.xwh, aufs: lr.aufs, leaf: comps[len(comps)-1], found: true}
	var st unix.Stat_t
	for _, c := range comps[:len(comps)-1] {
		if !format.RedirectComponentOK(c) {
			w.close()
			return walked{}, fmt.Errorf("redirect %q: %w", look, unix.EACCES)
		}
		k, err := o.probe(w.dirfd, w.xwh, w.aufs, c, &st)
		if err != nil || k != entryDir {
			w.close()
			return walked{}, err
		}
		fd, err := openReal(w.dirfd, c, unix.S_IFDIR, &st)
		w.close()
		if err == nil && o.trapped(st.Dev, st.Ino) {
			unix.Close(fd)
			err = unix.ELOOP // a layer root: see overlap.go
		}
		if err != nil {
			return walked{}, err
		}
		w.dirfd, w.owned, w.xwh, w.aufs = fd, true, o.dirXWhiteouts(fd), nil
		if opq, err := o.anyOpaque(fd, nil); err != nil {
			w.close()
			return walked{}, err
		} else if opq {
			w.stop = true
		}
	}
	if !format.RedirectComponentOK(w.leaf) {
		w.close()
		return walked{}, fmt.Errorf("redirect %q: %w", look, unix.EACCES)
	}
	return w, nil
}

// setRedirect records where the directory or metacopy file d (with a
// lower part, already copied up) finds its lower part, before it
// moves to another name; samedir says the move stays in parent (kernel:
// ovl_set_redirect). Without redirects, or when the path is too long, it
// returns EXDEV: the caller (mv) then copies the tree.
func (o *Overlay) setRedirect(d *Node, samedir bool) error {
	if !o.createRedirects {
		return unix.EXDEV
	}
	d.mu.Lock()
	cur, fd := d.redirect, d.upperFd
	d.mu.Unlock()
	if cur != "" && (samedir || cur[0] == '/') {
		return nil
	}
	var r string
	if samedir {
		_, r = d.location()
	} else {
		r = o.absRedirect(d)
	}
	if r == "" || len(r) > redirectMax {
		return unix.EXDEV
	}
	if !d.IsDir() {
		// A metacopy file holds no descriptor.
		rfd, done, err := d.real()
		if err != nil {
			return unix.EXDEV
		}
		defer done()
		fd = rfd
	}
	d.noteUpper(fd)
	if err := format.Setxattr(fd, o.names.Name(format.Redirect), []byte(r), 0); err != nil {
		return unix.EXDEV
	}
	d.mu.Lock()
	d.redirect = r
	d.mu.Unlock()
	return nil
}

// absRedirect is the absolute path of d's lower part: the names (or
// redirects) of d and its ancestors up to the root or to an absolute
// redirect (kernel: ovl_get_redirect).
func (o *Overlay) absRedirect(d *Node) string {
	type link struct {
		n    *Node
		name string
	}
	var chain []link
	o.treeMu.RLock()
	for n := d; n.parent != nil; n = n.parent {
		chain = append(chain, link{n, n.name})
	}
	o.treeMu.RUnlock()
	var comps []string
	for _, l := range chain {
		l.n.mu.Lock()
		c := l.n.redirect
		l.n.mu.Unlock()
		if c == "" {
			c = l.name
		}
		comps = append(comps, c)
		if c[0] == '/' {
			break
		}
	}
	if len(comps) == 0 {
		return ""
	}
	var b strings.Builder
	for i := len(comps) - 1; i >= 0; i-- {
		if comps[i][0] != '/' {
			b.WriteByte('/')
		}
		b.WriteString(comps[i])
	}
	return b.String()
}
