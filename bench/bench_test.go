//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

var (
	topologies = []string{"bridge", "veth", "loopback"}
	tests      = []string{"TCP_RR_1", "TCP_RR_1K", "TCP_CRR", "TCP_STREAM_64K"}
	modes      = []string{"baseline", "accelerated"}
)

// TestSmoke runs the whole benchmark once in SMOKE mode (every test once for
// about a second on every topology) against a freshly built sockaccel and
// checks that it produced every output and that acceleration really
// happened in accelerated runs and only there. It never asserts on timing.
func TestSmoke(t *testing.T) {
	out := runSmoke(t, "run.sh", "netperf", "netserver", "jq", "gnuplot")
	for _, name := range []string{"results.csv", "results.md", "ratios.png", "system.txt"} {
		fi, err := os.Stat(filepath.Join(out, name))
		if err != nil {
			t.Errorf("output %s: %v", name, err)
			continue
		}
		if fi.Size() == 0 {
			t.Errorf("output %s is empty", name)
		}
	}
	if png, err := os.ReadFile(filepath.Join(out, "ratios.png")); err == nil && !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("ratios.png is not a PNG")
	}

	records, col := readResults(t, out, "topology", "test", "mode", "throughput", "redirected_msgs")
	rows := map[[3]string]int{}
	for i, r := range records[1:] {
		key := [3]string{r[col["topology"]], r[col["test"]], r[col["mode"]]}
		rows[key]++
		if key[0] == "unix" {
			continue
		}
		if tp, err := strconv.ParseFloat(r[col["throughput"]], 64); err != nil || tp <= 0 {
			t.Errorf("row %d %v: throughput %q", i+2, key, r[col["throughput"]])
		}
		msgs, err := strconv.ParseUint(r[col["redirected_msgs"]], 10, 64)
		if err != nil {
			t.Errorf("row %d %v: redirected_msgs %q: %v", i+2, key, r[col["redirected_msgs"]], err)
			continue
		}
		switch key[2] {
		case "accelerated":
			if msgs == 0 {
				t.Errorf("row %d %v: accelerated run with redirected_msgs 0: nothing was accelerated", i+2, key)
			}
		case "baseline":
			if msgs != 0 {
				t.Errorf("row %d %v: baseline run with redirected_msgs %d: the baseline was accelerated", i+2, key, msgs)
			}
		default:
			t.Errorf("row %d: unknown mode %q", i+2, key[2])
		}
	}
	for _, topo := range topologies {
		for _, test := range tests {
			for _, mode := range modes {
				if rows[[3]string{topo, test, mode}] == 0 {
					t.Errorf("results.csv has no row for %s %s %s", topo, test, mode)
				}
			}
		}
	}
	for _, test := range []string{"TCP_RR_1", "TCP_STREAM_64K"} {
		if rows[[3]string{"unix", test, "reference"}] == 0 {
			t.Errorf("results.csv has no unix socket reference row for %s", test)
		}
	}
}

// runSmoke builds sockaccel, runs bench/SCRIPT in SMOKE mode and returns
// its output directory; it skips (fails under CI=true) when not root or a
// tool is missing.
func runSmoke(t *testing.T, script string, tools ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("benchmark smoke test cannot run: not root (CI=true forbids skipping)")
		}
		t.Skip("needs root (network namespaces, cgroups, BPF)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not installed (CI=true forbids skipping; make deps installs it)", tool)
			}
			t.Skipf("%s is not installed: run make deps", tool)
		}
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "sockaccel")
	build := exec.Command("go", "build", "-o", bin, "../cmd/sockaccel")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build sockaccel: %v\n%s", err, out)
	}

	out := filepath.Join(tmp, "out")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	// INSTALL=0: a test never installs packages; make deps does (.ci/run
	// runs it), and a missing tool fails the run with one line naming it.
	// load.sh's selections cleared: the smoke run's own defaults.
	cmd.Env = append(os.Environ(), "SMOKE=1", "QUICK=", "INSTALL=0", "OUT="+out, "SOCKACCEL="+bin, "TOPOS=", "CONNS=", "NETPERF_CONNS=", "CASES=", "RUN_LEN=", "LOAD_REPS=", "PERF=")
	// On timeout, SIGINT lets the script's trap remove what it created.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	var log bytes.Buffer
	cmd.Stdout = &log
	cmd.Stderr = &log
	err := cmd.Run()
	t.Logf("%s output:\n%s", script, log.String())
	if err != nil {
		t.Fatalf("SMOKE=1 bash %s: %v", script, err)
	}
	return out
}

// TestLoadSmoke runs bench/load.sh once in SMOKE mode (every case once for
// about a second, 1 and 8 connections, 50 for nginx and redis, on bridge
// and veth) and checks that every case produced a row per mode, that
// accelerated runs were redirected and baseline runs were not, that no
// client saw an error, and that the tail columns are filled where the tool
// has them. It never asserts on timing.
func TestLoadSmoke(t *testing.T) {
	out := runSmoke(t, "load.sh", "netperf", "netserver", "jq", "nginx", "wrk", "redis-server", "redis-benchmark")
	for _, name := range []string{"results.csv", "results.md", "system.txt"} {
		if fi, err := os.Stat(filepath.Join(out, name)); err != nil || fi.Size() == 0 {
			t.Errorf("output %s missing or empty (%v)", name, err)
		}
	}
	records, col := readResults(t, out, "topology", "case", "conns", "mode", "throughput", "p99_us", "p999_us", "max_us", "cpu_us_per_op", "redirected_msgs", "errors", "check")
	rows := map[[4]string]int{}
	for i, r := range records[1:] {
		key := [4]string{r[col["topology"]], r[col["case"]], r[col["conns"]], r[col["mode"]]}
		rows[key]++
		if tp, err := strconv.ParseFloat(r[col["throughput"]], 64); err != nil || tp <= 0 {
			t.Errorf("row %d %v: throughput %q", i+2, key, r[col["throughput"]])
		}
		if r[col["cpu_us_per_op"]] == "" {
			t.Errorf("row %d %v: no CPU per operation", i+2, key)
		}
		if r[col["check"]] != "ok" {
			t.Errorf("row %d %v: check %q (redirected_msgs %s, errors %s)", i+2, key, r[col["check"]], r[col["redirected_msgs"]], r[col["errors"]])
		}
		// Every tool but netperf records p99.9; every one but a stream has a max.
		c := key[1]
		stream := c == "TCP_STREAM_64K" || c == "STREAM_64K"
		if !stream && r[col["max_us"]] == "" {
			t.Errorf("row %d %v: no max latency", i+2, key)
		}
		if !stream && c != "TCP_RR_1B" && r[col["p999_us"]] == "" {
			t.Errorf("row %d %v: no p99.9", i+2, key)
		}
	}
	for _, topo := range []string{"bridge", "veth"} {
		for _, c := range [][2]string{
			{"RR_1B", "1"}, {"RR_1B", "8"}, {"TCP_RR_1B", "1"}, {"TCP_RR_1B", "8"},
			{"STREAM_64K", "1"}, {"STREAM_64K", "8"}, {"TCP_STREAM_64K", "1"}, {"TCP_STREAM_64K", "8"},
			{"nginx_keepalive", "50"}, {"nginx_close", "50"}, {"redis_get", "50"}, {"redis_get_P16", "50"},
		} {
			for _, mode := range modes {
				if rows[[4]string{topo, c[0], c[1], mode}] == 0 {
					t.Errorf("results.csv has no row for %s %s %s connections %s", topo, c[0], c[1], mode)
				}
			}
		}
	}
}

// readResults parses OUT/results.csv and returns its records and the index
// of every column by name, failing the test if it has no rows or lacks
// one of the columns named.
func readResults(t *testing.T, out string, columns ...string) ([][]string, map[string]int) {
	t.Helper()
	f, err := os.Open(filepath.Join(out, "results.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	records, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("parse results.csv: %v", err)
	}
	if len(records) < 2 {
		t.Fatal("results.csv has no rows")
	}
	col := map[string]int{}
	for i, name := range records[0] {
		col[name] = i
	}
	for _, name := range columns {
		if _, ok := col[name]; !ok {
			t.Fatalf("results.csv has no column %q (header %v)", name, records[0])
		}
	}
	return records, col
}
