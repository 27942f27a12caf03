package format

import "testing"

// TestAUFSRule checks the AUFS rule of aufs.go: which names are markers,
// what they hide, which xattrs mark a directory opaque and which are private.
func TestAUFSRule(t *testing.T) {
	var m Markers
	for name, marker := range map[string]bool{
		"f": false, ".wh": false, ".whf": false, "a.wh.f": false,
		".wh.": true, ".wh.f": true, ".wh..wh..opq": true, ".wh..opq": true, ".wh..wh.x": true,
	} {
		if got := m.Add(name); got != marker || IsAUFSName(name) != marker {
			t.Errorf("%q: Add %v, IsAUFSName %v, want %v", name, got, IsAUFSName(name), marker)
		}
	}
	if !m.Opaque {
		t.Error(".wh..wh..opq does not make the directory opaque")
	}
	for name, hidden := range map[string]bool{"f": true, ".wh..opq": true, ".opq": true, ".wh.x": true, "": false, "g": false} {
		if m.Hides(name) != hidden {
			t.Errorf("Hides(%q) = %v, want %v", name, !hidden, hidden)
		}
	}
	if h, ok := AUFSWhiteoutOf(".wh..wh..opq"); !ok || h != ".wh..opq" {
		t.Errorf("AUFSWhiteoutOf(.wh..wh..opq) = %q, %v", h, ok)
	}
	for v, opaque := range map[string]bool{"y": true, "yes": true, "y\x00": true, "": false, "x": false, "n": false,
		"y234567890123456": true, "y2345678901234567": false} {
		if ParseForeignOpaque([]byte(v)) != opaque {
			t.Errorf("ParseForeignOpaque(%q) = %v, want %v", v, !opaque, opaque)
		}
	}
	for name, foreign := range map[string]bool{FuseOverlayfsOpaque: true, FuseOverlayfsPrefix + "origin": true,
		TrustedPrefix + Opaque: false, UserPrefix + Opaque: false, "user.r": false} {
		if IsForeign(name) != foreign {
			t.Errorf("IsForeign(%q) = %v", name, !foreign)
		}
		for _, ux := range []bool{false, true} {
			n := NewNames(ux)
			if foreign {
				if !n.IsPrivate(name) {
					t.Errorf("userxattr %v: %q not private", ux, name)
				}
				if _, ok := n.Unescape(name); ok {
					t.Errorf("userxattr %v: %q shown", ux, name)
				}
			}
		}
	}
	// The other namespace's overlay.opaque is no mark of ours (see aufs.go).
	if _, ok := NewNames(false).Unescape(UserPrefix + Opaque); !ok {
		t.Error("user.overlay.opaque hidden with trusted.overlay.*")
	}
	if _, ok := NewNames(true).Unescape(TrustedPrefix + Opaque); !ok {
		t.Error("trusted.overlay.opaque hidden with userxattr")
	}
}
