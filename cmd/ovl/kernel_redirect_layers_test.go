package main

import (
	"fmt"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
)

// TestKernelRedirectAboveEmptyLayers puts a directory with a redirect that
// may not be walked ("/../x", "..", "/cN/../x") or is invalid ("a/b") in
// every layer of a three-lower stack, its parent either only in that layer
// or in all of them, and compares lookups, listings and a rename into it
// with the kernel's. The kernel reads the redirect of every directory but
// one in the mount's bottom layer, even when the parent has nothing below
// (ovl_lookup: d.last), so a parent found only in the top lower still
// walks the redirect in the layers below and meets "..".
func TestKernelRedirectAboveEmptyLayers(t *testing.T) {
	const nlowers = 3
	type rcase struct {
		dir      string
		layer    int // -1: upper, else lower index (0 = top)
		onlyHere bool
		redirect string
	}
	var cases []rcase
	var lay k.Layers
	lay.Lowers = make([]k.Layer, nlowers)
	n := 0
	for layer := -1; layer < nlowers; layer++ {
		for _, only := range []bool{true, false} {
			for _, r := range []string{"/../x", "..", "/D/../x", "a/b"} {
				c := rcase{dir: fmt.Sprintf("c%d", n), layer: layer, onlyHere: only}
				n++
				if r == "/D/../x" {
					r = "/" + c.dir + "/../x"
				}
				c.redirect = r
				cases = append(cases, c)
				put := func(l *k.Layer, here bool) {
					*l = append(*l, k.Dir(c.dir), k.Dir(c.dir+"/a"))
					if here {
						*l = append(*l, k.Dir(c.dir+"/a/b").Mode(0o700).Xattr("overlay.redirect", r))
					}
				}
				if layer == -1 || !only {
					put(&lay.Upper, layer == -1)
				}
				for i := range lay.Lowers {
					if i == layer || !only {
						put(&lay.Lowers[i], i == layer)
					}
				}
			}
		}
	}
	lay.Upper = append(lay.Upper, k.File("h", "h"))
	for _, mode := range []string{"on", "follow", "nofollow"} {
		t.Run(mode, func(t *testing.T) {
			opts := k.DefaultOptions()
			opts.RedirectDir = mode
			p := kcPair(t, opts, lay)
			for _, c := range cases {
				b := c.dir + "/a/b"
				ops := []k.Op{
					kcOp("lstat", b), kcOp("readdir", c.dir+"/a"), kcOp("readdir", b),
					{Op: "rename", Path: "h", Path2: b + "/x"}, kcOp("lstat", b+"/x"),
					{Op: "rename", Path: b + "/x", Path2: "h"},
				}
				res := p.Ops(nil, ops...)
				// The case the random tester found: the top lower's
				// directory over two lowers without its parent.
				if c.layer == 0 && c.onlyHere && c.redirect == "/../x" && mode == "on" {
					p.Expect(ops, res, syscall.EACCES, 0, syscall.EACCES, syscall.EACCES)
				}
			}
			p.Unmount()
			p.Uppers("final")
		})
	}
}
