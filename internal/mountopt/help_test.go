package mountopt

import (
	"strings"
	"testing"
)

// Every option of the table is in "ovl mount --help": the effective ones
// with a line of their own, the ignored and refused ones with their reason.
func TestHelpCoversTable(t *testing.T) {
	if err := checkHelp(); err != nil {
		t.Fatal(err)
	}
	h := strings.Join(strings.Fields(Help()), " ")
	for name, o := range options {
		if !strings.Contains(h, name) {
			t.Errorf("help lacks %q", name)
		}
		if o.ignored != "" && !strings.Contains(h, o.ignored) {
			t.Errorf("help lacks the reason %s is ignored", name)
		}
		if o.refused != "" && !strings.Contains(h, o.refused) {
			t.Errorf("help lacks the reason %s is refused", name)
		}
	}
	for _, line := range strings.Split(Help(), "\n") {
		if len(line) > 80 {
			t.Errorf("help line longer than 80 columns: %q", line)
		}
	}
}
