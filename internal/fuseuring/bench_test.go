package fuseuring

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ovl-project/ovl/internal/fusecount"
)

// The benchmark's daemon is this test binary run again with these set, so
// that its CPU time is its own: it serves go-fuse's loopback of the
// directory, with no kernel caching (every stat and open is a request),
// prints "ready", and answers each line on stdin with its request count;
// it unmounts when stdin closes.
const (
	benchDirEnv   = "FUSEURING_BENCH_DIR"
	benchMntEnv   = "FUSEURING_BENCH_MNT"
	benchPlainEnv = "FUSEURING_BENCH_PLAIN"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(benchDirEnv); dir != "" {
		if err := benchDaemon(dir, os.Getenv(benchMntEnv), os.Getenv(benchPlainEnv) != ""); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func benchDaemon(dir, mnt string, plain bool) error {
	root, err := gofs.NewLoopbackRoot(dir)
	if err != nil {
		return err
	}
	zero := time.Duration(0)
	var counts fusecount.Counts
	raw := fusecount.Wrap(gofs.NewNodeFS(root, &gofs.Options{EntryTimeout: &zero, AttrTimeout: &zero}), &counts)
	s, err := Mount(mnt, raw, fuse.MountOptions{
		Name: "uringbench", FsName: dir, MaxWrite: 1 << 20,
		// Reads and writes through the daemon, as rootless ones are.
		DisabledCapabilities: fuse.CAP_PASSTHROUGH,
	}, Options{Plain: plain})
	if err != nil {
		return err
	}
	fmt.Printf("ready %v\n", s.Uring())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		fmt.Printf("%d\n", counts.Total())
	}
	return s.Unmount()
}

type benchProc struct {
	cmd *exec.Cmd
	in  *os.File
	out *bufio.Reader
	mnt string
}

func startBenchDaemon(t *testing.T, dir string, plain bool) *benchProc {
	t.Helper()
	mnt := t.TempDir()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), benchDirEnv+"="+dir, benchMntEnv+"="+mnt)
	if plain {
		cmd.Env = append(cmd.Env, benchPlainEnv+"=1")
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = inR
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	p := &benchProc{cmd: cmd, in: inW, out: bufio.NewReader(stdout), mnt: mnt}
	line, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatalf("bench daemon: %v", err)
	}
	if want := fmt.Sprintf("ready %v\n", !plain); line != want {
		t.Fatalf("bench daemon said %q, want %q", line, want)
	}
	t.Cleanup(func() {
		p.in.Close()
		cmd.Wait()
	})
	return p
}

func (p *benchProc) requests(t *testing.T) uint64 {
	fmt.Fprintln(p.in, "count")
	line, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(line), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// cpu is the daemon's user+system CPU time so far.
func (p *benchProc) cpu(t *testing.T) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

type benchResult struct {
	reqs    uint64
	elapsed time.Duration
	cpu     time.Duration
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// TestBenchTransport measures requests per second and daemon CPU per
// request for go-fuse's loopback served over io_uring and over /dev/fuse,
// side by side, rounds alternating. It runs only with FUSEURING_BENCH=1
// (and sets enable_uring=Y for its duration).
func TestBenchTransport(t *testing.T) {
	if os.Getenv("FUSEURING_BENCH") == "" {
		t.Skip("set FUSEURING_BENCH=1 to run")
	}
	needRoot(t)
	setEnableUring(t, true)
	rounds := 3
	if r, err := strconv.Atoi(os.Getenv("FUSEURING_BENCH_ROUNDS")); err == nil {
		rounds = r
	}
	dir := t.TempDir()
	const nfiles = 500
	for i := 0; i < nfiles; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), []byte(strings.Repeat("x", 100)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	big := make([]byte, 64<<20)
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	systems := []struct {
		name  string
		plain bool
	}{{"uring", false}, {"devfuse", true}}
	procs := map[string]*benchProc{}
	for _, s := range systems {
		procs[s.name] = startBenchDaemon(t, dir, s.plain)
	}
	workloads := []struct {
		name string
		run  func(t *testing.T, mnt string)
	}{
		{"stat x20000", func(t *testing.T, mnt string) {
			for i := 0; i < 20000; i++ {
				if _, err := os.Lstat(filepath.Join(mnt, fmt.Sprintf("f%03d", i%nfiles))); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"cat 100B x5000", func(t *testing.T, mnt string) {
			for i := 0; i < 5000; i++ {
				if _, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("f%03d", i%nfiles))); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"write 1MiB x64", func(t *testing.T, mnt string) {
			f, err := os.Create(filepath.Join(mnt, "w"))
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			for i := 0; i < 64; i++ {
				if _, err := f.Write(buf); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
		}},
		{"read 64MiB x2 (128k)", func(t *testing.T, mnt string) {
			for i := 0; i < 2; i++ {
				f, err := os.Open(filepath.Join(mnt, "big"))
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 128<<10)
				for {
					n, err := f.Read(buf)
					if n == 0 || err != nil {
						break
					}
				}
				f.Close()
				// Drop the page cache so the next round reads again.
				os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0)
			}
		}},
	}
	res := map[string]map[string][]benchResult{}
	for _, w := range workloads {
		res[w.name] = map[string][]benchResult{}
		for r := 0; r < rounds; r++ {
			order := systems
			if r%2 == 1 {
				order = []struct {
					name  string
					plain bool
				}{systems[1], systems[0]}
			}
			for _, s := range order {
				p := procs[s.name]
				n0, c0, t0 := p.requests(t), p.cpu(t), time.Now()
				w.run(t, p.mnt)
				el := time.Since(t0)
				n1, c1 := p.requests(t), p.cpu(t)
				res[w.name][s.name] = append(res[w.name][s.name], benchResult{n1 - n0, el, c1 - c0})
			}
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "load average at the end: %s; %d rounds, alternating; median per system\n", loadavg(), rounds)
	fmt.Fprintf(&sb, "| workload | system | requests | req/s | daemon CPU µs/req | time uring÷devfuse | CPU/req uring÷devfuse |\n|---|---|---|---|---|---|---|\n")
	for _, w := range workloads {
		med := map[string]benchResult{}
		for _, s := range systems {
			med[s.name] = median(res[w.name][s.name])
		}
		for _, s := range systems {
			m := med[s.name]
			fmt.Fprintf(&sb, "| %s | %s | %d | %.0f | %.1f |", w.name, s.name, m.reqs, float64(m.reqs)/m.elapsed.Seconds(), float64(m.cpu.Microseconds())/float64(m.reqs))
			if s.name == "uring" {
				u, d := med["uring"], med["devfuse"]
				fmt.Fprintf(&sb, " %.2f | %.2f |\n", u.elapsed.Seconds()/d.elapsed.Seconds(),
					(float64(u.cpu)/float64(u.reqs))/(float64(d.cpu)/float64(d.reqs)))
			} else {
				fmt.Fprintf(&sb, " | |\n")
			}
		}
	}
	t.Log("\n" + sb.String())
}

// median picks the round with the median time.
func median(rs []benchResult) benchResult {
	s := append([]benchResult(nil), rs...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j].elapsed < s[i].elapsed {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
