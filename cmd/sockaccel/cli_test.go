//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

var sockaccelBin string

// wideBound keeps a test's bulk transfers on the fast path whatever their
// readers' pace, for tests about pins, restarts and counters rather than the
// backlog bound.
const wideBound = "--backlog-bytes=67108864"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sockaccel-bin")
	if err != nil {
		panic(err)
	}
	sockaccelBin = filepath.Join(dir, "sockaccel")
	out, err := exec.Command("go", "build", "-o", sockaccelBin, ".").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func sockaccel(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(sockaccelBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run sockaccel %v: %v", args, err)
	}
	return result{cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()}
}

func TestVersion(t *testing.T) {
	r := sockaccel(t, "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "sockaccel ") {
		t.Errorf("version: exit %d, stdout %q", r.code, r.stdout)
	}
}

// Every bad input gives one line on stderr naming the problem, a non-zero
// exit, and leaves nothing attached or pinned.
func TestBadInput(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	notBPFFS := t.TempDir()
	notSocket := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A hierarchy of our own: the host need not mount v1 controllers.
	v1 := testenv.TempCgroupV1(t)
	// A directory anyone could replace the API socket in.
	openDir := t.TempDir()
	if err := os.Chmod(openDir, 0o777); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing cgroup", []string{"--cgroup", "no-such-cgroup-here"}, "does not exist"},
		{"cgroup v1 path", []string{"--cgroup", v1}, "cgroup v1"},
		{"invalid cidr", []string{"--cgroup", cg.Path, "--exclude-cidrs", "10.0.0.0/33"}, "invalid CIDR"},
		{"invalid cidr text", []string{"--cgroup", cg.Path, "--exclude-cidrs", "10.0.0.0/8,banana"}, "invalid CIDR"},
		{"invalid port", []string{"--cgroup", cg.Path, "--exclude-ports", "22,70000"}, "invalid port"},
		{"missing excluded cgroup", []string{"--cgroup", cg.Path, "--exclude-cgroups", "no-such-cgroup-here"}, "--exclude-cgroups no-such-cgroup-here"},
		{"pin dir not on bpffs", []string{"--cgroup", cg.Path, "--pin-dir", notBPFFS}, "not on a bpf filesystem"},
		{"bad flag", []string{"--cgroup", cg.Path, "--frobnicate"}, "flag provided but not defined"},
		{"bad max conns", []string{"--cgroup", cg.Path, "--max-conns", "0"}, "invalid --max-conns"},
		{"bad log format", []string{"--cgroup", cg.Path, "--log-format", "xml"}, "invalid --log-format"},
		{"bad log level", []string{"--cgroup", cg.Path, "--log-level", "loud"}, "invalid --log-level"},
		{"bad metrics addr", []string{"--cgroup", cg.Path, "--metrics-addr", "256.1.1.1:80"}, "--metrics-addr"},
		{"bad gc interval", []string{"--cgroup", cg.Path, "--gc-interval", "-1s"}, "invalid --gc-interval"},
		{"bad http max requests", []string{"--cgroup", cg.Path, "--http-max-requests", "0"}, "invalid --http-max-requests"},
		{"api socket path taken", []string{"--cgroup", cg.Path, "--api-socket", notSocket}, "is not a socket"},
		{"api socket in an open directory", []string{"--cgroup", cg.Path, "--api-socket", filepath.Join(openDir, "api.sock")}, "writable by others without the sticky bit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Metrics off unless the case is about them: the default port
			// may be taken by a daemon on this host.
			args := append([]string{"run"}, c.args...)
			if !strings.Contains(strings.Join(c.args, " "), "--metrics-addr") {
				args = append(args, "--metrics-addr=")
			}
			// Never the default socket in /run: a daemon may serve there.
			if !strings.Contains(strings.Join(c.args, " "), "--api-socket") {
				args = append(args, "--api-socket=")
			}
			if !strings.Contains(strings.Join(c.args, " "), "--pin-dir") {
				args = append(args, "--pin-dir", pin)
			}
			r := sockaccel(t, args...)
			if r.code == 0 {
				t.Fatalf("exit 0 for bad input; stderr %q", r.stderr)
			}
			if r.code != exitConfig {
				t.Errorf("exit %d for bad input, want %d (configuration error: no restart); stderr %q", r.code, exitConfig, r.stderr)
			}
			lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
			if len(lines) != 1 {
				t.Errorf("want one line on stderr, got %d: %q", len(lines), r.stderr)
			}
			if !strings.Contains(r.stderr, c.want) {
				t.Errorf("stderr %q does not name the problem (%q)", r.stderr, c.want)
			}
			if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin dir %s left behind (err %v)", pin, err)
			}
			if n := testenv.SockOpsPrograms(t, cg.Path); n != 0 {
				t.Errorf("%d sock_ops programs left attached", n)
			}
		})
	}
	if r := sockaccel(t, "frobnicate"); r.code == 0 || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("unknown command: exit %d, stderr %q", r.code, r.stderr)
	}
}

// The status --json keys scripts rely on.
var statusKeys = []string{"attached", "cgroup", "sockhash_entries", "max_conns", "redirected_msgs",
	"redirected_bytes", "passed_msgs", "redirect_errors", "map_full",
	"conntrack_entries", "conntrack_capacity", "conntrack_load", "closed_direct", "closed_gc", "gc_runs",
	"kernel_probes"}

func status(t *testing.T, pin string) map[string]any {
	t.Helper()
	r := sockaccel(t, "status", "--json", "--pin-dir", pin)
	if r.code != 0 {
		t.Fatalf("status: exit %d: %s", r.code, r.stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("status --json: %v: %s", err, r.stdout)
	}
	for _, k := range statusKeys {
		if _, ok := m[k]; !ok {
			t.Errorf("status --json lacks key %q", k)
		}
	}
	return m
}

// syncBuffer is a bytes.Buffer safe for the daemon's writes and our reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fileLog is a daemon's stderr as a file: the daemon writes it directly,
// so a line is readable as soon as the write returns, before anything the
// daemon does next (a pipe copied by a goroutine can lag behind, and a
// test of "logged before READY=1" then fails at random).
type fileLog struct{ path string }

func (l fileLog) String() string {
	b, _ := os.ReadFile(l.path)
	return string(b)
}

type daemon struct {
	*exec.Cmd
	log fileLog
	api string // its API socket
}

// startDaemon runs "sockaccel run" and waits until it reports that it is
// accelerating. Its API socket is in a temporary directory, unless args
// name one.
func startDaemon(t *testing.T, args ...string) daemon {
	t.Helper()
	d := launchDaemon(t, nil, args...)
	waitAccelerating(t, d)
	return d
}

// waitAccelerating waits for the daemon's start-up line.
func waitAccelerating(t *testing.T, d daemon) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(d.log.String(), `"msg":"accelerating"`) {
		if time.Now().After(deadline) {
			t.Fatalf("daemon not ready within 30s; log:\n%s", d.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// launchDaemon starts "sockaccel run" with env added to the environment;
// it is killed at cleanup if still running. Its API socket is in a
// temporary directory, unless args name one.
func launchDaemon(t *testing.T, env []string, args ...string) daemon {
	t.Helper()
	return launchDaemonVia(t, nil, env, args...)
}

// launchDaemonVia is launchDaemon through a wrapper command that ends by
// exec'ing its arguments, so that the daemon keeps the wrapper's PID.
func launchDaemonVia(t *testing.T, wrapper, env []string, args ...string) daemon {
	t.Helper()
	api := filepath.Join(t.TempDir(), "run", "sockaccel.sock")
	for i, a := range args {
		if a == "--api-socket" && i+1 < len(args) {
			api = args[i+1]
		}
	}
	if !slices.Contains(args, "--api-socket") {
		args = append(args, "--api-socket", api)
	}
	argv := append(slices.Clone(wrapper), sockaccelBin, "run", "--log-format", "json", "--metrics-addr", "127.0.0.1:0")
	argv = append(argv, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	stderr := fileLog{filepath.Join(t.TempDir(), "stderr")}
	f, err := os.Create(stderr.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", stderr.String())
		}
	})
	return daemon{cmd, stderr, api}
}

// The daemon's whole life through the CLI: run, status, kill -9 with live
// connections, restart (adopting the pins), SIGTERM, cleanup twice.
func TestDaemonLifecycle(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	ns := testenv.NewNetns(t)
	in := testenv.Endpoint{Netns: ns, Cgroup: &cg}

	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, "--max-conns", "128", wideBound)
	st := status(t, pin)
	if st["cgroup"] != cg.Path || st["max_conns"] != float64(128) {
		t.Errorf("status cgroup %v max_conns %v, want %s 128", st["cgroup"], st["max_conns"], cg.Path)
	}

	ln := in.Listen(t, "tcp4", "127.0.0.1:9001")
	pairs := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9001", 4)
	if got := status(t, pin)["sockhash_entries"]; got != float64(8) {
		t.Errorf("sockhash_entries %v with 4 open connections, want 8", got)
	}
	if st := status(t, pin); st["conntrack_entries"] != float64(4) || st["conntrack_capacity"] != float64(128) {
		t.Errorf("conntrack %v / %v, want 4 / 128", st["conntrack_entries"], st["conntrack_capacity"])
	}
	r := sockaccel(t, "conns", "--json", "--pin-dir", pin)
	var conns []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &conns); err != nil || r.code != 0 {
		t.Fatalf("conns --json: exit %d, %v: %s %s", r.code, err, r.stdout, r.stderr)
	}
	if len(conns) != 4 {
		t.Errorf("conns lists %d connections, want 4", len(conns))
	}
	for _, c := range conns {
		for _, k := range []string{"client", "server", "age_seconds", "bytes_client_to_server", "bytes_server_to_client", "cgroups"} {
			if _, ok := c[k]; !ok {
				t.Errorf("conns entry lacks %q: %v", k, c)
			}
		}
		if c["server"] != "127.0.0.1:9001" {
			t.Errorf("conns server %v, want 127.0.0.1:9001", c["server"])
		}
		if cgs, _ := c["cgroups"].([]any); len(cgs) != 2 || cgs[0] != cg.Rel() {
			t.Errorf("conns cgroups %v, want [%s %s]", c["cgroups"], cg.Rel(), cg.Rel())
		}
	}
	if r := sockaccel(t, "conns", "--pin-dir", pin); r.code != 0 || !strings.Contains(r.stdout, "4 connections") {
		t.Errorf("conns table: exit %d: %s", r.code, r.stdout)
	}

	// kill -9: pins keep the live connections accelerated.
	if err := d.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.Wait()
	before := status(t, pin)
	if before["attached"] != true {
		t.Fatal("not attached after the daemon was killed")
	}
	testenv.ExchangeAll(t, pairs[:2], 4<<20, 4<<20, 1)
	during := status(t, pin)
	if during["redirected_bytes"].(float64)-before["redirected_bytes"].(float64) < 16<<20 {
		t.Errorf("connections were not redirected while the daemon was down: %v -> %v", before["redirected_bytes"], during["redirected_bytes"])
	}

	// Restart adopts: one sock_ops attachment, counters continue.
	d2 := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, "--max-conns", "128", wideBound)
	if !strings.Contains(d2.log.String(), `"adopted":true`) {
		t.Error("restarted daemon did not report adopting the pins")
	}
	if n := testenv.SockOpsPrograms(t, cg.Path); n != 1 {
		t.Errorf("%d sock_ops programs after restart, want 1", n)
	}
	testenv.ExchangeAll(t, pairs[2:], 4<<20, 4<<20, 2)
	after := status(t, pin)
	if after["redirected_bytes"].(float64)-during["redirected_bytes"].(float64) < 16<<20 {
		t.Errorf("counters did not keep counting after restart: %v -> %v", during["redirected_bytes"], after["redirected_bytes"])
	}

	if err := d2.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := d2.Wait(); err != nil {
		t.Errorf("daemon exit on SIGTERM: %v", err)
	}
	if status(t, pin)["attached"] != true {
		t.Error("SIGTERM detached: stopping the daemon must leave acceleration in place")
	}

	for i := range 2 {
		if r := sockaccel(t, "cleanup", "--pin-dir", pin); r.code != 0 {
			t.Fatalf("cleanup #%d: exit %d: %s", i+1, r.code, r.stderr)
		}
	}
	if st := status(t, pin); st["attached"] != false {
		t.Errorf("attached after cleanup: %v", st)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir %s still exists after cleanup", pin)
	}
	if n := testenv.SockOpsPrograms(t, cg.Path); n != 0 {
		t.Errorf("%d sock_ops programs after cleanup", n)
	}
}

// The behaviour probes through the CLI: the daemon logs each result once at
// start, status lists them (JSON and text) with and without a daemon, a
// restart adopting the pins logs the stored results without probing again,
// and cleanup removes them with the rest.
func TestStatusKernelProbes(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	logged := func(d daemon, stored bool) int {
		return strings.Count(d.log.String(), fmt.Sprintf(`"stored":%v`, stored))
	}

	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin)
	if n := strings.Count(d.log.String(), `"msg":"kernel behaviour"`); n != 5 || logged(d, false) != 5 {
		t.Errorf("fresh start logged %d kernel behaviour lines (%d probed), want 5 probed", n, logged(d, false))
	}
	st := status(t, pin)
	probes, _ := st["kernel_probes"].([]any)
	if len(probes) != 5 {
		t.Fatalf("kernel_probes = %v, want 5 entries", st["kernel_probes"])
	}
	names := map[string]bool{}
	for _, p := range probes {
		m, _ := p.(map[string]any)
		name, _ := m["name"].(string)
		result, _ := m["result"].(string)
		if name == "" || result == "" || strings.HasPrefix(result, "error") {
			t.Errorf("kernel_probes entry %v", p)
		}
		names[name] = true
	}
	for _, want := range []string{"fionread", "rcvbuf_charged", "splice", "waitall", "rcvlowat"} {
		if !names[want] {
			t.Errorf("kernel_probes lacks %s: %v", want, probes)
		}
	}
	probedAt := st["kernel_probes_at"]
	if r := sockaccel(t, "status", "--pin-dir", pin); r.code != 0 || !strings.Contains(r.stdout, "kernel probes:") || !strings.Contains(r.stdout, "  fionread: ") {
		t.Errorf("status text: exit %d:\n%s", r.code, r.stdout)
	}

	if err := d.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(); err != nil {
		t.Errorf("daemon exit on SIGTERM: %v", err)
	}
	if got := status(t, pin)["kernel_probes"].([]any); len(got) != 5 {
		t.Errorf("without a daemon kernel_probes = %v", got)
	}

	d2 := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin)
	if logged(d2, true) != 5 || logged(d2, false) != 0 {
		t.Errorf("restart logged %d stored and %d probed results, want 5 stored", logged(d2, true), logged(d2, false))
	}
	if got := status(t, pin)["kernel_probes_at"]; got != probedAt {
		t.Errorf("restart probed again: kernel_probes_at %v, was %v", got, probedAt)
	}
	if err := d2.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d2.Wait()
	if r := sockaccel(t, "cleanup", "--pin-dir", pin); r.code != 0 {
		t.Fatalf("cleanup: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir %s still exists after cleanup", pin)
	}
}

// kill -9 in the middle of a multi-hundred-MiB transfer on many connections:
// every stream completes intact and redirected, and the restarted daemon
// adopts the pins (one sock_ops attachment) and keeps counting.
func TestKillDuringTransfer(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	ns := testenv.NewNetns(t)
	in := testenv.Endpoint{Netns: ns, Cgroup: &cg}

	// The slow readers let up to the whole stream queue; a backlog bound
	// above it keeps every byte on the fast path, so the counters can prove
	// nothing fell back across the kill.
	bound := "--backlog-bytes=67108864"
	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, bound)
	ln := in.Listen(t, "tcp4", "127.0.0.1:9002")
	const conns, size = 8, 40 << 20
	pairs := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9002", conns)
	results := testenv.SlowStreams(pairs, size, 2*time.Millisecond)

	// Kill once the transfer is well under way.
	for status(t, pin)["redirected_bytes"].(float64) < 32<<20 {
		time.Sleep(10 * time.Millisecond)
	}
	if err := d.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.Wait()
	atKill := status(t, pin)["redirected_bytes"].(float64)

	d2 := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, bound)
	if n := testenv.SockOpsPrograms(t, cg.Path); n != 1 {
		t.Errorf("%d sock_ops programs after restart, want 1", n)
	}
	for range conns {
		r := <-results
		if r.Err != nil || r.Got != r.Sent {
			t.Errorf("stream across kill -9: sent %v, got %v, err %v", r.Sent, r.Got, r.Err)
		}
	}
	st := status(t, pin)
	t.Logf("redirected %.0f MiB at the kill, %.0f MiB in the end; passed %v msgs",
		atKill/(1<<20), st["redirected_bytes"].(float64)/(1<<20), st["passed_msgs"])
	if st["redirected_bytes"].(float64) != conns*size {
		t.Errorf("redirected_bytes %v, want all %d payload bytes redirected", st["redirected_bytes"], conns*size)
	}
	// The writers may have handed everything over before the kill; a new
	// connection shows the restarted daemon's programs counting.
	more := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9002", 1)
	testenv.ExchangeAll(t, more, 1<<20, 1<<20, 3)
	more[0].Client.Close()
	more[0].Server.Close()
	if now := status(t, pin)["redirected_bytes"].(float64); now <= st["redirected_bytes"].(float64) {
		t.Errorf("counters did not move after the restart: %v -> %v", st["redirected_bytes"], now)
	}
	if st["closed_direct"].(float64) != conns {
		t.Errorf("closed_direct %v after the streams closed, want %d", st["closed_direct"], conns)
	}
	d2.Process.Signal(syscall.SIGTERM)
	d2.Wait()
}

// What the TCP listener serves, to anyone on the host: Prometheus metrics
// (text and OpenMetrics; TestMetricsPromtool lints them), health, and a
// /status of aggregates; no per-connection data.
func TestMetricsEndpoint(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	ns := testenv.NewNetns(t)
	in := testenv.Endpoint{Netns: ns, Cgroup: &cg}
	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, wideBound)
	base := "http://" + metricsAddr(t, d)

	ln := in.Listen(t, "tcp4", "127.0.0.1:9003")
	pairs := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9003", 2)
	testenv.ExchangeAll(t, pairs[:1], 1<<20, 1<<20, 1)

	metrics := httpGet(t, base+"/metrics", nil, 200)
	for _, want := range []string{
		"sockaccel_attached 1",
		"sockaccel_msg_redirected_bytes_total 2.097152e+06",
		"sockaccel_conntrack_entries 1",
		`sockaccel_conntrack_closed_total{by="close_callback"} 1`,
		`sockaccel_sockets_not_accelerated_total{reason="map_full"} 0`,
		`sockaccel_program_attached{program="sock_ops"} 1`,
		"sockaccel_healthy 1",
		"sockaccel_scrape_errors_total{part=\"stats\"} 0",
		"sockaccel_conntrack_gc_duration_seconds_count",
		"process_resident_memory_bytes",
		"go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}
	checkLegacyMetrics(t, metrics)

	om := httpGet(t, base+"/metrics", http.Header{"Accept": {"application/openmetrics-text; version=1.0.0"}}, 200)
	if !strings.HasSuffix(om, "# EOF\n") || !strings.Contains(om, "# TYPE sockaccel_msg_redirected_bytes counter\n") || !strings.Contains(om, "sockaccel_msg_redirected_bytes_total 2.097152e+06") {
		t.Errorf("OpenMetrics scrape does not end in # EOF or lacks the counter:\n%s", om)
	}

	var st map[string]any
	if err := json.Unmarshal([]byte(httpGet(t, base+"/status", nil, 200)), &st); err != nil || st["redirected_bytes"] != float64(2<<20) {
		t.Errorf("/status: %v %v", err, st)
	}
	if _, ok := st["learned_exclusions"]; ok {
		t.Errorf("TCP /status lists learned exclusions (services, cgroups, processes): %v", st)
	}
	if _, ok := st["learned_exclusions_count"]; !ok {
		t.Errorf("TCP /status lacks learned_exclusions_count: %v", st)
	}
	httpGet(t, base+"/conns", nil, 404)
	if got := httpGet(t, base+"/healthz", nil, 200); got != "ok\n" {
		t.Errorf("/healthz: %q", got)
	}
	// A client that never finishes its request is cut off, not held.
	slow, err := net.Dial("tcp", metricsAddr(t, d))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n"))
	slow.SetReadDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	if _, err := io.ReadAll(slow); err != nil {
		t.Errorf("a client that never finished its request headers was still held after %s: %v", time.Since(start).Round(time.Second), err)
	}
	pairs[1].Client.Close()
	pairs[1].Server.Close()
	d.Process.Signal(syscall.SIGTERM)
	if err := d.Wait(); err != nil {
		t.Errorf("daemon exit: %v", err)
	}
}
