//go:build linux

package pins

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The pin-dir chain rules on an ordinary temporary directory (the checker
// looks at owners, modes and file types only, so it needs no bpffs). Root
// is needed to give a directory to another owner.
func TestCheckPinChain(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to chown (CI=true forbids skipping)")
		}
		t.Skip("needs root to chown")
	}
	base := t.TempDir() // root's, 0700, below a root-owned or sticky /tmp
	if _, err := checkPinChain(base); err != nil {
		t.Fatalf("the test's own temp dir is refused, cannot test: %v", err)
	}
	mkdir := func(t *testing.T, path string, mode uint32, uid int) string {
		t.Helper()
		if err := os.Mkdir(path, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(path, mode); err != nil { // raw bits: os.Chmod wants os.ModeSticky
			t.Fatal(err)
		}
		if err := os.Chown(path, uid, 0); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cases := []struct {
		name string
		// setup returns the pin dir to check.
		setup func(t *testing.T, dir string) string
		// want is a fragment of the refusal, "" for accepted.
		want       string
		wantExists bool
	}{
		{"root 0700", func(t *testing.T, d string) string { return mkdir(t, filepath.Join(d, "pins"), 0o700, 0) }, "", true},
		{"root 0755", func(t *testing.T, d string) string { return mkdir(t, filepath.Join(d, "pins"), 0o755, 0) }, "", true},
		{"missing", func(t *testing.T, d string) string { return filepath.Join(d, "pins") }, "", false},
		{"missing below missing", func(t *testing.T, d string) string { return filepath.Join(d, "a", "b", "pins") }, "", false},
		{"owned by another user", func(t *testing.T, d string) string { return mkdir(t, filepath.Join(d, "pins"), 0o700, 1000) },
			"is owned by uid 1000, not root: remove it or choose another --pin-dir", false},
		{"group writable", func(t *testing.T, d string) string { return mkdir(t, filepath.Join(d, "pins"), 0o770, 0) },
			"is writable by group or others (mode 0770)", false},
		{"other writable", func(t *testing.T, d string) string { return mkdir(t, filepath.Join(d, "pins"), 0o707, 0) },
			"is writable by group or others (mode 0707)", false},
		{"sticky itself", func(t *testing.T, d string) string { return mkdir(t, filepath.Join(d, "pins"), 0o1777, 0) },
			"is writable by group or others (mode 1777)", false},
		{"symlink", func(t *testing.T, d string) string {
			real := mkdir(t, filepath.Join(d, "real"), 0o700, 0)
			link := filepath.Join(d, "pins")
			if err := os.Symlink(real, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, "pins is a symlink", false},
		{"symlink on the way", func(t *testing.T, d string) string {
			real := mkdir(t, filepath.Join(d, "real"), 0o700, 0)
			mkdir(t, filepath.Join(real, "pins"), 0o700, 0)
			if err := os.Symlink(real, filepath.Join(d, "via")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(d, "via", "pins")
		}, "via is a symlink: fix it or choose another --pin-dir", false},
		{"a file", func(t *testing.T, d string) string {
			p := filepath.Join(d, "pins")
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, "is not a directory", false},
		{"sticky 1777 parent (bpffs as Cilium mounts it)", func(t *testing.T, d string) string {
			p := mkdir(t, filepath.Join(d, "bpf"), 0o1777, 0)
			return mkdir(t, filepath.Join(p, "pins"), 0o700, 0)
		}, "", true},
		{"world-writable parent without sticky bit", func(t *testing.T, d string) string {
			p := mkdir(t, filepath.Join(d, "bpf"), 0o777, 0)
			return mkdir(t, filepath.Join(p, "pins"), 0o700, 0)
		}, "bpf is writable by group or others (mode 0777): fix it", false},
		{"parent owned by another user", func(t *testing.T, d string) string {
			p := mkdir(t, filepath.Join(d, "bpf"), 0o755, 1000)
			return mkdir(t, filepath.Join(p, "pins"), 0o700, 0)
		}, "bpf is owned by uid 1000, not root", false},
		{"missing below a user's dir", func(t *testing.T, d string) string {
			p := mkdir(t, filepath.Join(d, "bpf"), 0o755, 1000)
			return filepath.Join(p, "pins")
		}, "bpf is owned by uid 1000, not root", false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(base, string(rune('a'+i)))
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			pinDir := c.setup(t, dir)
			exists, err := checkPinChain(pinDir)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("%s refused: %v", pinDir, err)
			case c.want == "" && exists != c.wantExists:
				t.Errorf("%s: exists %v, want %v", pinDir, exists, c.wantExists)
			case c.want != "" && err == nil:
				t.Errorf("%s accepted, want refused with %q", pinDir, c.want)
			case c.want != "" && !strings.Contains(err.Error(), c.want):
				t.Errorf("%s refused with %q, want %q", pinDir, err, c.want)
			case c.want != "" && !strings.Contains(err.Error(), "pin dir "+pinDir):
				t.Errorf("refusal %q does not name the pin dir %s", err, pinDir)
			}
		})
	}
}
