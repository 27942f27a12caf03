// Package demo ships the tiny layer tree that "ovl demo" mounts: two lower
// layers, lower1 over lower2, where lower1's etc/motd covers lower2's and
// the shared/ directory merges. It is embedded so that the demo works from
// any directory and from an installed binary.
package demo

import "embed"

// Layers holds layers/lower1 and layers/lower2.
//
//go:embed layers
var Layers embed.FS
