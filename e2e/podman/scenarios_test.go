package podman

import (
	"fmt"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// containerfiles are the images the scenarios build, each FROM an image of
// this list or the imported base. A layer that links a name to a file of an
// earlier layer is left out on purpose: with a mount program,
// containers-storage makes layers with its "naive diff" (it compares the
// merged trees), which puts only the new name into the layer, so no mount
// program can give the kernel driver's result (its diff tars the upper dir,
// both names included).
var containerfiles = map[string]string{
	// The lower tree of the scenarios that change lower files: one layer,
	// no whiteouts, a hard-link group, owners other than root, a fifo,
	// symlinks, special modes, an old mtime.
	"fixture": `FROM localhost/e2e/base:1
RUN mkdir -p /t/ren/x /t/rmd/s/s2 /t/keepd /t/dd && cd /t && \
    echo a > a && echo append > app && busybox head -c 100000 /bin/busybox > trunc && \
    echo m > mod && echo o > own && echo r > ren/x/r && echo 1 > rmd/1 && echo 2 > rmd/s/s2/2 && \
    echo h > h1 && ln h1 h2 && ln h1 h3 && echo k > keep && echo kd > keepd/f && \
    ln -s a sym && ln -s ren/x symd && mkfifo fifo0 && \
    chown 1000:1000 own && chown 123:456 a && chown 65534:65534 keepd/f && \
    chmod 0640 mod && chmod 2755 dd && chmod 0755 app && \
    touch -d '2001-02-03 04:05:06' old
`,
	// A multi-step build: deleted files and dirs, rm -rf + mkdir, a renamed
	// dir, a file turned into a dir and back (and a dir into a file and
	// back), hard links, chmod and chown of lower files.
	"build": `FROM localhost/e2e/base:1
RUN mkdir -p /b/d1/sub /b/ren/x /b/d2f/in /b/opq/o && cd /b && \
    echo a > a && echo b > d1/b && echo c > d1/sub/c && echo r > ren/x/r && echo f > f2d && \
    echo i > d2f/in/i && echo h > h1 && ln h1 h2 && echo m > m && echo k > keep && \
    chown 1000:1000 keep && echo o > opq/o/o && echo o2 > opq/o2
RUN cd /b && rm a && rm -rf d1 && mkdir d1 && echo n > d1/n && mv ren renamed && \
    rm f2d && mkdir f2d && echo in > f2d/in && rm -rf d2f && echo file > d2f && \
    chmod 0600 m && chmod 0700 renamed && rm -rf opq/o opq/o2 && echo new > opq/new && \
    echo l > l1 && ln l1 l2 && chmod 0640 h1
RUN cd /b && rm -rf f2d && echo back > f2d && rm d2f && mkdir d2f && echo again > d2f/x && \
    rm d1/n && chmod 4755 m && chown 7:8 l1 && echo k2 >> keep && rm -rf opq && mkdir opq && \
    echo fresh > opq/fresh && rm h2
`,
	// Files and dirs of mode 0000.
	"zero": `FROM localhost/e2e/base:1
RUN mkdir -p /z/d/sub && echo s > /z/f && echo g > /z/d/g && : > /z/empty && \
    chmod 0000 /z/f /z/d/g /z/empty /z/d/sub /z/d
`,
	// The lower tree of the force_mask scenario: the fixture without its
	// fifo, as containers-storage 1.43 with force_mask fails to apply a
	// layer with a fifo (it sets the user.* override xattr on it: EPERM).
	"masked": `FROM localhost/e2e/base:1
RUN mkdir -p /t/ren/x /t/keepd /t/dd /t/priv && cd /t && \
    echo a > a && echo m > mod && echo o > own && echo r > ren/x/r && \
    echo h > h1 && ln h1 h2 && echo k > keep && echo kd > keepd/f && ln -s a sym && \
    chown 1000:1000 own && chown 123:456 a && chown 65534:65534 keepd/f && chown 7:8 dd && \
    chmod 0640 mod && chmod 2755 dd && chmod 0700 priv && chmod 4755 h1
`,
	// The image of the switch scenario, built with the first program: a
	// deleted file, a dir removed and made again, a changed file.
	"sw": `FROM localhost/e2e/base:1
RUN mkdir -p /s/d/sub /s/keep /s/o && echo a > /s/a && echo b > /s/d/b && echo c > /s/d/sub/c && \
    echo k > /s/keep/k && echo o > /s/o/o && echo f > /s/f && echo g > /s/g
RUN rm /s/a && rm -rf /s/d && mkdir /s/d && echo n > /s/d/n && echo f2 > /s/f && chmod 0600 /s/g
`,
	// A layer on "sw" built after the switch, with the second program.
	"sw2": `FROM localhost/e2e/sw:1
RUN rm -rf /s/keep && echo d > /s/keep && mkdir /s/new && echo n > /s/new/n && \
    rm -rf /s/o && mkdir /s/o && echo o2 > /s/o/o2 && chown 5:6 /s/g
`,
}

// A scenario is one flow of podman commands; its run returns the views to
// compare with the reference program's.
type scenario struct {
	name string
	// ref is the program whose views are the reference.
	ref string
	// also names a program whose differences are logged, not failed.
	also string
	run  func(x *run) ([]view, error)
	// compare replaces the comparison of every view with the reference's.
	compare func(prog string, ref, got []view) []string
}

// run is one scenario on one program and mode.
type run struct {
	s        *suite
	prog     program
	rootless bool
	st       *store
	problems []string // failed self-checks
}

func (x *run) problem(format string, args ...any) {
	x.problems = append(x.problems, fmt.Sprintf(format, args...))
}

// main is the store the scenarios share for the program and mode.
func (x *run) main() error {
	st, err := x.s.store("main", x.prog, x.rootless)
	x.st = st
	return err
}

// sh runs podman with args and then `sh -c SCRIPT` (listFn first), and
// parses the output into views named prefix+NAME.
func (x *run) sh(prefix, script string, args ...string) ([]view, error) {
	out, err := x.st.podman(append(args, "sh", "-c", listFn+script)...)
	if err != nil {
		return nil, err
	}
	return parseViews(prefix, out), nil
}

// userRange returns what --uidmap/--gidmap take for n container ids
// starting at 0: host ids from 100000 rootful, the ids above 0 of the
// rootless user namespace (its subordinate range) rootless.
func (x *run) userRange(n int) string {
	if x.rootless {
		return fmt.Sprintf("0:1:%d", n)
	}
	return fmt.Sprintf("0:100000:%d", n)
}

var scenarios = []*scenario{
	{name: "run", ref: progKernel, run: func(x *run) ([]view, error) {
		if err := x.main(); err != nil {
			return nil, err
		}
		img, err := x.st.image("base")
		if err != nil {
			return nil, err
		}
		return x.sh("", `echo hello; id; ls -a /; busybox md5sum /bin/busybox; cat /etc/passwd; view bin /bin`,
			"run", "--rm", img)
	}},
	{name: "build", ref: progKernel, run: func(x *run) ([]view, error) {
		if err := x.main(); err != nil {
			return nil, err
		}
		img, err := x.st.image("build")
		if err != nil {
			return nil, err
		}
		return x.sh("", `view build /b`, "run", "--rm", img)
	}},
	{name: "image-mount", ref: progKernel, run: func(x *run) ([]view, error) {
		if err := x.main(); err != nil {
			return nil, err
		}
		img, err := x.st.image("build")
		if err != nil {
			return nil, err
		}
		// The listing runs on the host, where the image is mounted; rootless,
		// in podman's user and mount namespace.
		script := `m=$(podman image mount "$1") || exit 1
busybox sh "$2" image "$m/b"; rc=$?
podman image unmount "$1" >/dev/null || rc=1
exit $rc`
		argv := []string{"sh", "-c", script, "sh", img, x.s.listSh}
		if x.rootless {
			argv = append([]string{"podman", "unshare"}, argv...)
		}
		out, err := x.st.exec(argv...)
		if err != nil {
			return nil, err
		}
		return parseViews("", out), nil
	}},
	{name: "commit-diff", ref: progKernel, run: runCommitDiff},
	{name: "lower-changes", ref: progKernel, run: func(x *run) ([]view, error) {
		if err := x.main(); err != nil {
			return nil, err
		}
		img, err := x.st.image("fixture")
		if err != nil {
			return nil, err
		}
		return x.sh("", lowerChanges, "run", "--rm", img)
	}},
	{name: "restart", ref: progKernel, run: runRestart},
	{name: "uidmap-range", ref: progKernel, run: func(x *run) ([]view, error) {
		return runUIDMap(x, x.userRange(65536))
	}},
	// A single-ID map is where containers-storage asks a mount program for
	// squash_to_uid/squash_to_gid (optsAppendMappings) instead of
	// uidmapping: every object shows as owned by that ID, so the
	// container's root owns the whole tree. The kernel driver has no such
	// option and shows unmapped owners as 65534; the meaning of the option
	// is fuse-overlayfs's, so fuse-overlayfs is the reference here and the
	// kernel driver's differences are logged.
	{name: "uidmap-single", ref: progFuse, also: progKernel, run: func(x *run) ([]view, error) {
		return runUIDMap(x, x.userRange(1))
	}},
	{name: "force-mask", ref: progKernel, also: progFuse, run: runForceMask, compare: compareForceMask},
	{name: "switch", ref: progKernel, run: runSwitch, compare: compareSwitch},
	{name: "mode-0000", ref: progKernel, run: func(x *run) ([]view, error) {
		if err := x.main(); err != nil {
			return nil, err
		}
		img, err := x.st.image("zero")
		if err != nil {
			return nil, err
		}
		return x.sh("", `view image /z
cd /z && cat f && echo more >> f && echo new > d/new && chmod 0000 d/new && mv d/g d/g2 &&
rm empty && mkdir d/sub/s2 && ls -la d/sub | busybox wc -l && chmod 0 d/sub/s2 && cat d/g2
view after /z`, "run", "--rm", img)
	}},
}

// lowerChanges changes the files of the fixture's lower layer in every way
// the issue lists, then shows the tree, the mtimes set and what a new
// binary printed.
const lowerChanges = `cd /t
echo more >> app
truncate -s 10 trunc
chmod 0600 mod
chown 3:4 own
mv ren ren2
rm -rf rmd && mkdir rmd && echo new > rmd/n
ln keep keep2
ln h2 h4
mkfifo fifo
busybox yes 0123456789abcdef | busybox head -c 33554432 > big
mkdir many; i=0; while [ $i -lt 2000 ]; do echo $i > many/f$i; i=$((i+1)); done
touch -d '2002-03-04 05:06:07' keep keepd
touch -m -d '2003-04-05 06:07:08' old
cp /bin/busybox newbin && chmod 0755 newbin && ./newbin echo exec-ok
echo over > a
rm sym
note mtimes
busybox stat -c '%n %Y' keep keep2 keepd old
view after /t
`

// runCommitDiff changes a running container, lists its tree, and checks
// `podman diff` against the change, and `podman commit` by a container of
// the committed image.
func runCommitDiff(x *run) ([]view, error) {
	if err := x.main(); err != nil {
		return nil, err
	}
	img, err := x.st.image("fixture")
	if err != nil {
		return nil, err
	}
	const name = "e2e-commit"
	if _, err := x.st.podman("run", "-d", "--name", name, img, "sleep", "1000000"); err != nil {
		return nil, err
	}
	defer x.st.podman("rm", "--force", "--time=0", name)
	before, err := x.sh("", `view before /t`, "exec", name)
	if err != nil {
		return nil, err
	}
	after, err := x.sh("", `cd /t && rm a && rm -rf rmd && mkdir rmd && echo new > rmd/n && mv ren ren2 &&
echo app >> h2 && echo nf > newfile && mkdir -p nd/e && chmod 0600 mod && chown 1:2 own && rm sym &&
ln -s keep sym2 && echo t > trunc && chmod 0700 keepd
view after /t`, "exec", name)
	if err != nil {
		return nil, err
	}
	diff, err := x.st.podman("diff", name)
	if err != nil {
		return nil, err
	}
	if len(before) == 1 && len(after) == 1 {
		for _, p := range diffProblems(diff, before[0].text, after[0].text) {
			x.problem("podman diff: %s", p)
		}
	} else {
		x.problem("no listing to check podman diff against")
	}
	committed := imageRef("committed")
	if _, err := x.st.podman("commit", "--quiet", name, committed); err != nil {
		return nil, err
	}
	defer x.st.podman("rmi", "--force", committed)
	views, err := x.sh("", `view committed /t`, "run", "--rm", committed)
	if err != nil {
		return nil, err
	}
	return slices.Concat(before, after, views), nil
}

// diffProblems checks a `podman diff` against the listings before and
// after the change (paths under /t only): no whiteout name; applying its
// D and A lines to the paths before gives the paths after; every entry
// whose attributes or content changed is under a C, A or D line. It does
// not compare the lines with the kernel driver's: that driver diffs the
// upper dir, and shows a dir that was removed and made again as "D dir",
// where the diff of merged trees that a mount program gets shows "C dir"
// and the children.
func diffProblems(diff, beforeText, afterText string) []string {
	abs := func(rel string) string { return path.Clean("/t/" + rel) }
	before, after := map[string]string{}, map[string]string{}
	for p, a := range listingEntries(beforeText) {
		before[abs(p)] = a
	}
	for p, a := range listingEntries(afterText) {
		after[abs(p)] = a
	}
	var probs []string
	pred := map[string]bool{}
	for p := range before {
		pred[p] = true
	}
	covered := map[string]bool{}
	var deleted []string
	for _, l := range strings.Split(strings.TrimSpace(diff), "\n") {
		kind, p, ok := strings.Cut(l, " ")
		if !ok || (p != "/t" && !strings.HasPrefix(p, "/t/")) {
			continue
		}
		if strings.HasPrefix(path.Base(p), ".wh.") || strings.Contains(p, "/.wh.") {
			probs = append(probs, "shows a whiteout name: "+l)
			continue
		}
		switch kind {
		case "A":
			for q := p; q != "/t"; q = path.Dir(q) {
				pred[q] = true
			}
			covered[p] = true
		case "D":
			for q := range pred {
				if q == p || strings.HasPrefix(q, p+"/") {
					delete(pred, q)
				}
			}
			deleted = append(deleted, p)
		case "C":
			covered[p] = true
			if _, ok := after[p]; !ok {
				probs = append(probs, "changed, yet not in the container: "+l)
			}
		default:
			probs = append(probs, "unknown line: "+l)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(pred)) {
		if _, ok := after[p]; !ok {
			probs = append(probs, "the diff keeps "+p+", which the container no longer has")
		}
	}
	for _, p := range slices.Sorted(maps.Keys(after)) {
		if !pred[p] {
			probs = append(probs, "the diff lacks "+p+", which the container has")
		}
	}
	underDeleted := func(p string) bool {
		for _, d := range deleted {
			if p == d || strings.HasPrefix(p, d+"/") {
				return true
			}
		}
		return false
	}
	for _, p := range slices.Sorted(maps.Keys(after)) {
		if b, ok := before[p]; ok && b != after[p] && !covered[p] && !underDeleted(p) {
			probs = append(probs, fmt.Sprintf("%s changed (%s → %s) but the diff does not say so", p, b, after[p]))
		}
	}
	if len(probs) > 0 {
		probs = append(probs, "the diff was:\n"+tail(diff, 40))
	}
	return probs
}

// runRestart changes a container's lower files, stops it and starts it
// again: the second start mounts the upper it left.
func runRestart(x *run) ([]view, error) {
	if err := x.main(); err != nil {
		return nil, err
	}
	img, err := x.st.image("fixture")
	if err != nil {
		return nil, err
	}
	const name = "e2e-restart"
	script := listFn + `if [ ! -e /t/.started ]; then
	cd /t && echo more >> app && rm -rf rmd && mkdir rmd && echo n > rmd/n && mv ren ren2 &&
	ln keep keep2 && chmod 0600 mod && chown 5:6 own && echo new > new && mkfifo fifo && rm a h3 &&
	touch .started && echo changed
fi
view now /t`
	if _, err := x.st.podman("create", "--name", name, img, "sh", "-c", script); err != nil {
		return nil, err
	}
	defer x.st.podman("rm", "--force", "--time=0", name)
	var views []view
	for _, start := range []string{"first-", "second-"} {
		out, err := x.st.podman("start", "--attach", name)
		if err != nil {
			return nil, err
		}
		views = append(views, parseViews(start, out)...)
	}
	return views, nil
}

// runUIDMap runs a container with --uidmap/--gidmap MAP: the owners it
// sees, and chown and new files inside it.
func runUIDMap(x *run, idmap string) ([]view, error) {
	if err := x.main(); err != nil {
		return nil, err
	}
	img, err := x.st.image("fixture")
	if err != nil {
		return nil, err
	}
	return x.sh("", `id
view before /t
note changes
cd /t
echo new > newf; chown 5:6 newf
chown 1000:1000 keep
chown 0:0 own; echo x >> own
echo y >> a
mkdir nd; chown 7:7 nd
view after /t`, "run", "--rm", "--uidmap", idmap, "--gidmap", idmap, img)
}

// runForceMask uses a store with force_mask = "shared": the layers on
// disk carry forced modes and the real owner and mode in an xattr, which
// the mount program must show instead. The container must see what it
// sees without the mask: the reference is the kernel driver on a store
// without it (containers-storage allows force_mask only with a mount
// program). fuse-overlayfs 1.10 is no reference here: it loses the setuid
// and setgid bits and shows files made in a build step with the forced
// mode; its differences are only logged.
func runForceMask(x *run) ([]view, error) {
	var extra []string
	if x.prog.path != "" {
		extra = append(extra, `force_mask = "shared"`)
	}
	st, err := x.s.store("forcemask", x.prog, x.rootless, extra...)
	if err != nil {
		return nil, err
	}
	x.st = st
	img, err := st.image("masked")
	if err != nil {
		return nil, err
	}
	if len(extra) == 0 {
		return forceMaskViews(x, img)
	}
	// The scenario means something only if containers-storage did apply
	// the mask: the fixture's files on disk carry the override xattr.
	found, err := filepath.Glob(filepath.Join(st.graph, "overlay", "*", "diff", "t", "mod"))
	if err != nil || len(found) == 0 {
		x.problem("no layer on disk holds t/mod (%v)", err)
	}
	for _, f := range found {
		buf := make([]byte, 256)
		n, err := unix.Lgetxattr(f, "user.containers.override_stat", buf)
		if err != nil {
			x.problem("%s: no user.containers.override_stat: %v", f, err)
		} else if string(buf[:n]) != "0:0:0640" {
			x.problem("%s: user.containers.override_stat = %q, want \"0:0:0640\"", f, buf[:n])
		}
	}
	// compareForceMask relies on containers-storage dropping the setuid
	// bit of t/h1 (mode 4755 in the image): if a newer one keeps it, the
	// comparison must keep it too.
	h1, _ := filepath.Glob(filepath.Join(st.graph, "overlay", "*", "diff", "t", "h1"))
	for _, f := range h1 {
		buf := make([]byte, 256)
		if n, err := unix.Lgetxattr(f, "user.containers.override_stat", buf); err == nil && string(buf[:n]) != "0:0:0755" {
			x.problem("%s: user.containers.override_stat = %q: containers-storage kept the setuid bit; compare with it", f, buf[:n])
		}
	}
	return forceMaskViews(x, img)
}

// compareForceMask compares with the kernel driver's views without the
// setuid, setgid and sticky bits of the reference: containers-storage 1.43
// drops them when it applies a layer under force_mask (its override value
// for a 4755 file is "0:0:0755", checked on disk by runForceMask), so no
// mount program can show them.
func compareForceMask(_ string, ref, got []view) []string {
	stripped := mapListings(ref, func(_, l string) string {
		f := strings.Fields(l)
		if len(f) < 3 || len(f[2]) != 4 || !strings.ContainsAny(f[2][:1], "1234567") {
			return l
		}
		f[2] = f[2][1:]
		return strings.Join(f, " ")
	})
	return compareViews(stripped, got)
}

func forceMaskViews(x *run, img string) ([]view, error) {
	return x.sh("", `view before /t
note changes
cd /t
echo new > newf; chmod 0640 newf; chown 5:6 newf
chmod 0600 mod; chown 3:4 a
mkdir nd; chmod 0700 nd
echo x >> own; ls -ln own newf nd | busybox cut -c1-10
view after /t`, "run", "--rm", img)
}

// runSwitch uses one store with two mount programs in turn: fuse-overlayfs,
// then the program under test, then fuse-overlayfs again (the kernel run
// keeps the kernel driver throughout). A container made in the first
// phase changes its upper in each phase (whiteouts and opaque dirs of one
// program over those of the other), and an image layer built in the second
// phase is read in the third. Each phase first lists what the previous one
// left (foundN), then changes it and lists it again (phaseN); each phase
// also lists the images.
func runSwitch(x *run) ([]view, error) {
	first := x.s.progs[progFuse]
	if x.prog.name == progKernel {
		first = x.prog
	}
	// The store is the program's own (phase sets the mount program).
	st, err := x.s.store("switch", x.prog, x.rootless)
	if err != nil {
		return nil, err
	}
	x.st = st
	const name = "e2e-switch"
	script := listFn + `p=$(cat /s/.phase 2>/dev/null || echo 0)
view found$p /s
p=$((p+1)); echo $p > /s/.phase
cd /s
case $p in
1) rm f && mkdir p1 && echo 1 > p1/x && rm -rf o && mkdir o && echo o1 > o/new && echo k1 >> keep/k &&
   mkdir m && echo m > m/m && mv m m2 ;;
2) rm -rf p1 && mkdir p1 && echo y > p1/y && echo f > f && rm o/new && rm -rf keep && echo p2 > p2 &&
   rm -rf m2 && chmod 0700 d && echo g >> g ;;
3) rm p2 && mkdir keep && echo k3 > keep/k3 && echo f3 >> f && rm d/n ;;
esac
view phase$p /s`
	var views []view
	phase := func(n int, prog program) error {
		st.prog = prog
		if err := st.writeConf(); err != nil {
			return err
		}
		img, err := st.image("sw")
		if err != nil {
			return err
		}
		if n == 1 {
			if _, err := st.podman("create", "--name", name, img, "sh", "-c", script); err != nil {
				return err
			}
		}
		out, err := st.podman("start", "--attach", name)
		if err != nil {
			return err
		}
		views = append(views, parseViews("", out)...)
		v, err := x.sh(fmt.Sprintf("image%d-", n), `view sw /s`, "run", "--rm", img)
		if err != nil {
			return err
		}
		views = append(views, v...)
		if n >= 2 {
			img2, err := st.image("sw2")
			if err != nil {
				return err
			}
			v, err := x.sh(fmt.Sprintf("image%d-", n), `view sw2 /s`, "run", "--rm", img2)
			if err != nil {
				return err
			}
			views = append(views, v...)
		}
		return nil
	}
	for i, prog := range []program{first, x.prog, first} {
		if err := phase(i+1, prog); err != nil {
			return views, fmt.Errorf("phase %d (mount program %s): %w", i+1, prog.name, err)
		}
	}
	return views, nil
}

// compareSwitch checks a switch run: each program shows what the other
// left exactly as the other showed it, and the changes the program under
// test made (its phase and its image layer; all phases when it is also the
// first program) turn its listing into the next as the kernel driver's
// changes turn the kernel's. The listings themselves are not compared with
// the kernel's: a layer fuse-overlayfs built can be wrong (fuse-overlayfs
// 1.10 leaves whiteouts out of layers), and a faithful reader must show it
// as it is.
func compareSwitch(prog string, ref, got []view) []string {
	refBy, gotBy := map[string]string{}, map[string]string{}
	for _, v := range ref {
		refBy[v.name] = v.text
	}
	for _, v := range got {
		gotBy[v.name] = v.text
	}
	var diffs []string
	for _, pair := range [][2]string{
		{"phase1", "found1"}, {"image1-sw", "image2-sw"}, // the program under test reads the first's
		{"phase2", "found2"}, {"image2-sw2", "image3-sw2"}, {"image2-sw", "image3-sw"}, // and back
	} {
		a, okA := gotBy[pair[0]]
		b, okB := gotBy[pair[1]]
		switch {
		case !okA || !okB:
			diffs = append(diffs, fmt.Sprintf("views %s and %s: missing", pair[0], pair[1]))
		case a != b:
			diffs = append(diffs, fmt.Sprintf("after the switch, %s differs from %s (-before +after):\n%s", pair[1], pair[0], lineDiff(a, b, 40)))
		}
	}
	steps := [][2]string{{"found1", "phase2"}, {"image2-sw", "image2-sw2"}}
	if prog == progFuse { // it made every phase
		steps = append(steps, [2]string{"found0", "phase1"}, [2]string{"found2", "phase3"})
	}
	for _, st := range steps {
		want := lineDiff(refBy[st[0]], refBy[st[1]], 1000)
		have := lineDiff(gotBy[st[0]], gotBy[st[1]], 1000)
		if want != have {
			diffs = append(diffs, fmt.Sprintf("the change from %s to %s differs from the kernel driver's:\nkernel:\n%s\nthis run:\n%s", st[0], st[1], want, have))
		}
	}
	return diffs
}
