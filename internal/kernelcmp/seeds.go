package kernelcmp

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// ParseSeeds reads a list of seeds and ranges, "1-16,35,123", as the
// tests that take seeds from the environment write them.
func ParseSeeds(spec string) ([]int64, error) {
	var seeds []int64
	for _, f := range strings.Split(spec, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(f), "-")
		a, err := strconv.ParseInt(lo, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("seeds %q: %w", spec, err)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseInt(hi, 10, 64); err != nil {
				return nil, fmt.Errorf("seeds %q: %w", spec, err)
			}
		}
		for s := a; s <= b; s++ {
			seeds = append(seeds, s)
		}
	}
	return seeds, nil
}

// MountedView mounts l with m, takes the view and unmounts.
func MountedView(m Mounter, l Layout, o Options) (*Tree, error) {
	if err := m.Mount(l, o); err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name(), err)
	}
	view, err := Snapshot(l.Mnt, SnapOptions{})
	if uerr := m.Unmount(l.Mnt); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name(), err)
	}
	return view, nil
}

// ErrorPaths are the objects of view that the overlay refuses (damaged or
// hostile layer metadata) and the directories it cannot list: a tool that
// writes a layer cannot carry that, so it compares everything else.
func (v *Tree) ErrorPaths() []string {
	var out []string
	for p, n := range v.Nodes {
		if strings.HasPrefix(n.Type, "error:") || n.ReadDir != "" || strings.HasPrefix(n.Hash, "<") ||
			strings.HasPrefix(n.Target, "<") || n.Xattrs["<listxattr>"] != "" {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}
