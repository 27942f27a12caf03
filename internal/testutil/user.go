package testutil

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// UserName is the unprivileged account tests run programs as. It has no home
// and no login shell; useradd makes it when it is missing.
const UserName = "ovltest"

// User is the unprivileged test account.
type User struct {
	Name     string
	UID, GID int
	// SubUID and SubGID are the first ids of its subordinate ranges in
	// /etc/subuid and /etc/subgid, SubCount their length (rootless
	// container engines map a container's ids 1..SubCount onto them).
	SubUID, SubGID, SubCount int
}

var userMu sync.Mutex

// TestUser returns the unprivileged test account, making it when needed.
func TestUser(t testing.TB) User {
	t.Helper()
	userMu.Lock()
	defer userMu.Unlock()
	u, err := user.Lookup(UserName)
	if err != nil {
		out, err := exec.Command("useradd", "-M", "-r", "-s", "/usr/sbin/nologin", UserName).CombinedOutput()
		// Another test process may have made it meanwhile: look again.
		if u, err = user.Lookup(UserName); err != nil {
			t.Fatalf("useradd %s: %v: %s", UserName, err, out)
		}
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		t.Fatalf("uid of %s: %v", UserName, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		t.Fatalf("gid of %s: %v", UserName, err)
	}
	return User{Name: UserName, UID: uid, GID: gid}
}

// subRangeStart is where the ranges this package adds begin: above the
// 100000-165535 range a rootful "--uidmap 0:100000:65536" maps to, so that a
// test can tell the two apart.
const subRangeStart, subRangeCount = 200000, 65536

// TestUserWithSubIDs is TestUser with subordinate uid and gid ranges of at
// least 65536 ids (what rootless podman needs). It keeps a range the account
// already has and otherwise appends one to /etc/subuid and /etc/subgid.
func TestUserWithSubIDs(t testing.TB) User {
	t.Helper()
	u := TestUser(t)
	userMu.Lock()
	defer userMu.Unlock()
	var err error
	if u.SubUID, err = ensureSubRange("/etc/subuid", u.Name, u.UID); err != nil {
		t.Fatal(err)
	}
	if u.SubGID, err = ensureSubRange("/etc/subgid", u.Name, u.UID); err != nil {
		t.Fatal(err)
	}
	u.SubCount = subRangeCount
	return u
}

// ensureSubRange returns the start of the first range of at least
// subRangeCount ids that file (subuid(5) format) gives the account, adding
// one when there is none.
func ensureSubRange(file, name string, id int) (int, error) {
	data, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		return 0, fmt.Errorf("read %s: %w", file, err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) != 3 || (f[0] != name && f[0] != strconv.Itoa(id)) {
			continue
		}
		start, err1 := strconv.Atoi(f[1])
		count, err2 := strconv.Atoi(f[2])
		if err1 == nil && err2 == nil && count >= subRangeCount {
			return start, nil
		}
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return 0, fmt.Errorf("add a range to %s: %w", file, err)
	}
	line := fmt.Sprintf("%s:%d:%d\n", name, subRangeStart, subRangeCount)
	if len(data) > 0 && data[len(data)-1] != '\n' {
		line = "\n" + line
	}
	_, err = f.WriteString(line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("add a range to %s: %w", file, err)
	}
	return subRangeStart, nil
}
