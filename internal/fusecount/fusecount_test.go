package fusecount

import (
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Every request passes through the wrapper once and counts under its
// kernel opcode name; Write and Writev are one opcode.
func TestCounts(t *testing.T) {
	var c Counts
	raw := Wrap(fuse.NewDefaultRawFileSystem(), &c)
	raw.Lookup(nil, &fuse.InHeader{}, "a", &fuse.EntryOut{})
	raw.Lookup(nil, &fuse.InHeader{}, "b", &fuse.EntryOut{})
	raw.GetAttr(nil, &fuse.GetAttrIn{}, &fuse.AttrOut{})
	raw.Write(nil, &fuse.WriteIn{}, nil)
	raw.Writev(nil, &fuse.WriteIn{}, nil)
	raw.Forget(1, 1)
	got := c.Snapshot()
	want := map[string]uint64{"LOOKUP": 2, "GETATTR": 1, "WRITE": 2, "FORGET": 1}
	if len(got) != len(want) {
		t.Errorf("snapshot %v, want %v", got, want)
	}
	for op, n := range want {
		if got[op] != n {
			t.Errorf("%s: %d, want %d", op, got[op], n)
		}
	}
	if c.Total() != 6 {
		t.Errorf("total %d, want 6", c.Total())
	}
	for i, n := range names {
		if n == "" {
			t.Errorf("opcode %d has no name", i)
		}
	}
}
