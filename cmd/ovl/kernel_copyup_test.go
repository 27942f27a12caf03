package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	k "github.com/ovl-project/ovl/internal/kernelcmp"
	"golang.org/x/sys/unix"
)

func TestKernelCopyUpSparse(t *testing.T) {
	const size = 200 << 20
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	p := kcPair(t, k.DefaultOptions(), k.Layers{Lowers: []k.Layer{{
		k.SparseFile("big", size, k.Extent{Off: 0, Data: data}, k.Extent{Off: size - 1<<20, Data: data}),
		k.SparseFile("big2", size, k.Extent{Off: 0, Data: data}, k.Extent{Off: size - 1<<20, Data: data}),
	}}})
	want := make([]byte, size)
	copy(want, data)
	copy(want[size-1<<20:], data)
	sparse := func(name string, wantSize int64, wantSum [32]byte) {
		p.Check("sparse copy-up of "+name, func(s *k.Side) error {
			var st unix.Stat_t
			if err := unix.Stat(s.UpperPath(name), &st); err != nil {
				return fmt.Errorf("no upper copy: %v", err)
			}
			if st.Size != wantSize {
				return fmt.Errorf("upper size %d, want %d", st.Size, wantSize)
			}
			if st.Blocks*512 > 8<<20 {
				return fmt.Errorf("upper copy uses %d bytes of disk: holes not preserved", st.Blocks*512)
			}
			b, err := os.ReadFile(s.UpperPath(name))
			if err != nil {
				return err
			}
			if sha256.Sum256(b) != wantSum {
				return fmt.Errorf("upper content differs from the lower's")
			}
			return nil
		})
	}
	p.OpsExpect(nil, []syscall.Errno{0}, k.Op{Op: "open", Path: "big", Flags: unix.O_RDWR})
	sparse("big", size, sha256.Sum256(want))
	p.OpsExpect(nil, []syscall.Errno{0}, k.Op{Op: "append", Path: "big2", Data: "!"})
	sparse("big2", size+1, sha256.Sum256(append(want, '!')))
	p.Finish()
}

// copyUpTrigger is one operation that must copy a lower file up.
type copyUpTrigger struct {
	name      string
	op        k.Op
	keepMode  bool // mode, owner, xattrs, mtime of the lower are kept
	keepOwner bool
	keepXattr bool
	keepMtime bool
	check     func(n *k.Node) error
}

func TestKernelCopyUpTriggers(t *testing.T) {
	t2 := time.Date(2021, 5, 6, 7, 8, 9, 123456789, time.UTC).UnixNano()
	triggers := []copyUpTrigger{
		{name: "open_wronly", op: k.Op{Op: "open", Flags: unix.O_WRONLY}, keepMode: true, keepOwner: true, keepXattr: true, keepMtime: true},
		{name: "open_rdwr", op: k.Op{Op: "open", Flags: unix.O_RDWR}, keepMode: true, keepOwner: true, keepXattr: true, keepMtime: true},
		{name: "open_trunc", op: k.Op{Op: "open", Flags: unix.O_WRONLY | unix.O_TRUNC}, keepMode: true, keepOwner: true, keepXattr: true,
			check: func(n *k.Node) error { return sizeIs(n, 0) }},
		{name: "chmod", op: k.Op{Op: "chmod", Mode: 0o600}, keepOwner: true, keepXattr: true, keepMtime: true,
			check: func(n *k.Node) error { return permIs(n, 0o600) }},
		{name: "chown", op: k.Op{Op: "chown", UID: 2000, GID: 2001}, keepMode: true, keepXattr: true, keepMtime: true,
			check: func(n *k.Node) error {
				if n.UID != 2000 || n.GID != 2001 {
					return fmt.Errorf("owner %d:%d", n.UID, n.GID)
				}
				return nil
			}},
		{name: "utimes", op: k.Op{Op: "utimes", Off: t2}, keepMode: true, keepOwner: true, keepXattr: true,
			check: func(n *k.Node) error { return kcMtime(t2)(n) }},
		{name: "truncate", op: k.Op{Op: "truncate", Off: 3}, keepMode: true, keepOwner: true, keepXattr: true,
			check: func(n *k.Node) error { return sizeIs(n, 3) }},
		{name: "setxattr", op: k.Op{Op: "setxattr", Name: "user.new", Data: "nv"}, keepMode: true, keepOwner: true, keepMtime: true,
			check: func(n *k.Node) error { return xattrsAre(n, map[string]string{"user.k": "v", "user.new": "nv"}) }},
		{name: "removexattr", op: k.Op{Op: "removexattr", Name: "user.k"}, keepMode: true, keepOwner: true, keepMtime: true,
			check: func(n *k.Node) error { return xattrsAre(n, map[string]string{}) }},
		{name: "link", op: k.Op{Op: "link", Path2: "d/sub/link.2"}, keepMode: true, keepOwner: true, keepXattr: true, keepMtime: true,
			check: func(n *k.Node) error {
				if n.Nlink != 2 {
					return fmt.Errorf("nlink %d, want 2", n.Nlink)
				}
				return nil
			}},
	}
	var lower k.Layer
	lower = append(lower, k.Dir("d").Mode(0o711).Owner(1005, 1006), k.Dir("d/sub").Mode(0o750).Owner(1003, 1004))
	for _, tr := range triggers {
		lower = append(lower, k.File("d/sub/"+tr.name, "content of "+tr.name).Mode(0o640).Owner(1001, 1002).Xattr("user.k", "v"))
	}
	lower = append(lower, k.File("d/sub/readonly", "ro").Mode(0o640))
	kcModes(t, func(t *testing.T, opts k.Options) {
		p := kcPair(t, opts, k.Layers{Lowers: []k.Layer{lower}})
		for _, tr := range triggers {
			op := tr.op
			op.Path = "d/sub/" + tr.name
			p.OpsExpect(nil, []syscall.Errno{0}, op)
			checks := []func(n *k.Node) error{}
			if tr.keepMode {
				checks = append(checks, func(n *k.Node) error { return permIs(n, 0o640) })
			}
			if tr.keepOwner {
				checks = append(checks, func(n *k.Node) error {
					if n.UID != 1001 || n.GID != 1002 {
						return fmt.Errorf("owner %d:%d, want the lower's 1001:1002", n.UID, n.GID)
					}
					return nil
				})
			}
			if tr.keepXattr {
				checks = append(checks, func(n *k.Node) error { return xattrsAre(n, map[string]string{"user.k": "v"}) })
			}
			if tr.keepMtime {
				checks = append(checks, kcMtime(k.DefaultTime.UnixNano()))
			}
			if tr.check != nil {
				checks = append(checks, tr.check)
			}
			kcCheckUpper(p, op.Path, "file", checks...)
		}
		// Reading does not copy up; the parent chain kept its attributes.
		p.OpsExpect(nil, []syscall.Errno{0}, kcOp("read", "d/sub/readonly"))
		kcCheckUpper(p, "d/sub/readonly", "")
		kcCheckUpper(p, "d", "dir", kcAttrs(0o711, 1005, 1006))
		kcCheckUpper(p, "d/sub", "dir", kcAttrs(0o750, 1003, 1004))
		p.Finish()
	})
}

func sizeIs(n *k.Node, size int64) error {
	if n.Size != size {
		return fmt.Errorf("size %d, want %d", n.Size, size)
	}
	return nil
}

func permIs(n *k.Node, perm uint32) error {
	if n.Perm != perm {
		return fmt.Errorf("mode %04o, want %04o", n.Perm, perm)
	}
	return nil
}

func xattrsAre(n *k.Node, want map[string]string) error {
	got := map[string]string{}
	for k, v := range n.Xattrs {
		if len(k) > 5 && k[:5] == "user." {
			got[k] = v
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("user xattrs %v, want %v", got, want)
	}
	return nil
}

// TestKernelConcurrentCopyUp opens one lower file for writing from 8
// processes at once: exactly one copy-up, and every write lands.
func TestKernelConcurrentCopyUp(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), k.Layers{Lowers: []k.Layer{{k.File("shared", "........")}}})
	for _, s := range p.Sides() {
		var children []*k.Child
		for i := 0; i < 8; i++ {
			c, err := k.StartOps(s.Layout.Mnt, nil, []k.Op{
				{Op: "waitstdin"},
				{Op: "write", Path: "shared", Data: fmt.Sprint(i), Off: int64(i)},
			})
			if err != nil {
				t.Fatal(err)
			}
			children = append(children, c)
		}
		time.Sleep(100 * time.Millisecond) // let them all reach the barrier
		for _, c := range children {
			c.Release()
		}
		for i, c := range children {
			res, err := c.Wait()
			if err != nil {
				t.Fatal(err)
			}
			if res[1].Errno != 0 || res[1].Err != "" {
				t.Errorf("%s: writer %d: %v", s.Name, i, res[1])
			}
		}
	}
	p.Check("content after concurrent writes", func(s *k.Side) error {
		b, err := os.ReadFile(s.Path("shared"))
		if err != nil || string(b) != "01234567" {
			return fmt.Errorf("content %q (%v), want 01234567", b, err)
		}
		return nil
	})
	if st, ok := p.OvlStats(); ok {
		if cu, _ := st["copy_ups"].(float64); cu != 1 {
			t.Errorf("ovl stats: copy_ups = %v, want exactly 1 (%v)", st["copy_ups"], st)
		}
	}
	p.Finish()
}

// TestKernelMmapWritesThrough maps a lower file MAP_SHARED writable: the
// data lands in the upper copy.
func TestKernelMmapWritesThrough(t *testing.T) {
	p := kcPair(t, k.DefaultOptions(), k.Layers{Lowers: []k.Layer{{k.File("m", "hello, lower world")}}})
	p.DoExpect("mmap write", 0, func(root string) error {
		f, err := os.OpenFile(root+"/m", os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		b, err := unix.Mmap(int(f.Fd()), 0, 18, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		copy(b[7:], "UPPER")
		if err := unix.Msync(b, unix.MS_SYNC); err != nil {
			return err
		}
		if err := unix.Munmap(b); err != nil {
			return err
		}
		return f.Close()
	})
	p.Check("mmap data in the upper", func(s *k.Side) error {
		b, err := os.ReadFile(s.UpperPath("m"))
		if err != nil || string(b) != "hello, UPPER world" {
			return fmt.Errorf("upper has %q (%v)", b, err)
		}
		b, err = os.ReadFile(s.LowerPath(0, "m"))
		if err != nil || string(b) != "hello, lower world" {
			return fmt.Errorf("lower changed: %q (%v)", b, err)
		}
		return nil
	})
	p.Finish()
}
