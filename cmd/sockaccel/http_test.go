//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

// legacyMetrics is every metric the hand-written exposition emitted before
// client_golang, with its type and help sentence: dashboards and alerts
// depend on them.
var legacyMetrics = []struct{ name, typ, help string }{
	{"sockaccel_build_info", "gauge", "Version of the running sockaccel binary."},
	{"sockaccel_attached", "gauge", "Whether the sock_ops program is attached to its cgroup (1) or not (0)."},
	{"sockaccel_sockhash_entries", "gauge", "Sockets currently in the sockhash."},
	{"sockaccel_sockhash_entries_limit", "gauge", "Sockets the sockhash can hold (two per connection)."},
	{"sockaccel_conntrack_entries", "gauge", "Connections currently tracked."},
	{"sockaccel_conntrack_entries_limit", "gauge", "Connections the conntrack map can hold."},
	{"sockaccel_msg_redirected_total", "counter", "Sends moved straight into the peer socket."},
	{"sockaccel_msg_redirected_bytes_total", "counter", "Bytes moved straight into the peer socket."},
	{"sockaccel_msg_passed_total", "counter", "Sends of tracked sockets left on the TCP path."},
	{"sockaccel_msg_passed_bytes_total", "counter", "Bytes of tracked sockets left on the TCP path."},
	{"sockaccel_redirect_errors_total", "counter", "Sends whose peer left the sockhash after this socket had redirected to it."},
	{"sockaccel_sockets_established_total", "counter", "Established TCP sockets seen in the target cgroup."},
	{"sockaccel_sockets_accelerated_total", "counter", "Sockets put in the sockhash."},
	{"sockaccel_sockets_not_accelerated_total", "counter", "Established sockets not put in the sockhash, by reason."},
	{"sockaccel_sends_backlog_total", "counter", "Sends handed to TCP because the receiver was further behind than the backlog bound."},
	{"sockaccel_directions_off_total", "counter", "Connection directions taken off the fast path for good, by reason."},
	{"sockaccel_connections_off_total", "counter", "Connections taken off the fast path for good when an application first used a call the redirect path does not honour, by call."},
	{"sockaccel_splice_stalled_total", "counter", "Sockets an application spliced from while redirected bytes were unread (splice cannot return them: exclude that port or cgroup)."},
	{"sockaccel_rcvlowat_lowered_total", "counter", "SO_RCVLOWAT calls on sockets that had bytes redirected into them, applied as 1 so that no wait depends on those bytes."},
	{"sockaccel_oob_misread_total", "counter", "recv(MSG_OOB) calls on sockets holding redirected bytes, which returned an ordinary byte instead of the urgent one (that service is learned from then on with --learn-splice)."},
	{"sockaccel_fionread_misread_total", "counter", "ioctl(FIONREAD) calls on sockets holding redirected bytes, on a kernel whose FIONREAD leaves those out, so it reported too little (that service is learned from then on with --learn-splice)."},
	{"sockaccel_directions_resumed_total", "counter", "Directions back on the fast path after the receiver read every byte that went through TCP."},
	{"sockaccel_conntrack_closed_total", "counter", "Conntrack entries removed, by what removed them."},
	{"sockaccel_connections_retired_total", "counter", "Connections off the fast path both ways for good whose sockets left the sockhash, back to plain TCP."},
	{"sockaccel_conntrack_full_total", "counter", "Connections not tracked because conntrack was full."},
	{"sockaccel_conntrack_gc_runs_total", "counter", "Fallback GC passes (zero while nothing needs collecting)."},
}

// The label sets the hand-written exposition emitted, as samples.
var legacySamples = []string{
	`sockaccel_build_info{version="`,
	`sockaccel_sockets_not_accelerated_total{reason="map_full"}`,
	`sockaccel_sockets_not_accelerated_total{reason="excluded_port"}`,
	`sockaccel_sockets_not_accelerated_total{reason="excluded_cidr"}`,
	`sockaccel_sockets_not_accelerated_total{reason="excluded_cgroup"}`,
	`sockaccel_sockets_not_accelerated_total{reason="early_data"}`,
	`sockaccel_sockets_not_accelerated_total{reason="insert_error"}`,
	`sockaccel_sockets_not_accelerated_total{reason="storage_error"}`,
	`sockaccel_sockets_not_accelerated_total{reason="disabled"}`,
	`sockaccel_sockets_not_accelerated_total{reason="blocking"}`,
	`sockaccel_sockets_not_accelerated_total{reason="ulp"}`,
	`sockaccel_sockets_not_accelerated_total{reason="excluded_learned"}`,
	`sockaccel_sockets_not_accelerated_total{reason="repair"}`,
	`sockaccel_directions_off_total{reason="setsockopt"}`,
	`sockaccel_connections_off_total{reason="splice"}`,
	`sockaccel_connections_off_total{reason="waitall"}`,
	`sockaccel_connections_off_total{reason="oob"}`,
	`sockaccel_connections_off_total{reason="fionread"}`,
	`sockaccel_conntrack_closed_total{by="close_callback"}`,
	`sockaccel_conntrack_closed_total{by="gc"}`,
}

func checkLegacyMetrics(t *testing.T, text string) {
	t.Helper()
	for _, m := range legacyMetrics {
		if !strings.Contains(text, "# HELP "+m.name+" "+m.help+"\n# TYPE "+m.name+" "+m.typ+"\n") {
			t.Errorf("/metrics lacks %s as it was (type %s, help %q)", m.name, m.typ, m.help)
		}
	}
	for _, s := range legacySamples {
		if !strings.Contains(text, "\n"+s) {
			t.Errorf("/metrics lacks the sample %s", s)
		}
	}
}

// requirePromtool fails under CI=true (make deps installs Debian's
// prometheus package, which has it) and skips elsewhere.
func requirePromtool(t *testing.T) {
	t.Helper()
	testenv.RequireTools(t, "promtool")
}

// A live scrape, with traffic counted and a GC pass timed, passes
// `promtool check metrics` (lint included). promtool reads the text format
// only (OpenMetrics' counter families read as duplicates to it), so the
// OpenMetrics answer is checked in TestMetricsEndpoint by its content type
// and terminator.
func TestMetricsPromtool(t *testing.T) {
	testenv.RequirePrivileged(t)
	requirePromtool(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	ns := testenv.NewNetns(t)
	in := testenv.Endpoint{Netns: ns, Cgroup: &cg}
	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, "--gc-interval", "10ms", wideBound)
	base := "http://" + metricsAddr(t, d)
	ln := in.Listen(t, "tcp4", "127.0.0.1:9005")
	pairs := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9005", 2)
	testenv.ExchangeAll(t, pairs[:1], 1<<20, 1<<20, 1)

	// A GC pass has been timed once the histogram counts one.
	text := httpGet(t, base+"/metrics", nil, 200)
	for !regexp.MustCompile(`\nsockaccel_conntrack_gc_duration_seconds_count [1-9]`).MatchString(text) {
		runtime.Gosched()
		text = httpGet(t, base+"/metrics", nil, 200)
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("promtool check metrics: %v:\n%s\n%s", err, out, text)
	}
	pairs[1].Client.Close()
	pairs[1].Server.Close()
	d.Process.Signal(syscall.SIGTERM)
	if err := d.Wait(); err != nil {
		t.Errorf("daemon exit: %v", err)
	}
	if r := sockaccel(t, "cleanup", "--pin-dir", pin); r.code != 0 {
		t.Errorf("cleanup: exit %d: %s", r.code, r.stderr)
	}
}

func metricsAddr(t *testing.T, d daemon) string {
	t.Helper()
	m := regexp.MustCompile(`"msg":"serving metrics","addr":"([^"]+)"`).FindStringSubmatch(d.log.String())
	if m == nil {
		t.Fatalf("daemon did not log its metrics address: %s", d.log.String())
	}
	return m[1]
}

// httpGet GETs url with the client (default: TCP) and wants status code.
func httpGetWith(t *testing.T, client *http.Client, url string, header http.Header, code int) string {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	maps.Copy(req.Header, header)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != code {
		t.Errorf("GET %s: %s, want %d: %s", url, resp.Status, code, body)
	}
	return string(body)
}

func httpGet(t *testing.T, url string, header http.Header, code int) string {
	t.Helper()
	return httpGetWith(t, http.DefaultClient, url, header, code)
}

func unixClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}

func jsonKeys(t *testing.T, what, text string) []string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(text), &m); err != nil {
		t.Fatalf("%s: %v: %s", what, err, text)
	}
	return slices.Sorted(maps.Keys(m))
}

// The API socket: root only (0700 directory, 0600 socket, refused to
// nobody), and `status`/`conns` through it give what they give from the
// pins.
// --api-socket in a directory that was already there (/tmp, say) leaves
// that directory's mode alone: a daemon once made /tmp 0700 this way.
func TestAPISocketLeavesAnExistingDirectoryAlone(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, "--api-socket", filepath.Join(dir, "api.sock"))
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := os.ModeDir | os.ModeSticky | 0o755; fi.Mode() != want {
		t.Errorf("%s is %v after the daemon put its socket there, want %v as before", dir, fi.Mode(), want)
	}
	if st := status(t, pin); st["attached"] != true {
		t.Errorf("status through the API socket: attached %v", st["attached"])
	}
}

func TestAPISocket(t *testing.T) {
	testenv.RequirePrivileged(t)
	// Debian's, not a shim under /root that nobody cannot run.
	const python = "/usr/bin/python3"
	testenv.RequireTools(t, python)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	ns := testenv.NewNetns(t)
	in := testenv.Endpoint{Netns: ns, Cgroup: &cg}
	// The socket's directory is created by the daemon; /tmp's test
	// directory is reachable to everyone, so only the daemon's own modes
	// keep nobody out.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // t.TempDir's are 0700
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	api := filepath.Join(dir, "run", "sockaccel.sock")
	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, "--api-socket", api, "--log-level", "debug", wideBound)

	for path, want := range map[string]os.FileMode{filepath.Dir(api): os.ModeDir | 0o700, api: os.ModeSocket | 0o600} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want || fi.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("%s: mode %v uid %d, want %v owned by root", path, fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid, want)
		}
	}

	// nobody cannot connect; and were the modes opened behind the
	// daemon's back, its connection would be dropped unanswered
	// (SO_PEERCRED).
	asNobody := func() string {
		t.Helper()
		py := exec.Command(python, "-c", `
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("refused", e.errno)
    sys.exit()
try:
    s.sendall(b"GET /conns HTTP/1.0\r\n\r\n")
    data = s.recv(100)
except OSError:  # EPIPE or ECONNRESET: closed under us
    data = b""
print("answered" if data else "dropped")
`, api)
		py.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := py.CombinedOutput()
		if err != nil {
			t.Fatalf("python as nobody: %v: %s", err, out)
		}
		t.Logf("nobody: %s", strings.TrimSpace(string(out)))
		return strings.TrimSpace(string(out))
	}
	if got := asNobody(); got != "refused 13" {
		t.Errorf("nobody connecting to %s: %q, want refused with EACCES (13)", api, got)
	}
	if err := os.Chmod(filepath.Dir(api), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(api, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := asNobody(); got != "dropped" {
		t.Errorf("nobody connecting to %s opened 0666: %q, want the connection dropped unanswered", api, got)
	}
	os.Chmod(api, 0o600)
	os.Chmod(filepath.Dir(api), 0o700)

	// A second daemon (another pin dir) on the same socket is refused
	// before it changes anything.
	pin2 := testenv.TempPinDir(t)
	if r := sockaccel(t, "run", "--cgroup", cg.Path, "--pin-dir", pin2, "--metrics-addr=", "--api-socket", api); r.code == 0 || !strings.Contains(r.stderr, "another sockaccel serves on "+api) {
		t.Errorf("second daemon on %s: exit %d: %s", api, r.code, r.stderr)
	}
	if _, err := os.Stat(pin2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused daemon left %s (err %v)", pin2, err)
	}

	ln := in.Listen(t, "tcp4", "127.0.0.1:9004")
	pairs := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9004", 3)
	testenv.ExchangeAll(t, pairs[:1], 1<<20, 1<<20, 1) // and closes it

	// Through the socket, then from the pins (no daemon at the socket
	// given), while nothing moves.
	bothWays := func(cmd string) (viaSocket, viaPins string) {
		t.Helper()
		s := sockaccel(t, cmd, "--json", "--pin-dir", pin, "--api-socket", api)
		p := sockaccel(t, cmd, "--json", "--pin-dir", pin, "--api-socket", filepath.Join(dir, "none.sock"))
		if s.code != 0 || p.code != 0 {
			t.Fatalf("%s: exit %d / %d: %s %s", cmd, s.code, p.code, s.stderr, p.stderr)
		}
		if !strings.Contains(d.log.String(), `"path":"/`+cmd+`"`) {
			t.Errorf("%s --api-socket %s did not ask the daemon", cmd, api)
		}
		return s.stdout, p.stdout
	}
	statusSocket, statusPins := bothWays("status")
	ks, kp := jsonKeys(t, "status via socket", statusSocket), jsonKeys(t, "status via pins", statusPins)
	if !slices.Equal(ks, kp) {
		t.Errorf("status --json keys differ:\nsocket %v\npins   %v", ks, kp)
	}
	for _, k := range statusKeys {
		if !slices.Contains(ks, k) {
			t.Errorf("status --json via the socket lacks %q", k)
		}
	}
	var s1, s2 map[string]any
	json.Unmarshal([]byte(statusSocket), &s1)
	json.Unmarshal([]byte(statusPins), &s2)
	for _, k := range ks {
		if a, b := mustJSON(s1[k]), mustJSON(s2[k]); a != b {
			t.Errorf("status %s: %s via the socket, %s from the pins", k, a, b)
		}
	}

	connsSocket, connsPins := bothWays("conns")
	var cs, cp []map[string]any
	if err := json.Unmarshal([]byte(connsSocket), &cs); err != nil {
		t.Fatalf("conns via socket: %v: %s", err, connsSocket)
	}
	if err := json.Unmarshal([]byte(connsPins), &cp); err != nil {
		t.Fatalf("conns via pins: %v: %s", err, connsPins)
	}
	if len(cs) != 2 || len(cp) != 2 {
		t.Fatalf("conns: %d rows via the socket, %d from the pins, want 2", len(cs), len(cp))
	}
	byCookie := func(rows []map[string]any) map[string]map[string]any {
		out := map[string]map[string]any{}
		for _, r := range rows {
			delete(r, "age_seconds") // the clock moved between the two
			out[mustJSON(r["cookies"])] = r
		}
		return out
	}
	ms, mp := byCookie(cs), byCookie(cp)
	for k, r := range ms {
		if a, b := mustJSON(r), mustJSON(mp[k]); a != b {
			t.Errorf("conns row differs:\nsocket %s\npins   %s", a, b)
		}
	}
	if r := sockaccel(t, "conns", "--pin-dir", pin, "--api-socket", api); r.code != 0 || !strings.Contains(r.stdout, "2 connections") {
		t.Errorf("conns table via the socket: exit %d: %s", r.code, r.stdout)
	}

	// The socket goes with the daemon; status then reads the pins.
	for _, p := range pairs {
		p.Client.Close()
		p.Server.Close()
	}
	d.Process.Signal(syscall.SIGTERM)
	if err := d.Wait(); err != nil {
		t.Errorf("daemon exit: %v", err)
	}
	if _, err := os.Stat(api); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s left after the daemon stopped (err %v)", api, err)
	}
	if got := status(t, pin); got["attached"] != true {
		t.Errorf("status from the pins after stop: %v", got)
	}
	if r := sockaccel(t, "cleanup", "--pin-dir", pin); r.code != 0 {
		t.Errorf("cleanup: exit %d: %s", r.code, r.stderr)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// /healthz, on both listeners, says 200 while everything is in place and
// 503 with the reason once a pin is gone or the sock_ops link is detached
// behind the daemon's back; the metrics say the same.
func TestHealthz(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin)
	base := "http://" + metricsAddr(t, d)
	api := unixClient(d.api)

	if got := httpGet(t, base+"/healthz", nil, 200); got != "ok\n" {
		t.Errorf("healthy /healthz: %q", got)
	}
	if got := httpGetWith(t, api, "http://sockaccel/healthz", nil, 200); got != "ok\n" {
		t.Errorf("healthy /healthz on the API socket: %q", got)
	}

	// A pin moved away, then back.
	stats := filepath.Join(pin, "sa_stats")
	if err := os.Rename(stats, stats+"_moved"); err != nil {
		t.Fatal(err)
	}
	if got := httpGet(t, base+"/healthz", nil, 503); !strings.Contains(got, "pin sa_stats: missing") {
		t.Errorf("/healthz with sa_stats unpinned: %q", got)
	}
	if err := os.Rename(stats+"_moved", stats); err != nil {
		t.Fatal(err)
	}
	httpGet(t, base+"/healthz", nil, 200)

	// sock_ops detached through its pinned link.
	l, err := link.LoadPinnedLink(filepath.Join(pin, "links", "sockops"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Detach(); err != nil {
		t.Fatalf("detach sock_ops link: %v", err)
	}
	l.Close()
	if n := testenv.SockOpsPrograms(t, cg.Path); n != 0 {
		t.Fatalf("%d sock_ops programs after detaching", n)
	}
	for name, get := range map[string]func() string{
		"tcp":  func() string { return httpGet(t, base+"/healthz", nil, 503) },
		"unix": func() string { return httpGetWith(t, api, "http://sockaccel/healthz", nil, 503) },
	} {
		if got := get(); !strings.Contains(got, "sock_ops program detached from cgroup "+cg.Path) {
			t.Errorf("%s /healthz after detach: %q", name, got)
		}
	}
	metrics := httpGet(t, base+"/metrics", nil, 200)
	for _, want := range []string{"sockaccel_attached 0", `sockaccel_program_attached{program="sock_ops"} 0`,
		`sockaccel_program_attached{program="sk_msg"} 1`, "sockaccel_healthy 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics after detach lacks %q", want)
		}
	}

	d.Process.Signal(syscall.SIGTERM)
	if err := d.Wait(); err != nil {
		t.Errorf("daemon exit: %v", err)
	}
	if r := sockaccel(t, "cleanup", "--pin-dir", pin); r.code != 0 {
		t.Errorf("cleanup: exit %d: %s", r.code, r.stderr)
	}
}

// Past the cap, a request gets 503 with Retry-After at once instead of
// waiting; the ones in flight finish, and the slot frees.
func TestRequestCap(t *testing.T) {
	const max = 2
	entered, release := make(chan struct{}), make(chan struct{})
	h := limitRequests(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		w.Write([]byte("done"))
	}), max)
	srv := httptest.NewServer(h)
	defer srv.Close()

	results := make(chan int, max)
	for range max {
		go func() {
			resp, err := http.Get(srv.URL)
			if err != nil {
				results <- 0
				return
			}
			resp.Body.Close()
			results <- resp.StatusCode
		}()
		<-entered
	}
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("request beyond the cap: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	close(release)
	for range max {
		if code := <-results; code != 200 {
			t.Errorf("request within the cap: %d", code)
		}
	}
	// Slots are free again.
	go func() { <-entered }()
	resp, err = http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("request after the others finished: %s", resp.Status)
	}
}
