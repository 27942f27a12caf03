// Command kcmphelper runs kernelcmp Ops in a child process, so that tests
// can run them under another uid, gid and umask.
//
//	kcmphelper ROOT OPSFILE
//
// OPSFILE holds a JSON list of kernelcmp.Op; the JSON list of
// kernelcmp.Result goes to stdout. Stdin is left for the "waitstdin" op.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/ovl-project/ovl/internal/kernelcmp"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: kcmphelper ROOT OPSFILE")
		os.Exit(2)
	}
	b, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var ops []kernelcmp.Op
	if err := json.Unmarshal(b, &ops); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	res := make([]kernelcmp.Result, 0, len(ops))
	for _, op := range ops {
		res = append(res, op.Apply(os.Args[1]))
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
