package pidfd

import (
	"bytes"
	"fmt"
	"os"
	"time"
)

// WaitIdle waits until the process behind fd (whose pid is pid) has exited.
// It gives up only when the process has shown no sign of work for idle: a
// daemon syncing a large volatile upper, or one starved on a loaded
// machine, may take minutes to exit and is still doing its job; one that
// neither runs, waits on the disk nor does I/O for that long is stuck.
func WaitIdle(fd, pid int, idle time.Duration) error {
	last := activity(pid)
	for {
		err := Wait(fd, idle)
		if err == nil {
			return nil
		}
		now := activity(pid)
		if now == "" || now == last && !inDiskWait(pid) {
			return fmt.Errorf("the process is still running and has done nothing for %v", idle)
		}
		last = now
	}
}

// activity is what changes while a process works: its CPU times (fields
// 14 and 15 of /proc/PID/stat) and its I/O counters. Empty when the
// process is gone or unreadable.
func activity(pid int) string {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name may hold spaces; the fields after it are plain.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 {
		stat = stat[i+1:]
	}
	f := bytes.Fields(stat)
	if len(f) < 13 {
		return ""
	}
	io, _ := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	return string(f[11]) + " " + string(f[12]) + "\n" + string(io)
}

// inDiskWait says whether the process, or any of its threads, sleeps in
// the kernel uninterruptibly: an fsync on a slow disk shows as that alone.
func inDiskWait(pid int) bool {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, t := range tasks {
		stat, err := os.ReadFile(dir + "/" + t.Name() + "/stat")
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'D' {
			return true
		}
	}
	return false
}
