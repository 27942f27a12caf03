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
// held fds in every mode; gen 4 held them only with passthrough=off.
// Gen 5 (issue 17) holds fds with passthrough on too, and adds mode 0 and
// every setuid/setgid/sticky combination (calls, umask, layer entries),
// names of 255 and 256 bytes and paths near PATH_MAX in every path-taking
// op, O_RDONLY|O_TRUNC and the other open flag mixes, writes through held
// fds, drop_caches mid-run, ops as unprivileged callers, and garbage
// overlay xattrs in the layers. Gen 6 (issue 18) writes about half of the
// whiteouts and opaque directories in an AUFS form for ovl (".wh.NAME",
// sometimes not empty; ".wh..wh..opq" or user.fuseoverlayfs.opaque), the
// kernel getting the kernel's form; the forms come from a stream of their
// own (aufsForms), so a seed's layers and ops are otherwise those of gen 5.
// Gen 7 mounts both sides with index=on for about a quarter of the seeds
// and metacopy=on for about a quarter of the trusted ones (the kernel
// refuses metacopy with userxattr), drawn from a stream of their own
// (featureOptions), so the layers and ops are those of gen 6.
const Gen = 7

// RandomCase draws the case of a seed: one to three lower layers and an
// upper over a small name space, then nOps ops. Even seeds use userxattr,
// odd ones trusted.overlay xattrs. Seeds 3 mod 4 mount ovl with
// passthrough=off; the others use ovl's defaults (FUSE passthrough where
// the kernel allows it). Every mode holds fds across changes.
func RandomCase(seed int64, nOps int) Case {
	rng := rand.New(rand.NewSource(seed))
	c := Case{Seed: seed, Gen: Gen, NOps: nOps, NLowers: 1 + rng.Intn(3), UserXattr: seed%2 == 0}
	if seed%4 == 3 {
		c.OvlOptions = []string{"passthrough=off"}
	}
	c.Layers = RandomLayers(rng, c.NLowers)
	aufsForms(rand.New(rand.NewSource(seed^0x41554653)), &c.Layers)
	c.Ops = RandomOps(rng, nOps, true)
	if rng.Intn(12) == 0 {
		c.Overlap = Overlaps[rng.Intn(len(Overlaps))]
	}
	featureOptions(rand.New(rand.NewSource(seed^0x494e4458)), &c)
	return c
}

// featureOptions turns on the kernel's index and metacopy features for
// some cases: both change what a copy-up writes (index entries,
// overlay.nlink, metacopy files and their data redirects), and with
// them off the generator never met that code.
func featureOptions(rng *rand.Rand, c *Case) {
	if rng.Intn(4) == 0 {
		c.Index = "on"
	}
	if !c.UserXattr && rng.Intn(4) == 0 {
		c.Metacopy = "on"
	}
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
	// randCallers are the unprivileged callers ops run as.
	randCallers = []Cred{{UID: 1000, GID: 1000}, {UID: 65534, GID: 65534}}

	// Name255 is the longest valid name, Name256 one byte too long.
	Name255 = strings.Repeat("n", 255)
	Name256 = strings.Repeat("m", 256)
	// DeepDir is a directory path of 3513 bytes (14 names of 250): with
	// a 255-byte name below it, a path of the mount stays under PATH_MAX
	// (4096) as long as the mount point's path is shorter than 300 bytes.
	DeepDir = func() string {
		var parts []string
		for i := 0; i < 14; i++ {
			parts = append(parts, fmt.Sprintf("d%02d", i)+strings.Repeat("d", 247))
		}
		return strings.Join(parts, "/")
	}()

	// Modes the calls use: the usual ones, 0, and setuid, setgid and
	// sticky alone and together.
	fileModes  = []uint32{0o644, 0o600, 0o755, 0, 0o4000, 0o2000, 0o1000, 0o7777, 0o6755, 0o4755, 0o2755, 0o444}
	dirModes   = []uint32{0o755, 0o700, 0, 0o4000, 0o2000, 0o1000, 0o7777, 0o2755, 0o1777, 0o555}
	chmodModes = []uint32{0o600, 0o644, 0o755, 0o4755, 0o2711, 0, 0o4000, 0o2000, 0o1000, 0o7777, 0o6000, 0o1777}
	umasks     = []uint32{0o022, 0, 0o077, 0o777, 0o002, 0o027, 0o7777}
	// openFlags are the open(2) flag mixes of "open" ops (O_NONBLOCK is
	// added: a FIFO must not block).
	openFlags = []int{
		unix.O_RDONLY | unix.O_TRUNC,
		unix.O_RDONLY | unix.O_TRUNC | unix.O_CREAT,
		unix.O_WRONLY | unix.O_TRUNC,
		unix.O_WRONLY | unix.O_TRUNC | unix.O_CREAT,
		unix.O_WRONLY | unix.O_APPEND,
		unix.O_RDWR | unix.O_APPEND | unix.O_CREAT,
		unix.O_RDWR,
		unix.O_RDWR | unix.O_TRUNC,
		unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL,
		unix.O_RDONLY,
		unix.O_RDONLY | unix.O_NOFOLLOW,
	}
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
// files of other owners and of every mode (0 and setuid/setgid/sticky
// included), whiteouts in both forms (character device 0/0, and the xattr
// form in a directory marked opaque=x, which the kernel reads in lower
// layers above the bottom one only), opaque directories, a deep directory
// near PATH_MAX, names of 255 bytes, and garbage overlay xattrs.
func RandomLayers(rng *rand.Rand, nLowers int) Layers {
	// Layers are generated bottom first. A whiteout goes only into a
	// directory that merges with one below (the kernel lists whiteouts
	// of an unmerged directory in readdir while lookup hides them; layer
	// tools never write such whiteouts).
	below := map[string]bool{}
	gen := func(xwhiteouts, upper bool) Layer {
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
					e := Dir(d).Mode([]uint32{0o700, 0o755, 0o700, 0o755, 0o1777, 0o2775, 0o000, 0o4711}[rng.Intn(8)])
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
					e := File(p, data).Mode([]uint32{0o644, 0o600, 0o755, 0o4755, 0o000, 0o4000, 0o2000, 0o1000, 0o6755, 0o640}[rng.Intn(10)])
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
					l = append(l, Symlink(p, []string{"f", "g", "b", "../f", "nowhere", Name255}[rng.Intn(6)]))
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
		// Long names and a deep directory, now and then.
		if rng.Intn(4) == 0 {
			l = append(l, File(Name255, "long name").Mode([]uint32{0o644, 0}[rng.Intn(2)]))
		}
		if rng.Intn(4) == 0 {
			l = append(l, File(DeepDir+"/f", "deep").Mode([]uint32{0o644, 0o600, 0}[rng.Intn(3)]))
			if rng.Intn(2) == 0 {
				l = append(l, Dir(DeepDir+"/"+Name255))
			}
		}
		// Garbage overlay xattrs, as a damaged or hostile layer has them.
		if rng.Intn(5) == 0 {
			l = garbageXattrs(rng, l, upper)
		}
		updateBelow(below, l)
		return l
	}
	var ls Layers
	for i := 0; i < nLowers; i++ {
		ls.Lowers = append([]Layer{gen(i > 0, false)}, ls.Lowers...)
	}
	ls.Upper = gen(false, true)
	return ls
}

// aufsForms writes about half of the whiteouts and opaque directories of
// ls in an AUFS form (Entry.AUFS), for the sides that read it.
func aufsForms(rng *rand.Rand, ls *Layers) {
	for _, l := range append([]Layer{ls.Upper}, ls.Lowers...) {
		for i, e := range l {
			switch {
			case e.Kind == KindWhiteout && rng.Intn(2) == 0:
				e.AUFS = AUFSFile
				if rng.Intn(6) == 0 {
					e.Data = "any file is a whiteout"
				}
			case e.Kind == KindDir && isOpaque(e) && rng.Intn(2) == 0:
				e.AUFS = AUFSForms[rng.Intn(len(AUFSForms))]
			}
			l[i] = e
		}
	}
}

// garbageXattrs gives one or two entries of l overlay xattrs that no
// overlay writes: an opaque value that is neither "y" nor "x" (the kernel
// reads only a one-byte "y" as opaque), a redirect with a NUL, "..", "."
// or a path out of the root, a metacopy or origin of garbage.
func garbageXattrs(rng *rand.Rand, l Layer, upper bool) Layer {
	l = append(Layer(nil), l...)
	for n := 1 + rng.Intn(2); n > 0 && len(l) > 0; n-- {
		i := rng.Intn(len(l))
		e := l[i]
		switch e.Kind {
		case KindDir:
			if _, ok := e.Xattrs["overlay.opaque"]; ok {
				continue
			}
			switch rng.Intn(3) {
			case 0:
				e = e.Xattr("overlay.opaque", []string{"yes-this-is-not-a-y", "n", "Y", "\x00", "yy"}[rng.Intn(5)])
			case 1:
				e = e.Xattr("overlay.redirect", []string{"a\x00b", "/../x", "..", ".", "/nowhere", "x/../y", "/" + Name256}[rng.Intn(7)])
			default:
				e = e.Xattr("overlay.origin", "\x00garbage")
			}
		case KindFile:
			switch rng.Intn(3) {
			case 0:
				e = e.Xattr("overlay.metacopy", []string{"garbage", "", "\x00\x04\x00\x00"}[rng.Intn(3)])
			case 1:
				e = e.Xattr("overlay.origin", "\x00garbage")
			default:
				e = e.Xattr("overlay.redirect", []string{"/a/f", "\x00", "/../../etc/passwd"}[rng.Intn(3)])
			}
		default:
			continue
		}
		l[i] = e
	}
	return l
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

// Names are the paths random ops use: a small name space (and "u" and
// "w/work", where overlapping layers put the upper and work directories).
func Names() []string {
	var out []string
	for _, d := range randDirs {
		for _, f := range randFiles {
			out = append(out, joinName(d, f))
		}
	}
	return append(out, "a", "c", "d", "a/b/x", "new", "a/new", "u", "u/f", "w/work")
}

// LongNames are the paths of the NAME_MAX and PATH_MAX edges random ops
// use now and then: names of 255 and 256 bytes (also as a directory
// component), and paths in a directory near PATH_MAX.
func LongNames() []string {
	return []string{Name255, Name256, "a/" + Name255, "a/" + Name256, Name256 + "/f", Name255 + "/f",
		DeepDir, DeepDir + "/f", DeepDir + "/" + Name255, DeepDir + "/" + Name256, DeepDir + "/" + Name255 + "/g"}
}

// RandomOps draws n ops over Names and LongNames. Besides single ops it makes short
// sequences: rm -rf of a subtree and re-creating names in it, fds held
// open across changes to their file (hold, a change that copies up,
// readheld) if held, the deep directory made one level at a time, and
// runs of ops as an unprivileged caller.
func RandomOps(rng *rand.Rand, n int, held bool) []Op {
	g := &opGen{rng: rng, names: Names(), long: LongNames(), noHold: !held}
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
	long   []string // drawn for one name in 16
	held   []string
	noHold bool // draw no hold, readheld, unhold
}

func (g *opGen) name() string {
	if g.rng.Intn(16) == 0 {
		return g.long[g.rng.Intn(len(g.long))]
	}
	return g.names[g.rng.Intn(len(g.names))]
}

func (g *opGen) pick(s ...string) string { return s[g.rng.Intn(len(s))] }

func (g *opGen) mode(m []uint32) uint32 { return m[g.rng.Intn(len(m))] }

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

// openOp is an open and close with one of openFlags.
func (g *opGen) openOp(p string) Op {
	return Op{Op: "open", Path: p, Flags: openFlags[g.rng.Intn(len(openFlags))] | unix.O_NONBLOCK, Mode: g.mode(fileModes)}
}

// change is an op that changes an existing object (most copy it up).
func (g *opGen) change(p string) Op {
	rng := g.rng
	switch rng.Intn(11) {
	case 0:
		return Op{Op: "write", Path: p, Data: g.data(), Off: g.off()}
	case 1:
		return Op{Op: "append", Path: p, Data: "+"}
	case 2:
		return Op{Op: "truncate", Path: p, Off: []int64{0, 1, 2, 5, 100, 70000}[rng.Intn(6)]}
	case 3:
		return Op{Op: "open", Path: p, Flags: unix.O_WRONLY | unix.O_TRUNC | unix.O_NONBLOCK}
	case 4:
		return Op{Op: "chmod", Path: p, Mode: g.mode(chmodModes)}
	case 5:
		return Op{Op: g.pick("chown", "lchown"), Path: p, UID: randIDs[rng.Intn(3)], GID: randIDs[rng.Intn(3)]}
	case 6:
		return Op{Op: "utimes", Path: p, Off: RandomTimes[rng.Intn(len(RandomTimes))]}
	case 7:
		return Op{Op: "setxattr", Path: p, Name: g.pick("user.r", "user.s"), Data: fmt.Sprint(rng.Intn(3)),
			Flags: []int{0, 0, unix.XATTR_CREATE, unix.XATTR_REPLACE}[rng.Intn(4)]}
	case 8, 9:
		return g.openOp(p)
	default:
		return Op{Op: "removexattr", Path: p, Name: g.pick("user.r", "user.s")}
	}
}

// asCaller is an op an unprivileged caller may try.
func (g *opGen) asCaller(p string) Op {
	rng := g.rng
	switch rng.Intn(12) {
	case 0:
		return Op{Op: "read", Path: p}
	case 1:
		return Op{Op: g.pick("stat", "lstat"), Path: p}
	case 2:
		return Op{Op: "access", Path: p, Mode: []uint32{unix.R_OK, unix.W_OK, unix.X_OK, unix.R_OK | unix.W_OK}[rng.Intn(4)]}
	case 3:
		return Op{Op: "create", Path: p, Mode: g.mode(fileModes)}
	case 4:
		return Op{Op: "mkdir", Path: p, Mode: g.mode(dirModes)}
	case 5:
		return Op{Op: "unlink", Path: p}
	case 6:
		return Op{Op: "rename", Path: p, Path2: g.name()}
	case 7:
		return Op{Op: "readdir", Path: g.pick("", "a", "a/b", "c", "d", DeepDir)}
	case 8:
		return Op{Op: "getxattr", Path: p, Name: "user.r"}
	default:
		return g.change(p)
	}
}

func (g *opGen) next() []Op {
	rng := g.rng
	n := g.name
	k := rng.Intn(48)
	if g.noHold && (k == 24 || k == 25 || k == 26 || k == 34 || k == 43 || k == 44) {
		k = 2 // a change instead
	}
	switch k {
	case 0, 1:
		flags := 0
		if rng.Intn(3) == 0 {
			flags = unix.O_EXCL
		}
		return []Op{{Op: "create", Path: n(), Mode: g.mode(fileModes), Flags: flags}}
	case 2, 3, 4, 5, 6, 7, 8, 9:
		return []Op{g.change(n())}
	case 10:
		return []Op{{Op: "write", Path: n(), Data: g.data(), Off: g.off(), Flags: unix.O_TRUNC}}
	case 11, 12:
		return []Op{{Op: "mkdir", Path: n(), Mode: g.mode(dirModes)}}
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
		return []Op{{Op: "symlink", Path: n(), Data: g.pick("f", "g", "../f", "b", "nowhere", Name255, DeepDir+"/f")}}
	case 22:
		return []Op{{Op: "mknod", Path: n(), Mode: unix.S_IFIFO | g.mode([]uint32{0o644, 0, 0o4644, 0o7777, 0o1600})}}
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
		ops := []Op{g.hold(p)}
		for k := rng.Intn(3); k >= 0; k-- {
			ops = append(ops, g.change(p))
		}
		return append(ops, Op{Op: "readheld", Path: p})
	case 26:
		p := n()
		if len(g.held) > 0 && rng.Intn(4) != 0 {
			p = g.held[rng.Intn(len(g.held))]
		}
		op := Op{Op: g.pick("readheld", "readheld", "unhold", "writeheld"), Path: p}
		if op.Op == "writeheld" {
			op.Data, op.Off = "H", g.off()
		}
		return []Op{op}
	case 27, 28:
		return []Op{{Op: "read", Path: n()}}
	case 29:
		return []Op{{Op: "readdir", Path: g.pick("", "a", "a/b", "c", "d", Name255, Name256, DeepDir, DeepDir+"/"+Name255)}}
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
		return []Op{g.hold(p), gone, {Op: "readheld", Path: p}}
	case 35:
		return []Op{{Op: "umask", Mode: g.mode(umasks)}}
	case 36:
		// The kernel forgets every inode it can; the next ops look
		// everything up again.
		return []Op{{Op: "dropcaches", Off: []int64{2, 2, 3}[rng.Intn(3)]}}
	case 37, 38:
		// An unprivileged caller.
		cred := randCallers[rng.Intn(len(randCallers))]
		var ops []Op
		for k := rng.Intn(4); k >= 0; k-- {
			op := g.asCaller(n())
			op.As = &cred
			ops = append(ops, op)
		}
		return ops
	case 39:
		// Through a symlink: make one to a name (relative: an absolute
		// target would leave the mount), open it with a flag mix.
		l, t := g.pick("new", "a/new", "d"), n()
		if strings.HasPrefix(l, "a/") {
			t = "../" + t
		}
		return []Op{{Op: "symlink", Path: l, Data: t}, g.openOp(l)}
	case 40:
		if rng.Intn(4) != 0 {
			return []Op{g.openOp(n())}
		}
		// The deep directory, one level at a time.
		var ops []Op
		parts := strings.Split(DeepDir, "/")
		for i := range parts {
			ops = append(ops, Op{Op: "mkdir", Path: strings.Join(parts[:i+1], "/"), Mode: 0o755})
		}
		return append(ops, Op{Op: "create", Path: DeepDir + "/" + g.pick("f", Name255, Name256), Mode: g.mode(fileModes)})
	case 41, 42:
		return []Op{g.openOp(n())}
	case 43, 44:
		// tail -f: a reader holds the file while another appends or
		// truncates it.
		p := n()
		g.held = append(g.held, p)
		ops := []Op{g.hold(p)}
		for k := rng.Intn(3); k >= 0; k-- {
			switch rng.Intn(4) {
			case 0:
				ops = append(ops, Op{Op: "truncate", Path: p, Off: []int64{0, 3}[rng.Intn(2)]})
			case 1:
				ops = append(ops, Op{Op: "open", Path: p, Flags: []int{unix.O_RDWR, unix.O_WRONLY | unix.O_TRUNC, unix.O_RDONLY | unix.O_TRUNC}[rng.Intn(3)] | unix.O_NONBLOCK})
			default:
				ops = append(ops, Op{Op: "append", Path: p, Data: "line\n"})
			}
			ops = append(ops, Op{Op: "readheld", Path: p})
		}
		return ops
	default:
		return []Op{g.change(n())}
	}
}

// hold is a hold op, mostly read-only, sometimes for writing.
func (g *opGen) hold(p string) Op {
	op := Op{Op: "hold", Path: p}
	if g.rng.Intn(4) == 0 {
		op.Flags = []int{unix.O_RDWR, unix.O_WRONLY | unix.O_APPEND}[g.rng.Intn(2)]
	}
	return op
}

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
			if e.Kind == KindDir && isOpaque(e) {
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
		if e.Kind == KindDir && isOpaque(e) {
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

// isOpaque reports whether the kernel takes directory entry e for opaque:
// overlay.opaque is exactly "y" (it reads one byte; a longer value does
// not fit and is not opaque).
func isOpaque(e Entry) bool { return e.Xattrs["overlay.opaque"] == "y" }
