package format

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOriginRoundTrip(t *testing.T) {
	uuid := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	handle := []byte{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11, 0x22}
	v := EncodeOrigin(1, handle, uuid)
	if len(v) != 21+len(handle) || v[0] != 0 || v[1] != 0xfb || int(v[2]) != len(v) || v[4] != 1 {
		t.Fatalf("header of %x is not the kernel's ovl_fb", v)
	}
	typ, h, u, ok := DecodeOrigin(v)
	if !ok || typ != 1 || !bytes.Equal(h, handle) || u != uuid {
		t.Fatalf("decode(%x) = %d %x %x %v", v, typ, h, u, ok)
	}
	for _, bad := range [][]byte{nil, {}, v[:20], append([]byte{1}, v[1:]...)} {
		if _, _, _, ok := DecodeOrigin(bad); ok {
			t.Errorf("decode(%x) accepted a malformed origin", bad)
		}
	}
}

func TestNamesEscape(t *testing.T) {
	for _, userxattr := range []bool{false, true} {
		n := NewNames(userxattr)
		p := n.Prefix()
		if got := n.Escape(p + "opaque"); got != p+"overlay.opaque" {
			t.Errorf("Escape(%sopaque) = %q", p, got)
		}
		if got := n.Escape("user.foo"); got != "user.foo" && !userxattr {
			t.Errorf("Escape(user.foo) = %q", got)
		}
		if _, ok := n.Unescape(p + "opaque"); ok {
			t.Errorf("%sopaque is the overlay's own and must stay hidden", p)
		}
		if got, ok := n.Unescape(p + "overlay.opaque"); !ok || got != p+"opaque" {
			t.Errorf("Unescape(%soverlay.opaque) = %q, %v", p, got, ok)
		}
		if !n.IsPrivate(p+"origin") || n.IsPrivate(p+"overlay.origin") || n.IsPrivate("security.capability") {
			t.Errorf("IsPrivate wrong for prefix %s", p)
		}
	}
}

func TestParseOpaque(t *testing.T) {
	for _, c := range []struct {
		v    string
		y, x bool
	}{{"y", true, false}, {"x", false, true}, {"", false, false}, {"n", false, false},
		// One byte exactly, as the kernel reads it (ovl_get_dir_xattr_val).
		{"yes", false, false}, {"y\x00", false, false}, {"xx", false, false}} {
		y, x := ParseOpaque([]byte(c.v))
		if y != c.y || x != c.x {
			t.Errorf("ParseOpaque(%q) = %v,%v want %v,%v", c.v, y, x, c.y, c.x)
		}
	}
}

// TestParseRedirect holds the kernel's reading of overlay.redirect
// (ovl_get_redirect_xattr), checked on 6.18 by TestKernelDamagedMetadata.
func TestParseRedirect(t *testing.T) {
	for _, c := range []struct {
		v, want string
		err     error
	}{
		{"d", "d", nil}, {"/a/b", "/a/b", nil}, {"d\x00junk", "d", nil}, {"/a\x00/", "/a", nil},
		{"\x00d", "", nil},                             // the empty name: the walk refuses it (EACCES)
		{"..", "..", nil}, {"/../etc", "/../etc", nil}, // the walk refuses them
		{"", "", unix.EINVAL}, {"/", "", unix.EINVAL}, {"/a/", "", unix.EINVAL},
		{"/a//b", "", unix.EINVAL}, {"a/b", "", unix.EINVAL}, {"../etc", "", unix.EINVAL},
	} {
		got, err := ParseRedirect([]byte(c.v))
		if got != c.want || err != c.err {
			t.Errorf("ParseRedirect(%q) = %q, %v; want %q, %v", c.v, got, err, c.want, c.err)
		}
	}
	for _, c := range []string{"", ".", ".."} {
		if RedirectComponentOK(c) {
			t.Errorf("RedirectComponentOK(%q) = true", c)
		}
	}
}

// TestParseMetacopy holds the kernel's sizes of overlay.metacopy
// (ovl_check_metacopy_xattr).
func TestParseMetacopy(t *testing.T) {
	for _, c := range []struct {
		v   []byte
		mc  bool
		err error
	}{
		{nil, false, nil}, {[]byte{}, true, nil}, {[]byte("ab"), false, unix.EIO},
		{[]byte{0, 4, 0, 0}, true, nil}, {make([]byte, 300), true, nil},
	} {
		mc, err := ParseMetacopy(c.v)
		if mc != c.mc || err != c.err {
			t.Errorf("ParseMetacopy(%q) = %v, %v; want %v, %v", c.v, mc, err, c.mc, c.err)
		}
	}
}
