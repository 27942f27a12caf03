package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/ovl-project/ovl"
	"github.com/ovl-project/ovl/internal/mountinfo"
)

// lsEntry is one mount in "ovl ls --json": its daemon's Info, or why it
// could not be had.
type lsEntry struct {
	Mountpoint string `json:"mountpoint"`
	Source     string `json:"source"`
	*ovl.Info
	Error string `json:"error,omitempty"`
}

// runLs lists the ovl mounts of this mount namespace, each with what its
// daemon says of itself. A mount hidden by another at the same place is
// left out: its daemon cannot be reached by the path.
func runLs(inv *invocation) error {
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	top := map[string]int{}
	for i, m := range mounts {
		top[m.MountPoint] = i
	}
	entries := []lsEntry{}
	for i, m := range mounts {
		if m.FSType != ovl.FSType || top[m.MountPoint] != i {
			continue
		}
		e := lsEntry{Mountpoint: m.MountPoint, Source: m.Source}
		if info, err := ovl.ReadInfo(m.MountPoint); err != nil {
			e.Error = err.Error()
		} else {
			e.Info = info
		}
		entries = append(entries, e)
	}
	if inv.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	if len(entries) == 0 {
		fmt.Println("no ovl mounts")
		return nil
	}
	for i, e := range entries {
		if i > 0 {
			fmt.Println()
		}
		fmt.Printf("%s (source %s)\n", e.Mountpoint, e.Source)
		if e.Info == nil {
			fmt.Printf("  error:    %s\n", e.Error)
			continue
		}
		fmt.Printf("  pid:      %d\n", e.Pid)
		switch {
		case len(e.Lowers) == 0:
			fmt.Printf("  layers:   not reported (the daemon of an older ovl)\n")
		case e.Upper != "":
			fmt.Printf("  lowers:   %s\n  upper:    %s\n  work:     %s\n", strings.Join(e.Lowers, ":"), e.Upper, e.Work)
		default:
			fmt.Printf("  lowers:   %s\n  upper:    none (read-only)\n", strings.Join(e.Lowers, ":"))
		}
		if len(e.Options) > 0 {
			fmt.Printf("  options:  %s\n", strings.Join(e.Options, ","))
		}
		fmt.Printf("  counters: copy_ups %d (%d bytes), whiteouts %d, lookups %d, nodes %d\n",
			e.CopyUps, e.CopyUpBytes, e.Whiteouts, e.Lookups, e.Nodes)
	}
	return nil
}
