package mountopt

import (
	"fmt"
	"sort"
	"strings"
)

// optionHelp says what each option that has an effect does, in the order
// "ovl mount --help" lists them. The ignored and refused options are listed
// from the table itself (their reasons). TestHelpCoversTable checks that
// every option of the table appears exactly once, so the help cannot drift
// from what the parser accepts.
var optionHelp = []struct{ name, arg, text string }{
	{"lowerdir", "=L1:L2:...", `lower layers, topmost first; required. One lower without an upper gives a read-only view. "lowerdir=" empties the list; "::" (data-only layers) is refused`},
	{"lowerdir+", "=DIR", "append one lower layer (colons are part of the name); not mixed with lowerdir="},
	{"upperdir", "=DIR", "the writable layer; needs workdir="},
	{"workdir", "=DIR", "an empty directory on the upper's filesystem, for atomic copy-up"},
	{"userxattr", "", "overlay xattrs in user.overlay.* (the default without CAP_SYS_ADMIN in the initial user namespace); no redirects or metacopy"},
	{"nouserxattr", "", "overlay xattrs in trusted.overlay.* (the default as root); refused without the privilege"},
	{"redirect_dir", "=on|follow|nofollow|off", "rename directories by redirect (default on; nofollow with userxattr)"},
	{"index", "=on|off", "keep lower hard links one object across copy-up (default off)"},
	{"metacopy", "=on|off", "copy up only metadata for chmod, chown, xattrs (default off)"},
	{"volatile", "", "as fsync=volatile"},
	{"fsync", "=auto|strict|volatile|ordered|1|0", "the kernel's: sync copied-up data (auto, the default; ordered and 1 are aliases), also the copy's metadata and directory (strict), or nothing while mounted (volatile, 0): a clean unmount then syncs what the mount changed and lets the upper be mounted again"},
	{"volatile_recovery", "=check|accept|discard", "an upper a volatile mount left after an unclean stop, not proven durable: refuse it (check, the default), use it as it is (accept), or empty it first (discard)"},
	{"nfs_export", "=off", "no NFS export"},
	{"uuid", "=null|off", "no overlay.uuid"},
	{"verity", "=off", "no fs-verity checks"},
	{"xino", "=off|auto", "inode numbers as the kernel's overlayfs makes them without xino"},
	{"lowercache", "=DIR", "keep an index of each lower layer in DIR (built at the first mount) and answer lookups and listings of lower directories from it; for lower layers that never change"},
	{"passthrough", "=on|off", "FUSE passthrough of reads and writes to the layer files (default on where the kernel and privilege allow)"},
	{"fuse_uring", "=on|off", "serve requests through FUSE over io_uring where the kernel offers it (module parameter fuse.enable_uring=Y; mounts made as root), else through /dev/fuse (default off)"},
	{"default_permissions", "", "always on: the kernel checks permissions"},
	{"ro", "", "read-only mount (always so without an upper)"},
	{"rw", "", "read-write mount"},
	{"nosuid", "", "ignore setuid bits (the default for unprivileged mounts)"},
	{"suid", "", "honour setuid bits (the default as root)"},
	{"nodev", "", "no device files (the default for unprivileged mounts)"},
	{"dev", "", "device files work (the default as root)"},
	{"noexec", "", "no execution"},
	{"exec", "", "execution allowed (the default)"},
	{"allow_other", "", "other users may use the mount (the default as root; unprivileged needs user_allow_other in /etc/fuse.conf)"},
	{"allow_root", "", "same as allow_other"},
	{"fsname", "=NAME", `the mount's source in /proc/mounts (default "ovl", or the SOURCE operand)`},
	{"debug", "", "log every FUSE request (as -d)"},
	{"log", "=FILE", "the daemon's log (as --log)"},
	{"xattr_permissions", "=0|1|2", "fuse-overlayfs: 0 keeps owners and modes in the inodes; 1 and 2 keep those of new files in security.fuseoverlayfs.override_stat (1) or user.fuseoverlayfs.override_stat (2)"},
	{"uidmapping", "=:C:H:N[:C:H:N...]", "fuse-overlayfs: map user IDs, container C to host H for N IDs (leading colon optional)"},
	{"gidmapping", "=:C:H:N[:C:H:N...]", "fuse-overlayfs: map group IDs, as uidmapping="},
	{"squash_to_root", "", "fuse-overlayfs: every file owned by root"},
	{"squash_to_uid", "=UID", "fuse-overlayfs: every file owned by UID"},
	{"squash_to_gid", "=GID", "fuse-overlayfs: every file in group GID"},
	{"noxattrs", "=0", "fuse-overlayfs: extended attributes passed through (always)"},
}

// Help returns the option list of "ovl mount --help": what each option
// does, which are accepted and ignored and why, and which are refused and
// why, made from the option table.
func Help() string {
	var b strings.Builder
	b.WriteString("Options (-o, comma-separated, may be given several times; later options win;\n" +
		`"\" escapes "," and ":" in a path):` + "\n")
	for _, h := range optionHelp {
		writeItem(&b, h.name+h.arg, h.text)
	}
	b.WriteString("\nAccepted and ignored:\n")
	byReason := map[string][]string{}
	for name, o := range options {
		if o.ignored != "" {
			byReason[o.ignored] = append(byReason[o.ignored], optionSpelling(name, o))
		}
	}
	var groups [][2]string
	for reason, names := range byReason {
		sort.Strings(names)
		groups = append(groups, [2]string{strings.Join(names, ", "), reason})
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i][0] < groups[j][0] })
	for _, g := range groups {
		writeItem(&b, g[0], g[1])
	}
	b.WriteString("\nRefused (ovl does not do these):\n")
	var refused [][2]string
	for name, o := range options {
		switch {
		case o.refused == dataOnlyRefused:
			// With "::" below.
		case o.refused != "":
			refused = append(refused, [2]string{optionSpelling(name, o), o.refused})
		case o.values != nil:
			var vals []string
			for v, ok := range o.values {
				if !ok {
					vals = append(vals, v)
				}
			}
			if len(vals) > 0 {
				sort.Strings(vals)
				refused = append(refused, [2]string{name + "=" + strings.Join(vals, "|"), o.lacks + "; use " + o.use})
			}
		}
	}
	refused = append(refused, [2]string{"datadir+=..., lowerdir=A::B", dataOnlyRefused})
	sort.Slice(refused, func(i, j int) bool { return refused[i][0] < refused[j][0] })
	for _, r := range refused {
		writeItem(&b, r[0], r[1])
	}
	return b.String()
}

// optionSpelling shows an option as it is written: "name=..." when it
// takes a value.
func optionSpelling(name string, o option) string {
	if o.free && name != "user" {
		return name + "=..."
	}
	return name
}

// writeItem writes "  NAME  TEXT", the text on the same line when the name
// is short, else on the next, wrapped at 80 columns.
func writeItem(b *strings.Builder, name, text string) {
	const col = 24
	line := "  " + name
	if len(line) > 80 {
		// A long list of names: wrapped at its spaces.
		line = " "
		for _, w := range strings.Fields(name) {
			if len(line)+1+len(w) > 80 {
				b.WriteString(line + "\n")
				line = " "
			}
			line += " " + w
		}
	}
	if len(line) >= col-1 {
		b.WriteString(line + "\n")
		line = ""
	}
	line += strings.Repeat(" ", col-len(line))
	fresh := true // nothing of text on the line yet
	for _, w := range strings.Fields(text) {
		if len(line)+1+len(w) > 80 && !fresh {
			b.WriteString(line + "\n")
			line, fresh = strings.Repeat(" ", col), true
		}
		if !fresh {
			line += " "
		}
		line += w
		fresh = false
	}
	b.WriteString(line + "\n")
}

// checkHelp reports options of the table that the help leaves out or
// lists twice, and help entries for options the table lacks.
func checkHelp() error {
	seen := map[string]int{}
	for _, h := range optionHelp {
		seen[h.name]++
	}
	var errs []string
	for name, o := range options {
		listed := seen[name]
		delete(seen, name)
		switch {
		case o.ignored != "" || o.refused != "":
			if listed > 0 {
				errs = append(errs, name+" is ignored or refused but has a help line")
			}
		case listed != 1:
			errs = append(errs, fmt.Sprintf("%s has %d help lines, want 1", name, listed))
		}
	}
	for name := range seen {
		errs = append(errs, name+" has a help line but is not in the table")
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// Names lists the options as they are typed, for shell completion: "name="
// for those that take a value, "name" for flags; the refused ones left out.
func Names() []string {
	var out []string
	for name, o := range options {
		switch {
		case o.refused != "" || name == "x-*":
		case o.values != nil || (o.free && name != "user"):
			out = append(out, name+"=")
		default:
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
