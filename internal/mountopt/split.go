package mountopt

import (
	"fmt"
	"strings"
)

// split cuts an option string at commas, as the kernel's ovl_next_opt does: a
// backslash escapes the next character (so "\," is not a separator), and, as
// the VFS does for SELinux labels, a comma inside double quotes does not split
// (containers-storage passes context="system_u:...:s0:c1,c2"). The escapes and
// quotes are kept; each option's value is unescaped by the code that reads it.
func split(s string) ([]string, error) {
	var out []string
	start := 0
	quoted := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("option %q ends in a lone backslash", s[start:])
			}
			i++
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	if quoted {
		return nil, fmt.Errorf("option %q has an unterminated quote", s[start:])
	}
	return append(out, s[start:]), nil
}

// unescape drops each backslash and keeps the character after it, as the
// kernel's ovl_unescape does for every layer path.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// splitLowers cuts a lowerdir value at unescaped colons and unescapes each
// layer, as the kernel's ovl_parse_param_split_lowerdirs. A "::" (data-only
// layers follow) is refused: ovl does metacopy, but has no data-only layers.
func splitLowers(v string) ([]string, error) {
	var layers []string
	start := 0
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case ':':
			if i+1 < len(v) && v[i+1] == ':' {
				return nil, fmt.Errorf("lowerdir %q: %s", v, dataOnlyRefused)
			}
			layers = append(layers, v[start:i])
			start = i + 1
		}
	}
	layers = append(layers, v[start:])
	for i, l := range layers {
		if l == "" {
			return nil, fmt.Errorf("lowerdir %q has an empty layer", v)
		}
		layers[i] = unescape(l)
	}
	return layers, nil
}

// dataOnlyRefused says why "::" in lowerdir is refused. ovl follows
// metacopy chains through the ordinary lowers, but does not keep lowers
// that only serve file data (the kernel's data-only layers, which a
// metacopy file in another layer reaches by an absolute redirect).
const dataOnlyRefused = `data-only lower layers ("::" in lowerdir, datadir+=) are not supported yet: ovl follows metacopy files only into the ordinary lowers; list every layer with single colons`

// unquote strips one pair of surrounding double quotes, as used around
// SELinux context labels.
func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}
