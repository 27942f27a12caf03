package mountopt

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/ovl-project/ovl/idmap"
)

func TestSplit(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"a,b", []string{"a", "b"}},
		{`a\,b,c`, []string{`a\,b`, "c"}},
		{`a\\,b`, []string{`a\\`, "b"}},
		{`context="u:r:t:s0:c1,c2",ro`, []string{`context="u:r:t:s0:c1,c2"`, "ro"}},
		{"", []string{""}},
		{"a,", []string{"a", ""}},
	}
	for _, c := range cases {
		got, err := split(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("split(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{`a\`, `context="x`} {
		if _, err := split(bad); err == nil {
			t.Errorf("split(%q) succeeded", bad)
		}
	}
}

func TestSplitLowers(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"a", []string{"a"}},
		{"a:b:c", []string{"a", "b", "c"}},
		{`a\:b:c`, []string{"a:b", "c"}},
		{`a\,b`, []string{"a,b"}},
		{`a\\:b`, []string{`a\`, "b"}},
		{`/x y/a`, []string{"/x y/a"}},
	}
	for _, c := range cases {
		got, err := splitLowers(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("splitLowers(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for in, words := range map[string]string{
		"a::b": "data-only",
		"a:":   "empty layer",
		":a":   "empty layer",
	} {
		_, err := splitLowers(in)
		if err == nil || !strings.Contains(err.Error(), words) {
			t.Errorf("splitLowers(%q) error %v, want %q", in, err, words)
		}
	}
}

func mustParse(t *testing.T, root bool, opts ...string) *Result {
	t.Helper()
	r, err := Parse(opts, root)
	if err != nil {
		t.Fatalf("Parse(%q): %v", opts, err)
	}
	return r
}

func TestParseLayers(t *testing.T) {
	r := mustParse(t, true, `lowerdir=/l1:/l\:2,upperdir=/u\,x,workdir=/w`)
	if !reflect.DeepEqual(r.Overlay.Lowers, []string{"/l1", "/l:2"}) || r.Overlay.Upper != "/u,x" || r.Overlay.Work != "/w" {
		t.Errorf("got %+v", r.Overlay)
	}
	if r.FUSE.ReadOnly {
		t.Error("read-only with an upper")
	}
	// Several -o strings accumulate; later options win.
	r = mustParse(t, true, "lowerdir=/a", "upperdir=/u,workdir=/w", "lowerdir=/b:/c")
	if !reflect.DeepEqual(r.Overlay.Lowers, []string{"/b", "/c"}) || r.Overlay.Upper != "/u" {
		t.Errorf("got %+v", r.Overlay)
	}
	// One lower without upper: a read-only view.
	r = mustParse(t, true, "lowerdir=/a")
	if !r.FUSE.ReadOnly || r.Overlay.Upper != "" {
		t.Errorf("one lower: %+v %+v", r.Overlay, r.FUSE)
	}
	// lowerdir+ appends one path, colons included.
	r = mustParse(t, true, "lowerdir+=/a:b,lowerdir+=/c")
	if !reflect.DeepEqual(r.Overlay.Lowers, []string{"/a:b", "/c"}) {
		t.Errorf("lowerdir+: %q", r.Overlay.Lowers)
	}
	// Empty items are skipped, as the kernel does.
	mustParse(t, true, "lowerdir=/a,,ro,")
}

func TestParseDefaults(t *testing.T) {
	r := mustParse(t, true, "lowerdir=/a")
	if !r.FUSE.AllowOther || r.FUSE.NoSuid || r.FUSE.NoDev || r.FUSE.NoExec {
		t.Errorf("root defaults: %+v", r.FUSE)
	}
	r = mustParse(t, false, "lowerdir=/a")
	if r.FUSE.AllowOther {
		t.Errorf("user defaults: %+v", r.FUSE)
	}
	r = mustParse(t, true, "lowerdir=/a,nosuid,nodev,noexec")
	if !r.FUSE.NoSuid || !r.FUSE.NoDev || !r.FUSE.NoExec {
		t.Errorf("nosuid,nodev,noexec: %+v", r.FUSE)
	}
	r = mustParse(t, true, "lowerdir=/a,nosuid,nodev,noexec,suid,dev,exec")
	if r.FUSE.NoSuid || r.FUSE.NoDev || r.FUSE.NoExec {
		t.Errorf("suid,dev,exec: %+v", r.FUSE)
	}
	r = mustParse(t, false, "lowerdir=/a,allow_root,fsname=my\\,fs,debug,log=/tmp/x.log")
	if !r.FUSE.AllowOther || r.FUSE.FsName != "my,fs" || !r.FUSE.Debug || r.Log != "/tmp/x.log" {
		t.Errorf("flags: %+v %q", r.FUSE, r.Log)
	}
	r = mustParse(t, true, "lowerdir=/a,upperdir=/u,workdir=/w,ro")
	if !r.FUSE.ReadOnly {
		t.Error("ro ignored")
	}
	r = mustParse(t, true, "lowerdir=/a,upperdir=/u,workdir=/w,ro,rw")
	if r.FUSE.ReadOnly {
		t.Error("rw after ro ignored")
	}
}

func TestParseOverlayFlags(t *testing.T) {
	base := "lowerdir=/a,upperdir=/u,workdir=/w,"
	for opt, want := range map[string][2]bool{ // [UserXattr, Volatile]
		"userxattr":              {true, false},
		"volatile":               {false, true},
		"fsync=volatile":         {false, true},
		"fsync=0":                {false, true},
		"fsync=ordered":          {false, false},
		"fsync=1":                {false, false},
		"volatile,fsync=ordered": {false, false},
	} {
		r := mustParse(t, true, base+opt)
		if got := [2]bool{r.Overlay.UserXattr, r.Overlay.Volatile}; got != want {
			t.Errorf("%s: [userxattr volatile] = %v, want %v", opt, got, want)
		}
	}
}

// fsync= takes the kernel's auto, strict and volatile (ordered is auto's
// alias), and the last of fsync= and volatile wins, as in the kernel.
func TestParseFsync(t *testing.T) {
	base := "lowerdir=/a,upperdir=/u,workdir=/w,"
	for opt, want := range map[string][2]bool{ // [Volatile, FsyncStrict]
		"":                      {false, false},
		"fsync=auto":            {false, false},
		"fsync=ordered":         {false, false},
		"fsync=strict":          {false, true},
		"fsync=volatile":        {true, false},
		"volatile":              {true, false},
		"fsync=strict,volatile": {true, false},
		"volatile,fsync=strict": {false, true},
		"fsync=strict,fsync=1":  {false, false},
	} {
		r := mustParse(t, true, base+opt)
		if got := [2]bool{r.Overlay.Volatile, r.Overlay.FsyncStrict}; got != want {
			t.Errorf("%q: [volatile strict] = %v, want %v", opt, got, want)
		}
	}
	for opt, want := range map[string]string{"": "", "volatile_recovery=check": "", "volatile_recovery=accept": "accept", "volatile_recovery=discard": "discard"} {
		if got := mustParse(t, true, base+opt).Overlay.VolatileRecovery; got != want {
			t.Errorf("%q: VolatileRecovery = %q, want %q", opt, got, want)
		}
	}
}

// userxattr and nouserxattr are the caller's choice of xattr namespace,
// the last one winning; without either the mount program chooses.
func TestParseXattrNamespace(t *testing.T) {
	for opts, want := range map[string][2]bool{ // [UserXattr, XattrChosen]
		"":                       {false, false},
		",userxattr":             {true, true},
		",nouserxattr":           {false, true},
		",userxattr,nouserxattr": {false, true},
		",nouserxattr,userxattr": {true, true},
	} {
		r := mustParse(t, false, "lowerdir=/a"+opts)
		if got := [2]bool{r.Overlay.UserXattr, r.XattrChosen}; got != want {
			t.Errorf("%q: [UserXattr XattrChosen] = %v, want %v", opts, got, want)
		}
	}
	if _, err := Parse([]string{"lowerdir=/a,nouserxattr=1"}, true); err == nil {
		t.Error("nouserxattr=1 accepted")
	}
}

func TestParseRedirectDir(t *testing.T) {
	for _, v := range []string{"on", "follow", "nofollow", "off"} {
		r := mustParse(t, true, "lowerdir=/a,redirect_dir="+v)
		if r.Overlay.RedirectDir != v {
			t.Errorf("redirect_dir=%s: RedirectDir = %q", v, r.Overlay.RedirectDir)
		}
	}
	if r := mustParse(t, true, "lowerdir=/a"); r.Overlay.RedirectDir != "" {
		t.Errorf("default RedirectDir = %q, want empty (the overlay's default)", r.Overlay.RedirectDir)
	}
}

func TestParseAccepted(t *testing.T) {
	for _, opt := range []string{
		"redirect_dir=off", "redirect_dir=nofollow", "index=off", "index=on", "metacopy=off", "metacopy=on",
		"nfs_export=off", "uuid=null", "uuid=off", "verity=off", "xino=off", "xino=auto",
		"default_permissions", "noxattrs=0", "xattr_permissions=0", "xattr_permissions=1", "xattr_permissions=2",
		"uidmapping=:0:100000:65536", "gidmapping=0:1:1", "squash_to_root", "squash_to_uid=7", "squash_to_gid=8",
	} {
		if _, err := Parse([]string{"lowerdir=/a," + opt}, true); err != nil {
			t.Errorf("%s refused: %v", opt, err)
		}
	}
}

func TestParseIgnored(t *testing.T) {
	for _, opt := range []string{
		"threaded=1", "writeback=0", "timeout=5", "fast_ino=1", "static_nlink", "noacl",
		"noatime", "relatime", "atime", "strictatime", "nodiratime",
		`context="system_u:object_r:container_file_t:s0:c1,c2"`, "fscontext=x", "defcontext=x", "rootcontext=x",
		"splice_read", "splice_write", "splice_move", "kernel_cache",
		// mount(8), fstab, systemd and mount.fuse3.
		"defaults", "auto", "noauto", "nofail", "_netdev", "user", "user=joe", "nouser", "users", "owner", "group",
		"x-systemd.automount", "x-systemd.requires=a.mount", "x-systemd.mount-timeout=30", "x-mount.mkdir=0755",
		"x-initrd.mount", "x-", "comment=systemd.automount", "helper=ovl", "uhelper=udisks", "async",
	} {
		r, err := Parse([]string{"lowerdir=/a," + opt}, true)
		if err != nil {
			t.Errorf("%s refused: %v", opt, err)
			continue
		}
		if len(r.Ignored) != 1 || r.Ignored[0] != opt {
			t.Errorf("%s: Ignored = %q", opt, r.Ignored)
		}
	}
	if len(IgnoredOptions()) == 0 {
		t.Error("IgnoredOptions is empty")
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ opts, want string }{
		{"lowerdir=/a,bogus", `unknown option "bogus"`},
		{"lowerdir=/a,bogus=1", `unknown option "bogus"`},
		{"upperdir=/u,workdir=/w", "missing lowerdir"},
		{"", "missing lowerdir"},
		{"lowerdir=/a,lowerdir=", "missing lowerdir"},
		{"lowerdir=/a,upperdir=/u", "upperdir needs a workdir"},
		{"lowerdir=/a,workdir=/w", "workdir needs an upperdir"},
		{"lowerdir=/a::/b", "data-only"},
		{"lowerdir=/a:", "empty layer"},
		{"lowerdir=/a,lowerdir+=/b", "cannot be mixed"},
		{"lowerdir+=/b,lowerdir=/a", "cannot be mixed"},
		{"lowerdir", `option "lowerdir" needs a value`},
		{"lowerdir=/a,upperdir", `option "upperdir" needs a value`},
		{"lowerdir=/a,userxattr=1", `option "userxattr" takes no value`},
		{"lowerdir=/a,index", `option "index" needs a value`},
		{"lowerdir=/a,index=maybe", `invalid value "maybe" (want one of off, on)`},
		{"lowerdir=/a,redirect_dir=sometimes", `option "redirect_dir" has an invalid value "sometimes"`},
		{"lowerdir=/a,verity=on", `option "verity=on" is not supported yet (ovl checks no fs-verity digests); use verity=off`},
		{"lowerdir=/a,nfs_export=on", `option "nfs_export=on" is not supported yet`},
		{"lowerdir=/a,uuid=on", `option "uuid=on" is not supported yet (ovl writes no overlay.uuid); use uuid=off`},
		{"lowerdir=/a,uuid=auto", `option "uuid=auto" is not supported yet`},
		{"lowerdir=/a,verity=on", `option "verity=on" is not supported yet`},
		{"lowerdir=/a,verity=require", `option "verity=require" is not supported yet`},
		{"lowerdir=/a,xino=on", `option "xino=on" is not supported yet`},
		{"lowerdir=/a,fsync=sometimes", `option "fsync" has an invalid value "sometimes"`},
		{"lowerdir=/a,volatile_recovery=maybe", `option "volatile_recovery" has an invalid value "maybe"`},
		{"lowerdir=/a,noxattrs=1", `option "noxattrs=1" is not supported yet`},
		{"lowerdir=/a,xattr_permissions=3", `option "xattr_permissions" has an invalid value "3" (want one of 0, 1, 2)`},
		{"lowerdir=/a,xattr_permissions", `option "xattr_permissions" needs a value`},
		{"lowerdir=/a,datadir+=/d", `option "datadir+" is not supported`},
		{"lowerdir=/a,uidmapping", `option "uidmapping" needs a value`},
		{"lowerdir=/a,uidmapping=", `option "uidmapping": mapping "" is empty: want DISK:SHOWN:SIZE`},
		{"lowerdir=/a,uidmapping=:0:100000", `option "uidmapping": mapping ":0:100000" has 2 numbers: want groups of three`},
		{"lowerdir=/a,gidmapping=:0:100000:65536:1", `option "gidmapping": mapping ":0:100000:65536:1" has 4 numbers`},
		{"lowerdir=/a,uidmapping=:0:x:1", `option "uidmapping": mapping ":0:x:1": "x" is not an ID`},
		{"lowerdir=/a,uidmapping=0:1000:0", `range 0:1000:0 has size 0`},
		{"lowerdir=/a,uidmapping=:0:100000:65536:1000:200000:10", `ranges 0:100000:65536 and 1000:200000:10 overlap`},
		{"lowerdir=/a,gidmapping=0:10:5:100:12:1", `ranges 0:10:5 and 100:12:1 overlap`},
		{"lowerdir=/a,squash_to_root=1", `option "squash_to_root" takes no value`},
		{"lowerdir=/a,squash_to_uid", `option "squash_to_uid" needs a value`},
		{"lowerdir=/a,squash_to_uid=-1", `option "squash_to_uid": "-1" is not an ID`},
		{"lowerdir=/a,squash_to_gid=root", `option "squash_to_gid": "root" is not an ID`},
		{"lowerdir=/a,ino32_t", `option "ino32_t" is not supported`},
		{"lowerdir=/a,plugins=x.so", `option "plugins" is not supported`},
		{"lowerdir=/a,defaults=1", `option "defaults" takes no value`},
		{"lowerdir=/a,xsystemd.automount", `unknown option "xsystemd.automount"`},
		{"lowerdir=/a,sync", `unknown option "sync"`},
		{`lowerdir=/a\`, "lone backslash"},
	}
	for _, c := range cases {
		_, err := Parse([]string{c.opts}, true)
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want error %q", c.opts, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) error %q, want it to contain %q", c.opts, err, c.want)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q) error has several lines: %q", c.opts, err)
		}
	}
}

func TestTooManyLowers(t *testing.T) {
	_, err := Parse([]string{"lowerdir=" + strings.Repeat("/a:", maxStack) + "/a"}, true)
	if err == nil || !strings.Contains(err.Error(), "too many lower layers") {
		t.Errorf("got %v", err)
	}
}

// Every table entry must be consistent: a refused value needs a reason and
// a suggestion that is itself accepted.
func TestTableConsistent(t *testing.T) {
	for name, o := range options {
		if o.values == nil {
			continue
		}
		refuses := false
		for _, ok := range o.values {
			refuses = refuses || !ok
		}
		if !refuses {
			continue
		}
		if o.lacks == "" || o.use == "" {
			t.Errorf("%s: refused values need lacks and use", name)
			continue
		}
		if _, err := Parse([]string{"lowerdir=/a," + o.use}, true); err != nil {
			t.Errorf("%s: suggestion %q is refused: %v", name, o.use, err)
		}
	}
}

// The README's option tables must name every option of the table, so that
// a new or flipped entry is documented.
func TestREADMENamesEveryOption(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Skipf("no README: %v", err)
	}
	readme := string(data)
	for name := range options {
		if !strings.Contains(readme, "`"+name) {
			t.Errorf("README.md does not mention option %q", name)
		}
	}
}

func TestParseIDs(t *testing.T) {
	r := mustParse(t, true, "lowerdir=/a,upperdir=/u,workdir=/w,,volatile,uidmapping=:0:100000:65536,gidmapping=:0:200000:1:1:300000:65535,xattr_permissions=2")
	m := r.Overlay.IDs
	if m == nil {
		t.Fatal("IDs = nil")
	}
	if got := idmap.FormatRanges(m.UIDs); got != "0:100000:65536" {
		t.Errorf("UIDs = %s", got)
	}
	if got := idmap.FormatRanges(m.GIDs); got != "0:200000:1:1:300000:65535" {
		t.Errorf("GIDs = %s", got)
	}
	if m.SquashUID != nil || m.SquashGID != nil || m.OverflowUID == 0 || m.OverflowGID == 0 {
		t.Errorf("squash %v %v, overflow %d %d", m.SquashUID, m.SquashGID, m.OverflowUID, m.OverflowGID)
	}
	if r.Overlay.XattrPermissions != 2 {
		t.Errorf("XattrPermissions = %d", r.Overlay.XattrPermissions)
	}
	// A later mapping replaces an earlier one, as every later option wins.
	r = mustParse(t, true, "lowerdir=/a,uidmapping=0:1:1,uidmapping=0:5:2")
	if got := idmap.FormatRanges(r.Overlay.IDs.UIDs); got != "0:5:2" {
		t.Errorf("later uidmapping: UIDs = %s", got)
	}
	if r := mustParse(t, true, "lowerdir=/a"); r.Overlay.IDs != nil || r.Overlay.XattrPermissions != 0 {
		t.Errorf("no ID options: IDs = %v, XattrPermissions = %d", r.Overlay.IDs, r.Overlay.XattrPermissions)
	}
	// squash_to_uid/gid win over squash_to_root in either order.
	for _, opts := range []string{"lowerdir=/a,squash_to_root,squash_to_uid=7", "lowerdir=/a,squash_to_uid=7,squash_to_root"} {
		m := mustParse(t, true, opts).Overlay.IDs
		if m == nil || m.SquashUID == nil || *m.SquashUID != 7 || m.SquashGID == nil || *m.SquashGID != 0 {
			t.Errorf("%s: squash uid %v gid %v, want 7 and 0", opts, m.SquashUID, m.SquashGID)
		}
	}
	m = mustParse(t, true, "lowerdir=/a,squash_to_gid=9").Overlay.IDs
	if m == nil || m.SquashUID != nil || m.SquashGID == nil || *m.SquashGID != 9 {
		t.Errorf("squash_to_gid=9 alone: %v %v", m.SquashUID, m.SquashGID)
	}
}
