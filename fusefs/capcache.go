package fusefs

import (
	"errors"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// capName is the xattr the kernel asks for at the first write to a file
// after each attribute refresh (file_remove_privs, unless S_NOSEC) and at
// each chown; the answer is nearly always "absent".
const capName = "security.capability"

// capGen lets GETXATTRs of security.capability of an object known to have
// none cost no open, fstat and getxattr of its layer file. The layers
// change only through the mount, and a capability only by a SETXATTR or
// REMOVEXATTR of it (the kernel's removal of one on write or chown is a
// REMOVEXATTR); copy-up copies xattrs unchanged, and the host kernel's
// chown of the upper file can only remove one. Each such request through
// any name of any object bumps the mount's generation twice (before and
// after), which voids what every object knew: several objects may share
// a layer file (the names of a lower hard link with index=on), and a read
// that raced with the change is not kept. An object knows it has none
// when its object.capAbsent is the generation + 1.
type capGen struct{ gen atomic.Uint64 }

// known reports whether an object whose capAbsent is absent has none.
func (c *capGen) known(absent *atomic.Uint64) bool {
	a := absent.Load()
	return a != 0 && a == c.gen.Load()+1
}

// found records, in absent, the outcome err of a read begun at generation
// gen (begin): absent if it found none and nothing changed meanwhile.
func (c *capGen) found(absent *atomic.Uint64, gen uint64, err error) {
	if errors.Is(err, unix.ENODATA) && c.gen.Load() == gen {
		absent.Store(gen + 1)
	}
}

// begin is the generation a read begins at.
func (c *capGen) begin() uint64 { return c.gen.Load() }

// none records that a new object has no capability.
func (c *capGen) none(absent *atomic.Uint64) { absent.Store(c.gen.Load() + 1) }

// change brackets a change of a capability: call it before and after.
func (c *capGen) change(attr string) {
	if attr == capName {
		c.gen.Add(1)
	}
}
