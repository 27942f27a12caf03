package kernelcmp

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Case is one differential scenario, complete in itself: the layers, the
// mount mode and the ops. The random tester draws Cases from a seed
// (RandomCase); the shrinker makes them smaller; a reproduction is saved
// as JSON (testdata/repro/*.json) and replayed by a regression test.
type Case struct {
	// Name names a saved reproduction (its file name without .json).
	Name string `json:"name,omitempty"`
	// Seed, Gen and NOps say where the case came from: RandomCase(Seed,
	// NOps) with generator version Gen. The layers and ops below are
	// what counts; they are kept when the generator changes.
	Seed      int64 `json:"seed"`
	Gen       int   `json:"gen"`
	NOps      int   `json:"nops,omitempty"`
	NLowers   int   `json:"nlowers"`
	UserXattr bool  `json:"userxattr"`
	// RedirectDir is redirect_dir= for both sides ("": the default of
	// the day, see Options.Redirect; saved reproductions pin it).
	RedirectDir string `json:"redirect_dir,omitempty"`
	// Index and Metacopy are index= and metacopy= for both sides ("":
	// the defaults, off).
	Index    string `json:"index,omitempty"`
	Metacopy string `json:"metacopy,omitempty"`
	// OvlOptions are extra -o options for ovl only (Options.OvlExtra),
	// e.g. "passthrough=off".
	OvlOptions []string `json:"ovl_options,omitempty"`
	// Overlap puts the layers inside each other (Config.Overlap).
	Overlap string `json:"overlap,omitempty"`
	// Every compares the merged views after every Every-th op as well
	// (RunConfig.Every): the walks look up and read every object, which
	// some failures need.
	Every int `json:"every,omitempty"`
	// Class is the failure class the case reproduces, Failure the report
	// of its first such failure when it was saved, Diagnosis a guess at
	// the cause and Found how it was found (the command).
	Class string `json:"class,omitempty"`
	// Also are other classes that the same bug shows as (the random
	// tester does not shrink them again).
	Also      []string `json:"also,omitempty"`
	Failure   string   `json:"failure,omitempty"`
	Diagnosis string   `json:"diagnosis,omitempty"`
	// Intended, when set, says why this difference is kept on purpose (the
	// kernel is wrong there and ovl does better): the case must keep
	// reproducing exactly its classes, and the random tester does not
	// count them as failures.
	Intended string `json:"intended,omitempty"`
	// NotIntendedWith lists ovl options under which an intended
	// difference is a bug after all (passthrough=off for what passthrough
	// alone explains): the random tester counts it in seeds mounted so.
	NotIntendedWith []string `json:"not_intended_with,omitempty"`
	Found           string   `json:"found,omitempty"`
	Layers          Layers   `json:"-"`
	Ops             []Op     `json:"ops"`
}

// Options are the mount options of the case.
func (c Case) Options() Options {
	o := DefaultOptions()
	o.UserXattr = c.UserXattr
	o.RedirectDir = c.RedirectDir
	o.OvlExtra = c.OvlOptions
	o.Index = c.Index
	o.Metacopy = c.Metacopy
	return o
}

// RunConfig is a RunConfig for c with the given candidate.
func (c Case) RunConfig(candidate Mounter) RunConfig {
	return RunConfig{Config: Config{Options: c.Options(), Candidate: candidate, Overlap: c.Overlap}, Layers: c.Layers, Ops: c.Ops, Every: c.Every}
}

// String is a short description.
func (c Case) String() string {
	mode := "trusted"
	if c.UserXattr {
		mode = "userxattr"
	}
	every := ""
	if len(c.OvlOptions) > 0 {
		every = ", ovl " + strings.Join(c.OvlOptions, ",")
	}
	if c.Index != "" {
		every += ", index=" + c.Index
	}
	if c.Metacopy != "" {
		every += ", metacopy=" + c.Metacopy
	}
	if c.Overlap != "" {
		every += ", layers " + c.Overlap
	}
	if c.Every > 0 {
		every += fmt.Sprintf(", views every %d ops", c.Every)
	}
	return fmt.Sprintf("seed %d (gen %d, %d lowers, %s, redirect_dir=%s%s): %d layer entries, %d ops",
		c.Seed, c.Gen, c.NLowers, mode, c.Options().Redirect(), every, c.entries(), len(c.Ops))
}

func (c Case) entries() int {
	n := len(c.Layers.Upper)
	for _, l := range c.Layers.Lowers {
		n += len(l)
	}
	return n
}

// OpLog lists ops[:n] one per line with their index.
func (c Case) OpLog(n int) string {
	if n > len(c.Ops) {
		n = len(c.Ops)
	}
	var b strings.Builder
	for i, op := range c.Ops[:n] {
		fmt.Fprintf(&b, "%4d %s\n", i, op)
	}
	return b.String()
}

// entryJSON is an Entry with its kind by name and its mode in octal.
type entryJSON struct {
	Path    string            `json:"path"`
	Kind    string            `json:"kind"`
	Data    string            `json:"data,omitempty"`
	Size    int64             `json:"size,omitempty"`
	Extents []Extent          `json:"extents,omitempty"`
	Mode    string            `json:"mode,omitempty"`
	UID     int               `json:"uid,omitempty"`
	GID     int               `json:"gid,omitempty"`
	Xattrs  map[string]string `json:"xattrs,omitempty"`
	Target  string            `json:"target,omitempty"`
	Major   uint32            `json:"major,omitempty"`
	Minor   uint32            `json:"minor,omitempty"`
	Mtime   int64             `json:"mtime,omitempty"` // ns; 0: DefaultTime
	AUFS    string            `json:"aufs,omitempty"`
}

var kindNames = map[Kind]string{
	KindFile: "file", KindDir: "dir", KindSymlink: "symlink", KindHardlink: "hardlink",
	KindFIFO: "fifo", KindSocket: "socket", KindChar: "char", KindBlock: "block",
	KindWhiteout: "whiteout", KindXWhiteout: "xwhiteout",
}

func toJSON(l Layer) []entryJSON {
	out := []entryJSON{}
	for _, e := range l {
		j := entryJSON{Path: e.Path, Kind: kindNames[e.Kind], Data: e.Data, Size: e.Size, Extents: e.Extents,
			UID: e.UID, GID: e.GID, Xattrs: e.Xattrs, Target: e.Target, Major: e.Major, Minor: e.Minor, AUFS: e.AUFS}
		if e.PermSet {
			j.Mode = fmt.Sprintf("%04o", e.Perm)
		}
		if !e.Mtime.IsZero() {
			j.Mtime = e.Mtime.UnixNano()
		}
		out = append(out, j)
	}
	return out
}

func fromJSON(js []entryJSON) (Layer, error) {
	var l Layer
	for _, j := range js {
		e := Entry{Path: j.Path, Data: j.Data, Size: j.Size, Extents: j.Extents, UID: j.UID, GID: j.GID,
			Xattrs: j.Xattrs, Target: j.Target, Major: j.Major, Minor: j.Minor, AUFS: j.AUFS}
		found := false
		for k, n := range kindNames {
			if n == j.Kind {
				e.Kind, found = k, true
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: unknown kind %q", j.Path, j.Kind)
		}
		if j.Mode != "" {
			m, err := strconv.ParseUint(j.Mode, 8, 32)
			if err != nil {
				return nil, fmt.Errorf("%s: mode %q: %w", j.Path, j.Mode, err)
			}
			e.Perm, e.PermSet = uint32(m), true
		}
		if j.Mtime != 0 {
			e.Mtime = time.Unix(0, j.Mtime).UTC()
		}
		l = append(l, e)
	}
	return l, nil
}

// MarshalJSON writes the layers as readable entries.
func (c Case) MarshalJSON() ([]byte, error) {
	type plain Case // without the method
	j := struct {
		plain
		Lowers [][]entryJSON `json:"lowers"`
		Upper  []entryJSON   `json:"upper"`
	}{plain: plain(c), Upper: toJSON(c.Layers.Upper)}
	for _, l := range c.Layers.Lowers {
		j.Lowers = append(j.Lowers, toJSON(l))
	}
	return json.Marshal(j)
}

// Format is c as indented JSON with one layer entry and one op per line.
func (c Case) Format() ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	var out strings.Builder
	out.WriteString("{\n")
	var keys []string
	for k := range m {
		if k != "lowers" && k != "upper" && k != "ops" {
			keys = append(keys, k)
		}
	}
	// Header fields in a fixed order, then the bulky ones.
	order := map[string]int{"name": 0, "class": 1, "also": 2, "diagnosis": 3, "found": 4, "failure": 5, "seed": 6, "gen": 7, "nops": 8, "nlowers": 9, "userxattr": 10, "redirect_dir": 11, "ovl_options": 12, "overlap": 13, "every": 14}
	sort.Slice(keys, func(i, j int) bool { return order[keys[i]] < order[keys[j]] })
	for _, k := range keys {
		fmt.Fprintf(&out, "  %q: %s,\n", k, m[k])
	}
	list := func(raw json.RawMessage, indent string) string {
		var items []json.RawMessage
		json.Unmarshal(raw, &items)
		if len(items) == 0 {
			return "[]"
		}
		var b strings.Builder
		b.WriteString("[\n")
		for i, it := range items {
			b.WriteString(indent + "  ")
			b.Write(it)
			if i < len(items)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString(indent + "]")
		return b.String()
	}
	var lowers []json.RawMessage
	json.Unmarshal(m["lowers"], &lowers)
	out.WriteString("  \"lowers\": [\n")
	for i, l := range lowers {
		out.WriteString("    " + list(l, "    "))
		if i < len(lowers)-1 {
			out.WriteString(",")
		}
		out.WriteString("\n")
	}
	out.WriteString("  ],\n")
	fmt.Fprintf(&out, "  \"upper\": %s,\n", list(m["upper"], "  "))
	fmt.Fprintf(&out, "  \"ops\": %s\n}\n", list(m["ops"], "  "))
	return []byte(out.String()), nil
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (c *Case) UnmarshalJSON(b []byte) error {
	type plain Case
	var j struct {
		plain
		Lowers [][]entryJSON `json:"lowers"`
		Upper  []entryJSON   `json:"upper"`
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*c = Case(j.plain)
	for i, l := range j.Lowers {
		layer, err := fromJSON(l)
		if err != nil {
			return fmt.Errorf("lower %d: %w", i, err)
		}
		c.Layers.Lowers = append(c.Layers.Lowers, layer)
	}
	up, err := fromJSON(j.Upper)
	if err != nil {
		return fmt.Errorf("upper: %w", err)
	}
	c.Layers.Upper = up
	return nil
}

// LoadCases reads every *.json reproduction in dir, sorted by name.
func LoadCases(dir string) ([]Case, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []Case
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var c Case
		if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if c.Name == "" {
			c.Name = strings.TrimSuffix(filepath.Base(f), ".json")
		}
		if len(c.Layers.Lowers) == 0 {
			return nil, fmt.Errorf("%s: no lower layers", f)
		}
		out = append(out, c)
	}
	return out, nil
}

// SaveCase writes c to dir/NAME.json (c.Name, made up from the class and
// seed if empty) and returns the file name.
func SaveCase(dir string, c Case) (string, error) {
	if c.Name == "" {
		c.Name = fmt.Sprintf("%s-seed%d", Slug(c.Class), c.Seed)
	}
	if c.RedirectDir == "" {
		c.RedirectDir = c.Options().Redirect()
	}
	b, err := c.Format()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	f := filepath.Join(dir, c.Name+".json")
	return f, os.WriteFile(f, b, 0o644)
}

// Slug makes a file-name part of a failure class.
func Slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		ok := (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9')
		if ok {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= 60 {
			break
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}
