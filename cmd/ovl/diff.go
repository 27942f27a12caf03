package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ovl-project/ovl/internal/mountopt"
	"github.com/ovl-project/ovl/internal/privilege"
	"github.com/ovl-project/ovl/layertar"
)

func init() { addCommand(newDiffCommand) }

func newDiffCommand() *cobra.Command {
	var opts []string
	var output, compress string
	c := &cobra.Command{
		Use:   "diff -o lowerdir=L1[:L2...],upperdir=U[,OPTIONS] [--output FILE] [--compress gzip|zstd|none]",
		Short: "write an upper layer as an OCI layer tar",
		Long: `Writes the upper layer U as an OCI image layer tar (whiteouts as .wh.NAME,
opaque directories as .wh..wh..opq, renamed directories in full, metacopy
files with their data, hard links as links), to standard output or FILE.
The same upper gives the same bytes. Prints the layer's digest and its
diff-id (the sha256 of the uncompressed tar) on standard error. The upper
must not be mounted meanwhile. Give the options it was mounted with; without
userxattr or nouserxattr, the namespace is chosen as ovl mount chooses it.`,
		Example: `  ovl diff -o lowerdir=l1:l2,upperdir=u --output layer.tar.gz`,
		Args:    operands(0, 0, ""),
		RunE: func(c *cobra.Command, args []string) error {
			return runDiff(opts, output, compress)
		},
	}
	f := c.Flags()
	f.StringArrayVarP(&opts, "options", "o", nil, "layer `OPTIONS`, as for a mount (lowerdir=, upperdir=, userxattr, redirect_dir=, metacopy=); may be given several times")
	f.StringVar(&output, "output", "", "write the layer to `FILE` instead of standard output")
	f.StringVar(&compress, "compress", "gzip", "compression: gzip, zstd or none")
	return c
}

func runDiff(opts []string, output, compress string) error {
	comp, err := layertar.ParseCompression(compress)
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
	if output != "" {
		f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
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
		if output != "" {
			os.Remove(output)
		}
		return err
	}
	if f, ok := w.(*os.File); ok && output != "" {
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
