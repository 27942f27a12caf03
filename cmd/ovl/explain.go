package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ovl-project/ovl/explain"
	"github.com/ovl-project/ovl/internal/mountinfo"
	"github.com/ovl-project/ovl/internal/mountopt"
	"github.com/ovl-project/ovl/overlay"
)

func init() { layerTools["explain"] = runExplain }

const explainUsage = `Usage: ovl explain [--json] MOUNTPOINT/PATH
       ovl explain [--json] -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,...] PATH

Tells, for each component of PATH, which layer it comes from and why: the
whiteout or opaque directory that hides the layers below, the redirect a
renamed directory follows, the origin of a copied-up object, the index
entry of a hard link, and where a metacopy file's metadata and data are.
The first form asks the ovl daemon serving the mount for its layers; the
second reads the layers given (PATH is then relative to the overlay's root).
Nothing is written.

Flags:
`

// layersRequest asks a daemon on its stats socket (stats.go) for its
// layers instead of its counters.
const layersRequest = "layers\n"

// queryLayers asks the daemon serving mnt for its layers, with the checks
// of queryDaemon: the socket must belong to root or the caller.
func queryLayers(mnt string) (*layersReply, error) {
	m, err := findMount(mnt)
	if err != nil {
		return nil, err
	}
	name, _ := statsSocket(m)
	conn, err := net.DialTimeout("unix", name, statsIOWait)
	if err != nil {
		return nil, fmt.Errorf("no ovl daemon answers for %s: %w", mnt, err)
	}
	defer conn.Close()
	cred, err := peerCred(conn.(*net.UnixConn))
	if err != nil {
		return nil, err
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return nil, fmt.Errorf("the stats socket of %s belongs to uid %d, not to root or you", mnt, cred.Uid)
	}
	conn.SetDeadline(time.Now().Add(statsIOWait))
	if _, err := io.WriteString(conn, layersRequest); err != nil {
		return nil, fmt.Errorf("asking the daemon of %s: %w", mnt, err)
	}
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		return nil, fmt.Errorf("asking the daemon of %s: %w", mnt, err)
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		return nil, fmt.Errorf("reading the layers of %s: %w", mnt, err)
	}
	var l layersReply
	if err := json.Unmarshal(data, &l); err != nil || len(l.Lowers) == 0 {
		return nil, fmt.Errorf("the daemon of %s does not tell its layers (an older ovl?): give them with -o", mnt)
	}
	return &l, nil
}

// layersReply is the part of a mount's configuration that explain needs.
type layersReply struct {
	Lowers      []string `json:"lowers"`
	Upper       string   `json:"upper,omitempty"`
	Work        string   `json:"work,omitempty"`
	UserXattr   bool     `json:"userxattr,omitempty"`
	RedirectDir string   `json:"redirect_dir,omitempty"`
	Metacopy    string   `json:"metacopy,omitempty"`
	Index       string   `json:"index,omitempty"`
}

func newLayersReply(c overlay.Config) *layersReply {
	return &layersReply{Lowers: c.Lowers, Upper: c.Upper, Work: c.Work, UserXattr: c.UserXattr,
		RedirectDir: c.RedirectDir, Metacopy: c.Metacopy, Index: c.Index}
}

func (l *layersReply) config() overlay.Config {
	return overlay.Config{Lowers: l.Lowers, Upper: l.Upper, Work: l.Work, UserXattr: l.UserXattr,
		RedirectDir: l.RedirectDir, Metacopy: l.Metacopy, Index: l.Index}
}

func runExplain(args []string) error {
	fs := flag.NewFlagSet("ovl explain", flag.ContinueOnError)
	var opts stringsFlag
	fs.Var(&opts, "o", "layer options, as for a mount (lowerdir=, upperdir=, workdir=, userxattr, redirect_dir=, metacopy=, index=); may be given several times")
	asJSON := fs.Bool("json", false, "print the explanation as JSON")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), explainUsage)
		fs.PrintDefaults()
	}
	operands, err := parseTool(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if len(operands) != 1 {
		return fmt.Errorf("explain: want one PATH, got %d arguments (see ovl explain --help)", len(operands))
	}
	var cfg overlay.Config
	path := operands[0]
	if len(opts) > 0 {
		res, err := mountopt.ParseLayers(opts)
		if err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		if !res.XattrChosen && !privileged() {
			res.Overlay.UserXattr = true
		}
		cfg = res.Overlay
	} else {
		mnt, rel, err := ovlMountOf(path)
		if err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		layers, err := queryLayers(mnt)
		if err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		cfg, path = layers.config(), rel
	}
	ex, err := explain.Path(cfg, path)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	if *asJSON {
		out, err := json.MarshalIndent(ex, "", "  ")
		if err != nil {
			return err
		}
		fmt.Println(string(out))
		return nil
	}
	fmt.Print(ex.Text())
	return nil
}

// ovlMountOf finds the FUSE mount that holds path (the one with the
// longest mount point above it) and returns its mount point and path's
// path inside it. path's last component is not resolved: it may be a
// symlink of the overlay, which explain explains itself.
func ovlMountOf(path string) (mnt, rel string, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", "", err
	}
	dir, base := filepath.Split(abs)
	if rd, err := filepath.EvalSymlinks(dir); err == nil {
		abs = filepath.Join(rd, base)
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return "", "", err
	}
	best := ""
	for _, m := range mounts {
		mp := m.MountPoint
		if abs != mp && !strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/") {
			continue
		}
		if len(mp) >= len(best) {
			best = mp
			if m.FSType != "fuse" && !strings.HasPrefix(m.FSType, "fuse.") {
				best = "!" + mp
			}
		}
	}
	if best == "" || strings.HasPrefix(best, "!") {
		return "", "", fmt.Errorf("%s is not in an ovl mount (give the layers with -o)", path)
	}
	rel, _ = filepath.Rel(best, abs)
	if rel == "." {
		rel = ""
	}
	return best, rel, nil
}
