// Package pidfd waits for a process through a pidfd, which is tied to the
// process and not to its number, so a reused pid cannot fool the wait.
package pidfd

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Wait waits until the process behind fd has exited, for at most limit (a
// zero limit just checks).
func Wait(fd int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		left := max(time.Until(deadline), 0)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int((left+time.Millisecond-1)/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("waiting for process exit: %w", err)
		}
		if n > 0 {
			return nil
		}
		if left == 0 {
			return fmt.Errorf("the process is still running after %v", limit)
		}
	}
}
