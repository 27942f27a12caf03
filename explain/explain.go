// Package explain tells which layer of an overlay each component of a path
// comes from, and why: the whiteout or opaque directory that hides the
// layers below, the redirect a renamed directory follows, the origin of a
// copied-up object, the index entry of a hard link, the layer that holds a
// metacopy file's data. It walks the layers as the kernel's overlayfs
// lookup does (fs/overlayfs/namei.c: ovl_lookup), reading them only
// through package format (directory descriptors, openat2
// RESOLVE_BENEATH), and writes nothing. It reads the kernel's markers and
// the AUFS ones ovl reads too (format/aufs.go).
//
// An explanation is a list of steps, one per component, each with the
// layer that holds the object's metadata, the layer that holds its data
// where that differs (metacopy), the layers a directory merges, and the
// reasons in sentences. Data-only lower layers ("::") are not explained.
package explain

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
	"github.com/ovl-project/ovl/overlay"
)

// Where is an object in one layer.
type Where struct {
	Layer string `json:"layer"` // "upper", "lower 1" (the topmost lower), ...
	Dir   string `json:"dir"`   // the layer's directory
	Path  string `json:"path"`  // the object's path in the layer ("" is its root)
}

func (w Where) String() string {
	return fmt.Sprintf("%s (%s)", w.Layer, filepath.Join(w.Dir, w.Path))
}

// Step explains one component of the path.
type Step struct {
	Path string `json:"path"` // the merged path up to this component
	// Exists is false when the component is hidden or absent; the steps
	// end there.
	Exists bool   `json:"exists"`
	Type   string `json:"type,omitempty"` // directory, file, symlink, fifo, socket, char device, block device
	// Meta is where the object's metadata (owner, mode, times, xattrs)
	// is, and for all but metacopy files its data too.
	Meta *Where `json:"meta,omitempty"`
	// Data is where a metacopy file's data is.
	Data *Where `json:"data,omitempty"`
	// Merges are the directories a merged directory lists, top first.
	Merges []Where `json:"merges,omitempty"`
	// Reasons say why, in the order the lookup met them.
	Reasons []string `json:"reasons"`
	// Error is the lookup's refusal (damaged metadata), if any.
	Error string `json:"error,omitempty"`
}

// Explanation is the answer for one path.
type Explanation struct {
	Path   string  `json:"path"`
	Layers []Where `json:"layers"`
	Steps  []Step  `json:"steps"`
}

// layer is one opened layer.
type layer struct {
	Where
	root  int
	uuid  [16]byte
	hasID bool
}

// dirRef is a directory of the merged view in one layer.
type dirRef struct {
	l    *layer
	path string
}

type explainer struct {
	cfg      overlay.Config
	names    format.Names
	upper    *layer
	lowers   []*layer
	follow   bool
	metacopy bool
	index    int // workdir/index, or -1
}

// Path explains the path p ("/a/b" or "a/b", relative to the overlay's
// root) in the overlay of cfg.
func Path(cfg overlay.Config, p string) (*Explanation, error) {
	_, follow, err := cfg.Redirects()
	if err != nil {
		return nil, err
	}
	e := &explainer{cfg: cfg, names: format.NewNames(cfg.UserXattr), follow: follow, metacopy: cfg.Metacopy == "on", index: -1}
	defer e.close()
	open := func(name, dir string) (*layer, error) {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		fd, _, err := format.OpenLayerRoot(abs)
		if err != nil {
			return nil, err
		}
		l := &layer{Where: Where{Layer: name, Dir: abs}, root: fd}
		l.uuid, l.hasID = format.FSUUID(fd)
		return l, nil
	}
	if cfg.Upper != "" {
		if e.upper, err = open("upper", cfg.Upper); err != nil {
			return nil, err
		}
		if cfg.Index == "on" && cfg.Work != "" {
			if fd, err := unix.Open(filepath.Join(cfg.Work, format.IndexDirName), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
				e.index = fd
			}
		}
	}
	for i, d := range cfg.Lowers {
		l, err := open(fmt.Sprintf("lower %d", i+1), d)
		if err != nil {
			return nil, err
		}
		e.lowers = append(e.lowers, l)
	}
	ex := &Explanation{Path: "/" + strings.Trim(filepath.Clean("/"+p), "/")}
	for _, l := range e.all() {
		ex.Layers = append(ex.Layers, l.Where)
	}
	// The root merges every layer.
	var upper *dirRef
	if e.upper != nil {
		upper = &dirRef{e.upper, ""}
	}
	var lowers []dirRef
	for _, l := range e.lowers {
		lowers = append(lowers, dirRef{l, ""})
	}
	cur := ""
	for _, name := range strings.Split(strings.Trim(ex.Path, "/"), "/") {
		if name == "" {
			break
		}
		cur += "/" + name
		st, nu, nl := e.lookup(upper, lowers, name)
		st.Path = cur
		ex.Steps = append(ex.Steps, st)
		if !st.Exists || st.Error != "" {
			break
		}
		if st.Type != "directory" {
			if cur != ex.Path {
				ex.Steps = append(ex.Steps, Step{Path: ex.Path, Reasons: []string{strings.TrimPrefix(cur, "/") + " is a " + st.Type + ", not a directory"}})
			}
			break
		}
		upper, lowers = nu, nl
	}
	return ex, nil
}

func (e *explainer) all() []*layer {
	if e.upper != nil {
		return append([]*layer{e.upper}, e.lowers...)
	}
	return e.lowers
}

func (e *explainer) close() {
	for _, l := range e.all() {
		unix.Close(l.root)
	}
	if e.index >= 0 {
		unix.Close(e.index)
	}
}

// entry is what one layer holds at a name.
type entry struct {
	st        unix.Stat_t
	whiteout  string // why it is a whiteout ("" if none)
	dir       int    // O_PATH fd of the parent directory in the layer
	name      string
	path      string // in the layer
	parentXWh bool
}

// probe looks at name in the directory at path dir of layer l: nil when
// absent (or the directory is missing).
func (e *explainer) probe(l *layer, dir, name string) (*entry, error) {
	at := dir
	if at == "" {
		at = "."
	}
	dfd, err := format.OpenAt(l.root, at, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		if err == unix.ENOENT || err == unix.ENOTDIR {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: open %s: %w", l.Layer, filepath.Join(l.Dir, dir), err)
	}
	en := &entry{dir: dfd, name: name, path: filepath.Join(dir, name)}
	v, _ := format.Getxattr(dfd, e.names.Name(format.Opaque))
	_, en.parentXWh = format.ParseOpaque(v)
	// AUFS: ".wh.NAME" hides NAME in this layer and below.
	var ast unix.Stat_t
	if format.Lstat(dfd, format.AUFSWhiteout(name), &ast) == nil {
		en.whiteout = fmt.Sprintf("the AUFS whiteout %s in %s", format.AUFSWhiteout(name), l.Layer)
		return en, nil
	}
	if err := format.Lstat(dfd, name, &en.st); err != nil {
		unix.Close(dfd)
		if err == unix.ENOENT {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: %s: %w", l.Layer, filepath.Join(l.Dir, en.path), err)
	}
	switch {
	case format.IsWhiteoutStat(&en.st):
		en.whiteout = fmt.Sprintf("a whiteout (character device 0/0) in %s", l.Layer)
	case en.parentXWh && format.MaybeXWhiteout(&en.st):
		if v, _ := format.GetxattrAt(dfd, name, e.names.Name(format.Whiteout)); v != nil {
			en.whiteout = fmt.Sprintf("an xattr whiteout (%s, in a directory marked %s=x) in %s",
				e.names.Name(format.Whiteout), e.names.Name(format.Opaque), l.Layer)
		}
	}
	return en, nil
}

func (en *entry) close() {
	if en != nil {
		unix.Close(en.dir)
	}
}

func (en *entry) xattr(name string) []byte {
	v, _ := format.GetxattrAt(en.dir, en.name, name)
	return v
}

// opaque reports why the directory en is opaque ("" if it is not).
func (e *explainer) opaque(en *entry, l *layer) string {
	if format.DirFlag(en.xattr(e.names.Name(format.Opaque))) == format.OpaqueYes {
		return fmt.Sprintf("it is opaque in %s (%s=y): the layers below do not count", l.Layer, e.names.Name(format.Opaque))
	}
	var st unix.Stat_t
	if fd, err := format.OpenAt(en.dir, en.name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0); err == nil {
		defer unix.Close(fd)
		if format.Lstat(fd, format.AUFSOpaque, &st) == nil {
			return fmt.Sprintf("it is opaque in %s (it holds %s): the layers below do not count", l.Layer, format.AUFSOpaque)
		}
	}
	if format.ParseForeignOpaque(en.xattr(format.FuseOverlayfsOpaque)) {
		return fmt.Sprintf("it is opaque in %s (%s=y): the layers below do not count", l.Layer, format.FuseOverlayfsOpaque)
	}
	return ""
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "file"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "char device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "object"
}

// lookup explains name in the merged directory whose upper part is upper
// (nil: none) and whose lower parts are lowers; it returns the step and,
// for a directory, its own parts.
func (e *explainer) lookup(upper *dirRef, lowers []dirRef, name string) (Step, *dirRef, []dirRef) {
	var s Step
	var nu *dirRef
	var nl []dirRef
	say := func(f string, a ...any) { s.Reasons = append(s.Reasons, fmt.Sprintf(f, a...)) }
	fail := func(err error) (Step, *dirRef, []dirRef) {
		s.Exists = false
		s.Error = err.Error()
		return s, nil, nil
	}
	look, fromRoot := name, false
	merge, needData := true, false
	var topLayerIndex = -1
	if upper != nil {
		en, err := e.probe(upper.l, upper.path, name)
		if err != nil {
			return fail(err)
		}
		defer en.close()
		switch {
		case en == nil:
			say("not in the upper layer")
		case en.whiteout != "":
			say("hidden: %s deletes it from every layer below", en.whiteout)
			return s, nil, nil
		default:
			s.Exists, s.Type = true, typeName(en.st.Mode)
			w := Where{Layer: "upper", Dir: upper.l.Dir, Path: en.path}
			s.Meta = &w
			if s.Type == "directory" {
				nu = &dirRef{upper.l, en.path}
				s.Merges = append(s.Merges, w)
				say("the upper layer holds the directory")
				if why := e.opaque(en, upper.l); why != "" {
					say("%s", why)
					merge = false
				} else if !e.follow && len(lowers) == 0 {
					// Not followed, a redirect is not even read where the
					// parent has no lower part (kernel: d.last).
				} else if r, ok, err := e.redirect(en); err != nil {
					return fail(err)
				} else if ok {
					if !e.follow && len(lowers) > 0 {
						return fail(fmt.Errorf("it carries %s=%q, which this mount does not follow (redirect_dir=%s): the overlay refuses it (EPERM)",
							e.names.Name(format.Redirect), r, orDefault(e.cfg.RedirectDir, "nofollow")))
					}
					look = r
					fromRoot = strings.HasPrefix(r, "/")
					say("it was renamed: its %s=%q says its lower part is %s", e.names.Name(format.Redirect), r, redirectWhere(r))
				}
			} else {
				merge = false
				if s.Type == "file" {
					if v := en.xattr(e.names.Name(format.Metacopy)); v != nil {
						if _, err := format.ParseMetacopy(v); err != nil {
							return fail(fmt.Errorf("damaged %s on the upper file: the overlay refuses it (%w)", e.names.Name(format.Metacopy), err))
						}
						r, ok, err := e.redirect(en)
						if err != nil {
							return fail(err)
						}
						if err := e.metacopyOff("the upper layer"); err != nil {
							return fail(err)
						}
						needData, merge = true, true
						say("the upper layer holds its metadata only (%s, a metadata-only copy-up): the data is below", e.names.Name(format.Metacopy))
						if ok {
							look, fromRoot = r, strings.HasPrefix(r, "/")
							say("its %s=%q says the data is %s", e.names.Name(format.Redirect), r, redirectWhere(r))
						}
					}
				}
				if !needData {
					say("the upper layer holds the %s: the layers below do not count", s.Type)
				}
				e.origin(en, lowers, say)
			}
		}
	}
	if fromRoot {
		lowers = nil
		for _, l := range e.lowers {
			lowers = append(lowers, dirRef{l, ""})
		}
	}
	for i := 0; merge && i < len(lowers); i++ {
		d := lowers[i]
		dir, leaf := d.path, look
		if fromRoot {
			dir, leaf = filepath.Split(strings.TrimPrefix(look, "/"))
			dir = strings.TrimSuffix(dir, "/")
		}
		en, err := e.probe(d.l, dir, leaf)
		if err != nil {
			return fail(err)
		}
		if en == nil {
			say("not in %s", d.l.Layer)
			continue
		}
		func() {
			defer en.close()
			if en.whiteout != "" {
				if !s.Exists {
					say("hidden: %s deletes it from the layers below", en.whiteout)
				} else if needData {
					err = fmt.Errorf("the data of the metacopy file is hidden by %s", en.whiteout)
				} else {
					say("%s ends the merge", en.whiteout)
				}
				merge = false
				return
			}
			t := typeName(en.st.Mode)
			w := Where{Layer: d.l.Layer, Dir: d.l.Dir, Path: en.path}
			switch {
			case needData:
				if t != "file" {
					err = fmt.Errorf("the data of the metacopy file is a %s in %s", t, d.l.Layer)
					return
				}
				s.Data = &w
				if v := en.xattr(e.names.Name(format.Metacopy)); v != nil {
					say("%s holds metadata only too (%s): the data is further below", d.l.Layer, e.names.Name(format.Metacopy))
					if r, ok, _ := e.redirect(en); ok {
						look = r
					}
					return
				}
				say("%s holds its data", d.l.Layer)
				needData, merge = false, false
			case !s.Exists:
				s.Exists, s.Type = true, t
				s.Meta = &w
				topLayerIndex = i
				if t != "directory" {
					merge = false
					if v := en.xattr(e.names.Name(format.Metacopy)); t == "file" && v != nil {
						if _, perr := format.ParseMetacopy(v); perr != nil {
							err = fmt.Errorf("damaged %s in %s: the overlay refuses it (%w)", e.names.Name(format.Metacopy), d.l.Layer, perr)
							return
						}
						if err = e.metacopyOff(d.l.Layer); err != nil {
							return
						}
						say("%s holds its metadata only (%s): the data is below", d.l.Layer, e.names.Name(format.Metacopy))
						needData, merge = true, true
						if r, ok, _ := e.redirect(en); ok {
							look = r
						}
						return
					}
					say("%s is the topmost layer that holds it", d.l.Layer)
					e.indexed(en, d.l, &s, say)
					return
				}
				say("%s is the topmost layer that holds the directory", d.l.Layer)
				fallthrough
			case t == "directory" && s.Type == "directory":
				if topLayerIndex != i {
					say("it merges with the directory in %s", d.l.Layer)
				}
				s.Merges = append(s.Merges, w)
				nl = append(nl, dirRef{d.l, en.path})
				if why := e.opaque(en, d.l); why != "" {
					say("%s", why)
					merge = false
				} else if e.lastLower(d.l, i, lowers) {
					// Nothing below to follow a redirect into: not read.
				} else if r, ok, rerr := e.redirect(en); rerr != nil {
					err = rerr
				} else if ok && !e.follow {
					err = fmt.Errorf("in %s it carries %s=%q, which this mount does not follow (redirect_dir=%s): the overlay refuses it (EPERM)",
						d.l.Layer, e.names.Name(format.Redirect), r, orDefault(e.cfg.RedirectDir, "nofollow"))
				} else if ok {
					switch {
					case strings.HasPrefix(r, "/"):
						look = r
					case strings.HasPrefix(look, "/"):
						look = look[:strings.LastIndexByte(look, '/')+1] + r
					default:
						look = r
					}
					if strings.HasPrefix(r, "/") && !fromRoot {
						fromRoot = true
						rest := []dirRef{}
						for _, l := range e.lowers[indexOf(e.lowers, d.l)+1:] {
							rest = append(rest, dirRef{l, ""})
						}
						lowers = append(lowers[:i+1:i+1], rest...)
					}
					say("in %s it was renamed: %s=%q says the layers below hold it %s", d.l.Layer, e.names.Name(format.Redirect), r, redirectWhere(r))
				}
			default:
				say("the %s in %s below the directory ends the merge", t, d.l.Layer)
				merge = false
			}
		}()
		if err != nil {
			return fail(err)
		}
	}
	if needData {
		return fail(errors.New("the data of the metacopy file is in no lower layer"))
	}
	if !s.Exists && len(lowers) == 0 && upper != nil && len(e.lowers) > 0 && !strings.HasPrefix(look, "/") {
		s.Reasons = append(s.Reasons, "its parent directory merges no lower layer (see above), so no layer below counts")
	} else if !s.Exists && len(s.Reasons) > 0 && strings.HasPrefix(s.Reasons[len(s.Reasons)-1], "not in") {
		s.Reasons = append(s.Reasons, "no layer holds it")
	} else if !s.Exists && len(s.Reasons) == 0 {
		s.Reasons = append(s.Reasons, "no layer holds it")
	}
	return s, nu, nl
}

// metacopyOff refuses a metacopy file in layer where metacopy is off, as
// the kernel does (EPERM, "refusing to follow metacopy origin").
func (e *explainer) metacopyOff(layer string) error {
	if e.metacopy {
		return nil
	}
	return fmt.Errorf("it is a metacopy file in %s (%s), and this mount has metacopy=off: the overlay refuses it (EPERM)",
		layer, e.names.Name(format.Metacopy))
}

// lastLower reports whether lookup ignores the redirect of a lower
// directory in l, lowers[i]: without follow, in the parent's last lower
// directory; with follow, only in the mount's bottom layer (kernel:
// ovl_lookup, d.last).
func (e *explainer) lastLower(l *layer, i int, lowers []dirRef) bool {
	if !e.follow {
		return i == len(lowers)-1
	}
	return l == e.lowers[len(e.lowers)-1]
}

func indexOf(ls []*layer, l *layer) int {
	for i, x := range ls {
		if x == l {
			return i
		}
	}
	return len(ls)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func redirectWhere(r string) string {
	if strings.HasPrefix(r, "/") {
		return fmt.Sprintf("at %s from the lower layers' roots", r)
	}
	return fmt.Sprintf("named %q in the parent's lower directories", r)
}

// redirect reads the overlay.redirect of en, as the kernel checks it.
func (e *explainer) redirect(en *entry) (string, bool, error) {
	v := en.xattr(e.names.Name(format.Redirect))
	if v == nil {
		return "", false, nil
	}
	r, err := format.ParseRedirect(v)
	if err != nil {
		return "", false, fmt.Errorf("invalid %s=%q on %s: the overlay refuses it (%w)", e.names.Name(format.Redirect), v, en.path, err)
	}
	for _, c := range strings.Split(strings.TrimPrefix(r, "/"), "/") {
		if !format.RedirectComponentOK(c) {
			return "", false, fmt.Errorf("%s=%q names %q: the overlay refuses it (EACCES)", e.names.Name(format.Redirect), r, c)
		}
	}
	return r, true, nil
}

// handle encodes the origin value the kernel would write for en of layer l.
func handle(l *layer, en *entry) []byte {
	if !l.hasID {
		return nil
	}
	h, _, err := unix.NameToHandleAt(en.dir, en.name, 0)
	if err != nil {
		return nil
	}
	return format.EncodeOrigin(h.Type(), h.Bytes(), l.uuid)
}

// origin explains an upper non-directory's overlay.origin: which lower
// object it was copied up from, where the lower directories still hold it
// at the same name, and its index entry.
func (e *explainer) origin(en *entry, lowers []dirRef, say func(string, ...any)) {
	v := en.xattr(e.names.Name(format.Origin))
	if v == nil {
		return
	}
	from := "a lower object"
	for _, d := range lowers {
		le, err := e.probe(d.l, d.path, en.name)
		if err != nil || le == nil {
			continue
		}
		h := handle(d.l, le)
		le.close()
		if h != nil && format.SameOrigin(h, v) {
			from = fmt.Sprintf("%s (%s, the same name)", d.l.Layer, filepath.Join(d.l.Dir, le.path))
			break
		}
	}
	say("it was copied up from %s: %s records the lower object's file handle", from, e.names.Name(format.Origin))
	if e.index >= 0 && en.st.Nlink > 1 {
		name := hex.EncodeToString(v)
		var st unix.Stat_t
		if format.Lstat(e.index, name, &st) == nil && st.Ino == en.st.Ino {
			say("it is a hard link kept whole by the index: %s is the object every name of the lower hard link shows",
				filepath.Join(e.cfg.Work, format.IndexDirName, name))
		}
	}
}

// indexed explains a lower hard link that the index has copied up through
// another name: the overlay shows the index entry instead.
func (e *explainer) indexed(en *entry, l *layer, s *Step, say func(string, ...any)) {
	if e.index < 0 || en.st.Nlink < 2 || en.st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return
	}
	h := handle(l, en)
	if h == nil {
		return
	}
	name := hex.EncodeToString(h)
	var st unix.Stat_t
	if format.Lstat(e.index, name, &st) != nil {
		return
	}
	p := filepath.Join(e.cfg.Work, format.IndexDirName, name)
	w := Where{Layer: "index", Dir: filepath.Join(e.cfg.Work, format.IndexDirName), Path: name}
	s.Meta = &w
	say("it is a lower hard link that was copied up through another name: the index entry %s (named by the lower object's file handle) holds the object, its data and metadata", p)
}

// Text writes ex in sentences.
func (ex *Explanation) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", ex.Path)
	for _, st := range ex.Steps {
		fmt.Fprintf(&b, "  %s: ", st.Path)
		switch {
		case st.Error != "":
			fmt.Fprintf(&b, "refused\n")
		case !st.Exists:
			fmt.Fprintf(&b, "does not exist\n")
		case st.Data != nil:
			fmt.Fprintf(&b, "%s, metadata from %s, data from %s\n", st.Type, st.Meta, st.Data)
		default:
			fmt.Fprintf(&b, "%s from %s\n", st.Type, st.Meta)
		}
		for _, r := range st.Reasons {
			fmt.Fprintf(&b, "    - %s\n", r)
		}
		if len(st.Merges) > 1 {
			var ms []string
			for _, m := range st.Merges {
				ms = append(ms, m.Layer)
			}
			fmt.Fprintf(&b, "    - its listing merges %s\n", strings.Join(ms, ", "))
		}
		if st.Error != "" {
			fmt.Fprintf(&b, "    - %s\n", st.Error)
		}
	}
	return b.String()
}
