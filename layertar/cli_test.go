package layertar_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ovl-project/ovl/internal/testutil"
)

// TestCLI pipes "ovl diff" into "ovl apply -" and checks what they print:
// the digest of the bytes written and the diff-id, compression told by
// magic bytes, and refusals of wrong arguments.
func TestCLI(t *testing.T) {
	lower, upper := rulesStack(t)
	bin := testutil.Binary(t)
	for _, comp := range []string{"gzip", "zstd", "none"} {
		t.Run(comp, func(t *testing.T) {
			var layer, stderr bytes.Buffer
			diff := exec.Command(bin, "diff", "-o", "lowerdir="+lower+",upperdir="+upper+",metacopy=on", "--compress", comp)
			diff.Stdout, diff.Stderr = &layer, &stderr
			if err := diff.Run(); err != nil {
				t.Fatalf("ovl diff: %v\n%s", err, stderr.Bytes())
			}
			want := fmt.Sprintf("digest: sha256:%x\n", sha256.Sum256(layer.Bytes()))
			if !strings.HasPrefix(stderr.String(), want) || !strings.Contains(stderr.String(), "diff-id: sha256:") {
				t.Errorf("ovl diff printed %q, want it to start with %q and give the diff-id", stderr.String(), want)
			}
			dir := filepath.Join(t.TempDir(), "layer")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			apply := exec.Command(bin, "apply", "-", dir)
			apply.Stdin = bytes.NewReader(layer.Bytes())
			if out, err := apply.CombinedOutput(); err != nil {
				t.Fatalf("ovl apply: %v\n%s", err, out)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "d2", "f")); err != nil || string(b) != "lower f" {
				t.Errorf("d2/f: %q, %v", b, err)
			}
		})
	}
	for _, args := range [][]string{
		{"diff", "-o", "lowerdir=" + lower, "--output", "/dev/null"}, // no upperdir
		{"diff", "-o", "lowerdir=" + lower + ",upperdir=" + upper, "--compress", "xz"},
		{"diff", "-o", "lowerdir=" + lower + ",upperdir=" + upper, "extra"},
		{"apply", "only-one-argument"},
		{"apply", "/nonexistent.tar", t.TempDir()},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err == nil || !strings.HasPrefix(string(out), "ovl: ") {
			t.Errorf("ovl %s: %v, %q: want a refusal", strings.Join(args, " "), err, out)
		}
	}
}
