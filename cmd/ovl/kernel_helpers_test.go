package main

// Helpers for the tests that compare ovl with the kernel's overlayfs
// (kernel_*_test.go, semantics_*_test.go). Set KCMP_CANDIDATE=kernel to run
// them kernel against kernel (to debug a scenario itself), KCMP_KEEP=1 to
// keep the layer copies.

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"golang.org/x/sys/unix"
)

// kcPair mounts the kernel's overlayfs and ovl over copies of layers.
func kcPair(t *testing.T, opts kernelcmp.Options, layers kernelcmp.Layers) *kernelcmp.Pair {
	t.Helper()
	return kcPairCfg(t, kernelcmp.Config{Options: opts}, layers)
}

// kcPairCfg is kcPair with a full Config (Candidate is filled in).
func kcPairCfg(t *testing.T, cfg kernelcmp.Config, layers kernelcmp.Layers) *kernelcmp.Pair {
	t.Helper()
	testutil.RequireRoot(t)
	var cand kernelcmp.Mounter = kernelcmp.Ovl{Bin: testutil.Binary(t)}
	if os.Getenv("KCMP_CANDIDATE") == "kernel" && !testutil.CI() {
		cand = kernelcmp.Kernel{}
	}
	cfg.Candidate = cand
	return kernelcmp.NewPair(t, cfg, layers)
}

// kcModes runs f once with trusted.overlay xattrs and once with userxattr.
func kcModes(t *testing.T, f func(t *testing.T, opts kernelcmp.Options)) {
	for _, ux := range []bool{false, true} {
		name := "trusted"
		if ux {
			name = "userxattr"
		}
		t.Run(name, func(t *testing.T) {
			opts := kernelcmp.DefaultOptions()
			opts.UserXattr = ux
			f(t, opts)
		})
	}
}

// kcNobody is the unprivileged user of the permission scenarios.
var kcNobody = &kernelcmp.Cred{UID: 1000, GID: 1000}

// kcExpectView checks a merged-view snapshot against want: path -> "type"
// or "file:content" (content checked by reading ref's mount), and that the
// paths in absent do not exist.
func kcExpectView(t *testing.T, p *kernelcmp.Pair, view *kernelcmp.Tree, want map[string]string, absent ...string) {
	t.Helper()
	for _, path := range sortedKeys(want) {
		w := want[path]
		typ, content, hasContent := strings.Cut(w, ":")
		n := view.Nodes[path]
		if n == nil {
			t.Errorf("view: %s missing, want %s", path, w)
			continue
		}
		if n.Type != typ {
			t.Errorf("view: %s is a %s, want %s", path, n.Type, typ)
			continue
		}
		if hasContent {
			for _, s := range p.Sides() {
				b, err := os.ReadFile(s.Path(path))
				if err != nil || string(b) != content {
					t.Errorf("view: %s: %s has %q (%v), want %q", s.Name, path, b, err, content)
				}
			}
		}
	}
	for _, path := range absent {
		if n := view.Nodes[path]; n != nil {
			t.Errorf("view: %s is visible (a %s), want hidden", path, n.Type)
		}
	}
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// kcUpperNode stats rel in a side's upper layer (overlay xattrs in Ovl).
func kcUpperNode(p *kernelcmp.Pair, s *kernelcmp.Side, rel string) (*kernelcmp.Node, error) {
	return kernelcmp.StatNode(s.UpperPath(rel), kernelcmp.SnapOptions{Upper: true, Prefix: p.Cfg.Options.Prefix(), NoHash: true})
}

// kcCheckUpper checks, on both sides, that rel exists in the upper layer
// with type typ ("" = must not exist), and runs more checks on the node.
func kcCheckUpper(p *kernelcmp.Pair, rel, typ string, more ...func(n *kernelcmp.Node) error) {
	p.T.Helper()
	p.Check("upper "+rel, func(s *kernelcmp.Side) error {
		n, err := kcUpperNode(p, s, rel)
		if typ == "" {
			if err == nil {
				return fmt.Errorf("exists in the upper (a %s), want absent", n.Type)
			}
			if err != unix.ENOENT {
				return err
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("want a %s in the upper: %v", typ, err)
		}
		if n.Type != typ {
			return fmt.Errorf("is a %s in the upper, want %s", n.Type, typ)
		}
		for _, f := range more {
			if err := f(n); err != nil {
				return err
			}
		}
		return nil
	})
}

// kcOpaque checks overlay.opaque=y.
func kcOpaque(n *kernelcmp.Node) error {
	if v := n.Ovl["opaque"]; v != "y" {
		return fmt.Errorf("overlay.opaque=%q, want y", v)
	}
	return nil
}

// kcNotOpaque checks the absence of overlay.opaque=y.
func kcNotOpaque(n *kernelcmp.Node) error {
	if v, ok := n.Ovl["opaque"]; ok && strings.HasPrefix(v, "y") {
		return fmt.Errorf("overlay.opaque=%q, want none", v)
	}
	return nil
}

// kcAttrs checks perm, owner.
func kcAttrs(perm uint32, uid, gid uint32) func(n *kernelcmp.Node) error {
	return func(n *kernelcmp.Node) error {
		if n.Perm != perm || n.UID != uid || n.GID != gid {
			return fmt.Errorf("mode %04o owner %d:%d, want %04o %d:%d", n.Perm, n.UID, n.GID, perm, uid, gid)
		}
		return nil
	}
}

// kcMtime checks the mtime.
func kcMtime(ns int64) func(n *kernelcmp.Node) error {
	return func(n *kernelcmp.Node) error {
		if n.Mtime != ns {
			return fmt.Errorf("mtime %d, want %d", n.Mtime, ns)
		}
		return nil
	}
}

// kcOp is shorthand for building Ops.
func kcOp(op, path string) kernelcmp.Op { return kernelcmp.Op{Op: op, Path: path} }
