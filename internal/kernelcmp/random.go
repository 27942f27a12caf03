package kernelcmp

import (
	"fmt"
	"math/rand"

	"golang.org/x/sys/unix"
)

// Gen is the version of the generator: RandomCase(seed, n) gives the same
// case for the same Gen. Saved reproductions record it; they hold their
// layers and ops themselves, so they stay valid when it changes.
const Gen = 1

// RandomCase draws the case of a seed: layers over a small name space,
// then nOps ops. Even seeds use userxattr.
func RandomCase(seed int64, nOps int) Case {
	rng := rand.New(rand.NewSource(seed))
	c := Case{Seed: seed, Gen: Gen, NOps: nOps, NLowers: 2, UserXattr: seed%2 == 0}
	c.Layers = RandomLayers(rng, c.NLowers)
	for i := 0; i < nOps; i++ {
		c.Ops = append(c.Ops, RandomOp(rng))
	}
	return c
}

// RandomLayers builds a small random layer stack over a fixed name space,
// so that random ops often hit lower, upper, merged, whited-out and opaque
// names. Names are in Names().
func RandomLayers(rng *rand.Rand, nLowers int) Layers {
	// Layers are generated bottom first. A whiteout goes only into a
	// directory that merges with one below (the kernel lists whiteouts
	// of an unmerged directory in readdir while lookup hides them; layer
	// tools never write such whiteouts).
	below := map[string]bool{}
	gen := func() Layer {
		var l Layer
		// Which directories this layer has ("" always); a file may take
		// a directory's name where the layer has no such directory.
		has := map[string]bool{"": true}
		opaque := map[string]bool{}
		for _, d := range randDirs[1:] {
			has[d] = has[parentOf(d)] && rng.Intn(6) != 0
			opaque[d] = has[d] && (opaque[parentOf(d)] || rng.Intn(5) == 0)
		}
		for _, d := range randDirs {
			if !has[d] {
				continue
			}
			if d != "" {
				if opaque[d] && !opaque[parentOf(d)] {
					l = append(l, OpaqueDir(d))
				} else {
					l = append(l, Dir(d).Mode(uint32(0o700+rng.Intn(2)*0o55)))
				}
			}
			for _, f := range randFiles {
				p := d + "/" + f
				if d == "" {
					p = f
				}
				if has[p] {
					continue
				}
				switch rng.Intn(8) {
				case 0, 1:
					l = append(l, File(p, fmt.Sprintf("%s@%d", p, rng.Intn(100))).Mode(0o644).Xattr("user.r", fmt.Sprint(rng.Intn(3))))
				case 2:
					if merges(below, d) && !opaque[d] {
						l = append(l, Whiteout(p))
					}
				case 3:
					l = append(l, Symlink(p, randFiles[rng.Intn(len(randFiles))]))
				}
			}
		}
		// below[p]: the topmost layer so far that has p has a directory
		// there (a file, symlink or whiteout cuts what lies under it).
		for _, e := range l {
			below[e.Path] = e.Kind == KindDir
		}
		return l
	}
	var ls Layers
	for i := 0; i < nLowers; i++ {
		ls.Lowers = append([]Layer{gen()}, ls.Lowers...)
	}
	ls.Upper = gen()
	return ls
}

// merges reports whether directory d of a new layer merges with the
// layers below: d and all its ancestors are directories there.
func merges(below map[string]bool, d string) bool {
	if d == "" {
		return true
	}
	return below[d] && merges(below, parentOf(d))
}

func parentOf(d string) string {
	for i := len(d) - 1; i >= 0; i-- {
		if d[i] == '/' {
			return d[:i]
		}
	}
	return ""
}

var (
	randDirs  = []string{"", "a", "a/b", "c"}
	randFiles = []string{"f", "g", "h", "b", "c"}
)

// Names are the paths random ops use.
func Names() []string {
	var out []string
	for _, d := range randDirs {
		for _, f := range randFiles {
			if d == "" {
				out = append(out, f)
			} else {
				out = append(out, d+"/"+f)
			}
		}
	}
	return append(out, "a", "c", "a/b/x", "new", "a/new")
}

// RandomOp draws one operation over Names.
func RandomOp(rng *rand.Rand) Op {
	names := Names()
	n := func() string { return names[rng.Intn(len(names))] }
	switch rng.Intn(20) {
	case 0:
		return Op{Op: "create", Path: n(), Mode: 0o644}
	case 1:
		return Op{Op: "write", Path: n(), Data: "w", Off: int64(rng.Intn(4))}
	case 2:
		return Op{Op: "append", Path: n(), Data: "+"}
	case 3:
		return Op{Op: "truncate", Path: n(), Off: int64(rng.Intn(3))}
	case 4:
		return Op{Op: "mkdir", Path: n(), Mode: 0o755}
	case 5:
		return Op{Op: "rmdir", Path: n()}
	case 6, 7:
		return Op{Op: "unlink", Path: n()}
	case 8, 9:
		flags := 0
		switch rng.Intn(4) {
		case 0:
			flags = unix.RENAME_NOREPLACE
		case 1:
			flags = unix.RENAME_EXCHANGE
		}
		return Op{Op: "rename", Path: n(), Path2: n(), Flags: flags}
	case 10:
		return Op{Op: "link", Path: n(), Path2: n()}
	case 11:
		return Op{Op: "symlink", Path: n(), Data: "f"}
	case 12:
		return Op{Op: "chmod", Path: n(), Mode: uint32(0o600 + rng.Intn(2)*0o44)}
	case 13:
		return Op{Op: "setxattr", Path: n(), Name: "user.r", Data: fmt.Sprint(rng.Intn(3))}
	case 14:
		return Op{Op: "removexattr", Path: n(), Name: "user.r"}
	case 15:
		return Op{Op: "read", Path: n()}
	case 16:
		return Op{Op: "readdir", Path: []string{"", "a", "a/b", "c"}[rng.Intn(4)]}
	case 17:
		return Op{Op: "lstat", Path: n()}
	case 18:
		return Op{Op: "mknod", Path: n(), Mode: unix.S_IFIFO | 0o644}
	default:
		return Op{Op: "getxattr", Path: n(), Name: "user.r"}
	}
}
