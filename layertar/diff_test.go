package layertar_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"github.com/ovl-project/ovl/layertar"
	"github.com/ovl-project/ovl/overlay"
)

// rulesStack is a lower and an upper layer in the kernel's format, written
// by hand, with one of each thing Diff has a rule for.
func rulesStack(t *testing.T) (lower, upper string) {
	t.Helper()
	testutil.RequireRoot(t) // trusted.overlay.* xattrs and device nodes
	dir := t.TempDir()
	lower, upper = filepath.Join(dir, "lower"), filepath.Join(dir, "upper")
	const prefix = "trusted.overlay."
	if err := k.Build(lower, prefix, k.Layer{
		k.File("d/f", "lower f"),
		k.File("d/g", "lower g"),
		k.File("d/sub/x", "x"),
		k.File("m", "metacopy data"),
		k.File("gone", "gone"),
		k.File("xw/hidden", "hidden"),
		k.File("op/old", "old"),
	}); err != nil {
		t.Fatal(err)
	}
	if err := k.Build(upper, prefix, k.Layer{
		k.Whiteout("gone"),
		k.Whiteout("d"),
		k.Dir("xw"),
		k.XWhiteout("xw/hidden"),
		k.OpaqueDir("op"),
		k.File("op/new", "new"),
		k.Whiteout("op/stale"), // hides nothing: not written
		k.Dir("d2").Xattr("overlay.redirect", "/d").Xattr("overlay.origin", "\x00junk"),
		k.File("d2/h", "upper h"),
		k.Whiteout("d2/g"),
		k.SparseFile("m", int64(len("metacopy data"))).Mode(0o600).Xattr("overlay.metacopy", ""),
		k.File("a", "A").Xattr("user.k", "v").Xattr("overlay.origin", "\x00junk").
			Xattr("overlay.overlay.inner", "escaped").Xattr("user.overlay.opaque", "y"),
		k.Hardlink("a2", "a"),
		k.FIFO("p"),
		k.CharDev("null", 1, 3),
		k.Socket("sock"),
		k.Symlink("s", "../target"),
	}); err != nil {
		t.Fatal(err)
	}
	// The kernel may make every whiteout a link of one inode: they stay
	// whiteouts, never hard links.
	if err := os.Link(filepath.Join(upper, "gone"), filepath.Join(upper, "wh2")); err != nil {
		t.Fatal(err)
	}
	return lower, upper
}

func TestDiffRules(t *testing.T) {
	lower, upper := rulesStack(t)
	var b bytes.Buffer
	res, err := layertar.Diff(&b, overlay.Config{Lowers: []string{lower}, Upper: upper, Metacopy: "on"}, layertar.DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := readEntries(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`0 a 0644 0:0 xattrs=trusted.overlay.inner=escaped,user.k=v data="A"`,
		`1 a2 0644 0:0 -> a`,
		`0 .wh.d 0000 0:0 data=""`,
		`5 d2/ 0755 0:0`,
		`0 d2/.wh..wh..opq 0000 0:0 data=""`,
		`0 d2/f 0644 0:0 data="lower f"`,
		`0 d2/h 0644 0:0 data="upper h"`,
		`5 d2/sub/ 0755 0:0`,
		`0 d2/sub/x 0644 0:0 data="x"`,
		`0 .wh.gone 0000 0:0 data=""`,
		`0 m 0600 0:0 data="metacopy data"`,
		`3 null 0644 0:0 dev=1:3`,
		`5 op/ 0755 0:0`,
		`0 op/.wh..wh..opq 0000 0:0 data=""`,
		`0 op/new 0644 0:0 data="new"`,
		`6 p 0644 0:0`,
		`2 s 0777 0:0 -> ../target`,
		`0 .wh.wh2 0000 0:0 data=""`,
		`5 xw/ 0755 0:0`,
		`0 xw/.wh.hidden 0000 0:0 data=""`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if res.Entries != len(want) {
		t.Errorf("Result.Entries = %d, want %d", res.Entries, len(want))
	}

	// Owners and modes in override xattrs (rootless storage of
	// fuse-overlayfs and containers-storage): with xattr_permissions=2 the
	// entry has them, and the xattr is not written.
	ov := filepath.Join(upper, "ov")
	if err := os.WriteFile(ov, []byte("o"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(ov, "user.fuseoverlayfs.override_stat", []byte("1000:1001:4750"), 0); err != nil {
		t.Fatal(err)
	}
	for xp, want := range map[int]string{0: `0 ov 0755 0:0 data="o"`, 2: `0 ov 4750 1000:1001 data="o"`} {
		b.Reset()
		if _, err := layertar.Diff(&b, overlay.Config{Lowers: []string{lower}, Upper: upper, Metacopy: "on", XattrPermissions: xp}, layertar.DiffOptions{}); err != nil {
			t.Fatal(err)
		}
		ents, _ := readEntries(bytes.NewReader(b.Bytes()))
		found := false
		for _, e := range ents {
			if strings.Contains(e, " ov ") {
				found = e == want
				if !found {
					t.Errorf("xattr_permissions=%d: %s, want %s", xp, e, want)
				}
			}
		}
		if !found {
			t.Errorf("xattr_permissions=%d: no entry %s", xp, want)
		}
	}

	// Without metacopy=on the overlay refuses the metacopy file, and so
	// does Diff, naming it.
	_, err = layertar.Diff(io.Discard, overlay.Config{Lowers: []string{lower}, Upper: upper}, layertar.DiffOptions{})
	if err == nil || !strings.Contains(err.Error(), "metacopy m") {
		t.Errorf("diff without metacopy=on: %v, want a refusal of m", err)
	}
}

func TestDiffRefusesWhiteoutNames(t *testing.T) {
	dir := t.TempDir()
	lower, upper := filepath.Join(dir, "l"), filepath.Join(dir, "u")
	for _, d := range []string{lower, upper} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(upper, ".wh.x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := layertar.Diff(io.Discard, overlay.Config{Lowers: []string{lower}, Upper: upper, UserXattr: true}, layertar.DiffOptions{})
	if err == nil || !strings.Contains(err.Error(), ".wh.x") {
		t.Fatalf("diff of an upper holding .wh.x: %v, want a refusal", err)
	}
}

// TestDiffDeterministic diffs one upper twice and a copy of it (other inode
// numbers, other directory order, another filesystem) once, with each compression: the
// bytes must be the same, and the digests those of the bytes.
func TestDiffDeterministic(t *testing.T) {
	lower, upper := rulesStack(t)
	big := make([]byte, 3<<20)
	rand.New(rand.NewSource(1)).Read(big[:1<<20]) // incompressible, then zeros
	if err := os.WriteFile(filepath.Join(upper, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if err := os.WriteFile(filepath.Join(upper, "op", fmt.Sprintf("n%02d", 49-i)), []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ts := []unix.Timespec{{Sec: 1e9, Nsec: 123456789}, {Sec: 1e9, Nsec: 123456789}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(upper, "big"), ts, 0); err != nil {
		t.Fatal(err)
	}
	// The copy is on a tmpfs, which lists a directory in another order
	// than ext4 and numbers inodes otherwise.
	tmpfs := t.TempDir()
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(tmpfs, unix.MNT_DETACH) })
	cp := filepath.Join(tmpfs, "upper-copy")
	if out, err := exec.Command("cp", "-a", upper, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
	for _, comp := range []layertar.Compression{layertar.None, layertar.Gzip, layertar.Zstd} {
		t.Run(comp.String(), func(t *testing.T) {
			var outs [3][]byte
			var results [3]*layertar.Result
			for i, u := range []string{upper, upper, cp} {
				var b bytes.Buffer
				entries := 0
				r, err := layertar.Diff(&b, overlay.Config{Lowers: []string{lower}, Upper: u, Metacopy: "on"},
					layertar.DiffOptions{Compression: comp, Progress: func(_ int64, n int) { entries = n }})
				if err != nil {
					t.Fatal(err)
				}
				if entries != r.Entries {
					t.Errorf("progress saw %d entries, Result %d", entries, r.Entries)
				}
				outs[i], results[i] = b.Bytes(), r
			}
			for i := 1; i < 3; i++ {
				if !bytes.Equal(outs[0], outs[i]) {
					t.Errorf("diff %d: %d bytes, differ from diff 0 (%d bytes)", i, len(outs[i]), len(outs[0]))
				}
			}
			r := results[0]
			if want := fmt.Sprintf("sha256:%x", sha256.Sum256(outs[0])); r.Digest.String() != want || r.Size != int64(len(outs[0])) {
				t.Errorf("digest %s size %d, want %s size %d", r.Digest, r.Size, want, len(outs[0]))
			}
			tr, got, err := layertar.Decompress(bytes.NewReader(outs[0]))
			if err != nil || got != comp {
				t.Fatalf("Decompress: %v, %v (want %v)", err, got, comp)
			}
			plain, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("sha256:%x", sha256.Sum256(plain)); r.DiffID.String() != want {
				t.Errorf("diff-id %s, want %s", r.DiffID, want)
			}
			if comp == layertar.None && r.DiffID != r.Digest {
				t.Errorf("uncompressed: digest %s and diff-id %s differ", r.Digest, r.DiffID)
			}
			if comp != layertar.None && len(outs[0]) > len(plain)/2 {
				t.Errorf("%s: %d bytes from %d: not compressed", comp, len(outs[0]), len(plain))
			}
		})
	}
}
