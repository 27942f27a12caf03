// Package testutil holds what the tests that mount need: the ovl binary built
// once per test process, and the rule that under CI=true a test that cannot
// mount fails instead of skipping.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// Binary returns the path of an ovl binary built from this checkout.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ovl-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "ovl")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/ovl-project/ovl/cmd/ovl")
		cmd.Dir = moduleRoot()
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build ovl: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// CI reports whether the tests run under CI, where nothing may be skipped.
func CI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test, or fails it under CI=true: a test that cannot run in CI
// is a failure there, not a pass.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	if CI() {
		t.Fatalf("cannot run under CI: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot needs root and /dev/fuse (CI runs as root).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Skip(t, "needs /dev/fuse: %v", err)
	}
}
