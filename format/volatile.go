package format

// The record of a volatile ovl mount (ovl's own, not the kernel's): what a
// later mount needs to decide whether the upper a volatile mount left after
// an unclean stop can be trusted. Both files live in
// work/incompat/volatile/, next to the kernel's "dirty" marker, so the
// kernel (which refuses any entry in work/incompat/) and older ovl
// versions still refuse the upper while they exist.
//
//   - VolatileRecordName holds the identity of the upper's filesystem at the
//     mount: boot id, st_dev, the mount's id, the filesystem's fsid and
//     UUID (VolatileRecord, text "key value" lines after a version line).
//   - VolatileJournalName lists the upper objects the mount changed, one
//     line each, appended without fsync when the mount first changes an
//     object: "h TYPE HEX" is a file handle (name_to_handle_at) of a file
//     or directory whose data, metadata or entries changed; "syncfs REASON"
//     says that the mount stopped tracking objects one by one (past its
//     bound, or a change only a syncfs makes durable), so only a syncfs of
//     the whole filesystem covers it. The page cache outlives the daemon,
//     so the journal survives a kill of the daemon, not a crash of the
//     machine (after which the boot id differs anyway).
//
// A clean unmount syncs every recorded object and only then removes
// work/incompat/volatile (and work/incompat when empty).

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Names of ovl's files in work/incompat/volatile/.
const (
	VolatileRecordName  = "ovl-record"
	VolatileJournalName = "ovl-journal"
	// VolatileFailedName holds the error of a sync that failed at the
	// clean end of a mount. That error has been reported once and a later
	// fsync will not report it again, so it alone proves writes lost.
	VolatileFailedName = "ovl-sync-failed"
)

const volatileRecordVersion = "ovl-volatile-record 1"

// Mount id kinds of VolatileRecord.MountIDKind.
const (
	// MountIDUnique is statx's STATX_MNT_ID_UNIQUE (Linux 6.8+): never
	// reused during a boot.
	MountIDUnique = "unique"
	// MountIDReusable is the mountinfo id (STATX_MNT_ID), which a later
	// mount may reuse: a weaker check, used only where the kernel lacks
	// the unique one.
	MountIDReusable = "reusable"
)

// VolatileRecord is the identity of the upper's filesystem as a volatile
// mount saw it when it started.
type VolatileRecord struct {
	BootID      string // /proc/sys/kernel/random/boot_id
	Dev         uint64 // st_dev of the upper directory
	MountID     uint64 // id of the mount the upper path resolves on
	MountIDKind string // MountIDUnique or MountIDReusable
	FSID        string // statfs f_fsid, hex
	UUID        string // FS_IOC_GETFSUUID, hex; "" where the filesystem has none
	PID         int    // the daemon that wrote it (informational)
}

// VolatileIdentity returns the identity of the upper directory at path,
// whose open descriptor (O_PATH is fine) is fd.
func VolatileIdentity(path string, fd int) (VolatileRecord, error) {
	var r VolatileRecord
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return r, fmt.Errorf("read boot id: %w", err)
	}
	r.BootID = strings.TrimSpace(string(b))
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return r, fmt.Errorf("stat upper: %w", err)
	}
	r.Dev = st.Dev
	// The path, not fd: fd may come from a detached clone of the mount.
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID_UNIQUE, &stx); err == nil && stx.Mask&unix.STATX_MNT_ID_UNIQUE != 0 {
		r.MountID, r.MountIDKind = stx.Mnt_id, MountIDUnique
	} else if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_MNT_ID, &stx); err == nil && stx.Mask&unix.STATX_MNT_ID != 0 {
		r.MountID, r.MountIDKind = stx.Mnt_id, MountIDReusable
	} else {
		return r, fmt.Errorf("statx mount id of %s: %v", path, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return r, fmt.Errorf("statfs upper: %w", err)
	}
	r.FSID = fmt.Sprintf("%08x%08x", uint32(sfs.Fsid.Val[0]), uint32(sfs.Fsid.Val[1]))
	if u, ok := FSUUID(fd); ok {
		r.UUID = hex.EncodeToString(u[:])
	}
	r.PID = os.Getpid()
	return r, nil
}

// Mismatch says why the filesystem cur (VolatileIdentity now) may not be
// the one r was recorded on, or may have lost writes since; "" when all
// identities match. The PID is not compared.
func (r VolatileRecord) Mismatch(cur VolatileRecord) string {
	switch {
	case r.BootID != cur.BootID:
		return fmt.Sprintf("the machine rebooted since (boot id %s, now %s)", r.BootID, cur.BootID)
	case r.Dev != cur.Dev:
		return fmt.Sprintf("the upper is on another device now (st_dev %d:%d, now %d:%d)",
			unix.Major(r.Dev), unix.Minor(r.Dev), unix.Major(cur.Dev), unix.Minor(cur.Dev))
	case r.MountIDKind != cur.MountIDKind || r.MountID != cur.MountID:
		return fmt.Sprintf("the upper's filesystem was mounted again since (mount id %d, now %d)", r.MountID, cur.MountID)
	case r.FSID != cur.FSID:
		return fmt.Sprintf("the upper's filesystem id changed (fsid %s, now %s)", r.FSID, cur.FSID)
	case r.UUID != cur.UUID:
		return fmt.Sprintf("the upper's filesystem UUID changed (%q, now %q)", r.UUID, cur.UUID)
	}
	return ""
}

// Marshal returns the record's file content.
func (r VolatileRecord) Marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintln(&b, volatileRecordVersion)
	fmt.Fprintf(&b, "boot_id %s\n", r.BootID)
	fmt.Fprintf(&b, "dev %d\n", r.Dev)
	fmt.Fprintf(&b, "mount_id %d\n", r.MountID)
	fmt.Fprintf(&b, "mount_id_kind %s\n", r.MountIDKind)
	fmt.Fprintf(&b, "fsid %s\n", r.FSID)
	fmt.Fprintf(&b, "uuid %s\n", r.UUID)
	fmt.Fprintf(&b, "pid %d\n", r.PID)
	return b.Bytes()
}

// ParseVolatileRecord reads a record written by Marshal.
func ParseVolatileRecord(data []byte) (VolatileRecord, error) {
	var r VolatileRecord
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) == 0 || lines[0] != volatileRecordVersion {
		return r, errors.New("not an ovl volatile record (bad version line)")
	}
	seen := map[string]bool{}
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		var err error
		switch k {
		case "boot_id":
			r.BootID = v
		case "dev":
			r.Dev, err = strconv.ParseUint(v, 10, 64)
		case "mount_id":
			r.MountID, err = strconv.ParseUint(v, 10, 64)
		case "mount_id_kind":
			r.MountIDKind = v
		case "fsid":
			r.FSID = v
		case "uuid":
			r.UUID = v
		case "pid":
			r.PID, err = strconv.Atoi(v)
		default:
			continue // a later version's field
		}
		if err != nil {
			return r, fmt.Errorf("volatile record: %s: %w", k, err)
		}
		seen[k] = true
	}
	for _, k := range []string{"boot_id", "dev", "mount_id", "mount_id_kind", "fsid"} {
		if !seen[k] {
			return r, fmt.Errorf("volatile record: no %s", k)
		}
	}
	return r, nil
}

// ReadVolatileRecord reads VolatileRecordName in the directory volDir
// (work/incompat/volatile; O_PATH is fine). An error wrapping ENOENT means
// no record: a marker the kernel, or an ovl without records, left.
func ReadVolatileRecord(volDir int) (VolatileRecord, error) {
	data, err := readSmall(volDir, VolatileRecordName)
	if err != nil {
		return VolatileRecord{}, err
	}
	return ParseVolatileRecord(data)
}

// WriteVolatileRecord writes r as VolatileRecordName in volDir, whole or not
// at all (a temporary renamed into place). No fsync: see the file comment.
func WriteVolatileRecord(volDir int, r VolatileRecord) error {
	tmp := VolatileRecordName + ".tmp"
	fd, err := OpenAt(volDir, tmp, unix.O_CREAT|unix.O_TRUNC|unix.O_WRONLY|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("write volatile record: %w", err)
	}
	data := r.Marshal()
	_, err = unix.Write(fd, data)
	unix.Close(fd)
	if err == nil {
		err = unix.Renameat(volDir, tmp, volDir, VolatileRecordName)
	}
	if err != nil {
		unix.Unlinkat(volDir, tmp, 0)
		return fmt.Errorf("write volatile record: %w", err)
	}
	return nil
}

// JournalEntry is one line of the journal: a file handle, or a note that
// only a syncfs covers the mount's changes (Syncfs non-empty: the reason).
type JournalEntry struct {
	HandleType int32
	Handle     []byte
	Syncfs     string
}

// Line returns the entry's journal line.
func (e JournalEntry) Line() []byte {
	if e.Syncfs != "" {
		return fmt.Appendf(nil, "syncfs %s\n", strings.ReplaceAll(e.Syncfs, "\n", " "))
	}
	return fmt.Appendf(nil, "h %d %s\n", e.HandleType, hex.EncodeToString(e.Handle))
}

// ReadVolatileJournal reads VolatileJournalName in volDir. A missing
// journal is an empty one. A torn last line (the daemon died while
// appending it) is an error: the caller cannot know what it named.
func ReadVolatileJournal(volDir int) ([]JournalEntry, error) {
	data, err := readSmall(volDir, VolatileJournalName)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []JournalEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "syncfs "):
			out = append(out, JournalEntry{Syncfs: strings.TrimPrefix(l, "syncfs ")})
		case strings.HasPrefix(l, "h "):
			f := strings.Fields(l)
			if len(f) != 3 {
				return nil, fmt.Errorf("volatile journal line %d: %q", n, l)
			}
			t, err1 := strconv.ParseInt(f[1], 10, 32)
			h, err2 := hex.DecodeString(f[2])
			if err1 != nil || err2 != nil || len(h) == 0 {
				return nil, fmt.Errorf("volatile journal line %d: %q", n, l)
			}
			out = append(out, JournalEntry{HandleType: int32(t), Handle: h})
		default:
			return nil, fmt.Errorf("volatile journal line %d: %q", n, l)
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		return nil, errors.New("volatile journal: the last line is torn")
	}
	return out, nil
}

// readSmall reads a whole file name in dirfd (O_PATH is fine).
func readSmall(dirfd int, name string) ([]byte, error) {
	fd, err := OpenAt(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(f); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
