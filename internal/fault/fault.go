// Package fault holds named crash and fault points, for the tests that
// prove ovl's changes of the upper layer crash-safe (cmd/ovl/crash_test.go).
// A point is a place between two steps of a multi-step change; a test
// makes the daemon die there, or fail there with an errno, through
// environment variables read once when the process starts:
//
//	OVL_CRASH=point[:n]       the n-th time (default 1) the process
//	                          reaches point, it kills itself with SIGKILL
//	                          (the daemon dies; the page cache survives)
//	OVL_FAULT=point:errno[:n] point returns errno (EIO, ENOSPC, EINVAL,
//	                          ...) every time from its n-th hit on
//	OVL_CRASH_TRACE=file      every point reached appends its name and a
//	                          newline to file (how a test learns which
//	                          points an operation reaches)
//
// With none set, Hit costs one load of a bool. Only tests set them.
//
// The points, in the order of the steps they sit between (package overlay):
//
//	copyup.create     copy-up: the temporary exists in work/, empty
//	copyup.data       copy-up: its data is copied (a fault here is an I/O
//	                  error of the data copy)
//	copyup.metacopy   copy-up: marked metacopy (metacopy=on), before
//	                  its metadata (the truncate to size sets mtime)
//	copyup.xattrs     copy-up: xattrs and origin are set
//	copyup.attrs      copy-up: owner, mode and times are set
//	copyup.rename     copy-up: about to rename into place (a fault here is
//	                  a failed rename)
//	copyup.renamed    copy-up: renamed into place, parent not yet impure
//	index.nlink       index=on copy-up: overlay.nlink set on the temporary
//	index.published   index=on copy-up: the copy is in index/, no name
//	                  links it yet
//	linkup.linked     link-up: the index entry is linked at its name,
//	                  overlay.nlink not yet updated
//	metacopy.data     metacopy data completion: data in the upper file,
//	                  overlay.metacopy still set
//	whiteout.temp     remove: a whiteout exists in work/
//	whiteout.placed   remove: the whiteout replaced the upper object, which
//	                  is in work/ now
//	rmdir.aside       remove of an upper-only directory holding whiteouts:
//	                  moved to work/, not yet deleted
//	create.temp       create over a whiteout: the new object is in work/
//	create.exchanged  create over a whiteout: exchanged with the whiteout,
//	                  which is in work/ now
//	rename.redirect   rename: overlay.redirect set on the source
//	rename.opaque     rename: a pure upper directory marked opaque
//	rename.impure     rename: the new parent marked impure
//	rename.cleared    rename over a directory holding whiteouts: it has
//	                  been replaced by an empty one (its old self in work/)
//	rename.whiteout   rename with RENAME_WHITEOUT (a fault of EINVAL here
//	                  forces the fallback for uppers without it)
//	rename.fallback   rename fallback: the object moved, no whiteout yet
//	volatile.finish   clean end of a volatile mount: before the sync of
//	                  what it changed (a fault here is a failed sync)
//	volatile.recover  mount after an unclean volatile stop: before the
//	                  fsync of each journalled object (a fault here is a
//	                  failed fsync)
package fault

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// on is set once, before any goroutine runs, when a variable is set.
var on bool

var (
	crashPoint string
	crashAt    int64
	faultPoint string
	faultErr   syscall.Errno
	faultFrom  int64
	traceMu    sync.Mutex
	trace      *os.File
	hits       sync.Map // point name -> *atomic.Int64
)

func init() {
	crash, flt, tr := os.Getenv("OVL_CRASH"), os.Getenv("OVL_FAULT"), os.Getenv("OVL_CRASH_TRACE")
	if crash == "" && flt == "" && tr == "" {
		return
	}
	if crash != "" {
		p, n, err := parse(crash, 1)
		if err != nil {
			fatal("OVL_CRASH", crash, err)
		}
		crashPoint, crashAt = p, n
	}
	if flt != "" {
		parts := strings.Split(flt, ":")
		if len(parts) < 2 {
			fatal("OVL_FAULT", flt, fmt.Errorf("want point:errno[:n]"))
		}
		e := errnoValue(parts[1])
		if e == 0 {
			fatal("OVL_FAULT", flt, fmt.Errorf("unknown errno %s", parts[1]))
		}
		faultPoint, faultErr, faultFrom = parts[0], e, 1
		if len(parts) > 2 {
			n, err := strconv.ParseInt(parts[2], 10, 64)
			if err != nil || n < 1 {
				fatal("OVL_FAULT", flt, fmt.Errorf("bad count %q", parts[2]))
			}
			faultFrom = n
		}
	}
	if tr != "" {
		f, err := os.OpenFile(tr, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			fatal("OVL_CRASH_TRACE", tr, err)
		}
		trace = f
	}
	on = true
}

func parse(v string, def int64) (string, int64, error) {
	p, ns, ok := strings.Cut(v, ":")
	if !ok {
		return p, def, nil
	}
	n, err := strconv.ParseInt(ns, 10, 64)
	if err != nil || n < 1 {
		return "", 0, fmt.Errorf("bad count %q", ns)
	}
	return p, n, nil
}

// errnoValue is the errno named name ("EIO"), or 0.
func errnoValue(name string) syscall.Errno {
	for e := syscall.Errno(1); e < 4096; e++ {
		if unix.ErrnoName(e) == name {
			return e
		}
	}
	return 0
}

func fatal(name, v string, err error) {
	fmt.Fprintf(os.Stderr, "ovl: %s=%s: %v\n", name, v, err)
	os.Exit(2)
}

// Hit marks that the process reached point: nil, unless a test armed the
// point, which then kills the process or returns the errno to fail with.
func Hit(point string) error {
	if !on {
		return nil
	}
	return hit(point)
}

func hit(point string) error {
	c, _ := hits.LoadOrStore(point, new(atomic.Int64))
	n := c.(*atomic.Int64).Add(1)
	if trace != nil {
		traceMu.Lock()
		trace.WriteString(point + "\n")
		traceMu.Unlock()
	}
	if point == crashPoint && n == crashAt {
		// What a kill -9 or an OOM kill does: no deferred call, no
		// cleanup, no unmount.
		unix.Kill(unix.Getpid(), unix.SIGKILL)
		select {} // SIGKILL cannot be caught; wait for it
	}
	if point == faultPoint && n >= faultFrom {
		return faultErr
	}
	return nil
}
