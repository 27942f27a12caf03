package overlay

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/format"
)

// journalOf reads the journal of the volatile mount on cfg.
func journalOf(t *testing.T, cfg Config) []format.JournalEntry {
	t.Helper()
	vol, err := unix.Open(filepath.Join(cfg.Work, "work/incompat/volatile"), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(vol)
	es, err := format.ReadVolatileJournal(vol)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// The sync set of a volatile mount holds each changed file and directory
// once, journals each once, and a clean Close syncs them and removes the
// marker, so that the next mount takes the upper.
func TestVolatileSyncSet(t *testing.T) {
	cfg, _ := layers(t)
	cfg.Volatile = true
	o, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	root := o.Root()
	a, err := root.Lookup("a") // a lower file: copy-up and write
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // the same object, written three times: one entry
		fd, err := a.Open(unix.O_WRONLY)
		if err != nil {
			t.Fatal(err)
		}
		unix.Write(fd, []byte("new"))
		unix.Close(fd)
	}
	a.Forget()
	d, err := root.Mkdir("nd", 0o755, Cred{})
	if err != nil {
		t.Fatal(err)
	}
	f, fd, err := d.Create("f", unix.O_WRONLY, 0o644, Cred{})
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	f.Forget()
	d.Forget()
	// Changed: the root (entries a, nd), a, nd (entry f), f.
	want := map[uint64]string{}
	for _, p := range []string{".", "a", "nd", "nd/f"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(cfg.Upper, p), &st); err != nil {
			t.Fatal(err)
		}
		want[st.Ino] = p
	}
	if got := o.syncs.len(); got != len(want) {
		t.Errorf("sync set holds %d objects, want %d (%v)", got, len(want), want)
	}
	es := journalOf(t, cfg)
	got := map[uint64]string{}
	for _, e := range es {
		if e.Syncfs != "" {
			t.Fatalf("journal switched to syncfs: %s", e.Syncfs)
		}
		fd, err := unix.OpenByHandleAt(o.syncs.sbFd, unix.NewFileHandle(e.HandleType, e.Handle), unix.O_RDONLY)
		if err != nil {
			t.Fatalf("journal handle: %v", err)
		}
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		unix.Close(fd)
		if _, dup := got[st.Ino]; dup {
			t.Errorf("journal names %s twice", want[st.Ino])
		}
		got[st.Ino] = want[st.Ino]
	}
	if len(got) != len(want) || len(es) != len(want) {
		t.Errorf("journal names %v (%d lines), want %v", got, len(es), want)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("clean close: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(cfg.Work, "work/incompat")); !os.IsNotExist(err) {
		t.Errorf("work/incompat after a clean close: %v", err)
	}
	cfg.Volatile = false
	o2, err := New(cfg)
	if err != nil {
		t.Fatalf("mount after a clean volatile close: %v", err)
	}
	o2.Close()
}

// Past its bound the set stops tracking, says so in the journal, and
// releases its descriptors: the close syncs the filesystem instead.
func TestVolatileSyncSetBound(t *testing.T) {
	cfg, _ := layers(t)
	cfg.Volatile = true
	cfg.VolatileBound = 3
	o, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"f1", "f2", "f3", "f4", "f5"} {
		f, fd, err := o.Root().Create(n, unix.O_WRONLY, 0o644, Cred{})
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		f.Forget()
	}
	if n := o.syncs.len(); n != 0 {
		t.Errorf("past the bound the set still holds %d descriptors", n)
	}
	es := journalOf(t, cfg)
	if len(es) != 4 || !strings.Contains(es[3].Syncfs, "more than 3") {
		t.Errorf("journal: %+v, want 3 handles and a syncfs line", es)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("clean close: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(cfg.Work, "work/incompat")); !os.IsNotExist(err) {
		t.Errorf("work/incompat after a clean close: %v", err)
	}
}

// A metadata change of a symlink (copied up or new) cannot be synced
// alone: the set switches to syncfs, and the close still succeeds.
func TestVolatileSyncSetSymlink(t *testing.T) {
	cfg, root := layers(t)
	if err := os.Symlink("a", filepath.Join(root, "l1/ln")); err != nil {
		t.Fatal(err)
	}
	cfg.Volatile = true
	o, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := o.Root().Lookup("ln")
	if err != nil {
		t.Fatal(err)
	}
	uid := uint32(7)
	if err := ln.Setattr(SetAttr{Uid: &uid}, -1); err != nil {
		t.Fatal(err)
	}
	ln.Forget()
	es := journalOf(t, cfg)
	if len(es) == 0 || !strings.Contains(es[len(es)-1].Syncfs, "symlink") {
		t.Errorf("journal after lchown of a symlink: %+v, want a syncfs line", es)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("clean close: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(cfg.Work, "work/incompat")); !os.IsNotExist(err) {
		t.Errorf("work/incompat after a clean close: %v", err)
	}
}

// The hot path: an object already in the set costs an fstat and a map
// lookup; a new one an open, a file handle and a journal write.
func BenchmarkVolatileNote(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("root")
	}
	dir := b.TempDir()
	vol, _ := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	defer unix.Close(vol)
	up := filepath.Join(dir, "up")
	os.Mkdir(up, 0o755)
	root, _ := unix.Open(up, unix.O_PATH|unix.O_DIRECTORY, 0)
	defer unix.Close(root)
	b.Run("known", func(b *testing.B) {
		s, err := newSyncSet(root, vol, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer s.finish()
		os.WriteFile(filepath.Join(up, "k"), nil, 0o644)
		fd, _ := unix.Open(filepath.Join(up, "k"), unix.O_PATH, 0)
		defer unix.Close(fd)
		s.add(fd)
		b.ResetTimer()
		for b.Loop() {
			s.add(fd)
		}
	})
	b.Run("new", func(b *testing.B) {
		s, err := newSyncSet(root, vol, 1<<30)
		if err != nil {
			b.Fatal(err)
		}
		var fds []int
		for i := 0; i < b.N; i++ {
			p := filepath.Join(up, "n"+strconv.Itoa(i))
			os.WriteFile(p, nil, 0o644)
			fd, _ := unix.Open(p, unix.O_PATH, 0)
			fds = append(fds, fd)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			s.add(fds[i])
		}
		b.StopTimer()
		s.finish()
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
}

// A mount of an upper whose volatile mount is still syncing at its end
// (its daemon holds the workdir's lock and has made ovl-closing) waits for
// it past the usual two seconds, instead of calling the upper busy.
func TestVolatileWaitsForClosing(t *testing.T) {
	cfg, _ := layers(t)
	vol := filepath.Join(cfg.Work, "work/incompat/volatile")
	if err := os.MkdirAll(vol, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, volatileClosingName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	lock, err := unix.Open(cfg.Work, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(lock, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(3 * time.Second) // past the two seconds a busy workdir gets
		// As the closing daemon does: the marker goes first, the lock
		// with the process a moment later.
		os.RemoveAll(filepath.Join(cfg.Work, "work/incompat"))
		time.Sleep(500 * time.Millisecond)
		close(released)
		unix.Close(lock)
	}()
	o, err := New(cfg)
	<-released
	if err != nil {
		t.Fatalf("mount while a volatile mount was closing: %v", err)
	}
	o.Close()
}
