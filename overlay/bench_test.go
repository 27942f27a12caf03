package overlay

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/internal/testutil"
)

// The benchmarks time the overlay's hot paths without FUSE. As root they
// use trusted.overlay.* xattrs, as a mount would; otherwise userxattr, the
// unprivileged mode, so that they run for anyone.

// benchStack makes lowers (l0 topmost) with the files fill writes, an empty
// upper and work dir, and returns their Config.
func benchStack(b *testing.B, lowers int, fill func(layer string, i int)) Config {
	b.Helper()
	root := b.TempDir()
	cfg := Config{UserXattr: os.Geteuid() != 0}
	for i := range lowers {
		l := filepath.Join(root, fmt.Sprintf("l%d", i))
		benchMkdir(b, l)
		fill(l, i)
		cfg.Lowers = append(cfg.Lowers, l)
	}
	cfg.Upper, cfg.Work = filepath.Join(root, "upper"), filepath.Join(root, "work")
	benchMkdir(b, cfg.Upper)
	benchMkdir(b, cfg.Work)
	return cfg
}

func benchMkdir(b *testing.B, p string) {
	if err := os.MkdirAll(p, 0o755); err != nil {
		b.Fatal(err)
	}
}

func benchWrite(b *testing.B, p string, size int) {
	benchMkdir(b, filepath.Dir(p))
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		b.Fatal(err)
	}
}

// benchNew opens an overlay, or skips (fails under CI) where this user
// cannot have one.
func benchNew(b *testing.B, cfg Config) *Overlay {
	b.Helper()
	o, err := New(cfg)
	if err != nil {
		if os.Geteuid() != 0 {
			testutil.Skip(b, "overlay.New as uid %d: %v", os.Geteuid(), err)
		}
		b.Fatal(err)
	}
	return o
}

func benchLookup(b *testing.B, dir *Node, name string) *Node {
	b.Helper()
	n, err := dir.Lookup(name)
	if err != nil {
		b.Fatalf("lookup %s: %v", name, err)
	}
	return n
}

// BenchmarkLookup looks up names in a directory merged from 3 lowers of
// 1000 files each: in the top layer, in the bottom one (every layer is
// searched), and a missing name; and, "fresh-dir", the directory itself
// and then one name in it, the first lookup in each layer directory
// (which reads its names once for AUFS whiteouts).
func BenchmarkLookup(b *testing.B) {
	const perLayer = 1000
	cfg := benchStack(b, 3, func(l string, layer int) {
		for i := range perLayer {
			benchWrite(b, filepath.Join(l, "d", fmt.Sprintf("f%d-%04d", layer, i)), 100)
		}
	})
	o := benchNew(b, cfg)
	defer o.Close()
	d := benchLookup(b, o.Root(), "d")
	defer d.Forget()
	for _, c := range []struct {
		name   string
		layer  int
		absent bool
	}{{"top", 0, false}, {"bottom", 2, false}, {"missing", 0, true}} {
		b.Run(c.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				name := fmt.Sprintf("f%d-%04d", c.layer, i%perLayer)
				if c.absent {
					name = fmt.Sprintf("none-%04d", i%perLayer)
				}
				i++
				n, err := d.Lookup(name)
				if c.absent {
					if err != unix.ENOENT {
						b.Fatalf("lookup of a missing name: %v", err)
					}
					continue
				}
				if err != nil {
					b.Fatal(err)
				}
				n.Forget()
			}
		})
	}
	b.Run("fresh-dir", func(b *testing.B) {
		i := 0
		for b.Loop() {
			d := benchLookup(b, o.Root(), "d")
			n := benchLookup(b, d, fmt.Sprintf("f2-%04d", i%perLayer))
			i++
			n.Forget()
			d.Forget()
		}
	})
}

// BenchmarkReadDir lists a directory of 50k entries merged from 2 lowers.
func BenchmarkReadDir(b *testing.B) {
	const entries = 50000
	cfg := benchStack(b, 2, func(l string, layer int) {
		benchMkdir(b, filepath.Join(l, "big"))
		for i := layer; i < entries; i += 2 {
			f, err := os.Create(filepath.Join(l, "big", fmt.Sprintf("e%06d", i)))
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	o := benchNew(b, cfg)
	defer o.Close()
	big := benchLookup(b, o.Root(), "big")
	defer big.Forget()
	for b.Loop() {
		ents, err := big.ReadDir()
		if err != nil {
			b.Fatal(err)
		}
		if len(ents) != entries {
			b.Fatalf("ReadDir gave %d entries, want %d", len(ents), entries)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/entries, "ns/entry")
}

// BenchmarkCopyUp copies up a 64 MiB file, and 100 small files, by opening
// them for writing; each iteration has a fresh upper. "volatile" skips the
// fsync, as the kernel's volatile option.
func BenchmarkCopyUp(b *testing.B) {
	for _, volatile := range []bool{false, true} {
		suffix := ""
		if volatile {
			suffix = "-volatile"
		}
		b.Run("64MiB"+suffix, func(b *testing.B) {
			const size = 64 << 20
			benchCopyUp(b, volatile, []string{"big"}, func(l string) { benchWrite(b, filepath.Join(l, "big"), size) })
			b.SetBytes(size)
		})
		b.Run("small"+suffix, func(b *testing.B) {
			var names []string
			for i := range 100 {
				names = append(names, fmt.Sprintf("s%03d", i))
			}
			benchCopyUp(b, volatile, names, func(l string) {
				for _, n := range names {
					benchWrite(b, filepath.Join(l, n), 1000)
				}
			})
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(names)), "ns/file")
		})
	}
}

// benchCopyUp times the copy-up of the named files of one lower, made by
// fill, with a fresh upper and overlay per iteration (not timed).
func benchCopyUp(b *testing.B, volatile bool, names []string, fill func(l string)) {
	cfg := benchStack(b, 1, func(l string, _ int) { fill(l) })
	cfg.Volatile = volatile
	fresh := func() {
		for _, d := range []string{cfg.Upper, cfg.Work} {
			if err := os.RemoveAll(d); err != nil {
				b.Fatal(err)
			}
			benchMkdir(b, d)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		fresh()
		o := benchNew(b, cfg)
		var nodes []*Node
		for _, n := range names {
			nodes = append(nodes, benchLookup(b, o.Root(), n))
		}
		b.StartTimer()
		for _, n := range nodes {
			fd, err := n.Open(unix.O_WRONLY)
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
		b.StopTimer()
		if !nodes[0].InUpper() {
			b.Fatal("opening for write did not copy up")
		}
		for _, n := range nodes {
			n.Forget()
		}
		o.Close()
		b.StartTimer()
	}
}

// BenchmarkRenameLowerDir moves a lower directory of 50,000 files back and
// forth between two parents: with redirects each move writes one xattr and
// renames one upper directory, whatever the tree holds (issue 4: O(1)
// directory rename).
func BenchmarkRenameLowerDir(b *testing.B) {
	cfg := benchStack(b, 1, func(l string, _ int) {
		benchMkdir(b, filepath.Join(l, "a", "tree"))
		benchMkdir(b, filepath.Join(l, "b"))
		for i := range 50000 {
			f, err := os.Create(filepath.Join(l, "a", "tree", fmt.Sprintf("f%05d", i)))
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	if cfg.UserXattr {
		testutil.Skip(b, "redirects need trusted xattrs (root)")
	}
	o := benchNew(b, cfg)
	defer o.Close()
	dirs := [2]*Node{benchLookup(b, o.Root(), "a"), benchLookup(b, o.Root(), "b")}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		from, to := dirs[i%2], dirs[(i+1)%2]
		if err := from.Rename("tree", nil, to, "tree", nil, 0); err != nil {
			b.Fatalf("rename %d: %v", i, err)
		}
	}
	b.StopTimer()
	if o.Stats().CopyUps > 3 { // a, b and tree, once
		b.Errorf("copy-ups = %d: the tree was copied", o.Stats().CopyUps)
	}
}
