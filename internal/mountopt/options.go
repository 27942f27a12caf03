// Package mountopt parses ovl's -o option strings the way the kernel's
// overlayfs parses its mount data (fs/overlayfs/params.c), and also takes the
// options that fuse-overlayfs users pass, so ovl can stand in for it.
package mountopt

import (
	"fmt"
	"sort"
	"strings"

	"github.com/ovl-project/ovl/fusefs"
	"github.com/ovl-project/ovl/overlay"
)

// Result is what a set of -o strings asks for.
type Result struct {
	// Overlay holds the layers as given (possibly relative paths).
	Overlay overlay.Config
	// FUSE holds the mount flags.
	FUSE fusefs.Options
	// Log is the daemon's log file ("" = none).
	Log string
	// Ignored lists the options accepted without effect, as given, so the
	// daemon can log them.
	Ignored []string
	// Given lists the options given other than the layers (lowerdir,
	// lowerdir+, upperdir, workdir), as given, for "ovl ls".
	Given []string
	// XattrChosen is set when userxattr or nouserxattr was given: the
	// overlay xattr namespace (Overlay.UserXattr) is the caller's choice.
	// Otherwise the mount program picks it by privilege.
	XattrChosen bool
}

// state is the parse in progress.
type state struct {
	res        Result
	lowers     []string
	lowerPlain bool // lowerdir= seen
	lowerPlus  bool // lowerdir+= seen
	upper      string
	work       string
	ids        idState // uidmapping= and the squash options (ids.go)
	mount      bool    // the layers are for a mount: an upperdir needs a workdir
}

// Parse reads the -o strings in order (later options win, as in the kernel).
// asRoot selects the defaults: as root the mount allows other users (the
// container's users) and keeps setuid and device files working.
func Parse(opts []string, asRoot bool) (*Result, error) {
	return parse(opts, asRoot, true)
}

// ParseLayers reads -o strings as Parse does, for a command that reads
// the layers without mounting them (ovl diff): there an upperdir needs no
// workdir, which only a mount writes to.
func ParseLayers(opts []string) (*Result, error) {
	return parse(opts, true, false)
}

func parse(opts []string, asRoot, mount bool) (*Result, error) {
	s := &state{mount: mount}
	s.res.FUSE.AllowOther = asRoot
	for _, o := range opts {
		items, err := split(o)
		if err != nil {
			return nil, err
		}
		for _, item := range items {
			if item == "" {
				continue // "a,,b" and a trailing comma, as the kernel allows
			}
			if err := s.apply(item); err != nil {
				return nil, err
			}
		}
	}
	return s.finish()
}

func (s *state) apply(item string) error {
	name, val, hasVal := strings.Cut(item, "=")
	opt, ok := lookup(name)
	if !ok {
		return fmt.Errorf("unknown option %q", name)
	}
	if opt.refused != "" {
		return fmt.Errorf("option %q is not supported: %s", name, opt.refused)
	}
	switch {
	case opt.values != nil:
		if !hasVal {
			return fmt.Errorf("option %q needs a value (one of %s)", name, valueList(opt.values))
		}
		supported, known := opt.values[val]
		if !known {
			return fmt.Errorf("option %q has an invalid value %q (want one of %s)", name, val, valueList(opt.values))
		}
		if !supported {
			return fmt.Errorf("option %q is not supported yet (%s); use %s", item, opt.lacks, opt.use)
		}
	case opt.free:
		if !hasVal && opt.ignored == "" {
			return fmt.Errorf("option %q needs a value", name)
		}
	default:
		if hasVal {
			return fmt.Errorf("option %q takes no value", name)
		}
	}
	switch name {
	case "lowerdir", "lowerdir+", "upperdir", "workdir":
	default:
		s.res.Given = append(s.res.Given, item)
	}
	if opt.ignored != "" {
		s.res.Ignored = append(s.res.Ignored, item)
		return nil
	}
	if opt.set == nil {
		return nil
	}
	if err := opt.set(s, val); err != nil {
		return fmt.Errorf("option %q: %w", name, err)
	}
	return nil
}

// lookup finds an option in the table; every name that starts with "x-"
// (x-systemd.automount, x-mount.mkdir=0700, ...) is the entry "x-*", as
// mount(8) treats them all as comments.
func lookup(name string) (option, bool) {
	if strings.HasPrefix(name, "x-") {
		name = "x-*"
	}
	opt, ok := options[name]
	return opt, ok
}

// setXattrNS records an explicit userxattr (user) or nouserxattr.
func (s *state) setXattrNS(user bool) {
	s.res.Overlay.UserXattr = user
	s.res.XattrChosen = true
}

func setLowerdir(s *state, v string) error {
	if s.lowerPlus {
		return fmt.Errorf("cannot be mixed with lowerdir+")
	}
	s.lowerPlain = true
	if v == "" {
		s.lowers = nil // the kernel's "lowerdir=" resets the list
		return nil
	}
	layers, err := splitLowers(v)
	if err != nil {
		return err
	}
	s.lowers = layers
	return nil
}

// setLowerdirPlus appends one layer, as the kernel's lowerdir+ (one path per
// option, colons are part of the name).
func setLowerdirPlus(s *state, v string) error {
	if s.lowerPlain {
		return fmt.Errorf("cannot be mixed with lowerdir")
	}
	if v == "" {
		return fmt.Errorf("needs a path")
	}
	s.lowerPlus = true
	s.lowers = append(s.lowers, unescape(v))
	return nil
}

func (s *state) finish() (*Result, error) {
	r := &s.res
	if len(s.lowers) == 0 {
		return nil, fmt.Errorf("missing lowerdir: give at least one lower layer (-o lowerdir=DIR[:DIR...])")
	}
	switch {
	case s.upper != "" && s.work == "" && s.mount:
		return nil, fmt.Errorf("upperdir needs a workdir too (-o upperdir=DIR,workdir=DIR on the same filesystem)")
	case s.upper == "" && s.work != "":
		return nil, fmt.Errorf("workdir needs an upperdir too (give both or neither)")
	}
	if len(s.lowers) > maxStack {
		return nil, fmt.Errorf("too many lower layers (%d, the kernel allows %d)", len(s.lowers), maxStack)
	}
	r.Overlay.IDs = s.ids.result()
	r.Overlay.Lowers = s.lowers
	r.Overlay.Upper = s.upper
	r.Overlay.Work = s.work
	if s.upper == "" {
		// Without an upper there is nothing to write to: a read-only mount
		// gives EROFS instead of errors from deep inside the overlay.
		r.FUSE.ReadOnly = true
	}
	return r, nil
}

// maxStack is the kernel's OVL_MAX_STACK.
const maxStack = 500

func valueList(values map[string]bool) string {
	var vs []string
	for v := range values {
		vs = append(vs, v)
	}
	sort.Strings(vs)
	return strings.Join(vs, ", ")
}

// IgnoredOptions lists the option names accepted without effect, with the reason,
// sorted; the README's table is made from it.
func IgnoredOptions() [][2]string {
	var out [][2]string
	for name, o := range options {
		if o.ignored != "" {
			out = append(out, [2]string{name, o.ignored})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}
