package overlay

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

// New refuses overlapping layers (kernel: ovl_setup_trap,
// ovl_check_layer) and, where an upper and workdir inside a lower are
// allowed, lookups of them answer ELOOP. The end-to-end comparison with
// the kernel is cmd/ovl's TestOverlapRefused and TestOverlapUpperInsideLower.
func TestOverlapLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		testutil.Skip(t, "needs root: trusted.overlay xattrs")
	}
	root := t.TempDir()
	for _, d := range []string{"A/sub", "U/x", "W", "L/up", "L/w", "L/d"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := func(s string) string { return filepath.Join(root, s) }
	refused := []struct {
		cfg  Config
		want string
	}{
		{Config{Lowers: []string{p("A"), p("A")}}, "lowerdir " + p("A") + " and lowerdir " + p("A") + " are the same directory"},
		{Config{Lowers: []string{p("A/sub"), p("A")}}, "lowerdir " + p("A/sub") + " is inside lowerdir " + p("A")},
		{Config{Lowers: []string{p("U/x")}, Upper: p("U"), Work: p("W")}, "lowerdir " + p("U/x") + " is inside upperdir " + p("U")},
		{Config{Lowers: []string{p("W")}, Upper: p("U"), Work: p("W")}, "workdir " + p("W") + " and lowerdir " + p("W") + " are the same directory"},
		{Config{Lowers: []string{p("A")}, Upper: p("U"), Work: p("U/x")}, "workdir " + p("U/x") + " is inside upperdir " + p("U")},
	}
	for _, c := range refused {
		o, err := New(c.cfg)
		if err == nil {
			o.Close()
			t.Errorf("New(%+v) mounted, want %q", c.cfg, c.want)
		} else if !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v): %v, want %q", c.cfg, err, c.want)
		}
	}

	o, err := New(Config{Lowers: []string{p("L")}, Upper: p("L/up"), Work: p("L/w")})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	for _, name := range []string{"up", "w"} {
		if n, err := o.Root().Lookup(name); !errors.Is(err, unix.ELOOP) {
			if n != nil {
				n.Forget()
			}
			t.Errorf("Lookup(%s): %v, want ELOOP", name, err)
		}
	}
	n, err := o.Root().Lookup("d")
	if err != nil {
		t.Fatalf("Lookup(d): %v", err)
	}
	n.Forget()
}
