package podman

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
)

// changeSet is what the container of TestCommitRoundTrip changes in the
// fixture image: a write to a lower file, a chmod, a lower file removed, a
// directory removed with its contents, a new directory with files, a
// directory renamed (with ovl: a redirect), and a bigger new file and new
// small files so that the timings measure some data.
const changeSet = `set -e
cd /t
echo changed >> app
chmod 0600 mod
rm keep
rm -r rmd
mkdir -p newd/sub && echo n > newd/n && echo s > newd/sub/s
mv ren renamed
busybox head -c 8000000 /bin/busybox > /big || true
i=0; while [ $i -lt 300 ]; do echo $i > /t/newd/f$i; i=$((i+1)); done
`

// TestCommitRoundTrip compares "ovl diff" of a container's upper with the
// layer "podman commit" makes of it (containers-storage's naive diff,
// with ovl as mount_program, rootful): each is applied with "ovl apply"
// onto the container's lower layers, and the two merged views must be
// identical (content, owner, mode, mtime of non-directories, xattrs,
// hard-link groups). An upper-based layer also holds the copied-up
// objects that did not change, which the naive diff leaves out: the
// trees are compared, not the entry lists.
//
// It also times, in the same run and on the same container, "ovl diff" of
// the upper, tar of the merged view (podman mount, then GNU tar) and
// "podman commit", and logs the medians and their ratios (README.md quotes
// them).
func TestCommitRoundTrip(t *testing.T) {
	s := newSuite(t)
	prog := s.progs[progOvl]
	st, err := s.store("commit", prog, false)
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.image("fixture")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.podman("run", "--name", "c1", img, "sh", "-c", changeSet); err != nil {
		t.Fatal(err)
	}
	out, err := st.podman("inspect", "--format", "{{json .GraphDriver.Data}}", "c1")
	if err != nil {
		t.Fatal(err)
	}
	var gd struct{ LowerDir, UpperDir string }
	if err := json.Unmarshal([]byte(out), &gd); err != nil || gd.UpperDir == "" || gd.LowerDir == "" {
		t.Fatalf("podman inspect: %v: %q", err, out)
	}
	lowers := strings.Split(gd.LowerDir, ":")
	work := t.TempDir()

	// (a) ovl diff of the upper.
	ovlTar := filepath.Join(work, "ovl.tar")
	ovlDiff := func() error {
		_, err := st.exec(prog.path, "diff", "-o", "lowerdir="+gd.LowerDir+",upperdir="+gd.UpperDir,
			"--compress", "none", "--output", ovlTar)
		return err
	}
	if err := ovlDiff(); err != nil {
		t.Fatal(err)
	}
	// (b) podman commit, and its top layer out of an OCI directory.
	commit := func(i int) error {
		_, err := st.podman("commit", "--quiet", "c1", fmt.Sprintf("localhost/e2e/committed:%d", i))
		return err
	}
	if err := commit(0); err != nil {
		t.Fatal(err)
	}
	podmanTar := topLayer(t, st, "localhost/e2e/committed:0", filepath.Join(work, "oci"))

	// Each applied onto the same lowers, read through ovl (the lowers
	// containers-storage applied with a mount program hold AUFS
	// whiteouts, which the kernel does not read).
	var views []*k.Tree
	for _, tarPath := range []string{ovlTar, podmanTar} {
		dir := filepath.Join(work, "applied-"+filepath.Base(tarPath))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := st.exec(prog.path, "apply", tarPath, dir); err != nil {
			t.Fatal(err)
		}
		mnt := filepath.Join(work, "mnt-"+filepath.Base(tarPath))
		if err := os.Mkdir(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		l := k.Layout{Lowers: append([]string{dir}, lowers...), Mnt: mnt}
		m := k.Ovl{Bin: prog.path}
		if err := m.Mount(l, k.Options{ReadOnly: true, Metacopy: "off", Xino: "off", UUID: "off"}); err != nil {
			t.Fatal(err)
		}
		view, err := k.Snapshot(mnt, k.SnapOptions{})
		if uerr := m.Unmount(mnt); uerr != nil {
			t.Error(uerr)
		}
		if err != nil {
			t.Fatal(err)
		}
		views = append(views, view)
	}
	// The layer root is no entry of either tar: the root's attributes
	// come from the lowers in both. containers-storage writes mtimes in
	// whole seconds (no PAX time records): those are compared to the
	// second, below.
	ds := k.Compare(views[0], views[1], k.CompareOptions{Scope: k.ScopeMerged})
	for _, p := range slices.Sorted(maps.Keys(views[0].Nodes)) {
		a, b := views[0].Nodes[p], views[1].Nodes[p]
		if b == nil || a.Type == "dir" || a.Type != b.Type {
			continue // existence and type are Compare's
		}
		if a.Mtime/1e9 != b.Mtime/1e9 {
			ds = append(ds, k.Diff{Path: p, Type: a.Type, Field: "mtime (s)", A: fmt.Sprint(a.Mtime / 1e9), B: fmt.Sprint(b.Mtime / 1e9)})
		}
	}
	if len(ds) > 0 {
		t.Errorf("ovl diff and podman commit give different trees:\n%s\novl diff's layer:\n%s\npodman commit's layer:\n%s",
			k.FormatDiffs("ovl diff", "podman commit", ds), tarList(t, ovlTar), tarList(t, podmanTar))
	}
	for _, want := range []string{"t/renamed/x/r", "t/newd/sub/s", "big"} {
		if views[0].Nodes[want] == nil {
			t.Errorf("the applied view lacks %s", want)
		}
	}
	for _, gone := range []string{"t/keep", "t/rmd", "t/ren"} {
		if views[0].Nodes[gone] != nil {
			t.Errorf("the applied view still has %s", gone)
		}
	}

	// The timings: rounds of the three, in turn, on the same container.
	const rounds = 5
	var tDiff, tTar, tCommit []time.Duration
	for i := 1; i <= rounds; i++ {
		start := time.Now()
		if err := ovlDiff(); err != nil {
			t.Fatal(err)
		}
		tDiff = append(tDiff, time.Since(start))

		merged, err := st.podman("mount", "c1")
		if err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		// Into a file: GNU tar skips reading data it writes to /dev/null.
		if _, err := st.exec("tar", "--numeric-owner", "--xattrs", "-cf", filepath.Join(work, "merged.tar"), "-C", strings.TrimSpace(merged), "."); err != nil {
			t.Fatal(err)
		}
		tTar = append(tTar, time.Since(start))
		if _, err := st.podman("umount", "c1"); err != nil {
			t.Fatal(err)
		}

		start = time.Now()
		if err := commit(i); err != nil {
			t.Fatal(err)
		}
		tCommit = append(tCommit, time.Since(start))
	}
	md, mt, mc := median(tDiff), median(tTar), median(tCommit)
	t.Logf("medians of %d rounds on one container (rootful, ovl as mount_program): ovl diff %v, tar of the merged view %v (%.1fx), podman commit %v (%.1fx)",
		rounds, md.Round(time.Millisecond), mt.Round(time.Millisecond), mt.Seconds()/md.Seconds(),
		mc.Round(time.Millisecond), mc.Seconds()/md.Seconds())
	if fi, err := os.Stat(ovlTar); err == nil {
		t.Logf("ovl diff's layer: %d bytes; all rounds: ovl diff %v, tar %v, commit %v", fi.Size(), tDiff, tTar, tCommit)
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// topLayer saves image as an OCI directory in dir and returns the path of
// its top layer's blob.
func topLayer(t *testing.T, st *store, image, dir string) string {
	t.Helper()
	if _, err := st.podman("save", "--format", "oci-dir", "-o", dir, image); err != nil {
		t.Fatal(err)
	}
	var index struct {
		Manifests []struct{ Digest string }
	}
	var manifest struct {
		Layers []struct{ Digest, MediaType string }
	}
	readJSON := func(p string, v any) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, v); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	blob := func(digest string) string {
		algo, hex, _ := strings.Cut(digest, ":")
		return filepath.Join(dir, "blobs", algo, hex)
	}
	readJSON(filepath.Join(dir, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("%s: %d manifests", dir, len(index.Manifests))
	}
	readJSON(blob(index.Manifests[0].Digest), &manifest)
	if len(manifest.Layers) == 0 {
		t.Fatalf("%s: no layers", dir)
	}
	return blob(manifest.Layers[len(manifest.Layers)-1].Digest)
}

// tarList lists a layer tar (possibly compressed) for a failure report.
func tarList(t *testing.T, path string) string {
	out, err := exec.Command("tar", "--numeric-owner", "-tvf", path).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(tar -tvf %s: %v)\n%s", path, err, out)
	}
	return tail(string(out), 80)
}
