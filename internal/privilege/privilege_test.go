package privilege

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ovl-project/ovl/internal/testutil"
)

const childEnv = "OVL_PRIVILEGE_CHILD"

// As root SysAdmin says yes; root in a user namespace, an unprivileged
// user and root without CAP_SYS_ADMIN get no, each with its reason. The
// test binary asks in each context.
func TestSysAdmin(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		ok, why, err := SysAdmin()
		userns, _ := InUserNamespace()
		fmt.Printf("%v|%s|%v|userns=%v\n", ok, why, err, userns)
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		testutil.Skip(t, "needs root")
	}
	if ok, why, err := SysAdmin(); !ok || err != nil {
		t.Fatalf("as root: %v, %q, %v", ok, why, err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		argv []string
		want string
	}{
		{"root", nil, "true||<nil>|userns=false"},
		{"user namespace", []string{"unshare", "--user", "--map-root-user", "--"}, "false|no CAP_SYS_ADMIN in the initial user namespace (the process runs in a user namespace)|<nil>|userns=true"},
		{"unprivileged", []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}, "false|no CAP_SYS_ADMIN in the initial user namespace (an unprivileged process)|<nil>|userns=false"},
		{"root without CAP_SYS_ADMIN", []string{"setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"}, "false|no CAP_SYS_ADMIN in the initial user namespace (an unprivileged process)|<nil>|userns=false"},
	} {
		argv := append(append([]string{}, c.argv...), self, "-test.run=^TestSysAdmin$", "-test.count=1")
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), childEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			testutil.Skip(t, "%s: %v: %s", c.name, err, out)
			continue
		}
		if got := strings.TrimSpace(string(out)); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}
