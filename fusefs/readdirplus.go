package fusefs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// plusRaw serves READDIRPLUS as a plain READDIR of the same size followed by
// a LOOKUP of each entry that fits the plus reply.
//
// go-fuse's own READDIRPLUS (v2.12.1, fs/bridge.go readDirMaybeLookup)
// loses entries when the kernel re-reads part of a batch in the other
// format: with READDIRPLUS_AUTO the kernel switches between the two on one
// open directory, and a plus redo of a plain batch no longer fits, so the
// bridge overwrites its one saved overflow entry. Here the bridge only ever
// sees plain READDIRs of the kernel's size. Entries of the plain batch that
// do not fit the plus reply are re-read at the offset the kernel sends next,
// which the bridge replays from its last batch (a suffix of a batch that
// fit, so it fits again) or finds by Seekdir (dir offsets are name hashes,
// in listing order: see dir).
//
// The LOOKUPs are the bridge's own, so a child gets the lookup count the
// kernel takes for each plus entry with a node id; an entry whose lookup
// fails goes out with node id 0, which the kernel lists without linking.
type plusRaw struct {
	fuse.RawFileSystem
}

var plainBufs = sync.Pool{New: func() any { return new([]byte) }}

func (r *plusRaw) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	bp := plainBufs.Get().(*[]byte)
	defer plainBufs.Put(bp)
	if cap(*bp) < int(in.Size) {
		*bp = make([]byte, in.Size)
	}
	plain := fuse.NewDirEntryList((*bp)[:in.Size], in.Offset)
	if st := r.RawFileSystem.ReadDir(cancel, in, plain); st != fuse.OK {
		return st
	}
	ents, err := fuse.ParseDirEntries(plain.Bytes())
	if err != nil {
		return fuse.EIO
	}
	hdr := in.InHeader
	for _, e := range ents {
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			break // the rest is read again at the next offset
		}
		if e.Name == "." || e.Name == ".." {
			continue // listed, never linked by the kernel
		}
		if st := r.RawFileSystem.Lookup(cancel, &hdr, e.Name, eo); st != fuse.OK || eo.NodeId == 0 {
			*eo = fuse.EntryOut{}
			continue
		}
		if eo.Mode&syscall.S_IFMT != e.Mode&syscall.S_IFMT {
			out.FixMode(eo.Mode) // the name changed type since the listing
		}
	}
	return fuse.OK
}
