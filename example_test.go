package ovl_test

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/ovl-project/ovl"
)

// Mount two layers with an empty upper, write through the mount, read the
// counters and unmount. Mounting needs root (or fusermount3 and
// /dev/fuse), so this example is compiled but not run by go test;
// TestExample runs it as root.
func Example() {
	dir, err := os.MkdirTemp("", "ovl-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"lower1", "lower2", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			log.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "lower2", "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		log.Fatal(err)
	}

	srv, err := ovl.Mount(ovl.Config{
		Mountpoint: filepath.Join(dir, "merged"),
		Lowers:     []string{filepath.Join(dir, "lower1"), filepath.Join(dir, "lower2")},
		Upper:      filepath.Join(dir, "upper"),
		Work:       filepath.Join(dir, "work"),
		Options:    []string{"volatile"},
	})
	if err != nil {
		log.Fatal(err)
	}
	// Appending to a lower file copies it up into the upper layer first.
	// (Another process does the writing here, as a build tool's
	// commands would.)
	sh := exec.Command("sh", "-c", "echo world >> hello.txt")
	sh.Dir = srv.Mountpoint()
	if out, err := sh.CombinedOutput(); err != nil {
		log.Fatalf("%v: %s", err, out)
	}
	fmt.Println("copy-ups:", srv.Stats().CopyUps)
	if err := srv.Unmount(); err != nil {
		log.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "upper", "hello.txt"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("in the upper: %q\n", data)
}

// Prepare checks a configuration without mounting anything: the options
// first, as "ovl mount" does.
func ExamplePrepare() {
	_, err := ovl.Prepare(ovl.Config{
		Mountpoint: "/mnt/merged",
		Lowers:     []string{"/layers/base"},
		Options:    []string{"verity=on"},
	})
	fmt.Println(err)
	_, err = ovl.Prepare(ovl.Config{Mountpoint: "/mnt/merged", Upper: "/layers/upper", Work: "/layers/work"})
	fmt.Println(err)
	// Output:
	// option "verity=on" is not supported yet (ovl checks no fs-verity digests); use verity=off
	// missing lowerdir: give at least one lower layer (-o lowerdir=DIR[:DIR...])
}

// Unmount unmounts an ovl mount made by another process ("ovl mount", a
// container engine) and waits until its daemon has exited, so that its
// upper can be mounted again at once.
func ExampleUnmount() {
	if err := ovl.Unmount("/var/lib/mycache/merged", false); err != nil {
		log.Fatal(err)
	}
}

// ReadInfo asks the daemon of any ovl mount for its layers and counters,
// as "ovl ls" does.
func ExampleReadInfo() {
	info, err := ovl.ReadInfo("/var/lib/mycache/merged")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.Pid, info.Lowers, info.Upper, info.CopyUps)
}
