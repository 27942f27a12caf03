package main

// inotify across copy-up (issue 4, item 7): watches on overlay objects keep
// reporting changes made through the mount, before, during and after the
// copy-up of the watched object; and a watch on one mount does not see
// changes made through another mount that shares its lower layer.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// inMask are the events the tests watch for.
const inMask = unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CLOSE_WRITE | unix.IN_CREATE |
	unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO

var inNames = []struct {
	bit  uint32
	name string
}{
	{unix.IN_MODIFY, "MODIFY"}, {unix.IN_ATTRIB, "ATTRIB"}, {unix.IN_CLOSE_WRITE, "CLOSE_WRITE"},
	{unix.IN_CREATE, "CREATE"}, {unix.IN_DELETE, "DELETE"}, {unix.IN_MOVED_FROM, "MOVED_FROM"},
	{unix.IN_MOVED_TO, "MOVED_TO"}, {unix.IN_DELETE_SELF, "DELETE_SELF"}, {unix.IN_MOVE_SELF, "MOVE_SELF"},
	{unix.IN_IGNORED, "IGNORED"}, {unix.IN_Q_OVERFLOW, "Q_OVERFLOW"}, {unix.IN_ISDIR, "ISDIR"},
}

// inEvent is one inotify event.
type inEvent struct {
	wd     int
	mask   uint32
	cookie uint32
	name   string
}

// String is the event as the tests expect it: "CREATE|ISDIR name".
func (e inEvent) String() string {
	var parts []string
	rest := e.mask
	for _, n := range inNames {
		if rest&n.bit != 0 {
			parts = append(parts, n.name)
			rest &^= n.bit
		}
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("%#x", rest))
	}
	s := strings.Join(parts, "|")
	if e.name != "" {
		s += " " + e.name
	}
	return s
}

// inotify is an inotify instance with named watches.
type inotify struct {
	t   *testing.T
	fd  int
	wds map[int]string // wd -> label
}

func newInotify(t *testing.T) *inotify {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatalf("inotify_init1: %v", err)
	}
	in := &inotify{t: t, fd: fd, wds: map[int]string{}}
	t.Cleanup(func() { unix.Close(fd) })
	return in
}

// watch adds a watch on path, named label.
func (in *inotify) watch(label, path string) {
	in.t.Helper()
	wd, err := unix.InotifyAddWatch(in.fd, path, inMask)
	if err != nil {
		in.t.Fatalf("inotify_add_watch %s: %v", path, err)
	}
	in.wds[wd] = label
}

// drain reads every queued event (all are queued by the time the syscalls
// that cause them return) and returns them by watch label, each pair of
// moves checked for one cookie.
func (in *inotify) drain() map[string][]string {
	in.t.Helper()
	var evs []inEvent
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(in.fd, buf)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			in.t.Fatalf("read inotify: %v", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(raw.Len)]
			evs = append(evs, inEvent{wd: int(raw.Wd), mask: raw.Mask, cookie: raw.Cookie, name: strings.TrimRight(string(name), "\x00")})
			off += unix.SizeofInotifyEvent + int(raw.Len)
		}
	}
	out := map[string][]string{}
	for i, e := range evs {
		label, ok := in.wds[e.wd]
		if !ok {
			label = fmt.Sprintf("wd%d", e.wd)
		}
		out[label] = append(out[label], e.String())
		if e.mask&unix.IN_MOVED_FROM != 0 {
			if i+1 >= len(evs) || evs[i+1].mask&unix.IN_MOVED_TO == 0 || evs[i+1].cookie != e.cookie || e.cookie == 0 {
				in.t.Errorf("%s: MOVED_FROM %s not followed by a MOVED_TO with its cookie %d", label, e.name, e.cookie)
			}
		}
	}
	return out
}

// inOp is a change made through the mount and the events a watch on the
// object (or its directory) must report for it.
type inOp struct {
	name   string
	do     func(p string) error // p: the watched object's path
	events []string
}

func inWrite(child string) inOp {
	ev := []string{"MODIFY", "CLOSE_WRITE"}
	if child != "" {
		ev = []string{"MODIFY " + child, "CLOSE_WRITE " + child}
	}
	return inOp{"write " + child, func(p string) error {
		fd, err := unix.Open(filepath.Join(p, child), unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		_, err = unix.Pwrite(fd, []byte("changed"), 0)
		if cerr := unix.Close(fd); err == nil {
			err = cerr
		}
		return err
	}, ev}
}

var (
	inChmod = inOp{"chmod", func(p string) error { return unix.Chmod(p, 0o700) }, []string{"ATTRIB"}}
	// Events about a watched directory itself carry IN_ISDIR.
	inChmodDir = inOp{"chmod", func(p string) error { return unix.Chmod(p, 0o700) }, []string{"ATTRIB|ISDIR"}}
	inChown    = inOp{"chown", func(p string) error { return unix.Chown(p, 12, 12) }, []string{"ATTRIB"}}
	inTrunc    = inOp{"truncate", func(p string) error { return unix.Truncate(p, 2) }, []string{"MODIFY"}}

	inCreate = inOp{"create new", func(p string) error {
		fd, err := unix.Open(p+"/new", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		return unix.Close(fd)
	}, []string{"CREATE new", "CLOSE_WRITE new"}}
	inMkdir  = inOp{"mkdir sub", func(p string) error { return unix.Mkdir(p+"/sub", 0o755) }, []string{"CREATE|ISDIR sub"}}
	inUnlink = inOp{"unlink lowg", func(p string) error { return unix.Unlink(p + "/lowg") }, []string{"DELETE lowg"}}
	inRename = inOp{"rename lowh", func(p string) error { return unix.Rename(p+"/lowh", p+"/lowh2") },
		[]string{"MOVED_FROM lowh", "MOVED_TO lowh2"}}
	inRmdir = inOp{"rmdir lowd", func(p string) error { return unix.Rmdir(p + "/lowd") }, []string{"DELETE|ISDIR lowd"}}
)

// inWatched is one watched object: the first op copies it up (or, for a
// directory, copies it up by changing its contents), the rest come after.
type inWatched struct {
	path string
	ops  []inOp
}

func inotifyObjects() []inWatched {
	dirOps := []inOp{inCreate, inWrite("lowf"), inUnlink, inRename, inChmodDir, inMkdir, inRmdir}
	var objs []inWatched
	// Each kind of change is once the copy-up of the watched directory.
	for i, first := range dirOps {
		ops := []inOp{first}
		for j, op := range dirOps {
			if j != i {
				ops = append(ops, op)
			}
		}
		objs = append(objs, inWatched{fmt.Sprintf("d%d", i), ops})
	}
	// And of the watched file.
	fileOps := []inOp{inWrite(""), inChmod, inTrunc, inChown}
	for i, first := range fileOps {
		ops := []inOp{first}
		for j, op := range fileOps {
			if j != i {
				ops = append(ops, op)
			}
		}
		ops = append(ops, inWrite("")) // once more, after the copy-up
		objs = append(objs, inWatched{fmt.Sprintf("f%d", i), ops})
	}
	return objs
}

// inotifyLayers: each watched directory merges two lowers and holds lower
// files and a lower directory to change; each watched file is a pristine
// lower file.
func inotifyLayers(objs []inWatched) k.Layers {
	var l0, l1 k.Layer
	for _, o := range objs {
		if strings.HasPrefix(o.path, "d") {
			l0 = append(l0, k.File(o.path+"/lowf", "lower f"), k.Dir(o.path+"/lowd"))
			l1 = append(l1, k.File(o.path+"/lowg", "lower g"), k.File(o.path+"/lowh", "lower h"))
		} else {
			l0 = append(l0, k.File(o.path, "lower file"))
		}
	}
	return k.Layers{Lowers: []k.Layer{l0, l1}}
}

// TestInotifyAcrossCopyUp (item 7): an inotify watch on a pristine lower
// file and on a merged directory that is in no upper yet reports IN_MODIFY,
// IN_ATTRIB, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE and IN_MOVED_FROM/TO for
// changes made through the mount: for the change that copies the watched
// object up (each kind in turn) and for every change after it. ovl's FUSE
// inode stays the same across copy-up, so the watch stays on it; the
// kernel's overlay inode likewise.
func TestInotifyAcrossCopyUp(t *testing.T) {
	objs := inotifyObjects()
	p := kcPair(t, k.DefaultOptions(), inotifyLayers(objs))
	for _, s := range p.Sides() {
		in := newInotify(t)
		for _, o := range objs {
			in.watch(o.path, s.Path(o.path))
			if _, err := os.Lstat(s.UpperPath(o.path)); err == nil {
				t.Fatalf("%s: %s is in the upper before any change", s.Name, o.path)
			}
		}
		// Round robin over the objects: inotify merges an event into an
		// identical one at the tail of the queue, which two changes in a
		// row to one object could give.
		want := map[string][]string{}
		for i := 0; ; i++ {
			done := true
			for _, o := range objs {
				if i >= len(o.ops) {
					continue
				}
				done = false
				op := o.ops[i]
				if err := op.do(s.Path(o.path)); err != nil {
					t.Fatalf("%s: %s: %s: %v", s.Name, o.path, op.name, err)
				}
				if i == 0 {
					expectCopiedUp(t, s, o.path)
				}
				want[o.path] = append(want[o.path], op.events...)
			}
			if done {
				break
			}
		}
		got := in.drain()
		for _, o := range objs {
			if g, w := strings.Join(got[o.path], ", "), strings.Join(want[o.path], ", "); g != w {
				t.Errorf("%s: watch on %s (first change %q copies it up):\n got  %s\n want %s", s.Name, o.path, o.ops[0].name, g, w)
			}
			delete(got, o.path)
		}
		for label, evs := range got {
			t.Errorf("%s: events for unknown watch %s: %v", s.Name, label, evs)
		}
	}
	p.Finish()
}

// TestInotifySeparateMounts: two mounts share a lower layer (each with its
// own upper). Changes made through mount A go to A's upper and are seen by
// watches on A; watches on the same objects through mount B see nothing of
// them (B's view does not change either). A change made through B after
// them is the marker: it must be the only event B's watches report.
func TestInotifySeparateMounts(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), k.Layers{Lowers: []k.Layer{{
		k.File("f", "lower f"), k.File("d/lowf", "lower f"), k.File("d/lowg", "lower g"), k.File("d/lowh", "lower h"),
	}}})
	for _, s := range p.Sides() {
		b := p.MountShared(s, "b")
		in := newInotify(t)
		for _, root := range []struct{ label, mnt string }{{"A", s.Layout.Mnt}, {"B", b.Mnt}} {
			in.watch(root.label+":f", filepath.Join(root.mnt, "f"))
			in.watch(root.label+":d", filepath.Join(root.mnt, "d"))
		}
		a := s.Layout.Mnt
		for _, op := range []struct {
			op   inOp
			path string
		}{{inWrite(""), "f"}, {inChmod, "f"}, {inCreate, "d"}, {inWrite("lowf"), "d"}, {inUnlink, "d"}, {inRename, "d"}} {
			if err := op.op.do(filepath.Join(a, op.path)); err != nil {
				t.Fatalf("%s: through A: %s %s: %v", s.Name, op.op.name, op.path, err)
			}
		}
		// The marker, through B.
		if err := unix.Chown(filepath.Join(b.Mnt, "f"), 0, 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mkdir(filepath.Join(b.Mnt, "d", "marker"), 0o755); err != nil {
			t.Fatal(err)
		}
		got := in.drain()
		want := map[string]string{
			"A:f": "MODIFY, CLOSE_WRITE, ATTRIB",
			"A:d": "CREATE new, CLOSE_WRITE new, MODIFY lowf, CLOSE_WRITE lowf, DELETE lowg, MOVED_FROM lowh, MOVED_TO lowh2",
			"B:f": "ATTRIB",
			"B:d": "CREATE|ISDIR marker",
		}
		for _, label := range sortedKeys(want) {
			if g := strings.Join(got[label], ", "); g != want[label] {
				t.Errorf("%s: watch %s:\n got  %s\n want %s", s.Name, label, g, want[label])
			}
		}
		// B's view kept the lower's state; A's changed.
		for _, c := range []struct {
			mnt, path string
			exists    bool
		}{{b.Mnt, "d/new", false}, {b.Mnt, "d/lowg", true}, {b.Mnt, "d/lowh", true}, {a, "d/new", true}, {a, "d/lowg", false}} {
			_, err := os.Lstat(filepath.Join(c.mnt, c.path))
			if (err == nil) != c.exists {
				t.Errorf("%s: %s in %s: exists=%v, want %v", s.Name, c.path, c.mnt, err == nil, c.exists)
			}
		}
		if data, err := os.ReadFile(filepath.Join(b.Mnt, "f")); err != nil || string(data) != "lower f" {
			t.Errorf("%s: f through B: %q (%v), want the lower's", s.Name, data, err)
		}
	}
	p.Finish()
}
