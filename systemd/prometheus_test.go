//go:build linux

package systemd

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/sockaccel/sockaccel/accel"
)

func requirePromtool(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not installed (CI=true forbids skipping; make deps installs Debian's prometheus package)")
		}
		t.Skip("promtool not installed")
	}
}

func promtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("promtool", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool %s: %v:\n%s", strings.Join(args, " "), err, out)
	}
}

// The example alert rules are valid, and each alert fires when it should
// (sockaccel.rules.test.yml).
func TestAlertRules(t *testing.T) {
	requirePromtool(t)
	promtool(t, "prometheus", "check", "rules", "sockaccel.rules.yml")
	promtool(t, "prometheus", "test", "rules", "sockaccel.rules.test.yml")
}

// Every query of the example dashboard parses (checked as recording rules)
// and every metric it or the alert rules name is one sockaccel exposes.
func TestDashboard(t *testing.T) {
	requirePromtool(t)
	raw, err := os.ReadFile("prometheus/sockaccel.dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			expr := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*").Replace(tg.Expr)
			q, _ := json.Marshal(expr) // a JSON string is a YAML string
			rules.WriteString("      - record: dashboard:query\n        expr: " + string(q) + "\n")
			n++
		}
	}
	if n == 0 {
		t.Fatal("dashboard has no queries")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.rules.yml"), []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, dir, "check", "rules", "dashboard.rules.yml")

	alerts, err := os.ReadFile("prometheus/sockaccel.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	known := accel.MetricNames()
	for _, name := range regexp.MustCompile(`sockaccel_[a-z_]+`).FindAllString(string(raw)+string(alerts), -1) {
		base := name
		for _, suffix := range []string{"_sum", "_count", "_bucket"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(known, b) {
				base = b
			}
		}
		if !slices.Contains(known, base) {
			t.Errorf("dashboard or alert rules name %s, which sockaccel does not expose", name)
		}
	}
}
