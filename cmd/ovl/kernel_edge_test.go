package main

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

// TestKernelEdgeOps runs short op sequences whose errnos and results must
// agree with the kernel, one fresh pair per sequence.
func TestKernelEdgeOps(t *testing.T) {
	layers := k.Layers{
		Lowers: []k.Layer{{
			k.File("f", "lower f"), k.File("g", "lower g"), k.File("d/x", "x"), k.Dir("e"),
			k.Symlink("sl", "f"), k.Symlink("dangling", "nowhere"), k.File("ro", "ro").Mode(0o444),
			k.File("m/l", "l"),
		}, {
			k.File("m/l2", "l2"), k.File("d/y", "y"), k.Dir("e/deep"),
		}},
		Upper: k.Layer{k.File("m/u", "u"), k.Dir("ue")},
	}
	E := func(es ...syscall.Errno) []syscall.Errno { return es }
	O := syscall.Errno(0)
	cases := []struct {
		name string
		want []syscall.Errno
		ops  []k.Op
	}{
		{"create excl over lower", E(syscall.EEXIST, syscall.EEXIST), []k.Op{
			{Op: "create", Path: "f", Flags: unix.O_EXCL, Mode: 0o644},
			{Op: "create", Path: "d", Flags: unix.O_EXCL, Mode: 0o644}}},
		{"open dir for write", E(syscall.EISDIR, syscall.EISDIR), []k.Op{
			{Op: "open", Path: "d", Flags: unix.O_WRONLY}, {Op: "open", Path: "m", Flags: unix.O_RDWR}}},
		{"O_DIRECTORY on file", E(syscall.ENOTDIR), []k.Op{{Op: "open", Path: "f", Flags: unix.O_DIRECTORY}}},
		{"O_NOFOLLOW on symlink", E(syscall.ELOOP), []k.Op{{Op: "open", Path: "sl", Flags: unix.O_NOFOLLOW}}},
		{"write through symlink copies target", E(O, O, O), []k.Op{
			{Op: "write", Path: "sl", Data: "via link"}, kcOp("read", "f"), kcOp("lstat", "sl")}},
		{"create through dangling symlink", E(O, O), []k.Op{
			{Op: "create", Path: "dangling", Mode: 0o600}, kcOp("lstat", "nowhere")}},
		{"rename dir into itself", E(syscall.EINVAL), []k.Op{{Op: "rename", Path: "ue", Path2: "ue/sub"}}},
		{"rename onto non-empty merged dir", E(O, syscall.ENOTEMPTY, syscall.ENOTEMPTY), []k.Op{
			{Op: "mkdir", Path: "newdir", Mode: 0o755},
			{Op: "rename", Path: "newdir", Path2: "m"},
			{Op: "rename", Path: "newdir", Path2: "e"}}},
		{"rename upper dir onto emptied lower dir", E(O, O, O, O, O, syscall.ENOENT), []k.Op{
			{Op: "unlink", Path: "d/x"}, {Op: "unlink", Path: "d/y"},
			{Op: "mkdir", Path: "nd", Mode: 0o700}, {Op: "create", Path: "nd/n", Mode: 0o644},
			{Op: "rename", Path: "nd", Path2: "d"}, kcOp("lstat", "d/x")}},
		{"file over dir and back", E(syscall.EISDIR, syscall.ENOTDIR, O, O), []k.Op{
			{Op: "rename", Path: "f", Path2: "ue"}, {Op: "rename", Path: "ue", Path2: "f"},
			{Op: "rmdir", Path: "ue"}, {Op: "rename", Path: "f", Path2: "ue"}}},
		{"link then unlink original", E(O, O, O, O), []k.Op{
			{Op: "link", Path: "g", Path2: "g2"}, kcOp("unlink", "g"), kcOp("lstat", "g2"), kcOp("read", "g2")}},
		{"link to dir", E(syscall.EPERM), []k.Op{{Op: "link", Path: "d", Path2: "d2"}}},
		{"link over existing", E(syscall.EEXIST), []k.Op{{Op: "link", Path: "f", Path2: "g"}}},
		{"truncate a dir", E(syscall.EISDIR), []k.Op{{Op: "truncate", Path: "d", Off: 0}}},
		{"write read-only file as root", E(O, O), []k.Op{{Op: "write", Path: "ro", Data: "W"}, kcOp("read", "ro")}},
		{"append", E(O, O, O), []k.Op{{Op: "append", Path: "f", Data: "+1"}, {Op: "append", Path: "f", Data: "+2"}, kcOp("read", "f")}},
		{"rmdir on file, unlink on dir", E(syscall.ENOTDIR, syscall.EISDIR), []k.Op{kcOp("rmdir", "f"), kcOp("unlink", "e")}},
		{"rmdir dir with lower subdir", E(syscall.ENOTEMPTY, O, O), []k.Op{kcOp("rmdir", "e"), kcOp("rmdir", "e/deep"), kcOp("rmdir", "e")}},
		{"mkdir existing", E(syscall.EEXIST, syscall.EEXIST, syscall.EEXIST), []k.Op{
			{Op: "mkdir", Path: "d", Mode: 0o755}, {Op: "mkdir", Path: "f", Mode: 0o755}, {Op: "mkdir", Path: "sl", Mode: 0o755}}},
		{"lookup through file", E(syscall.ENOTDIR, syscall.ENOTDIR), []k.Op{kcOp("lstat", "f/x"), {Op: "create", Path: "f/x", Mode: 0o644}}},
		{"whiteout then recreate then remove", E(O, O, O, O, syscall.ENOENT), []k.Op{
			kcOp("unlink", "f"), {Op: "create", Path: "f", Mode: 0o600}, kcOp("unlink", "f"), kcOp("readdir", ""), kcOp("lstat", "f")}},
		{"rename exchange file and dir", E(O, O, O), []k.Op{
			{Op: "rename", Path: "f", Path2: "ue", Flags: unix.RENAME_EXCHANGE}, kcOp("lstat", "f"), kcOp("lstat", "ue")}},
		{"rename whiteout flag", E(syscall.EINVAL), []k.Op{{Op: "rename", Path: "f", Path2: "f3", Flags: unix.RENAME_WHITEOUT}}},
		{"xattr on symlink and special", E(syscall.EPERM, O, O), []k.Op{
			{Op: "setxattr", Path: "sl", Name: "user.a", Data: "1"},
			{Op: "setxattr", Path: "sl", Name: "trusted.a", Data: "1"},
			{Op: "listxattr", Path: "sl"}}},
		{"chmod keeps content, chown symlink", E(O, O, O, O), []k.Op{
			{Op: "chmod", Path: "f", Mode: 0o4755}, {Op: "lchown", Path: "sl", UID: 5, GID: 5}, kcOp("lstat", "f"), kcOp("read", "f")}},
		{"chown clears suid", E(O, O, O), []k.Op{
			{Op: "chmod", Path: "g", Mode: 0o6755}, {Op: "chown", Path: "g", UID: 1, GID: 1}, kcOp("lstat", "g")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := kcPair(t, k.DefaultOptions(), layers)
			p.OpsExpect(nil, c.want, c.ops...)
			p.Finish()
		})
	}
}

// TestKernelCopyUpWithReaderOpen: a copy-up while a read-only open of the
// lower file exists must not write into the lower file (the passthrough
// trap), and new opens see the new data.
// (The kernel's coherence here is ovl's with passthrough=off: kcCoherent.)
func TestKernelCopyUpWithReaderOpen(t *testing.T) {
	p := kcPair(t, kcCoherent(), k.Layers{Lowers: []k.Layer{{k.File("f", "original content")}}})
	var oldReads [2]string
	for i, s := range p.Sides() {
		r, err := os.Open(s.Path("f"))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := r.Read(buf); err != nil { // make sure it is really open
			t.Fatal(err)
		}
		w, err := os.OpenFile(s.Path("f"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt([]byte("CHANGED"), 0); err != nil {
			t.Fatal(err)
		}
		w.Close()
		b := make([]byte, 64)
		n, _ := r.ReadAt(b, 0)
		oldReads[i] = string(b[:n])
		r.Close()
	}
	// The kernel (6.18) re-resolves the real file on each read, so the
	// old read-only fd sees the copied-up data.
	if oldReads[0] != oldReads[1] {
		t.Errorf("old read-only fd after copy-up reads: %s %q, %s %q", p.Ref.Name, oldReads[0], p.Cand.Name, oldReads[1])
	}
	p.Check("lower untouched, upper changed", func(s *k.Side) error {
		b, err := os.ReadFile(s.LowerPath(0, "f"))
		if err != nil || string(b) != "original content" {
			return fmt.Errorf("lower file now %q (%v)", b, err)
		}
		b, err = os.ReadFile(s.Path("f"))
		if err != nil || string(b) != "CHANGEDl content" {
			return fmt.Errorf("merged file %q (%v)", b, err)
		}
		return nil
	})
	p.Finish()
}
