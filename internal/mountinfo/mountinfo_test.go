package mountinfo

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	table := `22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
101 22 0:55 /sub\040dir /mnt/a\040b rw,relatime shared:1 master:2 - fuse.ovl ovl rw,user_id=0
bad line
7 x 0:1 / / rw - ext4 /dev/vda rw
`
	es, err := Parse(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 {
		t.Fatalf("%d entries, want 2: %+v", len(es), es)
	}
	e := es[1]
	if e.ID != 101 || e.Parent != 22 || e.Dev != "0:55" || e.Root != "/sub dir" || e.MountPoint != "/mnt/a b" ||
		e.FSType != "fuse.ovl" || e.Source != "ovl" || !e.HasOption("relatime") || e.HasOption("ro") || e.SuperOpts[1] != "user_id=0" {
		t.Errorf("parsed %+v", e)
	}
	if got := Unescape(`a\134b\011c\x`); got != "a\\b\tc\\x" {
		t.Errorf("Unescape: %q", got)
	}
}
