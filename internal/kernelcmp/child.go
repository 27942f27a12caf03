package kernelcmp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Cred is who a child process runs as.
type Cred struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
}

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

// Helper returns the path of the kcmphelper binary, built once per
// process into a directory every user can read.
func Helper() (string, error) {
	helperOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kcmphelper-")
		if err != nil {
			helperErr = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			helperErr = err
			return
		}
		helperPath = filepath.Join(dir, "kcmphelper")
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", helperPath, "./kcmphelper")
		cmd.Dir = filepath.Dir(file)
		if out, err := cmd.CombinedOutput(); err != nil {
			helperErr = fmt.Errorf("build kcmphelper: %v\n%s", err, out)
			return
		}
		// Whatever the umask was: every caller must be able to run it.
		helperErr = os.Chmod(helperPath, 0o755)
	})
	return helperPath, helperErr
}

// Child is a started helper process.
type Child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout bytes.Buffer
	stderr bytes.Buffer
	opsf   string
}

// StartOps starts a child running ops against root as cred (nil: as the
// caller). Wait collects the results; Release closes its stdin (the
// "waitstdin" barrier).
func StartOps(root string, cred *Cred, ops []Op) (*Child, error) {
	bin, err := Helper()
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp("", "kcmpops-*.json")
	if err != nil {
		return nil, err
	}
	if err := json.NewEncoder(f).Encode(ops); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	os.Chmod(f.Name(), 0o644)
	c := &Child{opsf: f.Name()}
	c.cmd = exec.Command(bin, root, f.Name())
	c.cmd.Dir = "/"
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	if cred != nil {
		c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: cred.UID, Gid: cred.GID, Groups: cred.Groups, NoSetGroups: false,
		}}
		if cred.Groups == nil {
			c.cmd.SysProcAttr.Credential.Groups = []uint32{}
		}
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		os.Remove(c.opsf)
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		os.Remove(c.opsf)
		return nil, err
	}
	return c, nil
}

// Release closes the child's stdin.
func (c *Child) Release() { c.stdin.Close() }

// Wait waits for the child and decodes its results.
func (c *Child) Wait() ([]Result, error) {
	c.stdin.Close()
	defer os.Remove(c.opsf)
	if err := c.cmd.Wait(); err != nil {
		return nil, fmt.Errorf("kcmphelper: %v\n%s", err, c.stderr.Bytes())
	}
	var res []Result
	if err := json.Unmarshal(c.stdout.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("kcmphelper output: %v: %q", err, c.stdout.Bytes())
	}
	return res, nil
}

// RunOps runs ops against root in a child process as cred and returns one
// Result per op.
func RunOps(root string, cred *Cred, ops []Op) ([]Result, error) {
	c, err := StartOps(root, cred, ops)
	if err != nil {
		return nil, err
	}
	return c.Wait()
}

// ApplyOps applies ops on the mount mnt as the random tester does, for a
// tool that needs a layer written by random ops: the caller's own ops
// (and the fd ops, drop_caches and umask) in this process, each run of
// ops of one other caller in one child process as that caller. Errnos
// the ops give are part of the case, not errors; an error is the
// harness failing.
func ApplyOps(mnt string, ops []Op) error {
	umask := unix.Umask(0o022)
	defer unix.Umask(umask)
	var fds FDs
	defer fds.Close()
	inProcess := func(op Op) bool {
		switch op.Op {
		case "hold", "readheld", "writeheld", "unhold", "dropcaches", "umask":
			return true
		}
		return op.As == nil
	}
	for i := 0; i < len(ops); {
		op := ops[i]
		if inProcess(op) {
			if r := op.ApplyFDs(mnt, &fds); r.Err != "" {
				return fmt.Errorf("op %d %s: harness error: %s", i, op, r.Err)
			}
			i++
			continue
		}
		n := 1
		for i+n < len(ops) && !inProcess(ops[i+n]) && fmt.Sprint(*ops[i+n].As) == fmt.Sprint(*op.As) {
			n++
		}
		if _, err := RunOps(mnt, op.As, ops[i:i+n]); err != nil {
			return fmt.Errorf("ops %d-%d as %d: %w", i, i+n-1, op.As.UID, err)
		}
		i += n
	}
	return nil
}
