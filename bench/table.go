package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// report is everything a run measured; it is also the -json output.
type report struct {
	Meta    map[string]string `json:"meta"`
	Systems []sysInfo         `json:"systems"`
	Rows    []*result         `json:"rows"`
	// Opcodes holds, by requests-per-operation row and system, each
	// opcode's requests per operation, one value per round.
	Opcodes map[string]map[string]map[string][]float64 `json:"opcodes,omitempty"`
}

// addOpcode records one round's requests per operation of op.
func (r *report) addOpcode(row, sys, op string, v float64) {
	if r.Opcodes == nil {
		r.Opcodes = map[string]map[string]map[string][]float64{}
	}
	if r.Opcodes[row] == nil {
		r.Opcodes[row] = map[string]map[string][]float64{}
	}
	if r.Opcodes[row][sys] == nil {
		r.Opcodes[row][sys] = map[string][]float64{}
	}
	r.Opcodes[row][sys][op] = append(r.Opcodes[row][sys][op], v)
}

type sysInfo struct {
	Name string `json:"name"`
	// NA says why the system could not be measured ("" if it could).
	NA string `json:"na,omitempty"`
}

// result is one row of the table.
type result struct {
	Workload string `json:"workload"`
	Row      string `json:"row"`
	Unit     string `json:"unit"`
	Target   string `json:"target,omitempty"`
	// Ref is the system the ratios are to ("" for no ratios).
	Ref   string           `json:"ref,omitempty"`
	Cells map[string]*cell `json:"cells"`
}

// cell is one system's figures for a row.
type cell struct {
	// Values has one value per round, in round order, while no round failed.
	Values []float64 `json:"values,omitempty"`
	Err    string    `json:"error,omitempty"`
	NA     string    `json:"na,omitempty"`
}

func (r *report) result(w *workload, rw row) *result {
	for _, res := range r.Rows {
		if res.Row == rw.name {
			return res
		}
	}
	res := &result{Workload: w.name, Row: rw.name, Unit: rw.unit, Target: rw.target, Cells: map[string]*cell{}}
	r.Rows = append(r.Rows, res)
	return res
}

func (r *report) na(name string) string {
	for _, s := range r.Systems {
		if s.Name == name {
			return s.NA
		}
	}
	return "not selected"
}

// median of the values (the mean of the middle two for an even count).
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratios returns, for a cell against the reference cell, the ratio of the
// medians and the min and max of the per-round ratios.
func ratios(c, ref *cell) (med, lo, hi float64, ok bool) {
	if c == nil || ref == nil || c.Err != "" || ref.Err != "" || len(c.Values) == 0 || len(c.Values) != len(ref.Values) {
		return 0, 0, 0, false
	}
	for i, v := range c.Values {
		if ref.Values[i] <= 0 {
			return 0, 0, 0, false
		}
		q := v / ref.Values[i]
		if i == 0 || q < lo {
			lo = q
		}
		if i == 0 || q > hi {
			hi = q
		}
	}
	return median(c.Values) / median(ref.Values), lo, hi, true
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "s":
		if v < 1 {
			return fmt.Sprintf("%.1f ms", v*1000)
		}
		return fmt.Sprintf("%.2f s", v)
	case "ms":
		return fmt.Sprintf("%.1f ms", v)
	case "MiB":
		return fmt.Sprintf("%.1f MiB", v)
	case "x file":
		return fmt.Sprintf("%.2f× file", v)
	case "req":
		return fmt.Sprintf("%.2f req", v)
	case "µs":
		return fmt.Sprintf("%.1f µs", v)
	default:
		return fmt.Sprintf("%.0f %s", v, unit)
	}
}

// writeTable prints the markdown table: per row and system the median and
// the ratio to the row's reference with the range of per-round ratios.
func (r *report) writeTable(w io.Writer) {
	var names []string
	for _, s := range r.Systems {
		names = append(names, s.Name)
	}
	fmt.Fprintf(w, "| workload | target | %s |\n", strings.Join(names, " | "))
	fmt.Fprintf(w, "|---|---|%s\n", strings.Repeat("---|", len(names)))
	var errs []string
	for _, res := range r.Rows {
		cols := []string{res.Row, res.Target}
		if res.Ref != "" {
			cols[0] += " (ratio to " + res.Ref + ")"
		}
		for _, name := range names {
			c := res.Cells[name]
			switch {
			case r.na(name) != "":
				cols = append(cols, "n/a")
			case c == nil:
				cols = append(cols, "—")
			case c.NA != "":
				cols = append(cols, "n/a ("+c.NA+")")
			case c.Err != "":
				errs = append(errs, fmt.Sprintf("- %s, %s: %s", res.Row, name, c.Err))
				cols = append(cols, fmt.Sprintf("error [%d]", len(errs)))
			default:
				s := formatValue(median(c.Values), res.Unit)
				if med, lo, hi, ok := ratios(c, res.Cells[res.Ref]); ok && name != res.Ref {
					s += fmt.Sprintf(" · %.2f× (%.2f–%.2f)", med, lo, hi)
				}
				cols = append(cols, s)
			}
		}
		for i := range cols {
			cols[i] = strings.ReplaceAll(cols[i], "|", `\|`)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cols, " | "))
	}
	r.writeOpcodes(w, names)
	var na []string
	for _, s := range r.Systems {
		if s.NA != "" {
			na = append(na, fmt.Sprintf("- %s: %s", s.Name, s.NA))
		}
	}
	if len(na) > 0 {
		fmt.Fprintf(w, "\nNot measured:\n%s\n", strings.Join(na, "\n"))
	}
	if len(errs) > 0 {
		fmt.Fprintf(w, "\nErrors:\n")
		for i, e := range errs {
			fmt.Fprintf(w, "%d. %s\n", i+1, strings.TrimPrefix(e, "- "))
		}
	}
}

func (r *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// writeOpcodes prints, per requests-per-operation row and counting system,
// the median requests per operation of each opcode, most first.
func (r *report) writeOpcodes(w io.Writer, names []string) {
	if len(r.Opcodes) == 0 {
		return
	}
	fmt.Fprintf(w, "\nFUSE requests per operation by opcode (median of the rounds; opcodes below 0.01 left out):\n\n")
	for _, res := range r.Rows {
		bySys := r.Opcodes[res.Row]
		for _, name := range names {
			ops := bySys[name]
			if len(ops) == 0 {
				continue
			}
			type opv struct {
				op string
				v  float64
			}
			var l []opv
			for op, vs := range ops {
				// A round without the opcode had 0 of it.
				for c := res.Cells[name]; c != nil && len(vs) < len(c.Values); {
					vs = append(vs, 0)
				}
				if m := median(vs); m >= 0.005 {
					l = append(l, opv{op, m})
				}
			}
			slices.SortFunc(l, func(a, b opv) int {
				if a.v != b.v {
					if a.v > b.v {
						return -1
					}
					return 1
				}
				return strings.Compare(a.op, b.op)
			})
			var parts []string
			for _, x := range l {
				parts = append(parts, fmt.Sprintf("%s %.2f", x.op, x.v))
			}
			fmt.Fprintf(w, "- %s, %s: %s\n", res.Row, name, strings.Join(parts, ", "))
		}
	}
}
