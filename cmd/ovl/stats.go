package main

import (
	"encoding/json"
	"fmt"

	"github.com/ovl-project/ovl"
)

// statsReply is what a daemon sends on its stats socket.
type statsReply = ovl.Stats

// runStats prints the daemon's stats as one JSON object.
func runStats(inv *invocation) error {
	r, err := ovl.ReadStats(inv.positional[0], inv.gc)
	if err != nil {
		return err
	}
	out, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
