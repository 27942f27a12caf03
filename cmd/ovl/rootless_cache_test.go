package main

// Page cache coherence of a rootless mount (issue 21, goal 5). Without
// FUSE passthrough every read and write goes through the daemon, and ovl
// lets the kernel keep a file's page cache across opens
// (FOPEN_KEEP_CACHE): the data changes only through the mount, by
// writes the kernel itself puts in that cache, by truncates it applies to
// it, and by copy-ups, which keep the data. These scenarios check that
// promise where it could break, through descriptors and mappings that
// were reading the file before it changed.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// rlCacheSteps is what TestRLCacheHelper does in DIR, a merged view of
// rlLayers' layers, and prints: each line is a step and what a reader that
// was open before the change sees after it.
func rlCacheSteps(dir string) (string, error) {
	var out strings.Builder
	p := func(rel string) string { return filepath.Join(dir, rel) }
	readAt := func(fd int) string {
		b := make([]byte, 64)
		n, err := unix.Pread(fd, b, 0)
		if err != nil {
			return "error " + err.Error()
		}
		return fmt.Sprintf("%q", b[:n])
	}
	// A reader of the lower file keep, with its data cached and mapped.
	r, err := unix.Open(p("keep"), unix.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(r)
	mem, err := unix.Mmap(r, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return "", fmt.Errorf("mmap: %w", err)
	}
	defer unix.Munmap(mem)
	mapped := func(n int) string { return fmt.Sprintf("%q", mem[:n]) }
	fmt.Fprintf(&out, "lower: read %s, mapped %s\n", readAt(r), mapped(5))

	// An append through another descriptor copies keep up.
	w, err := unix.Open(p("keep"), unix.O_WRONLY|unix.O_APPEND, 0)
	if err != nil {
		return "", err
	}
	if _, err := unix.Write(w, []byte("more\n")); err != nil {
		return "", err
	}
	unix.Close(w)
	fmt.Fprintf(&out, "after a copy-up append: read %s, mapped %s\n", readAt(r), mapped(10))

	// A write in place through a descriptor opened before the reader's
	// next read, and one opened after it.
	w, err = unix.Open(p("keep"), unix.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	if _, err := unix.Pwrite(w, []byte("K"), 0); err != nil {
		return "", err
	}
	fmt.Fprintf(&out, "after a write in place: read %s, mapped %s\n", readAt(r), mapped(10))
	r2, err := unix.Open(p("keep"), unix.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(&out, "a new reader: read %s\n", readAt(r2))
	if _, err := unix.Pwrite(w, []byte("E"), 1); err != nil {
		return "", err
	}
	fmt.Fprintf(&out, "after a second write: old reader %s, new reader %s\n", readAt(r), readAt(r2))
	unix.Close(r2)
	unix.Close(w)

	// A truncate by path, then a write that makes it longer again.
	if err := unix.Truncate(p("keep"), 2); err != nil {
		return "", err
	}
	fmt.Fprintf(&out, "after truncate to 2: read %s\n", readAt(r))
	if err := os.WriteFile(p("keep"), []byte("rewritten\n"), 0); err != nil {
		return "", err
	}
	fmt.Fprintf(&out, "after O_TRUNC rewrite: read %s, mapped %s\n", readAt(r), mapped(10))

	// A new upper file, written through one descriptor while another
	// has read it.
	c, err := unix.Open(p("d/new"), unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	defer unix.Close(c)
	if _, err := unix.Write(c, []byte("one\n")); err != nil {
		return "", err
	}
	r3, err := unix.Open(p("d/new"), unix.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(r3)
	fmt.Fprintf(&out, "new file: read %s\n", readAt(r3))
	if _, err := unix.Pwrite(c, []byte("two\n"), 0); err != nil {
		return "", err
	}
	fmt.Fprintf(&out, "new file rewritten by its creator: read %s\n", readAt(r3))
	return out.String(), nil
}

// TestRLCacheHelper is not a test: run with arguments DIR FILE after "--",
// it runs rlCacheSteps in DIR and writes its transcript to FILE.
func TestRLCacheHelper(t *testing.T) {
	args := flagArgs()
	if len(args) != 2 || !strings.HasSuffix(args[1], ".cache") {
		return
	}
	s, err := rlCacheSteps(args[0])
	if err != nil {
		s += "error: " + err.Error() + "\n"
	}
	if err := os.WriteFile(args[1], []byte(s), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// A rootless mount (an unprivileged user through fusermount3, no
// passthrough) keeps every reader coherent with writes, appends that copy
// up, truncates and rewrites through other descriptors, as the kernel's
// overlayfs with userxattr does on the same layers (root of the user's
// namespace): the same reads from both, the ones POSIX asks for. A shared
// mapping made before the copy-up shows every change too, where the
// kernel's keeps showing the lower file (docs/differences.md).
func TestRootlessPageCacheCoherent(t *testing.T) {
	e := newNSEnv(t)
	e.rlLayers()
	e.mkdirs("ku", "kw")
	helper := e.self + " -test.run=^TestRLCacheHelper$ -test.count=1 --"
	e.script(`
$AS_USER "$OVL" -o lowerdir=l,upperdir=u,workdir=w --log log m
$AS_USER ` + helper + ` m ovl.cache
$AS_USER "$OVL" umount m
$AS_USER unshare --user --map-root-user --mount -- sh -euc '
mount -t overlay overlay -o userxattr,lowerdir=l,upperdir=ku,workdir=kw km
` + helper + ` km kernel.cache
umount km
'
`)
	if lines := e.rlLog("passthrough: off"); len(lines) != 1 {
		t.Errorf("log: want the mount to say passthrough is off, got %q", lines)
	}
	got, err := os.ReadFile(e.path("ovl.cache"))
	if err != nil {
		t.Fatal(err)
	}
	kernel, err := os.ReadFile(e.path("kernel.cache"))
	if err != nil {
		t.Fatal(err)
	}
	want := `lower: read "keep\n", mapped "keep\n"
after a copy-up append: read "keep\nmore\n", mapped "keep\nmore\n"
after a write in place: read "Keep\nmore\n", mapped "Keep\nmore\n"
a new reader: read "Keep\nmore\n"
after a second write: old reader "KEep\nmore\n", new reader "KEep\nmore\n"
after truncate to 2: read "KE"
after O_TRUNC rewrite: read "rewritten\n", mapped "rewritten\n"
new file: read "one\n"
new file rewritten by its creator: read "two\n"
`
	if string(got) != want {
		t.Errorf("ovl, rootless:\n%s\nwant:\n%s", got, want)
	}
	// The kernel's overlayfs reads the same; its mapping of the lower
	// file keeps the lower data after the copy-up (docs/differences.md).
	if noMaps(string(kernel)) != noMaps(want) {
		t.Errorf("the kernel's overlayfs (userxattr, user namespace) reads otherwise:\n%s\nwant:\n%s", kernel, want)
	}
}

// noMaps drops what the mapping showed from a transcript of rlCacheSteps.
func noMaps(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if j := strings.Index(l, ", mapped "); j >= 0 {
			lines[i] = l[:j]
		}
	}
	return strings.Join(lines, "\n")
}

// A rootless mount lets the kernel keep symlink targets (FUSE_CACHE_SYMLINKS):
// readlink and path walks through a symlink cost one READLINK in all,
// and a symlink replaced at the same name (rm + ln -s, a rename over it,
// a copy-up by chown) reads as the kernel's overlayfs with userxattr
// reads it.
func TestRootlessSymlinkCache(t *testing.T) {
	e := newNSEnv(t)
	e.rlLayers()
	e.mkdirs("ku", "kw")
	e.write("l/d/x", "x\n")
	if err := os.Symlink("d", e.path("l/dl")); err != nil {
		t.Fatal(err)
	}
	os.Lchown(e.path("l/dl"), e.uid, e.gid)
	// Symlinks of their own for each try of the request count: another
	// process's drop_caches makes the kernel forget inodes, and a forgotten
	// symlink is read again, so a try that saw a FORGET does not count.
	const tries = 5
	for i := 1; i <= tries; i++ {
		for name, target := range map[string]string{"tryln": "keep", "trydl": "d"} {
			p := e.path(fmt.Sprintf("l/%s%d", name, i))
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			os.Lchown(p, e.uid, e.gid)
		}
	}
	const steps = `
for i in 1 2 3 4 5; do readlink $M/ln; cat $M/dl/x; done
chown -h $(id -u):$(id -g) $M/ln
readlink $M/ln
rm $M/ln
ln -s a $M/ln
readlink $M/ln
cat $M/ln
ln -s d/x $M/ln2
mv -T $M/ln2 $M/ln
readlink $M/ln
cat $M/ln
`
	e.script(`
$AS_USER "$OVL" -o lowerdir=l,upperdir=u,workdir=w --log log m
for t in 1 2 3 4 5; do
	$AS_USER "$OVL" stats m > stats0.$t.json
	$AS_USER sh -euc 'for i in 1 2 3 4 5; do readlink m/tryln$0; cat m/trydl$0/x; done' $t > warm.$t.txt
	$AS_USER "$OVL" stats m > stats1.$t.json
done
$AS_USER env M=m sh -euc 'cd "$0"; ` + steps + `' "$PWD" > ovl.txt
$AS_USER "$OVL" umount m
$AS_USER unshare --user --map-root-user --mount -- sh -euc '
mount -t overlay overlay -o userxattr,lowerdir=l,upperdir=ku,workdir=kw km
env M=km sh -euc "` + strings.ReplaceAll(strings.ReplaceAll(steps, `$`, `\$`), `"`, `\"`) + `" > kernel.txt
umount km
'
`)
	requests := func(f string) map[string]float64 {
		b, err := os.ReadFile(e.path(f))
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Requests map[string]float64 `json:"requests"`
		}
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		return st.Requests
	}
	counted := false
	for i := 1; i <= tries; i++ {
		before, after := requests(fmt.Sprintf("stats0.%d.json", i)), requests(fmt.Sprintf("stats1.%d.json", i))
		if b, _ := os.ReadFile(e.path(fmt.Sprintf("warm.%d.txt", i))); string(b) != strings.Repeat("keep\nx\n", 5) {
			t.Errorf("readlink tryln%d; cat trydl%d/x, 5 times: %q", i, i, b)
		}
		if after["FORGET"] != before["FORGET"] || after["BATCH_FORGET"] != before["BATCH_FORGET"] {
			t.Logf("try %d: the kernel forgot inodes meanwhile (another process dropped caches); not counted", i)
			continue
		}
		if n := after["READLINK"] - before["READLINK"]; n != 2 {
			t.Errorf("5 readlinks of tryln%d and 5 reads through trydl%d sent %v READLINKs, want 2 (one per symlink)", i, i, n)
		}
		counted = true
		break
	}
	if !counted {
		t.Errorf("the kernel forgot inodes during each of %d tries: nothing counted", tries)
	}
	got, _ := os.ReadFile(e.path("ovl.txt"))
	kernel, _ := os.ReadFile(e.path("kernel.txt"))
	if string(got) != string(kernel) || len(kernel) == 0 {
		t.Errorf("ovl, rootless:\n%s\nthe kernel's overlayfs (userxattr, user namespace):\n%s", got, kernel)
	}
}
