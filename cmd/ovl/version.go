package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is the release, set at build time:
//
//	go build -ldflags "-X main.version=v1.2.0" ./cmd/ovl
//
// Without it, the module version when built from a tagged module (go
// install ...@v1.2.0), else "devel".
var version string

// commit is the commit, for builds that go build does not stamp with it
// (outside a git checkout, or in a git worktree):
//
//	go build -ldflags "-X main.commit=$(git rev-parse HEAD)" ./cmd/ovl
var commit string

// versionText is what --version prints. podman shows it whole as the
// mount program's version ("podman info"); the first line keeps the form
// it always had, "ovl VERSION (GO VERSION)".
func versionText() string {
	rel := version
	bi, ok := debug.ReadBuildInfo()
	if rel == "" {
		rel = "devel"
		if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			rel = bi.Main.Version
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ovl %s (%s)\n", rel, runtime.Version())
	// The commit is stamped by go build in a git checkout (-buildvcs,
	// the default there), else given with -X main.commit; a build
	// without either says so.
	rev, modified, when := "unknown (built without VCS stamping)", "", ""
	if commit != "" {
		rev = commit
	}
	if ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					modified = " (modified)"
				}
			case "vcs.time":
				when = s.Value
			}
		}
	}
	fmt.Fprintf(&b, "commit: %s%s\n", rev, modified)
	if when != "" {
		fmt.Fprintf(&b, "commit time: %s\n", when)
	}
	return b.String()
}
