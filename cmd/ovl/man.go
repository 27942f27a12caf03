package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/ovl-project/ovl/internal/mountopt"
)

func init() { addCommand(newManCommand) }

// newManCommand writes the man pages, made from the same command
// definitions as the help and the shell completion, so none can drift.
func newManCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "man DIR",
		Short: "write ovl's man pages (section 1) into DIR",
		Long: `Writes one man page per command (ovl.1, ovl-mount.1, ...) into DIR, made from
the same definitions as the help, for packagers:
  ovl man /usr/local/share/man/man1`,
		Args: operands(1, 1, "DIR"),
		RunE: func(c *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return fmt.Errorf("man: %w", err)
			}
			root := c.Root()
			// The option list is part of mount's help template; a man
			// page is made from Long, so it goes there, preformatted.
			if m := subcommand(root, "mount"); m != nil {
				m.Long += "\n\n" + strings.ReplaceAll("\n"+mountopt.Help(), "\n", "\n    ")
			}
			root.DisableAutoGenTag = true // the same pages from the same ovl
			hdr := &doc.GenManHeader{Title: "OVL", Section: "1", Source: "ovl", Manual: "ovl manual"}
			if err := doc.GenManTree(root, hdr, args[0]); err != nil {
				return fmt.Errorf("man: %w", err)
			}
			return nil
		},
	}
}
