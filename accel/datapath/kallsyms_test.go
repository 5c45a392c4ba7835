//go:build linux

package datapath

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKallsym(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kallsyms")
	for _, c := range []struct {
		name, text string
		want       uint64
	}{
		{"visible", "ffffffff813dbb00 T wait_woken\nffffffff813dbbc0 T woken_wake_function\n", 0xffffffff813dbbc0},
		// kptr_restrict without CAP_SYSLOG: every address reads 0.
		{"hidden", "0000000000000000 T woken_wake_function\n", 0},
		{"absent", "ffffffff813dbb00 T wait_woken\n", 0},
		// a module's symbol of the same name is not the kernel's
		{"module only", "ffffffffc0001000 t woken_wake_function\t[evil]\n", 0},
		{"data, not text", "ffffffff82000000 D woken_wake_function\n", 0},
	} {
		if err := os.WriteFile(path, []byte(c.text), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := kallsym(path, "woken_wake_function")
		if err != nil || got != c.want {
			t.Errorf("%s: kallsym = %#x, %v; want %#x", c.name, got, err, c.want)
		}
	}
}
