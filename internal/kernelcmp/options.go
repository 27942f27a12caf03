package kernelcmp

import (
	"fmt"
	"path"
	"strings"
)

// Options are the overlay features both sides are mounted with. The kernel
// is given every option spelled out, so that it behaves like ovl does today;
// when ovl gains a feature, a test flips the field and its expectations
// follow (see RedirectsEnabled).
type Options struct {
	// UserXattr uses user.overlay.* instead of trusted.overlay.*.
	UserXattr bool
	// RedirectDir is the redirect_dir= value both sides get. Empty means
	// ovl's default: "on" (renaming a lower or merged directory writes
	// overlay.redirect), or "nofollow" with userxattr, where the kernel
	// refuses redirects (such renames fail with EXDEV).
	RedirectDir string
	// Index, Metacopy, Xino are the kernel's index=, metacopy=, xino=.
	Index, Metacopy, Xino string
	// UUID is the kernel's uuid= ("off": no overlay.uuid on the upper root).
	UUID string
	// ReadOnly mounts without upper and work directories.
	ReadOnly bool
	// OvlExtra are extra -o options for ovl only (e.g. a debug flag).
	OvlExtra []string
}

// DefaultOptions is what ovl does by default: redirects (not with
// userxattr), no index, no metacopy, no xino, no uuid.
func DefaultOptions() Options {
	return Options{Metacopy: "off", Xino: "off", UUID: "off"}
}

// IndexMode is the effective index= value (ovl's default is "off").
func (o Options) IndexMode() string {
	if o.Index != "" {
		return o.Index
	}
	return "off"
}

// Redirect is the effective redirect_dir= value.
func (o Options) Redirect() string {
	switch {
	case o.RedirectDir != "":
		return o.RedirectDir
	case o.UserXattr:
		return "nofollow"
	}
	return "on"
}

// RedirectsEnabled reports whether renaming a lower or merged directory
// succeeds (with overlay.redirect) instead of failing with EXDEV.
func (o Options) RedirectsEnabled() bool { return o.Redirect() == "on" }

// Prefix is the overlay xattr prefix for these options.
func (o Options) Prefix() string { return OverlayPrefix(o.UserXattr) }

// Layout is where one side's layers and mount point are.
type Layout struct {
	Lowers []string // topmost first
	Upper  string   // empty: read-only
	Work   string
	Mnt    string
}

func escapeLayer(p string) string {
	p = strings.ReplaceAll(p, `\`, `\\`)
	p = strings.ReplaceAll(p, `:`, `\:`)
	return strings.ReplaceAll(p, `,`, `\,`)
}

func (l Layout) layerOpts(o Options) []string {
	var lows []string
	for _, d := range l.Lowers {
		lows = append(lows, escapeLayer(d))
	}
	opts := []string{"lowerdir=" + strings.Join(lows, ":")}
	if !o.ReadOnly && l.Upper != "" {
		opts = append(opts, "upperdir="+escapeLayer(l.Upper), "workdir="+escapeLayer(l.Work))
	}
	if o.UserXattr {
		opts = append(opts, "userxattr")
	}
	return opts
}

// KernelOptions is the kernel's mount data for layout l.
func (o Options) KernelOptions(l Layout) string {
	opts := l.layerOpts(o)
	add := func(k, v string) {
		if v != "" {
			opts = append(opts, k+"="+v)
		}
	}
	add("redirect_dir", o.Redirect())
	if !o.ReadOnly {
		add("index", o.IndexMode())
	}
	add("metacopy", o.Metacopy)
	add("xino", o.Xino)
	add("uuid", o.UUID)
	return strings.Join(opts, ",")
}

// OvlOptions is ovl's -o argument for layout l.
func (o Options) OvlOptions(l Layout) string {
	opts := l.layerOpts(o)
	if o.ReadOnly {
		opts = append(opts, "ro")
	}
	if o.RedirectDir != "" {
		opts = append(opts, "redirect_dir="+o.RedirectDir)
	}
	if o.Index != "" && !o.ReadOnly {
		opts = append(opts, "index="+o.Index)
	}
	if o.Metacopy == "on" {
		opts = append(opts, "metacopy=on")
	}
	opts = append(opts, o.OvlExtra...)
	return strings.Join(opts, ",")
}

// Scope says which comparison a Difference applies to.
type Scope string

// The comparison scopes.
const (
	ScopeMerged Scope = "merged" // the mounted view
	ScopeUpper  Scope = "upper"  // the upper layer on disk
	ScopeStatfs Scope = "statfs" // statfs(2) of the mount
)

// Difference is a field that may differ between the kernel and ovl on
// purpose. Field is a Diff.Field ("ino", "xattr:user.foo", "ovl:origin"; a
// trailing * matches a prefix); Types limits it to object types (empty:
// all); Path is a path.Match pattern (empty: all).
type Difference struct {
	Scope  Scope
	Field  string
	Types  []string
	Path   string
	Reason string
}

// Matches reports whether d covers a diff found in scope s.
func (d Difference) Matches(s Scope, df Diff) bool {
	if d.Scope != s {
		return false
	}
	if strings.HasSuffix(d.Field, "*") {
		if !strings.HasPrefix(df.Field, strings.TrimSuffix(d.Field, "*")) {
			return false
		}
	} else if d.Field != df.Field {
		return false
	}
	if len(d.Types) > 0 {
		ok := false
		for _, t := range d.Types {
			ok = ok || t == df.Type
		}
		if !ok {
			return false
		}
	}
	if d.Path != "" {
		if ok, _ := path.Match(d.Path, df.Path); !ok {
			return false
		}
	}
	return true
}

func (d Difference) String() string {
	return fmt.Sprintf("%s %s %v %s: %s", d.Scope, d.Field, d.Types, d.Path, d.Reason)
}

// IntendedDifferences are the differences between the kernel's overlayfs and
// ovl that are by design. Comparisons drop diffs these match.
var IntendedDifferences = []Difference{
	{ScopeMerged, "ino", nil, "", "inode numbers differ between two copies of the layers; which names share one (hard links) is compared (field links)"},
	{ScopeMerged, "dev", nil, "", "st_dev of a FUSE mount is the FUSE connection's anonymous device; the kernel reports the overlay's or the real layer's device"},
	{ScopeMerged, "size", []string{"dir"}, "", "a directory's st_size is filesystem-specific (the kernel passes the upper or lower ext4 size through)"},
	{ScopeUpper, "size", []string{"dir"}, "", "ext4 directory sizes depend on the history of creates and deletes (the kernel's temp files in work/ and renames differ from ovl's)"},
	{ScopeMerged, "blocks", nil, "", "st_blocks depends on allocation; sparseness is checked separately on the upper file"},
	{ScopeUpper, "blocks", nil, "", "st_blocks depends on allocation; sparseness is checked separately"},
	{ScopeMerged, "nlink", []string{"dir"}, "", "the kernel reports nlink=1 for merged directories; directory link counts are not compared"},
	{ScopeUpper, "nlink", []string{"dir"}, "", "directory link counts follow subdirectories and are not compared"},
	{ScopeUpper, "nlink", []string{"whiteout"}, "", "the kernel may hard-link all whiteouts to one shared inode in the work dir"},
	{ScopeUpper, "perm", []string{"whiteout"}, "", "whiteout mode bits carry no meaning"},
	{ScopeUpper, "uid", []string{"whiteout"}, "", "whiteouts are created with the mounter's credentials by the kernel; the owner carries no meaning"},
	{ScopeUpper, "gid", []string{"whiteout"}, "", "whiteouts are created with the mounter's credentials by the kernel; the owner carries no meaning"},
	{ScopeUpper, "ovl:origin", nil, "", "overlay.origin holds a file handle plus fs uuid: bytes differ by design, presence optional (index=off)"},
	{ScopeUpper, "ovl:uuid", nil, "", "overlay.uuid is per-mount identity (uuid=off on the kernel)"},
	{ScopeUpper, "ovl:impure", nil, "", "overlay.impure is a readdir d_ino optimisation hint; optional"},
	{ScopeUpper, "ovl:nlink", nil, "", "overlay.nlink is only meaningful with index=on"},
	{ScopeUpper, "ovl:upper", nil, "", "overlay.upper is only meaningful with index=on"},
	{ScopeStatfs, "f_type", nil, "", "a FUSE mount reports FUSE_SUPER_MAGIC; the kernel reports OVERLAYFS_SUPER_MAGIC"},
	{ScopeStatfs, "f_fsid", nil, "", "filesystem ids differ between a FUSE mount and the kernel overlay"},
	{ScopeStatfs, "f_namelen", nil, "", "FUSE reports the daemon's value"},
}

// userxattrLinks: with userxattr the kernel cannot write user.overlay.origin
// on a symlink or special file, and then gives a link made through the
// mount another overlay inode than the name it links while that name's
// inode is cached: the two names show two inode numbers (the old name the
// lower's) until the cache drops them, one after. ovl keeps every name of
// an upper inode one object (docs/differences.md, fifo-link-shares-pipe).
var userxattrLinks = Difference{ScopeMerged, "links", []string{"symlink", "fifo", "socket", "char", "block"}, "",
	"with userxattr the kernel splits a link of a symlink or special file made through the mount while the old name's inode is cached (no origin); ovl keeps one object"}

// IntendedFor is IntendedDifferences with those that hold only under o.
func IntendedFor(o Options) []Difference {
	if !o.UserXattr {
		return IntendedDifferences
	}
	return append(append([]Difference(nil), IntendedDifferences...), userxattrLinks)
}
