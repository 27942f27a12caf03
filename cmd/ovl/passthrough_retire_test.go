package main

// Data changes of a lower file that another descriptor reads through
// passthrough (docs/passthrough.md, "A writer while a lower file is open"):
// they succeed as on the kernel's overlayfs, through a new FUSE inode,
// except a write reopen through /proc/self/fd/N of that descriptor; the
// old descriptor goes on reading the lower file. Against the kernel's
// overlayfs, with passthrough on and off; the lower layer never changes.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// ptPairOpts is ptPair with options.
func ptPairOpts(t *testing.T, mode string, opts k.Options, layers k.Layers) *k.Pair {
	t.Helper()
	log := filepath.Join(t.TempDir(), "ovl.log")
	opts.OvlExtra = append(opts.OvlExtra, "passthrough="+mode, "log="+log)
	p := kcPair(t, opts, layers)
	if mode == "on" {
		ptRequireOn(t, log)
	}
	return p
}

// openFd opens path (not under the root) as tr.open does.
func (tr *ptTranscript) openFd(what, path string, flags int) int {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	tr.add("%s: %s", what, ptErrName(err))
	if err != nil {
		return -1
	}
	return fd
}

func procFd(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// ptRetireSeqs run on a lower layer with h1 and its hard link h2, and p.
var ptRetireSeqs = []ptSeq{
	{
		// A writer opens the other name of the file a reader holds. With
		// index=on both names are one object, one FUSE inode: the writer's
		// open is retried on a new inode (kernel: the reader follows the
		// copy-up); with index=off the copy-up splits the link, as in the
		// kernel, and the reader's name stays the lower file.
		name: "second_link",
		run: func(tr *ptTranscript, _ string) {
			a := tr.open("open A h1 ro", "h1", unix.O_RDONLY)
			tr.read("read A", a)
			b := tr.open("open B h2 wronly|append", "h2", unix.O_WRONLY|unix.O_APPEND)
			tr.append("append B", b)
			ptCloseFd(b)
			tr.size("fstat A", a)
			tr.readAt("read A at 16", a, 16)
			tr.readNew("read new open h1", "h1")
			tr.readNew("read new open h2", "h2")
			ptCloseFd(a)
			tr.readNew("read h1 after close", "h1")
		},
	},
	{
		// A writer reopens the reader's descriptor through /proc/self/fd:
		// the magic link leads to the reader's FUSE inode itself, which the
		// kernel lets no writable open into while the lower file is open
		// through it, and which the VFS does not look up again on ESTALE.
		name: "proc_reopen",
		run: func(tr *ptTranscript, _ string) {
			a := tr.open("open A p ro", "p", unix.O_RDONLY)
			b := tr.openFd("reopen A wronly|append", procFd(a), unix.O_WRONLY|unix.O_APPEND)
			tr.append("append B", b)
			ptCloseFd(b)
			c := tr.openFd("reopen A ro", procFd(a), unix.O_RDONLY)
			tr.read("read C", c)
			d := tr.open("open D p wronly|append", "p", unix.O_WRONLY|unix.O_APPEND)
			tr.append("append D", d)
			ptCloseFd(d)
			tr.read("read A", a)
			tr.read("read C again", c)
			tr.size("fstat A", a)
			ptCloseFd(a)
			e := tr.openFd("reopen C wronly", procFd(c), unix.O_WRONLY|unix.O_APPEND)
			ptCloseFd(e)
			ptCloseFd(c)
			tr.readNew("read new open", "p")
		},
	},
}

// ptRetireOnByIndex is what ovl with passthrough shows where the kernel differs,
// by index mode and sequence.
var ptRetireOnByIndex = map[string]map[string][]string{
	"on": {
		"second_link": {`open A h1 ro: ok`, `read A: "0123456789abcdef"`, `open B h2 wronly|append: ok`, `append B: ok`,
			`fstat A: 19`, `read A at 16: ""`, `read new open h1: "0123456789abcdefNEW"`,
			`read new open h2: "0123456789abcdefNEW"`, `read h1 after close: "0123456789abcdefNEW"`},
		"proc_reopen": {`open A p ro: ok`, `reopen A wronly|append: ESTALE`, `reopen A ro: ok`, `read C: "0123456789abcdef"`,
			`open D p wronly|append: ok`, `append D: ok`, `read A: "0123456789abcdef"`, `read C again: "0123456789abcdef"`,
			`fstat A: 19`, `reopen C wronly: ESTALE`, `read new open: "0123456789abcdefNEW"`},
	},
	"off": {
		"proc_reopen": {`open A p ro: ok`, `reopen A wronly|append: ESTALE`, `reopen A ro: ok`, `read C: "0123456789abcdef"`,
			`open D p wronly|append: ok`, `append D: ok`, `read A: "0123456789abcdef"`, `read C again: "0123456789abcdef"`,
			`fstat A: 19`, `reopen C wronly: ESTALE`, `read new open: "0123456789abcdefNEW"`},
	},
}

func TestPassthroughRetiredInode(t *testing.T) {
	layers := k.Layers{Lowers: []k.Layer{{k.File("h1", ptData), k.Hardlink("h2", "h1"), k.File("p", ptData)}}}
	for _, index := range []string{"on", "off"} {
		for _, mode := range []string{"on", "off"} {
			t.Run("index_"+index+"/passthrough_"+mode, func(t *testing.T) {
				opts := k.DefaultOptions()
				opts.Index = index
				p := ptPairOpts(t, mode, opts, layers)
				before := ptLowerSums(t, p.Cand)
				for _, seq := range ptRetireSeqs {
					var got [2][]string
					for i, s := range p.Sides() {
						tr := &ptTranscript{root: s.Layout.Mnt}
						seq.run(tr, "")
						got[i] = tr.lines
					}
					want := got[0]
					if mode == "on" {
						if w := ptRetireOnByIndex[index][seq.name]; w != nil {
							want = w
						}
					}
					if strings.Join(got[1], "\n") != strings.Join(want, "\n") {
						t.Errorf("%s: ovl:\n\t%s\nwant:\n\t%s\nkernel:\n\t%s", seq.name,
							strings.Join(got[1], "\n\t"), strings.Join(want, "\n\t"), strings.Join(got[0], "\n\t"))
					}
				}
				ptSameSums(t, "mounted", before, ptLowerSums(t, p.Cand))
				p.Unmount()
				ptSameSums(t, "unmounted", before, ptLowerSums(t, p.Cand))
			})
		}
	}
}

// syncBuffer is a bytes.Buffer a process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPassthroughTailFollow runs `tail -f LOG` on a lower file while
// another process appends to it (sh -c 'echo line >> LOG'), on the
// kernel's overlayfs and on ovl with passthrough off and on. The appends
// succeed everywhere. tail shows them on the kernel's overlayfs and with
// passthrough=off; with passthrough its descriptor reads the lower file,
// so it shows none of them (docs/passthrough.md).
func TestPassthroughTailFollow(t *testing.T) {
	layers := k.Layers{Lowers: []k.Layer{{k.File("LOG", "line1\n")}}}
	on := ptPairOpts(t, "on", k.DefaultOptions(), layers)
	off := ptPairOpts(t, "off", k.DefaultOptions(), layers)
	mnts := map[string]string{"kernel": on.Ref.Layout.Mnt, "off": off.Cand.Layout.Mnt, "on": on.Cand.Layout.Mnt}
	out := map[string]*syncBuffer{}
	for name, mnt := range mnts {
		buf := &syncBuffer{}
		cmd := exec.Command("tail", "-f", "-s", "0.1", "-n", "+1", filepath.Join(mnt, "LOG"))
		cmd.Stdout, cmd.Stderr = buf, buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		out[name] = buf
	}
	waitOut := func(name, want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for out[name].String() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: tail -f printed %q, want %q", name, out[name].String(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for name := range mnts {
		waitOut(name, "line1\n")
	}
	for _, line := range []string{"line2", "line3"} {
		for name, mnt := range mnts {
			sh := exec.Command("sh", "-c", "echo "+line+" >> "+filepath.Join(mnt, "LOG"))
			if b, err := sh.CombinedOutput(); err != nil {
				t.Errorf("%s: echo %s >> LOG: %v: %s", name, line, err, b)
			}
		}
	}
	all := "line1\nline2\nline3\n"
	for name, mnt := range mnts {
		if b, err := os.ReadFile(filepath.Join(mnt, "LOG")); err != nil || string(b) != all {
			t.Errorf("%s: LOG holds %q (%v)", name, b, err)
		}
	}
	waitOut("kernel", all)
	waitOut("off", all)
	// The off mount's tail, which polls as this one does (FUSE), has seen
	// the lines; ten more polls of this one, then what it printed.
	time.Sleep(time.Second)
	if got := out["on"].String(); got != "line1\n" {
		t.Errorf("passthrough=on: tail -f printed %q, want %q (its descriptor reads the lower file)", got, "line1\n")
	}
	for _, p := range []*k.Pair{on, off} {
		for _, s := range p.Sides() {
			if b, _ := os.ReadFile(filepath.Join(s.Layout.Lowers[0], "LOG")); string(b) != "line1\n" {
				t.Errorf("lower LOG changed: %q", b)
			}
		}
	}
}

// TestPassthroughExecWrite: a write open of a file that is being
// executed fails with ETXTBSY, a lower one as well as an upper one, as on
// the kernel's overlayfs (the VFS refuses it on the inode being executed,
// Linux 6.18), and succeeds once the program has exited.
func TestPassthroughExecWrite(t *testing.T) {
	prog, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	layers := k.Layers{Lowers: []k.Layer{{k.File("lowerprog", string(prog)).Mode(0o755)}}}
	for _, mode := range []string{"on", "off"} {
		t.Run(mode, func(t *testing.T) {
			p := ptPairOpts(t, mode, k.DefaultOptions(), layers)
			before := ptLowerSums(t, p.Cand)
			var got [2][]string
			for i, s := range p.Sides() {
				tr := &ptTranscript{root: s.Layout.Mnt}
				up := tr.path("upperprog")
				if err := os.WriteFile(up, prog, 0o755); err != nil {
					t.Fatal(err)
				}
				for _, name := range []string{"lowerprog", "upperprog"} {
					cmd := exec.Command(tr.path(name), "60")
					if err := cmd.Start(); err != nil {
						t.Fatal(err)
					}
					ptWaitExec(t, cmd.Process.Pid, name)
					fd := tr.open("write open "+name+" while it runs", name, unix.O_WRONLY)
					ptCloseFd(fd)
					tr.add("truncate %s while it runs: %s", name, ptErrName(unix.Truncate(tr.path(name), int64(len(prog)))))
					cmd.Process.Kill()
					cmd.Wait()
					fd = tr.open("write open "+name+" after it exited", name, unix.O_WRONLY)
					ptCloseFd(fd)
				}
				got[i] = tr.lines
			}
			if strings.Join(got[1], "\n") != strings.Join(got[0], "\n") {
				t.Errorf("ovl:\n\t%s\nkernel:\n\t%s", strings.Join(got[1], "\n\t"), strings.Join(got[0], "\n\t"))
			}
			if !strings.Contains(strings.Join(got[0], "\n"), "write open lowerprog while it runs: ETXTBSY") {
				t.Errorf("the kernel's behaviour changed: %q", got[0])
			}
			ptSameSums(t, "mounted", before, ptLowerSums(t, p.Cand))
		})
	}
}

// ptWaitExec waits until process pid runs the program name.
func ptWaitExec(t *testing.T, pid int, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && filepath.Base(exe) == name {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d does not run %s", pid, name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPassthroughRetiredInotify: inotify watches while a writer appends to
// a lower file a reader holds. A watch on the directory reports the
// writes as on the kernel's overlayfs. With passthrough, a watch on the
// file itself that was added before the write is on the reader's FUSE
// inode, which the write does not go through (it is retired): it reports
// nothing of it; a watch added after it is on the new inode and reports
// the next write (docs/passthrough.md).
func TestPassthroughRetiredInotify(t *testing.T) {
	layers := k.Layers{Lowers: []k.Layer{{k.File("d/LOG", "line1\n")}}}
	for _, mode := range []string{"on", "off"} {
		t.Run(mode, func(t *testing.T) {
			p := ptPairOpts(t, mode, k.DefaultOptions(), layers)
			var got [2]string
			for i, s := range p.Sides() {
				in := newInotify(t)
				log := s.Path("d/LOG")
				a, err := unix.Open(log, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				in.watch("file", log)
				in.watch("dir", s.Path("d"))
				appendLine := func() {
					fd, err := unix.Open(log, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
					if err != nil {
						t.Fatalf("%s: append open: %v", s.Name, err)
					}
					unix.Write(fd, []byte("line\n"))
					unix.Close(fd)
				}
				appendLine()
				first := in.drain()
				in.watch("file watched after", log)
				appendLine()
				second := in.drain()
				unix.Close(a)
				got[i] = fmt.Sprintf("first write: file %v, dir %v; second write: file %v, file watched after %v, dir %v",
					first["file"], first["dir"], second["file"], second["file watched after"], second["dir"])
			}
			want := got[0]
			if mode == "on" {
				want = "first write: file [], dir [MODIFY LOG CLOSE_WRITE LOG]; " +
					"second write: file [], file watched after [MODIFY CLOSE_WRITE], dir [MODIFY LOG CLOSE_WRITE LOG]"
			}
			if got[1] != want {
				t.Errorf("ovl:\n\t%s\nwant:\n\t%s\nkernel:\n\t%s", got[1], want, got[0])
			}
		})
	}
}
