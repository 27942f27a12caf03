package idmap

import (
	"strings"
	"testing"
)

func TestParseRanges(t *testing.T) {
	good := []struct {
		in   string
		want []Range
	}{
		{":0:100000:65536", []Range{{0, 100000, 65536}}},
		{"0:100000:65536", []Range{{0, 100000, 65536}}},
		{":0:1000:1:1:110000:65536", []Range{{0, 1000, 1}, {1, 110000, 65536}}},
		{"4294967295:0:1", []Range{{4294967295, 0, 1}}},
	}
	for _, c := range good {
		got, err := ParseRanges(c.in)
		if err != nil || FormatRanges(got) != FormatRanges(c.want) {
			t.Errorf("ParseRanges(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	bad := []struct{ in, msg string }{
		{"", "empty"},
		{":", "empty"},
		{"0:1000", "groups of three"},
		{":0:1000:1:5", "groups of three"},
		{"0:x:1", `"x" is not an ID`},
		{"0:-1:1", `"-1" is not an ID`},
		{"0::1", `"" is not an ID`},
		{"0:1000:0", "size 0"},
		{"4294967295:0:2", "past ID 2^32-1"},
		{"0:100:10:5:200:10", "overlap"},
		{"0:100:10:50:105:10", "overlap"},
		{"0:100000:65536:0:200000:1", "overlap"},
	}
	for _, c := range bad {
		_, err := ParseRanges(c.in)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParseRanges(%q) error %v, want one containing %q", c.in, err, c.msg)
		}
	}
}

func TestMap(t *testing.T) {
	rs, err := ParseRanges(":0:1000:1:1:110000:65536")
	if err != nil {
		t.Fatal(err)
	}
	m := &Map{UIDs: rs, OverflowUID: 65534, OverflowGID: 65534}
	for _, c := range []struct{ disk, shown uint32 }{{0, 1000}, {1, 110000}, {65536, 175535}, {70000, 65534}} {
		if got := m.ShowUID(c.disk); got != c.shown {
			t.Errorf("ShowUID(%d) = %d, want %d", c.disk, got, c.shown)
		}
	}
	for _, c := range []struct{ shown, disk uint32 }{{1000, 0}, {110000, 1}, {175535, 65536}, {0, 65534}, {1001, 65534}} {
		if got := m.StoreUID(c.shown); got != c.disk {
			t.Errorf("StoreUID(%d) = %d, want %d", c.shown, got, c.disk)
		}
	}
	// No gidmapping: groups are unchanged both ways.
	if m.ShowGID(70000) != 70000 || m.StoreGID(5) != 5 {
		t.Errorf("groups without gidmapping changed")
	}
	u, g := uint32(7), uint32(8)
	m.SquashUID, m.SquashGID = &u, &g
	if m.ShowUID(0) != 7 || m.ShowGID(0) != 8 || m.StoreUID(1000) != 0 || m.MapUID(0) != 1000 {
		t.Errorf("squash: show %d:%d, store %d, map %d", m.ShowUID(0), m.ShowGID(0), m.StoreUID(1000), m.MapUID(0))
	}
}

func TestOverride(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Override
	}{
		{"0:0:0755", Override{0, 0, 0o755}},
		{"5:6:04750", Override{5, 6, 0o4750}},
		{"0:0:100644", Override{0, 0, 0o644}},
		{"0:0:40755", Override{0, 0, 0o755}},
		{"1000:1011:0644:file", Override{1000, 1011, 0o644}},
		{"1005:1016:0600:block-8-0", Override{1005, 1016, 0o600}},
		{"1:2:755\x00", Override{1, 2, 0o755}},
	} {
		got, err := ParseOverride([]byte(c.in))
		if err != nil || got != c.want {
			t.Errorf("ParseOverride(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "0:0", "a:0:755", "0:0:0758", "-1:0:755"} {
		if _, err := ParseOverride([]byte(in)); err == nil {
			t.Errorf("ParseOverride(%q) accepted", in)
		}
	}
	if v := string(Override{5, 6, 0o4750}.Value()); v != "5:6:4750" {
		t.Errorf("Value = %q", v)
	}
	if v := string(Override{0, 0, 0}.Value()); v != "0:0:0000" {
		t.Errorf("Value = %q", v)
	}
}
