package ovl_test

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ovl-project/ovl"
	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/internal/testutil"
)

// The package's Example runs as documented, as root.
func TestExample(t *testing.T) {
	testutil.RequireRoot(t)
	out := captureStdout(t, Example)
	if want := "copy-ups: 1\nin the upper: \"hello\\nworld\\n\"\n"; out != want {
		t.Errorf("Example printed %q, want %q", out, want)
	}
}

// A mount made by the library answers "ovl stats", "ovl ls" and "ovl
// umount" like one made by the command; after the unmount the upper can
// be mounted again.
func TestLibraryMountAndCommand(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	for _, d := range []string{"l,1", "u", "w", "m"} { // a comma in a layer's name
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "l,1", "f"), []byte("lower\n"), 0o644)
	cfg := ovl.Config{
		Mountpoint: filepath.Join(dir, "m"),
		Lowers:     []string{filepath.Join(dir, "l,1")},
		Upper:      filepath.Join(dir, "u"), Work: filepath.Join(dir, "w"),
		Source: "libtest",
	}
	srv, err := ovl.Mount(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	m, err := mountinfo.Find(srv.Mountpoint())
	if err != nil || m.FSType != ovl.FSType || m.Source != "libtest" {
		t.Fatalf("mountinfo: %+v, %v", m, err)
	}
	bin := testutil.Binary(t)
	out, err := exec.Command("sh", "-c", `cat "$1/f" && "$2" ls`, "sh", srv.Mountpoint(), bin).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "lower\n") || !strings.Contains(string(out), "lowers:   "+filepath.Join(dir, "l,1")) {
		t.Errorf("cat and ovl ls: %v\n%s", err, out)
	}
	if st := srv.Stats(); st.Lookups == 0 || st.Pid != os.Getpid() {
		t.Errorf("Stats: %+v", st)
	}
	// "ovl umount" ends the serving: Wait returns, and the upper is free.
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	if out, err := exec.Command(bin, "umount", srv.Mountpoint()).CombinedOutput(); err != nil {
		t.Fatalf("ovl umount: %v: %s", err, out)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait: %v", err)
	}
	srv2, err := ovl.Mount(cfg)
	if err != nil {
		t.Fatalf("mount again: %v", err)
	}
	if err := srv2.Unmount(); err != nil {
		t.Fatal(err)
	}
	if _, err := mountinfo.Find(cfg.Mountpoint); err == nil {
		t.Error("still mounted after Unmount")
	}
}

func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&buf, r); close(done) }()
	f()
	os.Stdout = saved
	w.Close()
	<-done
	return buf.String()
}
