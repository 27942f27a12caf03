package fusefs

import "golang.org/x/sys/unix"

var chownSyscalls = map[int64]bool{unix.SYS_CHOWN: true, unix.SYS_LCHOWN: true, unix.SYS_FCHOWN: true, unix.SYS_FCHOWNAT: true}
