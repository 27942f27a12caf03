package layertar_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

// openPTY opens a pseudo-terminal pair by hand (/dev/ptmx, unlock, the
// slave's number): the master for the test to read, the slave as the
// child's terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	unlock := int32(0)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, m.Fd(), unix.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("TIOCSPTLCK: %v", e)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("TIOCGPTN: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the pty slave: %v", err)
	}
	// A wide terminal, so that the bar has room for its figures.
	ws := unix.Winsize{Row: 40, Col: 160}
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &ws); err != nil {
		t.Fatalf("TIOCSWINSZ: %v", err)
	}
	return m, s
}

// bigUpper makes a lower and an upper of n files of size bytes each.
func bigUpper(t *testing.T, n, size int) (lower, upper string) {
	dir := t.TempDir()
	lower, upper = filepath.Join(dir, "lower"), filepath.Join(dir, "upper")
	for _, d := range []string{lower, upper} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	for i := 0; i < n; i++ {
		if err := os.WriteFile(filepath.Join(upper, fmt.Sprintf("f%04d", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return lower, upper
}

// TestDiffProgress: "ovl diff" with its standard error on a terminal
// draws a bar that shows the bytes written and the entries; with standard
// error a pipe or a file, it prints the summary and nothing else.
func TestDiffProgress(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.Binary(t)
	lower, upper := bigUpper(t, 400, 64<<10)
	opts := "lowerdir=" + lower + ",upperdir=" + upper

	t.Run("terminal", func(t *testing.T) {
		master, slave := openPTY(t)
		defer master.Close()
		cmd := exec.Command(bin, "diff", "-o", opts, "--compress", "none", "--output", filepath.Join(t.TempDir(), "layer.tar"))
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		slave.Close()
		// Read until the child has gone and the slave is closed (EIO).
		var out bytes.Buffer
		buf := make([]byte, 1<<16)
		for {
			n, err := master.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				if !errors.Is(err, unix.EIO) && !errors.Is(err, os.ErrClosed) {
					t.Logf("read pty: %v", err)
				}
				break
			}
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("ovl diff: %v\n%q", err, out.String())
		}
		s := out.String()
		t.Logf("terminal output: %q", s)
		// The bar: "N entries" as its description and the tar bytes
		// so far with a unit ("(1.5 kB, ...)"; a rate alone, "15
		// kB/s", is not the bytes), drawn with carriage returns.
		if !regexp.MustCompile(`\d+ entries \(\d+(\.\d+)? (B|kB|MB|GB)[,)]`).MatchString(s) {
			t.Errorf("the bar shows no entry count with the bytes written: %q", s)
		}
		if !strings.Contains(s, "\r") {
			t.Errorf("no bar was drawn (no carriage return): %q", s)
		}
		if !strings.Contains(s, "entries: 400") {
			t.Errorf("no summary: %q", s)
		}
	})
	t.Run("pipe", func(t *testing.T) {
		cmd := exec.Command(bin, "diff", "-o", opts, "--compress", "none", "--output", filepath.Join(t.TempDir(), "layer.tar"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("ovl diff: %v\n%s", err, stderr.Bytes())
		}
		want := regexp.MustCompile(`^digest: sha256:[0-9a-f]{64}\ndiff-id: sha256:[0-9a-f]{64}\nsize: \d+\nentries: 400\n$`)
		if !want.Match(stderr.Bytes()) {
			t.Errorf("with standard error a pipe, ovl diff printed %q: want the summary alone", stderr.String())
		}
	})
}
