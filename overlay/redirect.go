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
//   - A relative redirect is one name; an absolute one has no empty, "." or
//     ".." component. Anything else is a corrupted layer: EIO.
//   - An absolute redirect restarts the lookup at the lower roots, even
//     under an opaque directory; an opaque directory met on its path stops
//     the layers below.

// redirectMax is the kernel's redirect_max default: a longer redirect makes
// the rename fall back to EXDEV.
const redirectMax = 256

// redirectOf reads and checks a directory's overlay.redirect ("" if none).
func (o *Overlay) redirectOf(fd int) (string, error) {
	v, err := format.Getxattr(fd, o.names.Name(format.Redirect))
	if err != nil || len(v) == 0 {
		return "", nil
	}
	r := string(v)
	if !validRedirect(r) {
		return "", fmt.Errorf("invalid %s %q: %w", o.names.Name(format.Redirect), r, unix.EIO)
	}
	return r, nil
}

func validRedirect(r string) bool {
	if r[0] != '/' {
		return r != "." && r != ".." && !strings.ContainsRune(r, '/')
	}
	for _, c := range strings.Split(r[1:], "/") {
		if c == "" || c == "." || c == ".." {
			return false
		}
	}
	return true
}

// walked is where a lookup in one lower layer ends: the directory and leaf
// name to probe.
type walked struct {
	dirfd int
	owned bool // dirfd was opened by walkLower
	xwh   bool
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
func (o *Overlay) walkLower(lr lowerRef, look string) (walked, error) {
	if look[0] != '/' {
		return walked{dirfd: lr.fd, xwh: lr.xwh, leaf: look, found: true}, nil
	}
	comps := strings.Split(look[1:], "/")
	w := walked{dirfd: lr.fd, xwh: lr.xwh, leaf: comps[len(comps)-1], found: true}
	var st unix.Stat_t
	for _, c := range comps[:len(comps)-1] {
		k, err := o.probe(w.dirfd, w.xwh, c, &st)
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
		w.dirfd, w.owned, w.xwh = fd, true, o.dirXWhiteouts(fd)
		if o.dirOpaque(fd) {
			w.stop = true
		}
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
