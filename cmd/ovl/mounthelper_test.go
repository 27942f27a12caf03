package main

// mount(8), fstab and systemd (issue 18, item 5). mount(8) runs a helper
// for the type fuse.ovl: /sbin/mount.fuse.ovl if it exists, else
// mount.fuse3, which runs "ovl SOURCE MOUNTPOINT -o OPTIONS" through
// /bin/sh with the environment mount(8) cleared, so the shell's built-in
// PATH finds ovl. Each scenario installs ovl where one of them finds it
// inside a private mount namespace (nsEnv.script), so nothing on the
// machine changes; the "TYPE#SOURCE" form needs no install at all.

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/ovl-project/ovl/internal/mountinfo"
)

// mhOpts are the layer options of every scenario, and mhFstabOpts what
// fstab lines and systemd add, none of them for the filesystem.
const (
	mhOpts      = "lowerdir=$B/l,upperdir=$B/u,workdir=$B/w,log=$B/log"
	mhFstabOpts = "defaults,nofail,_netdev,x-systemd.requires=local-fs.target,x-systemd.automount,x-systemd.mount-timeout=60"
)

// mhCheck is the script's part after a mount at m: it records the mount,
// reads and writes through it, unmounts it with umount(8) and waits for
// the daemon to exit (by count, up to 120 s).
const mhCheck = `
grep " $B/m " /proc/self/mountinfo > mountinfo.txt
cat m/a > read.txt
echo new > m/new
"$OVL" stats m > stats.txt
pid=$(sed 's/.*"pid":\([0-9]*\).*/\1/' stats.txt)
umount m
n=0
while kill -0 "$pid" 2>/dev/null; do
	n=$((n+1))
	if [ $n -gt 1200 ]; then echo "daemon $pid still running 120s after umount"; exit 1; fi
	sleep 0.1
done
if grep -q " $B/m " /proc/self/mountinfo; then echo "still mounted"; exit 1; fi
`

func newMHEnv(t *testing.T) *nsEnv {
	e := newNSEnv(t)
	e.mkdirs("l", "u", "w", "m", "m2")
	e.write("l/a", "a\n")
	return e
}

// mhScript runs a scenario's script with $B set to the scratch directory.
func (e *nsEnv) mhScript(script string) string {
	e.t.Helper()
	return e.script("B=" + e.base + "\n" + script)
}

// mhVerify checks what mhCheck recorded: one fuse.ovl mount whose source
// is the fstab's (so that "mount -a" knows the line is mounted), the lower
// file read through it, the new file in the upper.
func (e *nsEnv) mhVerify(source string) {
	e.t.Helper()
	b, _ := os.ReadFile(e.path("mountinfo.txt"))
	ms, err := mountinfo.Parse(strings.NewReader(string(b)))
	if err != nil || len(ms) != 1 {
		e.t.Fatalf("want one mount at m, mountinfo has %q (%v)", b, err)
	}
	m := ms[0]
	if m.FSType != "fuse.ovl" || m.Source != source {
		e.t.Errorf("mount at m: type %q source %q, want fuse.ovl and %q", m.FSType, m.Source, source)
	}
	if b, _ := os.ReadFile(e.path("read.txt")); string(b) != "a\n" {
		e.t.Errorf("m/a read %q through the mount", b)
	}
	if b, _ := os.ReadFile(e.path("u/new")); string(b) != "new\n" {
		e.t.Errorf("u/new: %q, want what was written through the mount", b)
	}
}

// An fstab line of type fuse.ovl, mounted by "mount -T FILE MOUNTPOINT"
// and "mount -a" (which must see that it is mounted already), and
// "mount -t fuse.ovl", through mount.fuse3, with ovl installed in a
// directory of the shell's built-in PATH.
func TestMountFstabMountFuse3(t *testing.T) {
	e := newMHEnv(t)
	out := e.mhScript(`
mount --bind "$B/bin" /usr/local/sbin
echo "mydata $B/m fuse.ovl ` + mhOpts + `,` + mhFstabOpts + ` 0 0" > fstab
mount -T fstab "$B/m"
mount -T fstab -a -v
mount -t fuse.ovl ovl "$B/m2" -o lowerdir="$B/l",nofail
cat m2/a > read2.txt
umount m2
` + mhCheck)
	if !strings.Contains(out, "already mounted") {
		t.Errorf("mount -a: want \"already mounted\", got %q", out)
	}
	e.mhVerify("mydata")
	if b, _ := os.ReadFile(e.path("read2.txt")); string(b) != "a\n" {
		t.Errorf("mount -t fuse.ovl: m2/a read %q", b)
	}
}

// The same fstab line through /sbin/mount.fuse.ovl, a symlink to ovl,
// where ovl is on no PATH: mount(8) runs it without mount.fuse3 or a shell.
func TestMountFstabHelper(t *testing.T) {
	e := newMHEnv(t)
	e.mkdirs("sbin")
	if err := os.Symlink(e.bin, e.path("sbin/"+helperName)); err != nil {
		t.Fatal(err)
	}
	out := e.mhScript(`
if env -i /bin/sh -c 'command -v ovl'; then echo "ovl is on the shell's built-in PATH: the test cannot tell the helper was used"; exit 1; fi
mount -t overlay overlay -o lowerdir="$B/sbin":/usr/sbin /usr/sbin
echo "mydata $B/m fuse.ovl ` + mhOpts + `,` + mhFstabOpts + ` 0 0" > fstab
mount -T fstab "$B/m"
mount -T fstab -a -v
` + mhCheck)
	if !strings.Contains(out, "already mounted") {
		t.Errorf("mount -a: want \"already mounted\", got %q", out)
	}
	e.mhVerify("mydata")
	// mount(8) hands nofail and _netdev to helpers: ovl ignored them.
	if lines := e.rlLog("ignoring options:"); len(lines) != 1 || !strings.Contains(lines[0], "nofail,_netdev") {
		t.Errorf("log: want one line ignoring nofail,_netdev, got %q", lines)
	}
}

// mount.fuse3's "TYPE#SOURCE" form names ovl by its path: an fstab line
// and "mount -t fuse" work wherever ovl is, with nothing installed.
func TestMountFstabTypeSource(t *testing.T) {
	e := newMHEnv(t)
	e.mhScript(`
echo "$OVL#ovl $B/m fuse ` + mhOpts + `,` + mhFstabOpts + ` 0 0" > fstab
mount -T fstab "$B/m"
mount -t fuse "$OVL#ovl" "$B/m2" -o lowerdir="$B/l"
cat m2/a > read2.txt
umount m2
` + mhCheck)
	e.mhVerify("ovl")
	if b, _ := os.ReadFile(e.path("read2.txt")); string(b) != "a\n" {
		t.Errorf("mount -t fuse: m2/a read %q", b)
	}
}

// Called directly, as mount.fuse3 or a mount.fuse.ovl helper is, ovl
// takes every option that mount(8), fstab, systemd and mount.fuse3 may
// leave in, and logs them as ignored; "-f" (mount(8)'s fake mode) checks
// and mounts nothing.
func TestMountOptionsForOthers(t *testing.T) {
	e := newMHEnv(t)
	if err := os.Symlink(e.bin, e.path("bin/"+helperName)); err != nil {
		t.Fatal(err)
	}
	const others = "rw,dev,suid,exec,async,defaults,auto,noauto,nofail,_netdev,user,users,nouser,owner,group," +
		"x-systemd.requires=a.mount,x-systemd.automount,x-mount.mkdir=0755,comment=x,helper=ovl"
	e.mhScript(`
"$B/bin/` + helperName + `" ovl "$B/m" -f -o ` + mhOpts + `,` + others + `
if grep -q " $B/m " /proc/self/mountinfo; then echo "mounted in fake mode"; exit 1; fi
"$B/bin/` + helperName + `" ovl "$B/m" -n -s -v -o ` + mhOpts + `,` + others + ` -t fuse.ovl
` + mhCheck + `
"$OVL" ovl "$B/m" -o ` + mhOpts + `,` + others + `
` + mhCheck)
	e.mhVerify("ovl")
	lines := e.rlLog("ignoring options:")
	want := "ignoring options: async,defaults,auto,noauto,nofail,_netdev,user,users,nouser,owner,group," +
		"x-systemd.requires=a.mount,x-systemd.automount,x-mount.mkdir=0755,comment=x,helper=ovl"
	if len(lines) != 2 || !strings.HasSuffix(lines[0], want) || !strings.HasSuffix(lines[1], want) {
		t.Errorf("log: want two lines ending %q, got %q", want, lines)
	}
}

// A "user" fstab line: the user mounts it with mount(8), which runs
// /sbin/mount.fuse.ovl as the user with an empty environment (ovl then
// finds fusermount3 on the standard PATH), and unmounts it with umount(8).
// The scenario's fstab is bind-mounted over /etc/fstab in its private
// mount namespace: mount(8) reads only /etc/fstab for users.
func TestMountFstabUser(t *testing.T) {
	e := newMHEnv(t)
	e.mkdirs("sbin")
	if err := os.Symlink(e.bin, e.path("sbin/"+helperName)); err != nil {
		t.Fatal(err)
	}
	e.mhScript(`
mount -t overlay overlay -o lowerdir="$B/sbin":/usr/sbin /usr/sbin
echo "mydata $B/m fuse.ovl ` + mhOpts + `,noauto,user 0 0" > fstab
mount --bind fstab /etc/fstab
$AS_USER mount "$B/m"
grep " $B/m " /proc/self/mountinfo > mountinfo.txt
$AS_USER sh -euc 'cat m/a > read.txt; echo new > m/new'
$AS_USER "$OVL" stats m > stats.txt
pid=$(sed 's/.*"pid":\([0-9]*\).*/\1/' stats.txt)
$AS_USER umount "$B/m"
n=0
while kill -0 "$pid" 2>/dev/null; do
	n=$((n+1))
	if [ $n -gt 1200 ]; then echo "daemon $pid still running 120s after umount"; exit 1; fi
	sleep 0.1
done
`)
	e.mhVerify("mydata")
	b, _ := os.ReadFile(e.path("mountinfo.txt"))
	for _, flag := range []string{"nosuid", "nodev", "noexec"} {
		if !strings.Contains(string(b), ","+flag+",") {
			t.Errorf("a user mount lacks %s: %s", flag, b)
		}
	}
	if st, err := os.Stat(e.path("u/new")); err == nil && st.Sys().(*syscall.Stat_t).Uid != uint32(e.uid) {
		t.Errorf("u/new owned by %d, want the user %d", st.Sys().(*syscall.Stat_t).Uid, e.uid)
	}
}
