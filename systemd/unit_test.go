package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not installed (CI=true forbids skipping)")
		}
		t.Skip("systemd-analyze not installed")
	}
	unit, err := os.ReadFile("sockaccel.service")
	if err != nil {
		t.Fatal(err)
	}
	// The Debian package's path; make install rewrites it to PREFIX.
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/sockaccel run") {
		t.Fatalf("unit does not start the daemon from /usr/bin:\n%s", unit)
	}
	// Verify against a freshly built binary: verify checks ExecStart exists.
	dir := t.TempDir()
	bin := filepath.Join(dir, "sockaccel")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/sockaccel").CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	path := filepath.Join(dir, "sockaccel.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/bin/sockaccel", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v:\n%s", err, out)
	}
}
