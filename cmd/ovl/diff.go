package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/ovl-project/ovl/internal/mountopt"
	"github.com/ovl-project/ovl/internal/privilege"
	"github.com/ovl-project/ovl/layertar"
)

// layerTools are the subcommands that read or write layers without a
// mount; each parses its own flags.
var layerTools = map[string]func(args []string) error{
	"diff":  runDiff,
	"apply": runApply,
}

const diffUsage = `Usage: ovl diff -o lowerdir=L1[:L2...],upperdir=U[,userxattr,...] [--output FILE] [--compress gzip|zstd|none]

Writes the upper layer U as an OCI image layer tar (whiteouts as .wh.NAME,
opaque directories as .wh..wh..opq, renamed directories in full, metacopy
files with their data, hard links as links), to standard output or FILE.
The same upper gives the same bytes. Prints the layer's digest and its
diff-id (the sha256 of the uncompressed tar) on standard error. The upper
must not be mounted meanwhile. Give the options it was mounted with; without
userxattr or nouserxattr, the namespace is chosen as ovl mount chooses it.

Flags:
`

// stringsFlag collects a flag given several times.
type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

// parseTool parses a layer tool's flags, which may come before, between or
// after its operands.
func parseTool(fs *flag.FlagSet, args []string) ([]string, error) {
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return operands, nil
		}
		if rest[0] == "--" {
			return append(operands, rest[1:]...), nil
		}
		operands = append(operands, rest[0])
		args = rest[1:]
	}
}

func runDiff(args []string) error {
	fs := flag.NewFlagSet("ovl diff", flag.ContinueOnError)
	var opts stringsFlag
	fs.Var(&opts, "o", "layer options, as for a mount (lowerdir=, upperdir=, userxattr, redirect_dir=, metacopy=); may be given several times")
	output := fs.String("output", "", "write the layer to `FILE` instead of standard output")
	compress := fs.String("compress", "gzip", "compression: gzip, zstd or none")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), diffUsage)
		fs.PrintDefaults()
	}
	operands, err := parseTool(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if len(operands) > 0 {
		return fmt.Errorf("diff: unexpected argument %q (see ovl diff --help)", operands[0])
	}
	comp, err := layertar.ParseCompression(*compress)
	if err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	res, err := mountopt.ParseLayers(opts)
	if err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	if res.Overlay.Upper == "" {
		return errors.New("diff: needs upperdir= (the layer to write)")
	}
	if !res.XattrChosen && !privileged() {
		// As a mount by this process would have written the upper.
		res.Overlay.UserXattr = true
	}
	var w io.Writer = os.Stdout
	if *output != "" {
		f, err := os.OpenFile(*output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return fmt.Errorf("diff: %w", err)
		}
		defer f.Close()
		w = f
	} else if term.IsTerminal(int(os.Stdout.Fd())) {
		return errors.New("diff: refusing to write a layer to a terminal (use --output FILE or a pipe)")
	}
	bar := newProgress("diff")
	r, err := layertar.Diff(w, res.Overlay, layertar.DiffOptions{Compression: comp, Progress: bar.update})
	bar.finish()
	if err != nil {
		if *output != "" {
			os.Remove(*output)
		}
		return err
	}
	if f, ok := w.(*os.File); ok && *output != "" {
		if err := f.Close(); err != nil {
			return fmt.Errorf("diff: %w", err)
		}
	}
	fmt.Fprintf(os.Stderr, "digest: %s\ndiff-id: %s\nsize: %d\nentries: %d\n", r.Digest, r.DiffID, r.Size, r.Entries)
	return nil
}

// progress is a progress bar on a terminal (bytes and entries), and
// nothing otherwise.
type progress struct {
	bar  *progressbar.ProgressBar
	last time.Time
}

func newProgress(what string) *progress {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return &progress{}
	}
	return &progress{bar: progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		// The count is the bytes so far: without it a bar of unknown
		// length shows bytes only in its rate, which needs a second draw.
		progressbar.OptionShowCount(),
		progressbar.OptionSpinnerType(14),
		// No throttle of its own: update draws at most ten times a
		// second, and each draw it asks for must show.
		progressbar.OptionClearOnFinish(),
	)}
}

func (p *progress) update(bytes int64, entries int) {
	if p.bar == nil {
		return
	}
	// Describe redraws: at most ten times a second.
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond {
		p.last = now
		p.bar.Set64(bytes)
		p.bar.Describe(fmt.Sprintf("%d entries", entries))
	}
}

func (p *progress) finish() {
	if p.bar != nil {
		p.bar.Finish()
	}
}

// privileged reports whether this process may read and write trusted.*
// xattrs; the layer tools then use trusted.overlay.*, else user.overlay.*,
// as ovl mount chooses (checks.go).
func privileged() bool {
	ok, _, err := privilege.SysAdmin()
	return err != nil || ok
}
