package fusefs

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ovl-project/ovl/overlay"
)

// generations is the inode table: which go-fuse inode stands for which
// overlay object, and when an inode gives back its overlay node.
//
// Inodes are keyed by the overlay node's Key, not its inode number:
// several objects may show one st_ino (the names of a lower hard link,
// overlay/ino.go), and each is its own FUSE inode. The key goes into
// go-fuse's StableAttr.Ino, which go-fuse copies into every attribute and
// entry reply; identRaw puts the object's inode number back.
//
// It tells objects apart that reuse a key: go-fuse keeps an inode until
// the kernel forgets it, and an upper filesystem may give a removed
// object's number to a new one before that. Each removal of an object's
// last known name starts a new generation of its key (FUSE's nodeid
// generation), so a lookup never finds the old object.
//
// Lifetime. Each inode holds one reference on its overlay node from the
// request that makes it until the kernel has forgotten it and no request
// in progress has handed it out. go-fuse (v2.12.1, fs/bridge.go
// addNewChild, fs/identitytable.go) cannot tell that moment: it registers
// the inode a request returns only after the node's method returned; it
// registers anew an inode whose FORGET it processed meanwhile, after its
// OnForget may have run; and its OnForget also depends on its tree, whose
// parent records go stale when a lookup binds a name to another inode
// (inodeChildren.set keeps the old child's record). So ovl keeps the
// kernel's lookup count itself, as go-fuse does, from the replies and the
// FORGETs that pass through identRaw: +1 for each entry reply with a node
// id (LOOKUP, READDIRPLUS entries, CREATE, MKDIR, MKNOD, SYMLINK, LINK),
// -n for FORGET n. An inode gives back its overlay node when that count is
// 0 and no request that handed it out is in progress, whichever comes
// last; the root never does (the overlay holds its reference).
type generations struct {
	mu sync.Mutex
	m  map[uint64]uint64 // key -> current generation
	// live holds every node that holds its overlay node, by its
	// StableAttr: go-fuse picks an existing inode for a lookup only after
	// the request, so ovl finds it here first, to forget the duplicate
	// overlay node and to record the name the object was found under.
	live map[fs.StableAttr]*node
	// byID holds the nodes the kernel knows, by FUSE node id (go-fuse
	// never reuses one).
	byID map[uint64]*node
	// handed lists the nodes each request in progress handed to go-fuse,
	// by the request's cancel channel (unique among requests in progress).
	handed map[<-chan struct{}][]*node
	// succ holds, by key, a FUSE inode retired for a data change
	// (passthrough.go, retire), for the generation the next lookup of its
	// key gives: that lookup makes a new FUSE inode for the same
	// overlay node, which each of them holds a reference on.
	succ map[uint64]successor
	// pt is the mount's passthrough state, nil when every open is served
	// by the daemon.
	pt atomic.Pointer[ptMount]
	// killprivV2: the kernel took FUSE_HANDLE_KILLPRIV_V2 (killpriv.go);
	// set before the first request after INIT.
	killprivV2 atomic.Bool
	// caps: which objects are known to have no security.capability.
	caps capGen
	// peak is the most entries live or byID held since they were last
	// rebuilt (shrinkLocked).
	peak int
}

func newGenerations() *generations {
	return &generations{
		m:      map[uint64]uint64{},
		live:   map[fs.StableAttr]*node{},
		byID:   map[uint64]*node{},
		handed: map[<-chan struct{}][]*node{},
		succ:   map[uint64]successor{},
	}
}

// addRoot records the root inode, node id 1, which the kernel never forgets.
func (g *generations) addRoot(root *node) {
	root.id, root.lookups = fuse.FUSE_ROOT_ID, 1
	g.byID[fuse.FUSE_ROOT_ID] = root
}

// bump starts a new generation of the key.
func (g *generations) bump(key uint64) {
	g.mu.Lock()
	g.m[key]++
	g.mu.Unlock()
}

// inode returns the go-fuse inode for child, a node with a reference the
// caller hands over, found as name in p: the inode ovl already has for the
// object if there is one (child is then forgotten), else a new one that
// holds child. One inode per object.
func (p *node) inode(ctx context.Context, name string, child *overlay.Node) *fs.Inode {
	key := child.Key()
	g := p.gens
	g.mu.Lock()
	attr := fs.StableAttr{Mode: child.Kind(), Ino: key, Gen: g.m[key]}
	if ex := g.live[attr]; ex != nil {
		// ex keeps its overlay node while this request is in progress,
		// whatever FORGET comes meanwhile.
		g.handOut(ctx, ex)
		g.mu.Unlock()
		child.Forget()
		ex.n.SetLocation(p.n, name)
		if !ex.n.IsDir() {
			ex.noteName(p, name)
		}
		return ex.EmbeddedInode()
	}
	n, obj := child, &object{n: child}
	if s, ok := g.succ[key]; ok && s.gen == attr.Gen && !s.old.dead && s.old.n.Kind() == child.Kind() {
		// The first lookup after a retirement: a new FUSE inode for the
		// retired one's object. s.old holds a reference, so Ref is safe.
		delete(g.succ, key)
		n, obj = s.old.n, s.old.obj
		n.Ref()
	}
	nd := &node{ov: p.ov, n: n, obj: obj, gens: g, attr: attr, locks: p.locks}
	// Under g.mu: no other request may find nd before it is an inode.
	ch := p.NewInode(ctx, nd, attr)
	g.live[attr] = nd
	g.peak = max(g.peak, len(g.live))
	g.handOut(ctx, nd)
	g.mu.Unlock()
	if n != child {
		child.Forget()
		n.SetLocation(p.n, name)
	}
	return ch
}

// hold takes a reference on nd's overlay node, unless nd gave it back
// already; the caller drops it with Forget.
func (g *generations) hold(nd *node) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if nd.dead {
		return false
	}
	nd.n.Ref()
	return true
}

// handOut records, with g.mu held, that the request of ctx gives nd to
// go-fuse, which may register it after the request: nd keeps its overlay
// node at least until then.
func (g *generations) handOut(ctx context.Context, nd *node) {
	key := cancelOf(ctx)
	if key == nil {
		return // not from a request: nothing registers nd later
	}
	nd.handed++
	g.handed[key] = append(g.handed[key], nd)
}

// settle runs after a request that makes an entry: status and out are
// its reply. The inode the kernel now holds one more lookup of counts it,
// and its reply gets the object's inode number in place of the key go-fuse
// put there; any other inode this request handed out (go-fuse took
// another, or the request failed) gives back its overlay node unless
// something else holds it.
func (g *generations) settle(key <-chan struct{}, status fuse.Status, out *fuse.EntryOut) {
	g.mu.Lock()
	nds := g.handed[key]
	delete(g.handed, key)
	if nodeID := out.NodeId; status == fuse.OK && nodeID != 0 {
		nd := g.byID[nodeID]
		if nd == nil && len(nds) == 1 {
			nd = nds[0]
			nd.id = nodeID
			g.byID[nodeID] = nd
		}
		if nd != nil {
			nd.lookups++
			out.Attr.Ino = nd.n.Ino()
		}
	}
	var drop []*node
	for _, nd := range nds {
		nd.handed--
		if g.unusedLocked(nd) {
			drop = append(drop, nd)
		}
	}
	g.mu.Unlock()
	for _, nd := range drop {
		g.drop(nd)
	}
}

// ino returns the inode number of the object of node id nodeID, whose key
// go-fuse put into an attribute reply. Only a name key differs from it.
func (g *generations) ino(nodeID, key uint64) uint64 {
	if !overlay.IsNameKey(key) {
		return key
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if nd := g.byID[nodeID]; nd != nil {
		return nd.n.Ino()
	}
	return key
}

// renumbered drops every listing of the directory dir: an entry's node
// that kept its number was released, and a new lookup may give another
// (overlay.OnRenumber). Both ovl's kept listing and the kernel's readdir
// cache (FOPEN_CACHE_DIR) would give the old number as d_ino.
func (g *generations) renumbered(dir *overlay.Node) {
	g.mu.Lock()
	nd := g.live[fs.StableAttr{Mode: dir.Kind(), Ino: dir.Key(), Gen: g.m[dir.Key()]}]
	if root := g.byID[fuse.FUSE_ROOT_ID]; nd == nil && root != nil && root.n == dir {
		nd = root
	}
	g.mu.Unlock()
	if nd == nil {
		return // the kernel knows the directory no more: it has no listing
	}
	nd.changed()
	nd.NotifyContent(0, 0) // offset 0, length 0: all of its pages
}

// forget applies the kernel's FORGET of nlookup lookups of nodeID.
func (g *generations) forget(nodeID, nlookup uint64) {
	g.mu.Lock()
	nd := g.byID[nodeID]
	drop := false
	if nd != nil {
		nd.lookups -= min(nlookup, nd.lookups)
		if nd.lookups == 0 {
			delete(g.byID, nodeID)
		}
		drop = g.unusedLocked(nd)
		g.shrinkLocked()
	}
	g.mu.Unlock()
	if drop {
		g.drop(nd)
	}
}

// shrinkMin is the peak below which the tables are never rebuilt: small
// maps cost little.
const shrinkMin = 1024

// shrinkLocked rebuilds live and byID once both hold a quarter of their
// peak or less: Go never shrinks a map, so the tables of a big walk would
// otherwise keep their peak size after the kernel forgot it (issue 21:
// the live heap goes back to a fresh mount's). Each rebuild copies at
// most a third of the entries deleted since the last one. g.mu is held.
func (g *generations) shrinkLocked() {
	n := max(len(g.live), len(g.byID))
	if g.peak < shrinkMin || n > g.peak/4 {
		return
	}
	live := make(map[fs.StableAttr]*node, len(g.live))
	for k, v := range g.live {
		live[k] = v
	}
	byID := make(map[uint64]*node, len(g.byID))
	for k, v := range g.byID {
		byID[k] = v
	}
	g.live, g.byID, g.peak = live, byID, n
}

// drop gives back the overlay node of nd, an inode unusedLocked took out
// of the table, and its passthrough state.
func (g *generations) drop(nd *node) {
	if pt := g.pt.Load(); pt != nil {
		pt.forget(nd)
	}
	nd.n.Forget()
}

// unusedLocked reports whether nd must give back its overlay node now, and
// if so takes it out of the table; g.mu is held.
func (g *generations) unusedLocked(nd *node) bool {
	if nd.dead || nd.handed > 0 || nd.lookups > 0 || nd.id == fuse.FUSE_ROOT_ID {
		return false
	}
	nd.dead = true
	if g.live[nd.attr] == nd {
		delete(g.live, nd.attr)
	}
	if s, ok := g.succ[nd.attr.Ino]; ok && s.old == nd {
		delete(g.succ, nd.attr.Ino)
	}
	return true
}

// identRaw passes the kernel's lookup counts to the inode table: it
// settles each request that makes an entry, and each FORGET, after
// go-fuse's bridge has served it (see generations). It also gives every
// entry and attribute reply the object's inode number: go-fuse (v2.12.1,
// fs/bridge.go addNewNode and getattr, fs/inode.go setEntryOut) overwrites
// the one the node put there with StableAttr.Ino, the key. READDIRPLUS
// entries are LOOKUPs through here (plusRaw); STATX is not served (the
// kernel then asks with GETATTR).
type identRaw struct {
	fuse.RawFileSystem
	g *generations
}

func (r *identRaw) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Lookup(cancel, h, name, out)
	r.g.settle(cancel, st, out)
	return st
}

func (r *identRaw) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	st := r.RawFileSystem.Create(cancel, in, name, out)
	r.g.settle(cancel, st, &out.EntryOut)
	return st
}

func (r *identRaw) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Mkdir(cancel, in, name, out)
	r.g.settle(cancel, st, out)
	return st
}

func (r *identRaw) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Mknod(cancel, in, name, out)
	r.g.settle(cancel, st, out)
	return st
}

func (r *identRaw) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Symlink(cancel, h, target, name, out)
	r.g.settle(cancel, st, out)
	return st
}

func (r *identRaw) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Link(cancel, in, name, out)
	r.g.settle(cancel, st, out)
	return st
}

func (r *identRaw) Forget(nodeID, nlookup uint64) {
	r.RawFileSystem.Forget(nodeID, nlookup)
	r.g.forget(nodeID, nlookup)
}

func (r *identRaw) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	st := r.RawFileSystem.GetAttr(cancel, in, out)
	if st == fuse.OK {
		out.Ino = r.g.ino(in.NodeId, out.Ino)
	}
	return st
}

func (r *identRaw) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	st := r.RawFileSystem.SetAttr(cancel, in, out)
	if st == fuse.OK {
		out.Ino = r.g.ino(in.NodeId, out.Ino)
	}
	return st
}
