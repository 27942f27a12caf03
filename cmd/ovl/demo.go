package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/examples/demo"
)

// demoStep is one shell command of the demo, with a caption.
type demoStep struct{ caption, cmd string }

// runDemo copies the example layers into a temporary directory, mounts ovl
// over them and shows, step by step, what lands in the upper layer.
//
// Every command that touches the mount runs in a child process (the shell,
// and "ovl mount" starting its own daemon): a Go process must not touch a
// FUSE mount that it serves itself (go-fuse fs/api.go lists the deadlocks).
func runDemo(inv *invocation) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "ovl-demo-")
	if err != nil {
		return err
	}
	// The directory must be reachable by everyone: the mount is checked
	// against it by the kernel and by the users of allow_other.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	mounted := false
	defer func() {
		if mounted {
			// Never remove the tree while mounted: that would delete
			// through the mount. Leave it for the user instead.
			fmt.Printf("\nThe demo stopped with %s still mounted; run: ovl umount %s\n", filepath.Join(tmp, "merged"), filepath.Join(tmp, "merged"))
			return
		}
		os.RemoveAll(tmp)
	}()
	if err := copyDemoLayers(tmp); err != nil {
		return fmt.Errorf("demo: copying the example layers: %w", err)
	}
	for _, d := range []string{"upper", "work", "merged", "bin"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o755); err != nil {
			return err
		}
	}
	// Let the shell steps say "ovl" whatever this binary is called.
	if err := os.Symlink(self, filepath.Join(tmp, "bin", "ovl")); err != nil {
		return err
	}
	opts := "lowerdir=lower1:lower2,upperdir=upper,workdir=work"
	if os.Geteuid() != 0 {
		opts += ",userxattr" // trusted.* xattrs need root
	}

	fmt.Printf("ovl demo, in %s\n", tmp)
	fmt.Println("Two lower layers: lower1 lies over lower2. Both have etc/motd; both have a shared/ directory.")
	run := func(s demoStep) error {
		fmt.Printf("\n# %s\n$ %s\n", s.caption, s.cmd)
		cmd := exec.Command("sh", "-c", s.cmd)
		cmd.Dir = tmp
		cmd.Env = append(os.Environ(), "PATH="+filepath.Join(tmp, "bin")+":"+os.Getenv("PATH"), "LC_ALL=C")
		out, err := cmd.CombinedOutput()
		os.Stdout.Write(indent(out))
		if err != nil {
			return fmt.Errorf("demo: %q failed: %v", s.cmd, err)
		}
		return nil
	}
	if err := run(demoStep{"The layers as they are on disk", "find lower1 lower2 -type f | sort"}); err != nil {
		return err
	}
	if err := run(demoStep{"Mount them, with an empty upper layer for the changes", "ovl mount -o " + opts + " merged"}); err != nil {
		return err
	}
	mounted = true
	steps := []demoStep{
		{"The merged view: shared/ has the files of both layers", "ls merged merged/shared"},
		{"etc/motd comes from lower1, the top layer", "cat merged/etc/motd"},
		{"Writing to a lower file copies it up to the upper layer first", `echo "a line written through ovl" >> merged/docs/readme.txt && cat merged/docs/readme.txt`},
		{"Deleting a lower file leaves a whiteout in the upper layer", "rm merged/shared/from-lower2.txt && ls merged/shared"},
		{"A directory made where a lower one was deleted is opaque: the old files stay hidden", "rm -r merged/cache && mkdir merged/cache && ls -a merged/cache"},
		{"The daemon's counters", "ovl stats merged"},
		{"The lower layers are untouched", "cat lower2/docs/readme.txt && ls lower2/shared lower2/cache"},
		{"The upper layer holds only the changes: the whiteout is a character device 0/0", "ls -lR --time-style=+ upper"},
	}
	for _, s := range steps {
		if err := run(s); err != nil {
			return err
		}
	}
	fmt.Printf("\n# The overlay's extended attributes in the upper layer (read directly, not through the mount)\n")
	if err := showOverlayXattrs(filepath.Join(tmp, "upper")); err != nil {
		return err
	}
	if err := run(demoStep{"Unmount; the upper layer can now be mounted again, or by the kernel's overlayfs", "ovl umount merged"}); err != nil {
		return err
	}
	mounted = false
	fmt.Printf("\nDone; removed %s.\n", tmp)
	return nil
}

// copyDemoLayers writes the embedded example layers into dir.
func copyDemoLayers(dir string) error {
	return fs.WalkDir(demo.Layers, "layers", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, "layers"), "/")
		dst := filepath.Join(dir, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := demo.Layers.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
}

// showOverlayXattrs prints the overlay xattrs of every file in the upper
// layer. It reads the upper directly, never the mount.
func showOverlayXattrs(upper string) error {
	found := false
	err := filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		names, err := listXattrs(p)
		if err != nil {
			return err
		}
		for _, name := range names {
			if !strings.HasPrefix(name, "trusted.overlay.") && !strings.HasPrefix(name, "user.overlay.") {
				continue
			}
			val := make([]byte, 4096)
			n, err := unix.Lgetxattr(p, name, val)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", p, name, err)
			}
			rel, _ := filepath.Rel(filepath.Dir(upper), p)
			fmt.Printf("    %s: %s=%s\n", rel, name, xattrValue(val[:n]))
			found = true
		}
		return nil
	})
	if err == nil && !found {
		fmt.Println("    (none)")
	}
	return err
}

// xattrValue shows a value as getfattr does: quoted text, or hex when it
// is binary (as overlay.origin, an encoded file handle).
func xattrValue(v []byte) string {
	for _, c := range v {
		if c < 0x20 || c > 0x7e {
			return fmt.Sprintf("0x%x", v)
		}
	}
	return fmt.Sprintf("%q", v)
}

func listXattrs(p string) ([]string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil, fmt.Errorf("listing xattrs of %s: %w", p, err)
	}
	var names []string
	for _, b := range bytes.Split(buf[:n], []byte{0}) {
		if len(b) > 0 {
			names = append(names, string(b))
		}
	}
	return names, nil
}

// indent prefixes each line of out with four spaces.
func indent(out []byte) []byte {
	if len(out) == 0 {
		return nil
	}
	s := "    " + strings.ReplaceAll(strings.TrimRight(string(out), "\n"), "\n", "\n    ") + "\n"
	return []byte(s)
}
