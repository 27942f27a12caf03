package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Requests per operation (issue 21). A workload phase that stands for many
// operations of one kind (a file untarred, a name stat'ed, a file read)
// reports, for the daemons that count their FUSE requests (ovl through
// "ovl stats", the loopback through its socket), the requests per
// operation, in all and by opcode, and the daemon CPU time per request;
// for every daemon (fuse-overlayfs too) the daemon CPU time per operation.
// CPU time is utime+stime of /proc/PID/stat: all threads, in clock ticks.
// FORGETs are listed by opcode but not counted in the requests per
// operation: the kernel sends them when it evicts inodes (memory pressure,
// anyone's drop_caches), not for the operation.

// A phase names a counted part of a workload, and what one operation is.
type phase struct {
	name string // "untar", "stat, warm"
	per  string // "file", "name"
}

func (p phase) reqRow() string    { return fmt.Sprintf("%s: FUSE requests per %s", p.name, p.per) }
func (p phase) cpuReqRow() string { return fmt.Sprintf("%s: daemon CPU per request", p.name) }
func (p phase) cpuOpRow() string  { return fmt.Sprintf("%s: daemon CPU per %s", p.name, p.per) }

// rows are the phase's rows of the table.
func (p phase) rows() []row {
	return []row{
		{name: p.reqRow(), unit: "req", only: countedOnly},
		{name: p.cpuReqRow(), unit: "µs", only: countedOnly},
		{name: p.cpuOpRow(), unit: "µs", only: daemonsOnly},
	}
}

// opcodeKey is the key under which a run reports the requests per
// operation of one opcode; runWorkload collects them into report.Opcodes.
const opcodeKey = "opcode\x00"

func countedOnly(s *system) string {
	if !s.is("ovl") && !s.is("loopback") {
		return "the daemon does not count its requests"
	}
	return ""
}

// counters is what a daemon had done at one moment.
type counters struct {
	reqs map[string]float64 // nil: the daemon does not count
	cpu  float64            // seconds
}

// sample reads the daemon's counters, nil for a system without a daemon.
func (c *runCtx) sample() (*counters, error) {
	if c.m.pid == 0 {
		return nil, nil
	}
	cpu, err := procCPU(c.m.pid)
	if err != nil {
		return nil, err
	}
	s := &counters{cpu: cpu}
	switch c.m.sys.name {
	case "ovl", "ovl-rootless", "ovl-uring":
		st, err := ovlStats(c.e, c.mnt, false)
		if err != nil {
			return nil, err
		}
		s.reqs = map[string]float64{}
		for k, v := range st {
			if op, ok := strings.CutPrefix(k, "requests."); ok {
				s.reqs[op] = v
			}
		}
	case "loopback":
		if s.reqs, err = loopbackRequests(c.m.pid); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// counted runs f, a phase of ops operations, and puts the phase's figures
// into out.
func (c *runCtx) counted(p phase, ops int, out map[string]float64, f func() error) error {
	before, err := c.sample()
	if err != nil {
		return err
	}
	if err := f(); err != nil {
		return err
	}
	if before == nil {
		return nil
	}
	after, err := c.sample()
	if err != nil {
		return err
	}
	if ops <= 0 {
		return fmt.Errorf("%s: %d operations", p.name, ops)
	}
	cpu := after.cpu - before.cpu
	out[p.cpuOpRow()] = cpu * 1e6 / float64(ops)
	if after.reqs == nil {
		return nil
	}
	var total float64
	for op, n := range after.reqs {
		d := n - before.reqs[op]
		if d > 0 {
			if op != "FORGET" {
				total += d
			}
			out[opcodeKey+p.reqRow()+"\x00"+op] = d / float64(ops)
		}
	}
	out[p.reqRow()] = total / float64(ops)
	if total > 0 {
		out[p.cpuReqRow()] = cpu * 1e6 / total
	}
	return nil
}

// procCPU is the CPU time of process pid, all its threads, in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields start
	// after the last ')'. utime and stime are fields 14 and 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return float64(ut+st) / clockTicks, nil
}

// clockTicks is sysconf(_SC_CLK_TCK), USER_HZ: 100 on Linux.
const clockTicks = 100
