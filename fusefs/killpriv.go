package fusefs

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ovl-project/ovl/overlay"
)

// Which changes clear setuid and setgid (kernel: chown_common,
// setattr_should_drop_sgid, should_remove_suid, dentry_needs_remove_privs).
// The VFS decides before FUSE sees the change, but fuse_setattr (without
// FUSE_HANDLE_KILLPRIV) throws that decision away and keeps only "setuid
// goes, setgid goes when group-executable", so the daemon applies the rest:
//   - A chown, truncate or write of a non-directory by a caller who is not
//     in the file's group and lacks CAP_FSETID drops a setgid that is not
//     group-executable; the setuid goes with it (the caller lacks
//     CAP_FSETID, so the kernel would drop that too).
//   - For a chown that mode change needs the caller to own the file or
//     have CAP_FOWNER, else the chown is EPERM (setattr_prepare checks the
//     ATTR_MODE the kill added); a truncate forces it (ATTR_FORCE).

//
// With FUSE_HANDLE_KILLPRIV_V2 (negotiated when the kernel offers it)
// fuse_setattr drops the kill flags and their mode and decides nothing:
// every kill is the daemon's (killV2). The kernel still removes
// security.capability itself (notify_change's ATTR_KILL_PRIV asks with a
// GETXATTR and removes it with a REMOVEXATTR), and still sends what is left
// of a kill as a SETATTR that changes nothing, from file_remove_privs of a
// write (passthrough writes too) or a chown(f, -1, -1). It marks
// the superblock SB_NOSEC: file_remove_privs then sets S_NOSEC on an inode
// found without setuid, setgid or capability, and skips the check (its
// GETXATTR) at later writes until an attribute reply, a chmod to a
// set-id mode or a setxattr of a security.* name through the mount
// clears S_NOSEC again; layers are not changed behind the mount, so those
// are the only ways a privilege can appear. Writes served by the daemon
// carry FUSE_WRITE_KILL_SUIDGID when the writer lacks CAP_FSETID
// (killRaw); truncates FATTR_KILL_SUIDGID.

// caller is what the kill rules need of a request's caller.
type caller struct {
	uid, gid uint32
	groups   []uint32
	caps     uint64 // effective capabilities
}

// callerOf reads the caller of ctx: fsuid/fsgid from the request, the
// supplementary groups and capabilities from /proc (FUSE does not send
// them). A caller that is gone counts as unprivileged unless it is root.
func callerOf(ctx context.Context) caller {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return caller{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), caps: ^uint64(0)}
	}
	cl := caller{uid: c.Uid, gid: c.Gid}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.Pid))
	if err != nil || c.Pid == 0 {
		if c.Uid == 0 {
			cl.caps = ^uint64(0)
		}
		return cl
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, g := range strings.Fields(v) {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					cl.groups = append(cl.groups, uint32(n))
				}
			}
		} else if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			cl.caps, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return cl
}

func (c caller) capable(capability int) bool { return c.caps&(1<<uint(capability)) != 0 }

// inGroupOrFsetid is the kernel's in_group_or_capable for CAP_FSETID.
func (c caller) inGroupOrFsetid(gid uint32) bool {
	if c.gid == gid || c.capable(unix.CAP_FSETID) {
		return true
	}
	for _, g := range c.groups {
		if g == gid {
			return true
		}
	}
	return false
}

// needsSgidKill says whether a change by the caller of ctx to an object
// with st clears the setgid bit that FUSE leaves in place (see above).
// It reads /proc only for such a setgid.
func needsSgidKill(ctx context.Context, st *unix.Stat_t) (caller, bool) {
	if st.Mode&unix.S_IFMT == unix.S_IFDIR || st.Mode&(unix.S_ISGID|unix.S_IXGRP) != unix.S_ISGID {
		return caller{}, false
	}
	c := callerOf(ctx)
	return c, !c.inGroupOrFsetid(st.Gid)
}

// inChown says whether the caller of ctx is in a chown system call, read
// from /proc/<tid>/syscall while it waits for this request. A SETATTR
// that changes nothing comes from chown(f, -1, -1) or from a write's
// file_remove_privs, and only the chown may fail.
func inChown(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", c.Pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return false
	}
	nr, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return false
	}
	return chownSyscalls[nr]
}

// truncKill clears setuid and setgid after an open with O_TRUNC as the
// kernel's truncate does (handle_truncate, should_remove_suid): with
// atomic_o_trunc fuse_setattr sends nothing for it, so the kill is the
// daemon's. Setuid goes, and setgid when group-executable or the caller
// is outside the file's group, unless the caller has CAP_FSETID. As with
// file_remove_privs a failure does not fail the open.
func (p *node) truncKill(ctx context.Context, flags uint32) {
	if flags&unix.O_TRUNC == 0 {
		return
	}
	var st unix.Stat_t
	if p.n.Getattr(&st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&(unix.S_ISUID|unix.S_ISGID) == 0 {
		return
	}
	c := callerOf(ctx)
	if c.capable(unix.CAP_FSETID) {
		return
	}
	m := st.Mode & 0o7777 &^ unix.S_ISUID
	if st.Mode&unix.S_IXGRP != 0 || !c.inGroupOrFsetid(st.Gid) {
		m &^= unix.S_ISGID
	}
	if m != st.Mode&0o7777 {
		p.n.Setattr(overlay.SetAttr{Mode: &m}, -1)
	}
}

// killV2 is the mode st keeps after a change by the caller of ctx under
// FUSE_HANDLE_KILLPRIV_V2, and whether it differs from st's (c is the
// caller, read only when st has a set-id bit). chown: a chown of a
// non-directory, which drops setuid whoever makes it, and setgid as
// setattr_should_drop_sgid (fs/attr.c, chown_common). write: a write or
// truncate, which drops both as setattr_should_drop_suidgid: setuid, and
// setgid when group-executable or the caller is outside the file's group,
// of a regular file, unless the caller has CAP_FSETID.
func killV2(ctx context.Context, st *unix.Stat_t, chown, write bool) (mode uint32, c caller, kill bool) {
	mode = st.Mode & 0o7777
	typ := st.Mode & unix.S_IFMT
	if mode&(unix.S_ISUID|unix.S_ISGID) == 0 || typ == unix.S_IFDIR || !chown && !write {
		return mode, caller{}, false
	}
	c = callerOf(ctx)
	dropSgid := mode&unix.S_ISGID != 0 && (mode&unix.S_IXGRP != 0 || !c.inGroupOrFsetid(st.Gid))
	m := mode
	switch {
	case chown:
		m &^= unix.S_ISUID
		if dropSgid {
			m &^= unix.S_ISGID
		}
	case typ == unix.S_IFREG && !c.capable(unix.CAP_FSETID):
		m &^= unix.S_ISUID
		if dropSgid {
			m &^= unix.S_ISGID
		}
	}
	return m, c, m != mode
}

// killRaw serves FUSE_WRITE_KILL_SUIDGID: a write served by the daemon by
// a caller without CAP_FSETID drops setuid, and setgid when
// group-executable (file.killSgid drops it for a caller outside the
// file's group).
type killRaw struct {
	fuse.RawFileSystem
	g *generations
}

func (r *killRaw) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	n, st := r.RawFileSystem.Write(cancel, in, data)
	if st == fuse.OK && n > 0 && in.WriteFlags&fuse.WRITE_KILL_SUIDGID != 0 {
		r.g.killSuidgid(in.NodeId)
	}
	return n, st
}

func (r *killRaw) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	n, st := r.RawFileSystem.Writev(cancel, in, data)
	if st == fuse.OK && n > 0 && in.WriteFlags&fuse.WRITE_KILL_SUIDGID != 0 {
		r.g.killSuidgid(in.NodeId)
	}
	return n, st
}

// killSuidgid drops setuid, and setgid when group-executable, of the
// regular file of node id nodeID. As with file_remove_privs, a failure
// does not undo the write.
func (g *generations) killSuidgid(nodeID uint64) {
	g.mu.Lock()
	nd := g.byID[nodeID]
	g.mu.Unlock()
	if nd == nil {
		return
	}
	var st unix.Stat_t
	if nd.n.Getattr(&st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	m := st.Mode & 0o7777 &^ unix.S_ISUID
	if m&unix.S_IXGRP != 0 {
		m &^= unix.S_ISGID
	}
	if m != st.Mode&0o7777 && nd.n.Setattr(overlay.SetAttr{Mode: &m}, -1) == nil {
		// The WRITE reply carries no attributes: drop the mode the
		// kernel keeps (a negative offset: attributes only).
		nd.NotifyContent(-1, 0)
	}
}
