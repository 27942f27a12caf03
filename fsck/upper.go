package fsck

import (
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

func (c *checker) run() error {
	if err := c.openIndex(); err != nil {
		return err
	}
	for _, d := range c.roots {
		if id, err := format.IDOf(d.fd); err == nil {
			c.merged[id] = "/"
		}
	}
	if err := c.walk(c.upper, "/", c.roots, true, false); err != nil {
		return err
	}
	c.checkRedirectSources()
	if err := c.checkWork(); err != nil {
		return err
	}
	return c.checkIndex()
}

// dirState is what the walk knows of one upper directory.
type dirState struct {
	fd    int
	path  string
	stack []lowerDir // the lower directories it merges with
	known bool       // stack is known (no invalid redirect on the way)
}

// walk checks the entries of the upper directory fd at path, whose lower
// stack is stack (known: the stack could be found), and then its
// overlay.impure against what the entries need.
func (c *checker) walk(fd int, path string, stack []lowerDir, known, opaque bool) error {
	names, err := readNames(fd)
	if err != nil {
		return fmt.Errorf("read upper directory %s: %w", path, err)
	}
	sort.Strings(names)
	d := &dirState{fd: fd, path: path, stack: stack, known: known}
	if opaque {
		d.stack = nil
	}
	hidden := c.aufs(d, names)
	var needBy string // the first entry with an origin the kernel uses: it needs impure
	for _, name := range names {
		if format.IsAUFSName(name) || hidden[name] {
			continue
		}
		where := "upper:" + joinPath(path, name)
		var st unix.Stat_t
		if err := format.Lstat(fd, name, &st); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return fmt.Errorf("stat %s: %w", where, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			if format.IsWhiteoutStat(&st) {
				c.checkWhiteout(d, name, where)
				continue
			}
		case unix.S_IFDIR:
			need, err := c.checkDir(d, name, where, &st)
			if err != nil {
				return err
			}
			if need && needBy == "" {
				needBy = name
			}
			continue
		case unix.S_IFREG:
			if st.Nlink > 1 {
				c.links[format.StatID(&st)]++
			}
			if meta, need := c.checkMetacopy(d, name, where, &st); meta {
				if need && needBy == "" {
					needBy = name
				}
				continue
			}
		}
		if c.checkOrigin(fd, name, where, &st, nil, false) && needBy == "" {
			needBy = name
		}
	}
	// The root's impure marker also tells uuid=auto that the upper is
	// not new: never report it as stale.
	if path != "/" || needBy != "" {
		c.checkImpure(d, needBy)
	}
	return nil
}

// checkWhiteout: a whiteout that hides nothing (no lower layer of its
// directory has the name) is removed; the view stays the same.
func (c *checker) checkWhiteout(d *dirState, name, where string) {
	if !d.known || c.lowerHas(d.stack, name) {
		return
	}
	c.say(Finding{Kind: OrphanWhiteout, Where: where, What: "whiteout hides nothing: no lower layer shows this name here", Repair: "remove it"},
		Preen, func() error { return unlinkIfWhiteout(d.fd, name) })
}

func unlinkIfWhiteout(dirfd int, name string) error {
	var st unix.Stat_t
	if err := format.Lstat(dirfd, name, &st); err != nil || !format.IsWhiteoutStat(&st) {
		return fmt.Errorf("%s changed meanwhile", name)
	}
	return unix.Unlinkat(dirfd, name, 0)
}

// checkDir checks an upper directory's markers and walks it.
func (c *checker) checkDir(d *dirState, name, where string, st *unix.Stat_t) (bool, error) {
	fd, err := format.OpenAt(d.fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", where, err)
	}
	defer unix.Close(fd)
	opq := c.names.Name(format.Opaque)
	rdr := c.names.Name(format.Redirect)
	ov, _ := format.Getxattr(fd, opq)
	opaque := format.DirFlag(ov) == format.OpaqueYes
	if !opaque {
		if v, _ := format.Getxattr(fd, format.FuseOverlayfsOpaque); format.ParseForeignOpaque(v) {
			opaque = true
		}
		var ast unix.Stat_t
		if format.Lstat(fd, format.AUFSOpaque, &ast) == nil {
			opaque = true // the AUFS marker, converted by the walk below
		}
	}
	known := d.known
	var stack []lowerDir
	resolved := false // the redirect decided the stack: no lookup by name
	rv, _ := format.Getxattr(fd, rdr)
	switch {
	case rv == nil:
	case !c.follow:
		// The kernel refuses the lookup only where it would go on below.
		if !opaque && (len(d.stack) > 0 || !known) {
			c.say(Finding{Kind: IgnoredRedirect, Where: where,
				What: fmt.Sprintf("directory has overlay.redirect %q, which these options do not follow (the kernel answers EPERM): give the options the upper was written with (redirect_dir=on, no userxattr)", rv)},
				Yes, nil)
			known = false
		}
	default:
		r, perr := format.ParseRedirect(rv)
		var res found
		if perr == nil && known {
			res = c.lookup(d.stack, name, r, true)
		}
		switch {
		case perr != nil || res.bad:
			what := fmt.Sprintf("overlay.redirect %q is invalid", rv)
			if perr == nil {
				what = fmt.Sprintf("overlay.redirect %q names \".\", \"..\" or an empty name: it points outside the layers", rv)
			}
			what += " (the kernel fails the lookup)"
			c.closeStack(res.dirs)
			shadow := true // where the parent's layers are unknown: hide what may be below
			if known {
				own := c.lookup(d.stack, name, "", true)
				shadow = len(own.dirs) > 0
				c.closeStack(own.dirs)
			}
			repair := "remove it: the directory shows its upper entries only"
			if shadow {
				repair = "mark the directory opaque and remove the redirect: it shows its upper entries only"
			}
			c.say(Finding{Kind: BadRedirect, Where: where, What: what, Repair: repair},
				Yes, func() error {
					if shadow {
						if err := format.Setxattr(fd, opq, format.OpaqueValue(), 0); err != nil {
							return err
						}
					}
					return removexattrAt(fd, "", rdr)
				})
			if c.opts.Mode == Yes {
				opaque = opaque || shadow
				stack = nil
				rv = nil
			} else {
				known = false
			}
		case !known:
		case len(res.dirs) == 0 && !opaque:
			own := c.lookup(d.stack, name, "", true)
			shadow := len(own.dirs) > 0
			c.closeStack(own.dirs)
			repair := "remove it (the directory merges with nothing either way)"
			if shadow {
				repair = "mark the directory opaque and remove the redirect (the lower directory of the same name stays hidden)"
			}
			c.say(Finding{Kind: DanglingRedirect, Where: where,
				What: fmt.Sprintf("overlay.redirect %q names no directory of the lower layers", r), Repair: repair},
				Preen, func() error {
					if shadow {
						if err := format.Setxattr(fd, opq, format.OpaqueValue(), 0); err != nil {
							return err
						}
					}
					return removexattrAt(fd, "", rdr)
				})
			// Dangling, the redirect merges nothing, and the name's own
			// lower directory stays hidden: as opaque, before and after.
			resolved = true
		default:
			resolved = true
			stack = res.dirs
			c.redirects = append(c.redirects, redirected{where: where, lower: res.dirs[0].path, layer: res.dirs[0].layer})
		}
	}
	if known && !opaque && !resolved {
		stack = c.lookup(d.stack, name, "", true).dirs
	}
	if opaque {
		c.closeStack(stack)
		stack = nil
	}
	defer c.closeStack(stack)
	if known && ov != nil && opaque && format.DirFlag(ov) == format.OpaqueYes && rv == nil {
		own := c.lookup(d.stack, name, "", true)
		if len(own.dirs) == 0 {
			c.say(Finding{Kind: UselessOpaque, Where: where, Note: true,
				What: "opaque directory hides nothing: no lower layer has a directory here", Repair: "remove overlay.opaque"},
				Yes, func() error { return removexattrAt(fd, "", opq) })
		}
		c.closeStack(own.dirs)
	}
	p := joinPath(d.path, name)
	for _, l := range stack {
		id, err := format.IDOf(l.fd)
		if err != nil {
			continue
		}
		if prev, dup := c.merged[id]; dup {
			c.say(Finding{Kind: DupRedirect, Where: where,
				What: fmt.Sprintf("merges the lower directory %s (layer %d), which %s merges too: the lower directory shows twice (fsck cannot tell which one the user meant)", l.path, l.layer+1, prev)},
				Yes, nil)
		} else {
			c.merged[id] = p
		}
	}
	var top *lowerDir
	if len(stack) > 0 {
		top = &stack[0]
	}
	need := c.checkOrigin(d.fd, name, where, st, top, false)
	if err := c.walk(fd, p, stack, known, opaque); err != nil {
		return false, err
	}
	return need, nil
}

// checkMetacopy checks a regular file's overlay.metacopy: the data it
// stands for must be in a lower layer. It reports whether the file has an
// origin its parent needs impure for.
func (c *checker) checkMetacopy(d *dirState, name, where string, st *unix.Stat_t) (meta, need bool) {
	v, _ := format.GetxattrAt(d.fd, name, c.names.Name(format.Metacopy))
	if v == nil {
		return false, false
	}
	if _, err := format.ParseMetacopy(v); err != nil {
		c.say(Finding{Kind: MetacopyNoData, Where: where, What: fmt.Sprintf("overlay.metacopy has %d bytes: a corrupted layer (the kernel answers EIO)", len(v))}, Yes, nil)
		return true, c.checkOrigin(d.fd, name, where, st, nil, true)
	}
	if !c.meta {
		c.say(Finding{Kind: MetacopyNoData, Where: where,
			What: "metacopy file, but these options do not follow metacopy (the kernel answers EPERM): give metacopy=on"}, Yes, nil)
		return true, c.checkOrigin(d.fd, name, where, st, nil, true)
	}
	if d.known {
		var r string
		if rv, _ := format.GetxattrAt(d.fd, name, c.names.Name(format.Redirect)); rv != nil {
			var err error
			if r, err = format.ParseRedirect(rv); err != nil {
				c.say(Finding{Kind: BadRedirect, Where: where, What: fmt.Sprintf("metacopy file with an invalid overlay.redirect %q: its data cannot be found", rv)}, Yes, nil)
				return true, c.checkOrigin(d.fd, name, where, st, nil, true)
			}
		}
		res := c.lookup(d.stack, name, r, false)
		if res.dataFd < 0 {
			what := "metacopy file whose data is in no lower layer (the kernel answers EIO): the data is lost"
			if r != "" {
				what = fmt.Sprintf("metacopy file whose data, at %q, is in no lower layer (the kernel answers EIO): the data is lost", r)
			}
			c.say(Finding{Kind: MetacopyNoData, Where: where, What: what}, Yes, nil)
		} else {
			c.checkMetacopyData(d, name, where, st, res)
			unix.Close(res.dataFd)
		}
	}
	return true, c.checkOrigin(d.fd, name, where, st, nil, true)
}

// checkImpure compares a directory's overlay.impure with what its entries
// need: one whose origin the kernel uses needs it (readdir must then give
// the overlay's inode numbers); one no entry needs is harmless, and the
// kernel leaves such markers behind itself.
func (c *checker) checkImpure(d *dirState, needBy string) {
	need := needBy != ""
	attr := c.names.Name(format.Impure)
	v, _ := format.Getxattr(d.fd, attr)
	has := format.ParseImpure(v)
	where := "upper:" + d.path
	switch {
	case need && !has:
		c.say(Finding{Kind: MissingImpure, Where: where,
			What: fmt.Sprintf("directory holds copied-up entries (%s) but has no overlay.impure (readdir would give them the wrong inode numbers)", needBy), Repair: "set overlay.impure"},
			Preen, func() error { return format.Setxattr(d.fd, attr, format.ImpureValue(), 0) })
	case !need && v != nil:
		c.say(Finding{Kind: StaleImpure, Where: where, Note: true, What: "overlay.impure, but no entry needs it", Repair: "remove overlay.impure"},
			Yes, func() error { return removexattrAt(d.fd, "", attr) })
	}
}

// aufs turns the AUFS entries of an upper directory into the kernel's
// forms (as ovl does when it writes there, overlay/aufs.go) and returns
// the names they hide, which the rest of the walk leaves alone where they
// stay. ovl reads the AUFS forms; the kernel shows them as files.
func (c *checker) aufs(d *dirState, names []string) map[string]bool {
	hidden := map[string]bool{}
	for _, n := range names {
		if !format.IsAUFSName(n) {
			continue
		}
		where := "upper:" + joinPath(d.path, n)
		if n == format.AUFSOpaque {
			isRoot := d.path == "/"
			repair := "mark the directory overlay.opaque=y and remove the marker"
			if isRoot {
				repair = "remove the marker (the root of a layer is never opaque)"
			}
			c.say(Finding{Kind: AUFSWhiteout, Where: where, What: "AUFS opaque marker in the upper (the kernel shows it as a file)", Repair: repair},
				Preen, func() error {
					if !isRoot {
						if err := format.Setxattr(d.fd, c.names.Name(format.Opaque), format.OpaqueValue(), 0); err != nil {
							return err
						}
					}
					return removeAll(d.fd, n)
				})
			d.stack = nil
			continue
		}
		h, ok := format.AUFSWhiteoutOf(n)
		if !ok || strings.HasPrefix(n, format.AUFSPrefix+format.AUFSPrefix) {
			c.say(Finding{Kind: AUFSWhiteout, Where: where, What: "AUFS metadata in the upper (the kernel shows it; ovl hides it)"}, Yes, nil)
			continue
		}
		hidden[h] = true
		var st unix.Stat_t
		besideErr := format.Lstat(d.fd, h, &st)
		lower := d.known && c.lowerHas(d.stack, h)
		switch {
		case besideErr == nil && !format.IsWhiteoutStat(&st):
			repair := "remove " + h + ", which it hides, and put a whiteout in its place"
			if !lower {
				repair = "remove " + h + ", which it hides"
			}
			c.say(Finding{Kind: AUFSWhiteout, Where: where,
				What: fmt.Sprintf("AUFS whiteout in the upper hides %s beside it (the kernel shows both)", h), Repair: repair},
				Yes, func() error {
					if err := removeAll(d.fd, h); err != nil {
						return err
					}
					if lower {
						if err := format.MakeWhiteout(d.fd, h); err != nil {
							return err
						}
					}
					return removeAll(d.fd, n)
				})
		case besideErr == nil || !lower:
			if !d.known {
				continue
			}
			c.say(Finding{Kind: AUFSWhiteout, Where: where, What: "AUFS whiteout in the upper that hides nothing more", Repair: "remove it"},
				Preen, func() error { return removeAll(d.fd, n) })
		default:
			c.say(Finding{Kind: AUFSWhiteout, Where: where, What: "AUFS whiteout in the upper (the kernel shows it as a file)", Repair: "replace it by a kernel whiteout of " + h},
				Preen, func() error {
					if err := format.MakeWhiteout(d.fd, h); err != nil && err != unix.EEXIST {
						return err
					}
					return removeAll(d.fd, n)
				})
		}
	}
	return hidden
}

// removeAll removes name in dirfd and, for a directory, what it holds.
func removeAll(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	fd, err := format.OpenAt(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	names, err := readNames(fd)
	if err == nil {
		for _, n := range names {
			if err = removeAll(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// redirected is an upper directory whose redirect names a lower directory.
type redirected struct {
	where string // the upper directory
	lower string // the path of the lower directory in its layer
	layer int
}

// checkRedirectSources checks that the lower directory each redirect
// names does not show at its own path too: a rename leaves a whiteout
// there (or a directory made over it, opaque, or renamed itself), so
// that the directory shows once (kernel: ovl_rename with RENAME_WHITEOUT).
func (c *checker) checkRedirectSources() {
	for _, r := range c.redirects {
		if c.upperCovers(r.lower) {
			continue
		}
		res := c.lookup(c.roots, "", r.lower, true)
		visible := false
		for _, d := range res.dirs {
			if d.layer == r.layer && d.path == r.lower {
				visible = true
			}
		}
		c.closeStack(res.dirs)
		if visible {
			c.say(Finding{Kind: DupRedirect, Where: r.where,
				What: fmt.Sprintf("redirects to the lower directory %s (layer %d), which also shows at its own path: no whiteout covers it there (fsck cannot tell which one the user meant)", r.lower, r.layer+1)},
				Yes, nil)
		}
	}
}

// upperCovers reports whether the upper hides the lower object at path
// (absolute, in layer terms) from a lookup by name: a whiteout or a
// non-directory on the way, an opaque directory, or a directory that
// redirects elsewhere. A directory of the upper at path itself merges by
// name and is left to the duplicate check of the walk.
func (c *checker) upperCovers(path string) bool {
	comps := strings.Split(strings.TrimPrefix(path, "/"), "/")
	cur := c.upper
	defer func() {
		if cur != c.upper {
			unix.Close(cur)
		}
	}()
	for i, cp := range comps {
		var st unix.Stat_t
		if err := format.Lstat(cur, cp, &st); err != nil {
			return false // the upper lacks it: the lower shows through
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return true
		}
		fd, err := format.OpenAt(cur, cp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return false
		}
		if cur != c.upper {
			unix.Close(cur)
		}
		cur = fd
		if v, _ := format.Getxattr(fd, c.names.Name(format.Opaque)); format.DirFlag(v) == format.OpaqueYes {
			return true
		}
		if v, _ := format.Getxattr(fd, c.names.Name(format.Redirect)); v != nil {
			return true
		}
		if i == len(comps)-1 {
			return true // merged by name: the walk's duplicate check
		}
	}
	return false
}

// checkMetacopyData compares a metacopy file with the lower file that
// holds its data now: a lower changed offline can leave it showing
// another file's data (its origin names another file) or a size that is
// not the data's. Nothing can be repaired: which data is right is the
// user's to tell.
func (c *checker) checkMetacopyData(d *dirState, name, where string, st *unix.Stat_t, res found) {
	var dst unix.Stat_t
	if unix.Fstat(res.dataFd, &dst) != nil {
		return
	}
	if c.decode {
		if v, _ := format.GetxattrAt(d.fd, name, c.names.Name(format.Origin)); len(v) > 0 {
			if o := c.decodeOrigin(v); o.ok && (o.st.Dev != dst.Dev || o.st.Ino != dst.Ino) {
				c.say(Finding{Kind: StaleOrigin, Where: where,
					What: fmt.Sprintf("metacopy file shows the data of %s, but was copied up from another lower file (a lower layer changed offline)", res.dataPath)},
					Yes, nil)
				return
			}
		}
	}
	if dst.Size != st.Size {
		c.say(Finding{Kind: MetacopyNoData, Where: where,
			What: fmt.Sprintf("metacopy file of %d bytes over lower data of %d bytes at %s (a lower layer changed offline)", st.Size, dst.Size, res.dataPath)},
			Yes, nil)
	}
}
