// Package fsck checks an overlay's upper layer and work directory against
// its lower layers, offline, and repairs what it can repair safely. It
// reads the layers only through package format (directory descriptors,
// openat2 RESOLVE_BENEATH, never a path walked in a layer) and mounts
// nothing; it refuses an upper that a mount uses.
//
// Findings are of two kinds:
//   - Problems: the overlay shows something other than what its layers
//     mean, fails (EIO, EINVAL, EPERM) on an object, or will be refused at
//     mount. They decide the exit status.
//   - Notes: metadata that has no effect, which the kernel's overlayfs
//     or ovl leaves behind itself (an opaque directory that hides nothing,
//     an impure marker no entry needs, an index entry no name uses, which
//     the next mount removes). They never change the exit status; Yes
//     removes them, Preen only the index entries, as a mount would.
//
// Repairs (Mode):
//   - Check (-n) changes nothing.
//   - Preen (-p) repairs what leaves the merged view as it is, or gives
//     back access to what the upper holds: it removes whiteouts that hide
//     nothing, temporaries and orphan index entries in the work directory
//     (as the next mount would), origins of non-directories that the
//     kernel ignores (stale) or fails on (another type: EIO), dangling
//     redirects (replaced by an opaque marker where a lower directory has
//     the name); it sets missing impure markers and turns AUFS whiteouts
//     into the kernel's.
//   - Yes (-y) also makes the repairs that need a decision, each explained
//     as it is made: it removes a stale volatile marker (the upper may
//     have lost writes), an invalid redirect (the directory then shows its
//     upper part only), a directory origin that no longer matches, an
//     object that an AUFS whiteout beside it hides, and the notes.
//   - Nothing is repaired where the only repair could drop user data or
//     where fsck cannot tell which of two objects is right: duplicate
//     redirects, metacopy files whose data is gone, index entries that
//     still have names, link counts (overlay.nlink) that do not add up.
//     They are reported and left: exit status 4.
//
// No question is ever asked: Preen and Yes differ only in the set above.
// A repair is idempotent: after Yes, a second run reports no problem.
package fsck

import (
	"fmt"
	"io"
	"strings"

	"github.com/ovl-project/ovl/overlay"
)

// Mode is how much fsck may change.
type Mode int

// The modes of e2fsck's flags.
const (
	Check Mode = iota // -n: change nothing
	Preen             // -p: repairs that keep the merged view
	Yes               // -y: every safe repair, decisions explained
)

// Exit statuses, as e2fsck's.
const (
	ExitClean       = 0
	ExitRepaired    = 1
	ExitUncorrected = 4
	ExitError       = 8
)

// Options say what to check and how much to change.
type Options struct {
	// Config holds the layers and the options they are mounted with
	// (Lowers, Upper, Work, UserXattr, RedirectDir, Metacopy, Index).
	Config overlay.Config
	Mode   Mode
	// Out receives one line per finding ("" : none).
	Out io.Writer
}

// Kind names what a finding is about.
type Kind string

// The kinds of findings.
const (
	OrphanWhiteout   Kind = "orphan-whiteout"
	AUFSWhiteout     Kind = "aufs-whiteout"
	UselessOpaque    Kind = "useless-opaque"
	BadRedirect      Kind = "invalid-redirect"
	DanglingRedirect Kind = "dangling-redirect"
	DupRedirect      Kind = "duplicate-redirect"
	IgnoredRedirect  Kind = "ignored-redirect"
	StaleOrigin      Kind = "stale-origin"
	MissingImpure    Kind = "missing-impure"
	StaleImpure      Kind = "stale-impure"
	BadIndex         Kind = "index"
	BadNlink         Kind = "nlink"
	MetacopyNoData   Kind = "metacopy"
	WorkLeftover     Kind = "work-leftover"
	VolatileMarker   Kind = "volatile-marker"
	WrongLayers      Kind = "wrong-layers"
)

// Finding is one thing fsck found.
type Finding struct {
	Kind Kind
	// Where: "upper:/a/b", "work:work/#3", "work:index/00fb...".
	Where string
	What  string
	// Note: no problem, only metadata without effect.
	Note bool
	// Repair says what was done, or what a mode that repairs would do
	// ("" : nothing can be done safely).
	Repair   string
	Repaired bool
	// Err is set when the repair was tried and failed.
	Err error

	needs Mode // the mode that would repair it (not repaired)
}

func (f Finding) String() string {
	var b strings.Builder
	if f.Note {
		b.WriteString("note: ")
	}
	fmt.Fprintf(&b, "%s: %s (%s)", f.Where, f.What, f.Kind)
	switch {
	case f.Err != nil:
		fmt.Fprintf(&b, ": repair failed: %v", f.Err)
	case f.Repaired:
		fmt.Fprintf(&b, ": repaired: %s", f.Repair)
	case f.Repair != "" && f.needs == Yes:
		fmt.Fprintf(&b, ": not repaired: -y would %s", f.Repair)
	case f.Repair != "":
		fmt.Fprintf(&b, ": not repaired: -p would %s", f.Repair)
	default:
		b.WriteString(": left as it is")
	}
	return b.String()
}

// Report is the outcome of a run.
type Report struct {
	Findings []Finding
}

// Problems counts the findings that are not notes, and those of them
// repaired.
func (r *Report) Problems() (found, repaired int) {
	for _, f := range r.Findings {
		if f.Note {
			continue
		}
		found++
		if f.Repaired {
			repaired++
		}
	}
	return found, repaired
}

// ExitCode is the e2fsck-style status of the run.
func (r *Report) ExitCode() int {
	found, repaired := r.Problems()
	switch {
	case found == 0:
		return ExitClean
	case repaired < found:
		return ExitUncorrected
	}
	return ExitRepaired
}

// Run checks the overlay of opts and repairs what opts.Mode allows. An
// error is operational (exit status 8): the layers could not be read, or
// a mount uses them.
func Run(opts Options) (*Report, error) {
	c, err := newChecker(opts)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.run(); err != nil {
		return &c.report, err
	}
	return &c.report, nil
}
