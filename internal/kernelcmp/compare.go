package kernelcmp

import (
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Diff is one field that differs between two snapshots.
type Diff struct {
	Path  string // "" is the root
	Type  string // the object's type on side A (or B if A lacks it)
	Field string // exists type perm uid gid size nlink rdev hash target xattr:NAME ovl:NAME mtime ino links ...
	A, B  string
}

func (d Diff) String() string {
	p := d.Path
	if p == "" {
		p = "/"
	}
	return fmt.Sprintf("%s: %s: %s vs %s", p, d.Field, d.A, d.B)
}

// CompareOptions choose extra fields.
type CompareOptions struct {
	// Scope is ScopeMerged or ScopeUpper (selects the intended differences).
	Scope Scope
	// Times compares mtimes of non-directories.
	Times bool
	// Ino compares inode numbers.
	Ino bool
	// Ignore are the accepted differences (nil: IntendedDifferences).
	Ignore []Difference
	// IgnorePaths drops everything under these paths (e.g. a big dir
	// checked separately).
	IgnorePaths []string
}

// Compare diffs snapshot a against snapshot b.
func Compare(a, b *Tree, o CompareOptions) []Diff {
	ign := o.Ignore
	if ign == nil {
		ign = IntendedDifferences
	}
	paths := map[string]bool{}
	for p := range a.Nodes {
		paths[p] = true
	}
	for p := range b.Nodes {
		paths[p] = true
	}
	var sorted []string
	for p := range paths {
		skip := false
		for _, ip := range o.IgnorePaths {
			skip = skip || p == ip || strings.HasPrefix(p, ip+"/")
		}
		if !skip {
			sorted = append(sorted, p)
		}
	}
	sort.Strings(sorted)
	var linksA, linksB map[string]string
	if o.Scope == ScopeMerged {
		linksA, linksB = sharedInos(a, b, sorted), sharedInos(b, a, sorted)
	}
	var out []Diff
	for _, p := range sorted {
		na, nb := a.Nodes[p], b.Nodes[p]
		var ds []Diff
		switch {
		case na == nil:
			ds = []Diff{{Path: p, Type: nb.Type, Field: "exists", A: "missing", B: nb.Type}}
		case nb == nil:
			ds = []Diff{{Path: p, Type: na.Type, Field: "exists", A: na.Type, B: "missing"}}
		default:
			ds = compareNode(p, na, nb, o)
			if la, lb := linksA[p], linksB[p]; la != lb {
				ds = append(ds, Diff{Path: p, Type: na.Type, Field: "links", A: orAlone(la), B: orAlone(lb)})
			}
		}
		for _, d := range ds {
			// A field the caller asked for is never an intended difference.
			keep := true
			asked := (d.Field == "ino" && o.Ino) || (d.Field == "mtime" && o.Times)
			for _, x := range ign {
				if asked {
					break
				}
				if x.Matches(o.Scope, d) {
					keep = false
					break
				}
			}
			if keep {
				out = append(out, d)
			}
		}
	}
	return out
}

// sharedInos groups the names of a merged view by inode: for each of
// paths that t and other both show (existence is compared on its own),
// the others of them that share its st_dev and st_ino in t, comma-joined;
// a path alone is absent. Inode numbers differ between the sides by
// design (IntendedDifferences), but which names are one file (hard links)
// must not: comparing these groups is the "links" field.
func sharedInos(t, other *Tree, paths []string) map[string]string {
	type id struct{ dev, ino uint64 }
	groups := map[id][]string{}
	for _, p := range paths {
		n := t.Nodes[p]
		if n == nil || other.Nodes[p] == nil || n.Ino == 0 {
			continue // missing, or a lookup that failed (no stat)
		}
		k := id{n.Dev, n.Ino}
		groups[k] = append(groups[k], p)
	}
	out := map[string]string{}
	for _, g := range groups {
		if len(g) < 2 {
			continue
		}
		for _, p := range g {
			var others []string
			for _, q := range g {
				if q != p {
					others = append(others, showPath(q))
				}
			}
			out[p] = strings.Join(others, ",")
		}
	}
	return out
}

func showPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

func orAlone(s string) string {
	if s == "" {
		return "<alone>"
	}
	return s
}

func compareNode(p string, a, b *Node, o CompareOptions) []Diff {
	var ds []Diff
	add := func(field string, va, vb any) {
		sa, sb := fmt.Sprint(va), fmt.Sprint(vb)
		if sa != sb {
			ds = append(ds, Diff{Path: p, Type: a.Type, Field: field, A: sa, B: sb})
		}
	}
	add("type", a.Type, b.Type)
	if a.Type != b.Type {
		return ds
	}
	if a.Type != "symlink" {
		add("perm", fmt.Sprintf("%04o", a.Perm), fmt.Sprintf("%04o", b.Perm))
	}
	add("uid", a.UID, b.UID)
	add("gid", a.GID, b.GID)
	add("size", a.Size, b.Size)
	add("blocks", a.Blocks, b.Blocks)
	add("nlink", a.Nlink, b.Nlink)
	if a.Type == "char" || a.Type == "block" {
		add("rdev", fmt.Sprintf("%d:%d", unix.Major(a.Rdev), unix.Minor(a.Rdev)),
			fmt.Sprintf("%d:%d", unix.Major(b.Rdev), unix.Minor(b.Rdev)))
	}
	add("hash", a.Hash, b.Hash)
	add("readdir", a.ReadDir, b.ReadDir)
	add("target", a.Target, b.Target)
	for _, k := range unionKeys(a.Xattrs, b.Xattrs) {
		va, oka := a.Xattrs[k]
		vb, okb := b.Xattrs[k]
		add("xattr:"+k, present(va, oka), present(vb, okb))
	}
	for _, k := range unionKeys(a.Ovl, b.Ovl) {
		va, oka := a.Ovl[k]
		vb, okb := b.Ovl[k]
		if k == "opaque" {
			// Only the first byte means anything to the kernel.
			va, vb = firstByte(va), firstByte(vb)
		}
		// Those not in meaningfulOvl are reported too: the intended
		// differences list has to name each one it accepts.
		add("ovl:"+k, present(va, oka), present(vb, okb))
	}
	if o.Times && a.Type != "dir" {
		add("mtime", a.Mtime, b.Mtime)
	}
	if o.Ino {
		add("ino", a.Ino, b.Ino)
	}
	return ds
}

func firstByte(s string) string {
	if len(s) > 1 {
		return s[:1]
	}
	return s
}

func present(v string, ok bool) string {
	if !ok {
		return "<absent>"
	}
	return fmt.Sprintf("%q", v)
}

func unionKeys(a, b map[string]string) []string {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// FormatDiffs renders diffs as a table with the sides' names.
func FormatDiffs(nameA, nameB string, ds []Diff) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-40s %-14s %-30s %s\n", "PATH", "FIELD", nameA, nameB)
	for i, d := range ds {
		if i == 100 {
			fmt.Fprintf(&b, "... and %d more\n", len(ds)-i)
			break
		}
		p := d.Path
		if p == "" {
			p = "/"
		}
		fmt.Fprintf(&b, "%-40s %-14s %-30s %s\n", p, d.Field, d.A, d.B)
	}
	return b.String()
}
