package kernelcmp

import (
	"fmt"
	"math/rand"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Gen is the version of the generator: RandomCase(seed, n) gives the same
// case for the same Gen. Saved reproductions record it; they hold their
// layers and ops themselves, so they stay valid when it changes.
//
// Gen 1 had two lowers, no hard links or xattr whiteouts, and no chown,
// utimes, rmrf or held fds. Gen 2 put whiteouts under a directory that an
// opaque directory of a layer in between cuts off (stray whiteouts). Gen 3
// held fds in every mode; gen 4 holds them only with passthrough=off.
const Gen = 4

// RandomCase draws the case of a seed: one to three lower layers and an
// upper over a small name space, then nOps ops. Even seeds use userxattr,
// odd ones trusted.overlay xattrs. Seeds 2 and 3 mod 4 mount ovl with
// passthrough=off and hold fds across changes; seeds 0 and 1 mod 4 use
// ovl's default (FUSE passthrough where the kernel allows it) and hold no
// fds, because with passthrough a read-only fd of a lower file makes
// writers fail with ETXTBSY on purpose (README, docs/passthrough.md).
func RandomCase(seed int64, nOps int) Case {
	rng := rand.New(rand.NewSource(seed))
	c := Case{Seed: seed, Gen: Gen, NOps: nOps, NLowers: 1 + rng.Intn(3), UserXattr: seed%2 == 0}
	held := seed%4 >= 2
	if held {
		c.OvlOptions = []string{"passthrough=off"}
	}
	c.Layers = RandomLayers(rng, c.NLowers)
	c.Ops = RandomOps(rng, nOps, held)
	return c
}

var (
	randDirs  = []string{"", "a", "a/b", "c"}
	randFiles = []string{"f", "g", "h", "b", "c"}
	// RandomTimes are the mtimes utimes ops set (deterministic, so that
	// the comparison of times can use them).
	RandomTimes = []int64{
		time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		time.Date(2010, 6, 7, 8, 9, 10, 123456789, time.UTC).UnixNano(),
		time.Date(2030, 12, 31, 23, 59, 59, 0, time.UTC).UnixNano(),
	}
	randIDs = []int{0, 1000, 65534}
)

func joinName(d, f string) string {
	if d == "" {
		return f
	}
	return d + "/" + f
}

// RandomLayers builds a random layer stack over a fixed name space, so that
// random ops often hit lower, upper, merged, whited-out and opaque names.
// Lower layers may hold hard links (to a file of the same layer), FIFOs,
// files of other owners, whiteouts in both forms (character device 0/0,
// and the xattr form in a directory marked opaque=x, which the kernel
// reads in lower layers above the bottom one only), and opaque
// directories.
func RandomLayers(rng *rand.Rand, nLowers int) Layers {
	// Layers are generated bottom first. A whiteout goes only into a
	// directory that merges with one below (the kernel lists whiteouts
	// of an unmerged directory in readdir while lookup hides them; layer
	// tools never write such whiteouts).
	below := map[string]bool{}
	gen := func(xwhiteouts bool) Layer {
		var l Layer
		// Which directories this layer has ("" always); a file may take
		// a directory's name where the layer has no such directory.
		has := map[string]bool{"": true}
		opaque := map[string]bool{}
		for _, d := range randDirs[1:] {
			has[d] = has[parentOf(d)] && rng.Intn(6) != 0
			opaque[d] = has[d] && (opaque[parentOf(d)] || rng.Intn(5) == 0)
		}
		var files, free []string
		for _, d := range randDirs {
			if !has[d] {
				continue
			}
			if d != "" {
				if opaque[d] && !opaque[parentOf(d)] {
					l = append(l, OpaqueDir(d))
				} else {
					e := Dir(d).Mode(uint32(0o700 + rng.Intn(2)*0o55))
					if rng.Intn(6) == 0 {
						e = e.Owner(1000, 1000)
					}
					l = append(l, e)
				}
			}
			for _, f := range randFiles {
				p := joinName(d, f)
				if has[p] {
					continue
				}
				switch rng.Intn(10) {
				case 0, 1, 2:
					data := fmt.Sprintf("%s@%d", p, rng.Intn(100))
					if rng.Intn(8) == 0 {
						data = strings.Repeat(data+"\n", 200+rng.Intn(400))
					}
					e := File(p, data).Mode([]uint32{0o644, 0o600, 0o755, 0o4755}[rng.Intn(4)])
					if rng.Intn(2) == 0 {
						e = e.Xattr("user.r", fmt.Sprint(rng.Intn(3)))
					}
					if rng.Intn(5) == 0 {
						e = e.Owner(randIDs[rng.Intn(3)], randIDs[rng.Intn(3)])
					}
					l = append(l, e)
					files = append(files, p)
				case 3, 4:
					if merges(below, d) && !opaque[d] {
						if xwhiteouts && d != "" && rng.Intn(2) == 0 {
							l = append(l, XWhiteout(p))
						} else {
							l = append(l, Whiteout(p))
						}
					} else {
						free = append(free, p)
					}
				case 5:
					l = append(l, Symlink(p, []string{"f", "g", "b", "../f", "nowhere"}[rng.Intn(5)]))
				case 6:
					if rng.Intn(3) == 0 {
						l = append(l, FIFO(p))
					} else {
						free = append(free, p)
					}
				default:
					free = append(free, p)
				}
			}
		}
		// Hard links inside the layer: a free name becomes another link
		// of one of the layer's files.
		for n := rng.Intn(3); n > 0 && len(files) > 0 && len(free) > 0; n-- {
			i := rng.Intn(len(free))
			l = append(l, Hardlink(free[i], files[rng.Intn(len(files))]))
			free = append(free[:i], free[i+1:]...)
		}
		updateBelow(below, l)
		return l
	}
	var ls Layers
	for i := 0; i < nLowers; i++ {
		ls.Lowers = append([]Layer{gen(i > 0)}, ls.Lowers...)
	}
	ls.Upper = gen(false)
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

// Names are the paths random ops use.
func Names() []string {
	var out []string
	for _, d := range randDirs {
		for _, f := range randFiles {
			out = append(out, joinName(d, f))
		}
	}
	return append(out, "a", "c", "d", "a/b/x", "new", "a/new")
}

// RandomOps draws n ops over Names. Besides single ops it makes short
// sequences: rm -rf of a subtree and re-creating names in it, and, if
// held, an fd held open across changes to its file (hold, a change that
// copies up, readheld).
func RandomOps(rng *rand.Rand, n int, held bool) []Op {
	g := &opGen{rng: rng, names: Names(), noHold: !held}
	var ops []Op
	for len(ops) < n {
		ops = append(ops, g.next()...)
	}
	ops = ops[:n]
	return ops
}

type opGen struct {
	rng    *rand.Rand
	names  []string
	held   []string
	noHold bool // draw no hold, readheld, unhold
}

func (g *opGen) name() string { return g.names[g.rng.Intn(len(g.names))] }

func (g *opGen) pick(s ...string) string { return s[g.rng.Intn(len(s))] }

func (g *opGen) data() string {
	switch g.rng.Intn(6) {
	case 0:
		return strings.Repeat("0123456789abcdef", 64+g.rng.Intn(256))
	case 1:
		return "hello"
	}
	return "w"
}

func (g *opGen) off() int64 {
	return []int64{0, 0, 1, 3, 100, 4096, 70000}[g.rng.Intn(7)]
}

// change is an op that changes an existing object (most copy it up).
func (g *opGen) change(p string) Op {
	rng := g.rng
	switch rng.Intn(9) {
	case 0:
		return Op{Op: "write", Path: p, Data: g.data(), Off: g.off()}
	case 1:
		return Op{Op: "append", Path: p, Data: "+"}
	case 2:
		return Op{Op: "truncate", Path: p, Off: []int64{0, 1, 2, 5, 100, 70000}[rng.Intn(6)]}
	case 3:
		return Op{Op: "open", Path: p, Flags: unix.O_WRONLY | unix.O_TRUNC | unix.O_NONBLOCK}
	case 4:
		return Op{Op: "chmod", Path: p, Mode: []uint32{0o600, 0o644, 0o755, 0o4755, 0o2711}[rng.Intn(5)]}
	case 5:
		return Op{Op: g.pick("chown", "lchown"), Path: p, UID: randIDs[rng.Intn(3)], GID: randIDs[rng.Intn(3)]}
	case 6:
		return Op{Op: "utimes", Path: p, Off: RandomTimes[rng.Intn(len(RandomTimes))]}
	case 7:
		return Op{Op: "setxattr", Path: p, Name: g.pick("user.r", "user.s"), Data: fmt.Sprint(rng.Intn(3)),
			Flags: []int{0, 0, unix.XATTR_CREATE, unix.XATTR_REPLACE}[rng.Intn(4)]}
	default:
		return Op{Op: "removexattr", Path: p, Name: g.pick("user.r", "user.s")}
	}
}

func (g *opGen) next() []Op {
	rng := g.rng
	n := g.name
	k := rng.Intn(40)
	if g.noHold && (k == 24 || k == 25 || k == 26 || k == 34) {
		k = 2 // a change instead
	}
	switch k {
	case 0, 1:
		flags := 0
		if rng.Intn(3) == 0 {
			flags = unix.O_EXCL
		}
		return []Op{{Op: "create", Path: n(), Mode: []uint32{0o644, 0o600, 0o755}[rng.Intn(3)], Flags: flags}}
	case 2, 3, 4, 5, 6, 7, 8, 9:
		return []Op{g.change(n())}
	case 10:
		return []Op{{Op: "write", Path: n(), Data: g.data(), Off: g.off(), Flags: unix.O_TRUNC}}
	case 11, 12:
		return []Op{{Op: "mkdir", Path: n(), Mode: g.pickMode(0o755, 0o700)}}
	case 13:
		return []Op{{Op: "rmdir", Path: n()}}
	case 14, 15:
		return []Op{{Op: "unlink", Path: n()}}
	case 16, 17, 18:
		flags := 0
		switch rng.Intn(4) {
		case 0:
			flags = unix.RENAME_NOREPLACE
		case 1:
			flags = unix.RENAME_EXCHANGE
		}
		return []Op{{Op: "rename", Path: n(), Path2: n(), Flags: flags}}
	case 19, 20:
		return []Op{{Op: "link", Path: n(), Path2: n()}}
	case 21:
		return []Op{{Op: "symlink", Path: n(), Data: g.pick("f", "g", "../f", "b", "nowhere")}}
	case 22:
		return []Op{{Op: "mknod", Path: n(), Mode: unix.S_IFIFO | 0o644}}
	case 23:
		// rm -rf of a subtree, then names in it made again.
		d := g.pick("a", "a/b", "c")
		ops := []Op{{Op: "rmrf", Path: d}, {Op: "mkdir", Path: d, Mode: 0o755}}
		for k := rng.Intn(4); k >= 0; k-- {
			p := joinName(d, randFiles[rng.Intn(len(randFiles))])
			switch rng.Intn(4) {
			case 0:
				ops = append(ops, Op{Op: "mkdir", Path: p, Mode: 0o755})
			case 1:
				ops = append(ops, Op{Op: "symlink", Path: p, Data: "f"})
			default:
				ops = append(ops, Op{Op: "create", Path: p, Mode: 0o644})
			}
		}
		return append(ops, Op{Op: "readdir", Path: d})
	case 24, 25:
		// An fd opened before a change (often a copy-up) is read after.
		p := n()
		g.held = append(g.held, p)
		ops := []Op{{Op: "hold", Path: p}}
		for k := rng.Intn(3); k >= 0; k-- {
			ops = append(ops, g.change(p))
		}
		return append(ops, Op{Op: "readheld", Path: p})
	case 26:
		p := n()
		if len(g.held) > 0 && rng.Intn(4) != 0 {
			p = g.held[rng.Intn(len(g.held))]
		}
		return []Op{{Op: g.pick("readheld", "readheld", "unhold"), Path: p}}
	case 27, 28:
		return []Op{{Op: "read", Path: n()}}
	case 29:
		return []Op{{Op: "readdir", Path: g.pick("", "a", "a/b", "c", "d")}}
	case 30, 31:
		return []Op{{Op: g.pick("lstat", "stat"), Path: n()}}
	case 32:
		return []Op{{Op: "readlink", Path: n()}}
	case 33:
		return []Op{{Op: g.pick("getxattr", "listxattr"), Path: n(), Name: "user.r"}}
	case 34:
		// An open fd, then the name goes away or is replaced.
		p := n()
		g.held = append(g.held, p)
		gone := Op{Op: "unlink", Path: p}
		if rng.Intn(2) == 0 {
			gone = Op{Op: "rename", Path: p, Path2: n()}
		}
		return []Op{{Op: "hold", Path: p}, gone, {Op: "readheld", Path: p}}
	default:
		return []Op{g.change(n())}
	}
}

func (g *opGen) pickMode(m ...uint32) uint32 { return m[g.rng.Intn(len(m))] }

// CheckLayers reports a layer stack the generator would not make, so
// that shrinking stays among the layers a real tool writes: a whiteout
// (either form) in a directory that does not merge with a directory in
// the layers below, or inside an opaque directory of its layer; an xattr
// whiteout in the upper layer, the bottom lower layer or a layer root
// (the kernel does not look for them there).
func CheckLayers(ls Layers) error {
	var stack []Layer // bottom first
	for i := len(ls.Lowers) - 1; i >= 0; i-- {
		stack = append(stack, ls.Lowers[i])
	}
	stack = append(stack, ls.Upper)
	below := map[string]bool{}
	for i, l := range stack {
		name := fmt.Sprintf("lower %d", len(ls.Lowers)-1-i)
		if i == len(stack)-1 {
			name = "upper"
		}
		opaque := map[string]bool{}
		for _, e := range l {
			if e.Kind == KindDir && strings.HasPrefix(e.Xattrs["overlay.opaque"], "y") {
				opaque[e.Path] = true
			}
		}
		inOpaque := func(d string) bool {
			for ; ; d = parentOf(d) {
				if opaque[d] {
					return true
				}
				if d == "" {
					return false
				}
			}
		}
		for _, e := range l {
			if e.Kind != KindWhiteout && e.Kind != KindXWhiteout {
				continue
			}
			d := parentOf(e.Path)
			switch {
			case !merges(below, d):
				return fmt.Errorf("%s: whiteout %s in a directory that merges with nothing below", name, e.Path)
			case inOpaque(d):
				return fmt.Errorf("%s: whiteout %s in an opaque directory", name, e.Path)
			case e.Kind == KindXWhiteout && (i == 0 || i == len(stack)-1 || d == ""):
				return fmt.Errorf("%s: xattr whiteout %s where the kernel does not look for one", name, e.Path)
			}
		}
		updateBelow(below, l)
	}
	return nil
}

// updateBelow adds layer l on top of below, which says for each path
// whether the topmost layer so far that has it has a directory there (a
// file, symlink or whiteout cuts what lies under it, and so does an
// opaque directory).
func updateBelow(below map[string]bool, l Layer) {
	next := map[string]bool{}
	for _, e := range l {
		// Build makes missing parents as directories.
		for d := parentOf(e.Path); d != ""; d = parentOf(d) {
			if _, ok := next[d]; !ok {
				next[d] = true
			}
		}
		next[e.Path] = e.Kind == KindDir
		if e.Kind == KindDir && strings.HasPrefix(e.Xattrs["overlay.opaque"], "y") {
			for p := range below {
				if strings.HasPrefix(p, e.Path+"/") {
					delete(below, p)
				}
			}
		}
	}
	for p, isDir := range next {
		below[p] = isDir
	}
}
