// Package privilege says whether this process holds the one privilege that
// decides two things for an ovl mount: CAP_SYS_ADMIN in the initial user
// namespace, what the kernel's capable(CAP_SYS_ADMIN) checks. The kernel
// asks it to read or write trusted.* xattrs (fs/xattr.c: xattr_permission;
// without it a trusted.* xattr cannot be set and reads as absent) and to
// register a FUSE passthrough backing file (fs/fuse/backing.c:
// fuse_backing_open). An unprivileged user lacks it, and so does root
// inside a user namespace (rootless podman runs its mount program there),
// whatever its uid.
package privilege

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// initUserNSIno is the inode number of the initial user namespace in nsfs
// (PROC_USER_INIT_INO, include/linux/proc_ns.h), fixed since Linux 3.8.
const initUserNSIno = 0xEFFFFFFD

// SysAdmin reports whether the process has CAP_SYS_ADMIN in the initial user
// namespace. When it has not, why says what is missing, for a log line.
// The answer is computed once: a process's capabilities and user namespace
// do not change under ovl.
func SysAdmin() (ok bool, why string, err error) {
	r := sysAdmin()
	return r.ok, r.why, r.err
}

// InUserNamespace reports whether the process runs in a user namespace
// other than the initial one.
func InUserNamespace() (bool, error) {
	r := sysAdmin()
	return r.userns, r.nsErr
}

type answer struct {
	ok     bool
	why    string
	err    error
	userns bool  // in a user namespace other than the initial one
	nsErr  error // the user namespace could not be told
}

var sysAdmin = sync.OnceValue(func() answer {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &st); err != nil {
		err = fmt.Errorf("find the user namespace: %w", err)
		return answer{err: err, nsErr: err}
	}
	if st.Ino != initUserNSIno {
		return answer{userns: true, why: "no CAP_SYS_ADMIN in the initial user namespace (the process runs in a user namespace)"}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return answer{err: fmt.Errorf("read the capabilities: %w", err)}
	}
	if data[unix.CAP_SYS_ADMIN/32].Effective&(1<<(unix.CAP_SYS_ADMIN%32)) == 0 {
		return answer{why: "no CAP_SYS_ADMIN in the initial user namespace (an unprivileged process)"}
	}
	return answer{ok: true}
})
