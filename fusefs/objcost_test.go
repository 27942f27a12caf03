package fusefs

import (
	"context"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ovl-project/ovl/overlay"
)

// The per-object memory of the inode tables (issue 21 goal 3), measured
// without a mount: what go-fuse's fs package costs for an object the kernel
// looked up, beside what a table of ovl's own would cost if ovl served the
// raw API (fuse.RawFileSystem) with its node table as the only inode table.
// Run with: go test ./fusefs -run '^$' -bench ObjectCost -benchtime 1x
// It reports live heap bytes per object (B/obj).

const (
	costDirs  = 1000
	costFiles = 100 // per directory
)

// liveHeap collects garbage and returns the live heap.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

type costDir struct{ fs.Inode }

var costIno uint64

func (d *costDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	costIno++
	mode := uint32(syscall.S_IFREG)
	var ops fs.InodeEmbedder = &costFile{}
	if name[0] == 'd' {
		mode, ops = syscall.S_IFDIR, &costDir{}
	}
	out.Attr.Mode = mode
	return d.NewInode(ctx, ops, fs.StableAttr{Mode: mode, Ino: costIno}), 0
}

type costFile struct{ fs.Inode }

// BenchmarkObjectCostGoFuseFS is what go-fuse's fs package holds per
// looked-up object with an embedder that holds nothing else: the Inode,
// its identity-table entries (nodeEntry, stableAttrs and nodes maps) and
// its place in its parent's children.
func BenchmarkObjectCostGoFuseFS(b *testing.B) {
	for range b.N {
		costIno = 1
		before := liveHeap()
		raw := fs.NewNodeFS(&costDir{}, &fs.Options{RootStableAttr: &fs.StableAttr{Ino: 1}})
		cancel := make(chan struct{})
		lookup := func(parent uint64, name string) uint64 {
			var out fuse.EntryOut
			if st := raw.Lookup(cancel, &fuse.InHeader{NodeId: parent}, name, &out); st != fuse.OK {
				b.Fatalf("lookup %s: %v", name, st)
			}
			return out.NodeId
		}
		for d := range costDirs {
			dir := lookup(fuse.FUSE_ROOT_ID, fmt.Sprintf("d%04d", d))
			for f := range costFiles {
				lookup(dir, fmt.Sprintf("f%d", f))
			}
		}
		after := liveHeap()
		runtime.KeepAlive(raw)
		b.ReportMetric(float64(after-before)/float64(costDirs*(costFiles+1)), "B/obj")
	}
}

// rawEntry is what a raw-API server would keep per FUSE node id beside
// the overlay node: the kernel's lookup count, the requests in progress
// that handed it out, and the passthrough state (made at the first open).
// Node ids index a slice of these, reused through a free list with a
// generation, so the table is one slice, not a map.
type rawEntry struct {
	n       *overlay.Node
	pt      *ptNode
	lookups uint32
	handed  int32
}

// BenchmarkObjectCostRawTable is that design's table for the same
// objects: the rawEntry slice, and a map from the object's key to its
// node id (LOOKUP must find the node id the kernel already has for an
// object). The overlay nodes are not counted: see
// BenchmarkObjectCostOverlayNode.
func BenchmarkObjectCostRawTable(b *testing.B) {
	for range b.N {
		before := liveHeap()
		var table []rawEntry
		ids := map[uint64]uint32{}
		for i := range costDirs * (costFiles + 1) {
			table = append(table, rawEntry{lookups: 1})
			ids[uint64(i)+2] = uint32(len(table) - 1)
		}
		after := liveHeap()
		runtime.KeepAlive(table)
		runtime.KeepAlive(ids)
		b.ReportMetric(float64(after-before)/float64(costDirs*(costFiles+1)), "B/obj")
	}
}

// BenchmarkObjectCostOverlayNode is ovl's own node for a looked-up
// non-directory from one lower layer: the Node, its one-entry lowers
// slice (the size of a lowerRef) and its name.
func BenchmarkObjectCostOverlayNode(b *testing.B) {
	type lowerRefSize struct {
		a    unsafe.Pointer
		fd   int
		x    bool
		aufs unsafe.Pointer
	}
	for range b.N {
		before := liveHeap()
		nodes := make([]*overlay.Node, 0, costDirs*(costFiles+1))
		lowers := make([][]lowerRefSize, 0, cap(nodes))
		names := make([]string, 0, cap(nodes))
		base := liveHeap()
		for i := range cap(nodes) {
			nodes = append(nodes, new(overlay.Node))
			lowers = append(lowers, make([]lowerRefSize, 1))
			names = append(names, fmt.Sprintf("f%d", i%costFiles))
		}
		after := liveHeap()
		runtime.KeepAlive(nodes)
		runtime.KeepAlive(lowers)
		runtime.KeepAlive(names)
		_ = before
		b.ReportMetric(float64(after-base)/float64(cap(nodes)), "B/obj")
	}
}
