package podman

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// listFn starts every script the test runs in a container. `view NAME DIR`
// prints a listing of DIR's tree with busybox (the same tools inside every
// container and on the host, whatever the host's coreutils): one stat line
// per entry, then the content hash of each regular file and the target of
// each symlink; `note NAME` starts a section of plain output. Both go to
// stdout, errors included, so that they land in the view.
const listFn = `exec 2>&1
view() {
	echo "#list $1"
	if cd "$2"; then
		busybox find . -exec busybox stat -c '%n|%F|%a|%u|%g|%s|%h|%i' {} +
		echo '#md5'
		busybox find . -type f -exec busybox md5sum {} +
		echo '#readlink'
		busybox find . -type l | while read -r p; do echo "$p|$(busybox readlink "$p")"; done
		cd /
	fi
	echo '#end'
}
note() { echo "#view $1"; }
`

// A view is one named part of a scenario's result.
type view struct {
	name string
	text string
	list bool // a listing (else plain output)
}

// parseViews splits a script's output into views. Output before the first
// section is the view "out"; a listing is normalized (see normalizeListing).
func parseViews(prefix, out string) []view {
	var views []view
	cur := &view{name: prefix + "out"}
	var list []string
	inList := false
	flush := func() {
		if inList {
			cur.text = normalizeListing(list)
			list, inList = nil, false
		}
		if cur.text != "" || cur.name != prefix+"out" {
			views = append(views, *cur)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "#list "):
			flush()
			cur, inList = &view{name: prefix + strings.TrimPrefix(line, "#list "), list: true}, true
		case strings.HasPrefix(line, "#view "):
			flush()
			cur = &view{name: prefix + strings.TrimPrefix(line, "#view ")}
		case line == "#end" && inList:
			flush()
			cur = &view{name: prefix + "out"}
		case inList:
			list = append(list, line)
		case line != "":
			cur.text += line + "\n"
		}
	}
	flush()
	return views
}

type entry struct {
	path, typ, mode, uid, gid, size, nlink, ino string
	md5, target                                 string
}

// normalizeListing turns view's raw output into sorted lines
// "PATH TYPE MODE UID:GID SIZE NLINK [md5=…] [->TARGET] [=FIRST]". Inode
// numbers differ between runs: what is kept of them is which names share
// one (=FIRST, the first path of the group). Directories show neither size
// nor link count: both depend on the filesystem, not on what the container
// sees. Lines the tools printed besides (errors) are kept, marked "!".
func normalizeListing(raw []string) string {
	entries := map[string]*entry{}
	var odd []string
	section := "stat"
	for _, line := range raw {
		switch line {
		case "#md5":
			section = "md5"
			continue
		case "#readlink":
			section = "readlink"
			continue
		case "":
			continue
		}
		switch section {
		case "stat":
			f := strings.Split(line, "|")
			if len(f) != 8 {
				odd = append(odd, "! "+line)
				continue
			}
			entries[f[0]] = &entry{path: f[0], typ: f[1], mode: f[2], uid: f[3], gid: f[4], size: f[5], nlink: f[6], ino: f[7]}
		case "md5":
			sum, path, ok := strings.Cut(line, "  ")
			if e := entries[path]; ok && e != nil {
				e.md5 = sum
			} else {
				odd = append(odd, "! "+line)
			}
		case "readlink":
			path, target, ok := strings.Cut(line, "|")
			if e := entries[path]; ok && e != nil {
				e.target = target
			} else {
				odd = append(odd, "! "+line)
			}
		}
	}
	paths := slices.Sorted(maps.Keys(entries))
	firstOfIno := map[string]string{}
	var lines []string
	for _, p := range paths {
		e := entries[p]
		size, nlink := e.size, e.nlink
		if e.typ == "directory" {
			size, nlink = "-", "-"
		}
		typ := strings.ReplaceAll(e.typ, " ", "-")
		l := fmt.Sprintf("%s %s %s %s:%s %s %s", e.path, typ, e.mode, e.uid, e.gid, size, nlink)
		if e.md5 != "" {
			l += " md5=" + e.md5
		}
		if e.target != "" {
			l += " ->" + e.target
		}
		if e.typ != "directory" {
			if first, ok := firstOfIno[e.ino]; ok {
				l += " =" + first
			} else {
				firstOfIno[e.ino] = e.path
			}
		}
		lines = append(lines, l)
	}
	slices.Sort(odd)
	lines = append(lines, odd...)
	return strings.Join(lines, "\n") + "\n"
}

// listingEntries parses a normalized listing back into path → attributes
// (without the hard-link group and link count), for the diff check.
func listingEntries(text string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		if l == "" || strings.HasPrefix(l, "!") {
			continue
		}
		path, rest, _ := strings.Cut(l, " ")
		f := strings.Fields(rest)
		var keep []string
		for i, x := range f {
			if i == 4 || strings.HasPrefix(x, "=") { // link count, link group
				continue
			}
			keep = append(keep, x)
		}
		m[path] = strings.Join(keep, " ")
	}
	return m
}

// compareViews returns what differs between a run's views and the
// reference's: views missing on either side, and for each view the lines
// only one side has.
func compareViews(ref, got []view) []string {
	var diffs []string
	gotBy := map[string]string{}
	for _, v := range got {
		gotBy[v.name] = v.text
	}
	refBy := map[string]bool{}
	for _, r := range ref {
		refBy[r.name] = true
		g, ok := gotBy[r.name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("view %s: missing (the reference has %d lines)", r.name, strings.Count(r.text, "\n")))
			continue
		}
		if g == r.text {
			continue
		}
		diffs = append(diffs, fmt.Sprintf("view %s differs (-reference +this run):\n%s", r.name, lineDiff(r.text, g, 40)))
	}
	for _, v := range got {
		if !refBy[v.name] {
			diffs = append(diffs, fmt.Sprintf("view %s: not in the reference:\n%s", v.name, tail(v.text, 20)))
		}
	}
	return diffs
}

// kernelRootlessLinks returns the reference views with one known kernel
// defect taken out: the kernel's overlayfs mounted in a user namespace
// (rootless podman) reports two inode numbers for a file copied up and then
// hard-linked through the mount (both names show nlink 2, "keep" keeps the
// number it had before the link and "keep2" gets another one), where ovl
// and the rootful kernel report one. A reference line with several links
// and no link mark is taken as got's when got's is the same line with a
// mark ("=./NAME"); every other field must still match.
func kernelRootlessLinks(ref, got []view) []view {
	marked := map[string]string{} // line without its mark -> line
	for _, v := range got {
		for _, l := range strings.Split(v.text, "\n") {
			if i := strings.LastIndex(l, " =./"); i > 0 {
				marked[v.name+"\x00"+l[:i]] = l
			}
		}
	}
	return mapListings(ref, func(name, l string) string {
		f := strings.Fields(l)
		if len(f) < 6 || f[5] == "1" || strings.Contains(l, " =./") {
			return l
		}
		if m, ok := marked[name+"\x00"+l]; ok {
			return m
		}
		return l
	})
}

// mapListings returns views with each line of each listing replaced by
// fn(view name, line); other views are kept as they are.
func mapListings(views []view, fn func(name, line string) string) []view {
	out := make([]view, len(views))
	for i, v := range views {
		out[i] = v
		if !v.list {
			continue
		}
		lines := strings.Split(v.text, "\n")
		for j, l := range lines {
			lines[j] = fn(v.name, l)
		}
		out[i].text = strings.Join(lines, "\n")
	}
	return out
}

// lineDiff lists the lines only a has (-) and only b has (+), as multisets,
// at most max of them.
func lineDiff(a, b string, max int) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	emit := func(sign string, text string, want func(int) bool) {
		for _, l := range strings.Split(text, "\n") {
			if want(count[l]) {
				out = append(out, sign+l)
				if sign == "-" {
					count[l]--
				} else {
					count[l]++
				}
			}
		}
	}
	emit("-", a, func(n int) bool { return n > 0 })
	emit("+", b, func(n int) bool { return n < 0 })
	if len(out) == 0 {
		return "  (the same lines in another order)"
	}
	n := len(out)
	if n > max {
		out = append(out[:max], fmt.Sprintf("  … %d more lines", n-max))
	}
	return strings.Join(out, "\n")
}
