package mountopt

// This file is the table of every option ovl knows. To support a kernel
// feature later, flip its value from false to true in the table and make the
// set function pass it on: nothing else in the parser needs to change.

// option describes one name accepted after -o.
type option struct {
	// values, for options that take one of a fixed set of words, maps each
	// word the kernel (or fuse-overlayfs) knows to whether ovl supports it now.
	values map[string]bool
	// free marks options whose value is free-form (a path, a name, a number).
	// An option with neither values nor free is a flag and takes no value.
	free bool
	// lacks says what ovl does not do yet, shown when a value is refused.
	lacks string
	// use is the supported spelling suggested when a value is refused.
	use string
	// refused marks options ovl does not support with any value; the text
	// says why.
	refused string
	// ignored marks options accepted and then ignored; the text says why
	// that is harmless (and goes into the README).
	ignored string
	// set applies an accepted option to the parse state.
	set func(s *state, v string) error
}

const atimeIgnored = "access times are kept by the layer filesystems, as their own mount options say"

const mountIgnored = "for mount(8), fstab, systemd or mount.fuse3 (when and by whom the mount is made), not for the filesystem"

// options is the whole option set. Kernel options that decide what lands on
// the layers are accepted only with the value that matches what ovl writes.
var options = map[string]option{
	// Layers (kernel fs/overlayfs/params.c).
	"lowerdir":  {free: true, set: setLowerdir},
	"lowerdir+": {free: true, set: setLowerdirPlus},
	"datadir+":  {free: true, refused: dataOnlyRefused},
	"upperdir":  {free: true, set: func(s *state, v string) error { s.upper = unescape(v); return nil }},
	"workdir":   {free: true, set: func(s *state, v string) error { s.work = unescape(v); return nil }},

	// Kernel features that change what lands on disk.
	"redirect_dir": {
		values: map[string]bool{"on": true, "follow": true, "nofollow": true, "off": true},
		set:    func(s *state, v string) error { s.res.Overlay.RedirectDir = v; return nil },
	},
	"index": {
		values: map[string]bool{"on": true, "off": true},
		set:    func(s *state, v string) error { s.res.Overlay.Index = v; return nil },
	},
	"metacopy": {
		values: map[string]bool{"on": true, "off": true},
		set:    func(s *state, v string) error { s.res.Overlay.Metacopy = v; return nil },
	},
	"nfs_export": {
		values: map[string]bool{"on": false, "off": true},
		lacks:  "ovl has no NFS export support", use: "nfs_export=off",
	},
	"uuid": {
		values: map[string]bool{"null": true, "off": true, "on": false, "auto": false},
		lacks:  "ovl writes no overlay.uuid", use: "uuid=off",
	},
	"verity": {
		values: map[string]bool{"off": true, "on": false, "require": false},
		lacks:  "ovl checks no fs-verity digests", use: "verity=off",
	},
	"xino": {
		values: map[string]bool{"off": true, "auto": true, "on": false},
		lacks:  "ovl puts no layer number in inode numbers", use: "xino=auto",
	},
	// userxattr and nouserxattr choose the overlay xattr namespace; without
	// either the mount program chooses by privilege (Result.XattrChosen).
	"userxattr":   {set: func(s *state, _ string) error { s.setXattrNS(true); return nil }},
	"nouserxattr": {set: func(s *state, _ string) error { s.setXattrNS(false); return nil }},
	"volatile":    {set: func(s *state, _ string) error { s.setFsync("volatile"); return nil }},
	// fsync= is the kernel's (auto, strict, volatile; "ordered" is auto's
	// name in an unmerged revision of that patch, kept as an alias) and
	// fuse-overlayfs's (1 = sync as usual, 0 = volatile) at once. The last
	// of volatile and fsync= wins, as in the kernel.
	"fsync": {
		values: map[string]bool{"auto": true, "ordered": true, "strict": true, "volatile": true, "1": true, "0": true},
		set:    func(s *state, v string) error { s.setFsync(v); return nil },
	},
	// What to do with an upper that a volatile mount left after an unclean
	// stop and that cannot be proven durable (overlay/volatile.go).
	"volatile_recovery": {
		values: map[string]bool{"check": true, "accept": true, "discard": true},
		set: func(s *state, v string) error {
			s.res.Overlay.VolatileRecovery = v
			if v == "check" {
				s.res.Overlay.VolatileRecovery = ""
			}
			return nil
		},
	},
	"default_permissions": {}, // always on: the kernel checks permissions for ovl.

	// Mount flags (VFS and FUSE).
	"ro":          {set: func(s *state, _ string) error { s.res.FUSE.ReadOnly = true; return nil }},
	"rw":          {set: func(s *state, _ string) error { s.res.FUSE.ReadOnly = false; return nil }},
	"nosuid":      {set: func(s *state, _ string) error { s.res.FUSE.NoSuid = true; return nil }},
	"suid":        {set: func(s *state, _ string) error { s.res.FUSE.NoSuid = false; return nil }},
	"nodev":       {set: func(s *state, _ string) error { s.res.FUSE.NoDev = true; return nil }},
	"dev":         {set: func(s *state, _ string) error { s.res.FUSE.NoDev = false; return nil }},
	"noexec":      {set: func(s *state, _ string) error { s.res.FUSE.NoExec = true; return nil }},
	"exec":        {set: func(s *state, _ string) error { s.res.FUSE.NoExec = false; return nil }},
	"allow_other": {set: func(s *state, _ string) error { s.res.FUSE.AllowOther = true; return nil }},
	"allow_root":  {set: func(s *state, _ string) error { s.res.FUSE.AllowOther = true; return nil }},
	"fsname":      {free: true, set: func(s *state, v string) error { s.res.FUSE.FsName = unescape(v); return nil }},
	"debug":       {set: func(s *state, _ string) error { s.res.FUSE.Debug = true; return nil }},
	"log":         {free: true, set: func(s *state, v string) error { s.res.Log = unescape(v); return nil }},
	// Lower-layer indexes (overlay/cache.go, package layerindex).
	"lowercache": {free: true, set: func(s *state, v string) error { s.res.Overlay.LowerCache = unescape(v); return nil }},
	// FUSE passthrough (docs/passthrough.md): "on" shares the lower files'
	// page cache between mounts, "off" serves all I/O through the daemon.
	"passthrough": {
		values: map[string]bool{"on": true, "off": true},
		set:    func(s *state, v string) error { s.res.FUSE.NoPassthrough = v == "off"; return nil },
	},
	// FUSE over io_uring (internal/fuseuring), where the kernel offers it.
	"fuse_uring": {
		values: map[string]bool{"on": true, "off": true},
		set:    func(s *state, v string) error { s.res.FUSE.Uring = v == "on"; return nil },
	},

	// What mount(8), fstab, systemd and mount.fuse3 pass or leave in the
	// options; they are for those programs, not for the filesystem. "x-*"
	// stands for every name that starts with "x-" (see lookup).
	"defaults": {ignored: mountIgnored},
	"auto":     {ignored: mountIgnored},
	"noauto":   {ignored: mountIgnored},
	"nofail":   {ignored: mountIgnored},
	"_netdev":  {ignored: mountIgnored},
	"user":     {free: true, ignored: mountIgnored}, // "user" or "user=NAME"
	"nouser":   {ignored: mountIgnored},
	"users":    {ignored: mountIgnored},
	"owner":    {ignored: mountIgnored},
	"group":    {ignored: mountIgnored},
	"x-*":      {free: true, ignored: mountIgnored},
	"comment":  {free: true, ignored: mountIgnored},
	"helper":   {free: true, ignored: mountIgnored},
	"uhelper":  {free: true, ignored: mountIgnored},
	"async":    {ignored: "asynchronous I/O is the default mount flag"},

	"noatime":     {ignored: atimeIgnored},
	"relatime":    {ignored: atimeIgnored},
	"atime":       {ignored: atimeIgnored},
	"strictatime": {ignored: atimeIgnored},
	"nodiratime":  {ignored: atimeIgnored},
	"context":     {free: true, ignored: "SELinux label; FUSE mounts get the policy's fuse label"},
	"fscontext":   {free: true, ignored: "SELinux label; FUSE mounts get the policy's fuse label"},
	"defcontext":  {free: true, ignored: "SELinux label; FUSE mounts get the policy's fuse label"},
	"rootcontext": {free: true, ignored: "SELinux label; FUSE mounts get the policy's fuse label"},

	// fuse-overlayfs options that a drop-in must tolerate. Ignoring these
	// changes only caching or speed, never what lands on the layers.
	"threaded":     {free: true, ignored: "ovl always serves requests in parallel"},
	"writeback":    {free: true, ignored: "kernel write-back caching is ovl's own choice"},
	"timeout":      {free: true, ignored: "cache timeouts are ovl's own choice"},
	"fast_ino":     {free: true, ignored: "inode numbers are ovl's own (kernel rules)"},
	"static_nlink": {ignored: "ovl reports real link counts"},
	"noacl":        {ignored: "POSIX ACLs on the layers are honoured, as by the kernel"},
	"splice_read":  {ignored: "data transfer detail"},
	"splice_write": {ignored: "data transfer detail"},
	"splice_move":  {ignored: "data transfer detail"},
	"kernel_cache": {ignored: "page-cache policy is ovl's own choice"},
	"noxattrs": {
		values: map[string]bool{"0": true, "1": false},
		lacks:  "ovl always passes extended attributes through", use: "noxattrs=0",
	},
	// Owners kept apart from the inodes: see overlay/owner.go.
	"xattr_permissions": {
		values: map[string]bool{"0": true, "1": true, "2": true},
		set: func(s *state, v string) error {
			s.res.Overlay.XattrPermissions = int(v[0] - '0')
			return nil
		},
	},
	// ID mapping and squashing, as fuse-overlayfs has them (package idmap).
	"uidmapping":     {free: true, set: func(s *state, v string) error { return s.ids.ranges(&s.ids.uids, v) }},
	"gidmapping":     {free: true, set: func(s *state, v string) error { return s.ids.ranges(&s.ids.gids, v) }},
	"squash_to_root": {set: func(s *state, _ string) error { s.ids.root = true; return nil }},
	"squash_to_uid":  {free: true, set: func(s *state, v string) error { return s.ids.squash(&s.ids.uid, v) }},
	"squash_to_gid":  {free: true, set: func(s *state, v string) error { return s.ids.squash(&s.ids.gid, v) }},

	// fuse-overlayfs features ovl does not have: refusing beats writing
	// layers with owners or modes the caller did not expect.
	"ino32_t": {refused: "ovl does not fold inode numbers into 32 bits"},
	"plugins": {free: true, refused: "ovl has no layer plugins"},
}
