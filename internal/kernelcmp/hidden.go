package kernelcmp

// The kernel hides entries whose lookup fails (docs/differences.md, "impure"):
// its readdir of a merged or impure directory looks every upper entry up
// for its d_ino (ovl_cache_update) and leaves an entry whose lookup fails
// out of the listing, or fails the whole readdir. ovl lists such an entry,
// and its lookup gives the kernel's error. This is kept on purpose; the
// checks here recognise exactly that, so that the runner can give it
// classes of its own (HiddenMark) and keep every other difference as it was.

import (
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// HiddenMark is in the class of every failure that is this difference and
// was checked to be nothing else.
const HiddenMark = "hidden by kernel"

// IsHiddenClass reports whether class is one of those (it leaves both
// sides in the same state: a run may go on after it).
func IsHiddenClass(class string) bool { return strings.Contains(class, HiddenMark) }

// hiddenCheck says how to check diffs between a kernel's view and ovl's.
type hiddenCheck struct {
	kernelA bool // Diff.A is the kernel's side (else Diff.B)
	// kernelMnt is the kernel's mount while it is still mounted (""
	// when it is not: the kernel's own lookup is not checked then).
	kernelMnt string
	// upper is the upper layer the kernel's view is of and prefix its
	// overlay xattr prefix (for the impure flag).
	upper, prefix string
}

// split separates the diffs this difference explains (with their class
// suffix) from the rest:
//   - "exists: missing vs error:E": the kernel left out an entry that ovl
//     lists and whose lookup fails on ovl with E; when the kernel is still
//     mounted its lookup must fail with E too;
//   - "readdir: E vs (listed)": the kernel's readdir of an impure directory
//     failed where ovl listed it, with an entry whose lookup fails;
//   - "exists: missing vs T" under such a directory: what the kernel could
//     not list.
func (h hiddenCheck) split(ds []Diff) (hidden map[int]string, rest []Diff) {
	hidden = map[int]string{}
	kv := func(d Diff) (kernel, other string) {
		if h.kernelA {
			return d.A, d.B
		}
		return d.B, d.A
	}
	// A directory the kernel could not list: ovl must list in it an entry
	// whose lookup fails (what failed the kernel's readdir).
	failing := map[string]bool{}
	for _, d := range ds {
		if k, o := kv(d); d.Field == "exists" && k == "missing" && strings.HasPrefix(o, "error:") {
			failing[parentOf(d.Path)] = true
		}
	}
	unlisted := map[string]bool{}
	for i, d := range ds {
		k, o := kv(d)
		if d.Field == "readdir" && k != "" && o == "" && failing[d.Path] && h.impure(d.Path) {
			unlisted[d.Path] = true
			hidden[i] = "readdir of impure dir fails"
		}
	}
	for i, d := range ds {
		if _, ok := hidden[i]; ok {
			continue
		}
		k, o := kv(d)
		if d.Field != "exists" || k != "missing" {
			rest = append(rest, d)
			continue
		}
		if under(d.Path, unlisted) {
			hidden[i] = "in dir it cannot list"
			continue
		}
		if e, ok := strings.CutPrefix(o, "error:"); ok && h.kernelLookupFails(d.Path, e) {
			hidden[i] = "lookup fails"
			continue
		}
		rest = append(rest, d)
	}
	return hidden, rest
}

// under reports whether p is strictly below one of dirs.
func under(p string, dirs map[string]bool) bool {
	for d := path.Dir(p); ; d = path.Dir(d) {
		if d == "." || d == "/" {
			return dirs[""]
		}
		if dirs[d] {
			return true
		}
	}
}

func (h hiddenCheck) kernelLookupFails(rel, errno string) bool {
	if h.kernelMnt == "" {
		return true
	}
	var st unix.Stat_t
	err := unix.Lstat(filepath.Join(h.kernelMnt, filepath.Clean("/"+rel)), &st)
	return err != nil && ErrnoName(errnoOf(err)) == errno
}

// impure reports whether the upper directory rel carries overlay.impure.
func (h hiddenCheck) impure(rel string) bool {
	if h.upper == "" {
		return false
	}
	_, err := lgetxattr(filepath.Join(h.upper, filepath.Clean("/"+rel)), h.prefix+"impure")
	return err == nil
}

// hiddenOp says whether op's differing results a (the kernel's) and b
// (ovl's) are this difference, checked on the live mounts kmnt and omnt
// after the op, and if so the class to give it:
//   - readdir: the kernel lists a subset of ovl's names, and each name
//     only ovl lists fails its lookup on both with the same errno; or the
//     kernel's readdir of an impure directory fails (again, as root) where
//     ovl's lists an entry whose lookup fails;
//   - rmrf: the kernel's ends in ENOTEMPTY (the hidden entry is still
//     there) and ovl's in the lookup error of an entry that only ovl lists,
//     and after it both list the directory alike but for such entries.
func hiddenOp(op Op, a, b Result, kmnt, omnt, upper, prefix string) (string, bool) {
	dir := filepath.Clean("/" + op.Path)
	switch op.Op {
	case "readdir":
		if a.Errno == 0 && b.Errno == 0 {
			e, ok := hiddenEntries(kmnt, omnt, dir)
			if !ok || e == "" {
				return "", false
			}
			return "op readdir: " + HiddenMark + ": lookup fails", true
		}
		if a.Errno != 0 && b.Errno == 0 {
			h := hiddenCheck{upper: upper, prefix: prefix}
			_, kerr := ReadDir(filepath.Join(kmnt, dir))
			_, oerr := ReadDir(filepath.Join(omnt, dir))
			if errnoOf(kerr) == a.Errno && oerr == nil && h.impure(dir) && failingEntry(omnt, dir) {
				return "op readdir: " + HiddenMark + ": readdir of impure dir fails", true
			}
		}
	case "rmrf":
		if a.Errno != unix.ENOTEMPTY || b.Errno == 0 || b.Errno == unix.ENOTEMPTY {
			return "", false
		}
		e, ok := hiddenEntries(kmnt, omnt, dir)
		if ok && e == ErrnoName(b.Errno) {
			return "op rmrf: " + HiddenMark + ": ENOTEMPTY vs lookup error", true
		}
	}
	return "", false
}

// hiddenEntries lists dir on both mounts: ok when the kernel's names are
// ovl's but for some whose lookup fails on both with the same errno; that
// errno (all the same) or "" when the listings are equal.
func hiddenEntries(kmnt, omnt, dir string) (errno string, ok bool) {
	names := func(mnt string) (map[string]bool, bool) {
		ents, err := ReadDir(filepath.Join(mnt, dir))
		if err != nil {
			return nil, false
		}
		m := map[string]bool{}
		for _, e := range ents {
			m[e.Name] = true
		}
		return m, true
	}
	kn, ok1 := names(kmnt)
	on, ok2 := names(omnt)
	if !ok1 || !ok2 {
		return "", false
	}
	var extra []string
	for n := range on {
		if !kn[n] {
			extra = append(extra, n)
		}
	}
	for n := range kn {
		if !on[n] {
			return "", false
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		var st unix.Stat_t
		kerr := unix.Lstat(filepath.Join(kmnt, dir, n), &st)
		oerr := unix.Lstat(filepath.Join(omnt, dir, n), &st)
		ke, oe := errnoOf(kerr), errnoOf(oerr)
		if ke == 0 || ke == unix.ENOENT || ke != oe || (errno != "" && errno != ErrnoName(ke)) {
			return "", false
		}
		errno = ErrnoName(ke)
	}
	return errno, true
}

// failingEntry reports whether ovl lists in dir an entry whose lookup fails.
func failingEntry(omnt, dir string) bool {
	ents, err := ReadDir(filepath.Join(omnt, dir))
	if err != nil {
		return false
	}
	for _, e := range ents {
		var st unix.Stat_t
		if e.Name != "." && e.Name != ".." && unix.Lstat(filepath.Join(omnt, dir, e.Name), &st) != nil {
			return true
		}
	}
	return false
}
