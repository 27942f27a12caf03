package pidfd

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func start(t *testing.T, script string) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		cmd.Process.Kill()
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd); cmd.Process.Kill(); cmd.Wait() })
	return cmd, fd
}

// A process that keeps working past the idle bound is waited for.
func TestWaitIdleBusy(t *testing.T) {
	cmd, fd := start(t, `end=$(($(date +%s)+6)); while [ "$(date +%s)" -lt $end ]; do :; done`)
	begin := time.Now()
	// Reap it as it exits, as the daemon's parent would; the pidfd still
	// reports the exit.
	go cmd.Wait()
	if err := WaitIdle(fd, cmd.Process.Pid, 2*time.Second); err != nil {
		t.Fatalf("busy process: %v after %v", err, time.Since(begin))
	}
	if d := time.Since(begin); d < 4*time.Second {
		t.Fatalf("returned after %v, before the process could have exited", d)
	}
}

// A process that sleeps is given up on after the idle bound.
func TestWaitIdleStuck(t *testing.T) {
	cmd, fd := start(t, `sleep 600`)
	begin := time.Now()
	err := WaitIdle(fd, cmd.Process.Pid, time.Second)
	if err == nil {
		t.Fatal("WaitIdle returned nil for a process that still sleeps")
	}
	if d := time.Since(begin); d > 5*time.Minute {
		t.Fatalf("gave up only after %v", d)
	}
	t.Log(err)
}
