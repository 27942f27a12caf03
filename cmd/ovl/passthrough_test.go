package main

// FUSE passthrough (docs/passthrough.md), through real mounts: the lower
// layer is never written whatever the open sequence; each sequence sees
// what the document says, against the kernel's overlayfs where it should
// match (passthrough=off always, passthrough=on where the kernel's rules
// allow); locks stay with the object; page cache is shared with the lower
// file; fallbacks are logged once.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"github.com/ovl-project/ovl/internal/testutil"
	"golang.org/x/sys/unix"
)

const ptData = "0123456789abcdef"

// ptStep records one step's outcome in a sequence's transcript.
type ptTranscript struct {
	root  string
	lines []string
}

func (tr *ptTranscript) add(format string, args ...any) {
	tr.lines = append(tr.lines, fmt.Sprintf(format, args...))
}

func (tr *ptTranscript) path(name string) string { return filepath.Join(tr.root, name) }

// open opens name and records "what: ok" or "what: ERRNO"; -1 on error.
func (tr *ptTranscript) open(what, name string, flags int) int {
	fd, err := unix.Open(tr.path(name), flags|unix.O_CLOEXEC, 0)
	tr.add("%s: %s", what, errName(err))
	if err != nil {
		return -1
	}
	return fd
}

// read records the first bytes of fd.
func (tr *ptTranscript) read(what string, fd int) {
	if fd < 0 {
		tr.add("%s: no fd", what)
		return
	}
	b := make([]byte, 32)
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		tr.add("%s: %s", what, errName(err))
		return
	}
	tr.add("%s: %q", what, b[:n])
}

// write writes "NEW" at 0 through fd.
func (tr *ptTranscript) write(what string, fd int) {
	if fd < 0 {
		return
	}
	_, err := unix.Pwrite(fd, []byte("NEW"), 0)
	tr.add("%s: %s", what, errName(err))
}

// readNew records what a fresh read-only open reads.
func (tr *ptTranscript) readNew(what, name string) {
	b, err := os.ReadFile(tr.path(name))
	if err != nil {
		tr.add("%s: %s", what, errName(err))
		return
	}
	tr.add("%s: %q", what, b)
}

func closeFd(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	e, _ := k.Errno(err)
	return k.ErrnoName(e)
}

// ptSeq is one open sequence on file name under tr.root.
type ptSeq struct {
	name string
	run  func(tr *ptTranscript, name string)
	// on is the transcript with passthrough, where it differs from the
	// kernel's (nil: the same as the kernel's).
	on []string
	// off is the transcript with passthrough=off, where it differs from
	// the kernel's.
	off []string
}

const (
	ptOld = `"0123456789abcdef"`
	ptNew = `"NEW3456789abcdef"`
)

var ptSeqs = []ptSeq{
	{
		name: "ro_then_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			closeFd(b)
			tr.read("read A again", a)
			closeFd(a)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "read A: " + ptOld, "open B rw: ETXTBSY", "read A again: " + ptOld, "read new open: " + ptOld},
	},
	{
		name: "rw_then_ro",
		run: func(tr *ptTranscript, f string) {
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			closeFd(b)
			closeFd(a)
			tr.readNew("read new open", f)
		},
	},
	{
		name: "ro_chmod_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.add("chmod: %s", errName(unix.Chmod(tr.path(f), 0o600)))
			c := tr.open("open C ro", f, unix.O_RDONLY)
			tr.read("read C", c)
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			closeFd(b)
			tr.read("read A", a)
			tr.read("read C again", c)
			closeFd(a)
			closeFd(c)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "chmod: ok", "open C ro: ok", "read C: " + ptOld, "open B rw: ETXTBSY",
			"read A: " + ptOld, "read C again: " + ptOld, "read new open: " + ptOld},
	},
	{
		name: "ro_truncate",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.add("truncate: %s", errName(unix.Truncate(tr.path(f), 4)))
			b := tr.open("open B ro|trunc", f, unix.O_RDONLY|unix.O_TRUNC)
			closeFd(b)
			tr.read("read A", a)
			closeFd(a)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "truncate: ETXTBSY", "open B ro|trunc: ETXTBSY", "read A: " + ptOld, "read new open: " + ptOld},
	},
	{
		// A mapping of a descriptor still open: the writer waits for it.
		name: "mmap_open_then_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			m, err := unix.Mmap(a, 0, len(ptData), unix.PROT_READ, unix.MAP_SHARED)
			tr.add("mmap A: %s", errName(err))
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			closeFd(b)
			if err == nil {
				tr.add("mapping: %q", m)
				unix.Munmap(m)
			}
			closeFd(a)
			tr.readNew("read new open", f)
		},
		on: []string{"open A ro: ok", "mmap A: ok", "open B rw: ETXTBSY", "mapping: " + ptOld, "read new open: " + ptOld},
		// One FUSE page cache: the write through the daemon updates it.
		off: []string{"open A ro: ok", "mmap A: ok", "open B rw: ok", "write B: ok", "mapping: " + ptNew, "read new open: " + ptNew},
	},
	{
		// A mapping whose descriptor was closed: it maps the lower file,
		// in the kernel's overlayfs as with passthrough, and stays so.
		name: "mmap_closed_then_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			m, err := unix.Mmap(a, 0, len(ptData), unix.PROT_READ, unix.MAP_SHARED)
			tr.add("mmap A: %s", errName(err))
			closeFd(a)
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			closeFd(b)
			if err == nil {
				tr.add("mapping: %q", m)
				unix.Munmap(m)
			}
			tr.readNew("read new open", f)
		},
		off: []string{"open A ro: ok", "mmap A: ok", "open B rw: ok", "write B: ok", "mapping: " + ptNew, "read new open: " + ptNew},
	},
	{
		// A shared writable mapping of a writer lands in the upper.
		name: "rw_mmap_write",
		run: func(tr *ptTranscript, f string) {
			b := tr.open("open B rw", f, unix.O_RDWR)
			m, err := unix.Mmap(b, 0, len(ptData), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			tr.add("mmap B: %s", errName(err))
			if err == nil {
				copy(m, "MAP")
				tr.add("msync: %s", errName(unix.Msync(m, unix.MS_SYNC)))
				unix.Munmap(m)
			}
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			closeFd(a)
			closeFd(b)
			tr.readNew("read new open", f)
		},
	},
	{
		// Close then write at once: the RELEASE may still be on its way.
		name: "ro_close_rw",
		run: func(tr *ptTranscript, f string) {
			a := tr.open("open A ro", f, unix.O_RDONLY)
			tr.read("read A", a)
			closeFd(a)
			b := tr.open("open B rw", f, unix.O_RDWR)
			tr.write("write B", b)
			closeFd(b)
			tr.readNew("read new open", f)
		},
	},
}

// ptLayers is one lower layer with a file per sequence.
func ptLayers() k.Layers {
	var l k.Layer
	for _, s := range ptSeqs {
		l = append(l, k.File(s.name, ptData))
	}
	return k.Layers{Lowers: []k.Layer{l}}
}

// ptPair mounts the kernel's overlayfs and ovl with passthrough=mode; with
// "on", it makes sure passthrough really is on.
func ptPair(t *testing.T, mode string, layers k.Layers) *k.Pair {
	t.Helper()
	opts := k.DefaultOptions()
	log := filepath.Join(t.TempDir(), "ovl.log")
	opts.OvlExtra = []string{"passthrough=" + mode, "log=" + log}
	p := kcPair(t, opts, layers)
	if mode == "on" {
		ptRequireOn(t, log)
	}
	return p
}

// ptRequireOn fails (skips outside CI) when ovl's log says passthrough is
// off: the passthrough expectations would not be tested.
func ptRequireOn(t *testing.T, log string) {
	t.Helper()
	b, _ := os.ReadFile(log)
	if i := bytes.Index(b, []byte("passthrough: off")); i >= 0 {
		testutil.Skip(t, "passthrough is not available here: %s", b[i:])
	}
}

// ptLowerSums hashes every regular file of every lower layer of a side.
func ptLowerSums(t *testing.T, s *k.Side) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	for i, l := range s.Layout.Lowers {
		filepath.Walk(l, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				sums[fmt.Sprintf("l%d/%s", i, strings.TrimPrefix(p, l+"/"))] = sha256.Sum256(b)
			}
			return nil
		})
	}
	return sums
}

func ptSameSums(t *testing.T, label string, before, after map[string][32]byte) {
	t.Helper()
	if len(before) != len(after) {
		t.Errorf("%s: lower files %d, were %d", label, len(after), len(before))
	}
	for p, sum := range before {
		if after[p] != sum {
			t.Errorf("%s: lower file %s changed", label, p)
		}
	}
}

// TestPassthroughOpenSequences runs every sequence on the kernel's overlayfs
// and on ovl with passthrough on and off: transcripts must be the kernel's
// or the documented difference, and no lower file may change.
func TestPassthroughOpenSequences(t *testing.T) {
	for _, mode := range []string{"on", "off"} {
		t.Run(mode, func(t *testing.T) {
			p := ptPair(t, mode, ptLayers())
			before := ptLowerSums(t, p.Cand)
			for _, seq := range ptSeqs {
				var got [2][]string
				for i, s := range p.Sides() {
					tr := &ptTranscript{root: s.Layout.Mnt}
					seq.run(tr, seq.name)
					got[i] = tr.lines
				}
				want := got[0]
				switch {
				case mode == "on" && seq.on != nil:
					want = seq.on
				case mode == "off" && seq.off != nil:
					want = seq.off
				}
				if strings.Join(got[1], "\n") != strings.Join(want, "\n") {
					t.Errorf("%s: ovl (passthrough=%s):\n\t%s\nwant:\n\t%s\nkernel:\n\t%s", seq.name, mode,
						strings.Join(got[1], "\n\t"), strings.Join(want, "\n\t"), strings.Join(got[0], "\n\t"))
				}
			}
			ptSameSums(t, "mounted", before, ptLowerSums(t, p.Cand))
			p.Unmount()
			ptSameSums(t, "unmounted", before, ptLowerSums(t, p.Cand))
		})
	}
}
