package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// holdEnv names the tree a holder process (maybeHold) walks and holds.
const holdEnv = "OVL_BENCH_HOLD"

// holdWalk walks dir as walk does, in one holder process per entry of dir
// (this binary again), each holding every object it stat'ed with an
// O_PATH descriptor: the kernel cannot forget them while held, so that a
// drop_caches by another process on the machine (tests do it) does not
// shrink what a memory figure measures. Each holder stays within the open
// file limit, which needs a privilege to raise. It returns the objects
// held once all are; release lets them go.
func holdWalk(e *env, dir string) (held int, release func() error, err error) {
	names, err := readNames(dir)
	if err != nil {
		return 0, nil, err
	}
	type holder struct {
		cmd *exec.Cmd
		in  io.Closer
	}
	var hs []holder
	release = func() error {
		var first error
		for _, h := range hs {
			h.in.Close()
		}
		for _, h := range hs {
			if err := h.cmd.Wait(); err != nil && first == nil {
				first = fmt.Errorf("holder %s: %w", h.cmd.Env[len(h.cmd.Env)-1], err)
			}
		}
		hs = nil
		return first
	}
	held = len(names)
	for _, name := range names {
		cmd := exec.Command(e.self)
		cmd.Env = append(os.Environ(), holdEnv+"="+filepath.Join(dir, name))
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			release()
			return 0, nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			release()
			return 0, nil, err
		}
		if err := cmd.Start(); err != nil {
			release()
			return 0, nil, err
		}
		hs = append(hs, holder{cmd, in})
		line, err := bufio.NewReader(out).ReadString('\n')
		n, perr := strconv.Atoi(strings.TrimSpace(line))
		if err != nil || perr != nil {
			release()
			return 0, nil, fmt.Errorf("holder of %s: %q: %v", name, line, err)
		}
		held += n
	}
	return held, release, nil
}

// maybeHold is the holder process of holdWalk: it walks its tree, holding
// the tree and every object below with O_PATH descriptors, prints how many
// it stat'ed and keeps them until its stdin closes.
func maybeHold() {
	dir := os.Getenv(holdEnv)
	if dir == "" {
		return
	}
	var n int
	var hold func(string) error
	hold = func(p string) error {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if _, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err != nil {
			return &os.PathError{Op: "open", Path: p, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil
		}
		names, err := readNames(p)
		if err != nil {
			return err
		}
		for _, name := range names {
			n++
			if err := hold(filepath.Join(p, name)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := hold(dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench holder:", err)
		os.Exit(1)
	}
	fmt.Println(n)
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}
