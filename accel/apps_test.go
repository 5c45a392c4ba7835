//go:build linux

package accel_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

// Real programs from Debian over accelerated connections, each judged by its
// own checks: a client tool's exit status and error counts, and the bytes it
// received compared with the source. Server and client run in two network
// namespaces joined by veth, both in the accelerated cgroup.

const appTimeout = 60 * time.Second

// appHost is two "containers" on one accelerated node.
type appHost struct {
	n              *node
	client, server testenv.Endpoint
	serverIP       string
	dir            string
}

func newAppHost(t *testing.T, subnet byte, mutate func(*accel.Config), tools ...string) appHost {
	t.Helper()
	testenv.RequirePrivileged(t)
	testenv.RequireTools(t, tools...)
	n := newNode(t, mutate)
	tc := newTwoContainers(t, subnet)
	dir := t.TempDir()
	return appHost{n: n, client: n.in(tc.client), server: n.in(tc.server), serverIP: fmt.Sprintf("10.%d.0.2", subnet), dir: dir}
}

// randomFile writes size random bytes (as hex text, so text tools can carry
// it too) and returns its SHA-256.
func randomFile(t *testing.T, path string, size int) string {
	t.Helper()
	raw := make([]byte, size/2)
	rand.Read(raw)
	data := []byte(hex.EncodeToString(raw))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// startNginx serves dir/www on addr with sendfile on.
func (h appHost) startNginx(t *testing.T, addr string) {
	t.Helper()
	conf := filepath.Join(h.dir, "nginx.conf")
	tmp := filepath.Join(h.dir, "nginx-tmp")
	os.MkdirAll(tmp, 0o700)
	cfg := fmt.Sprintf(`user root;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 1000000;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	server {
		listen %[3]s;
		root %[1]s/www;
	}
}
`, h.dir, tmp, addr)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.server.Start(t, "nginx", "-e", "stderr", "-p", h.dir, "-c", conf, "-g", "daemon off;")
	h.server.WaitListening(t, addr)
}

// nginx with sendfile: curl fetches a 32 MiB file (also through a rate
// limit, which makes curl a slow reader), and wrk hammers a small file over
// keep-alive connections. The backlog bound is wide: with the autotuned one
// how much of a bulk fetch is redirected depends on how the scheduler
// treats curl (10 of 64 MiB with both CPUs busy with other work), and this
// test is about nginx, not the bound (TestBackpressureLikeTCP is).
func TestNginx(t *testing.T) {
	h := newAppHost(t, 241, func(c *accel.Config) { c.BacklogBytes = 64 << 20 }, "nginx", "curl", "wrk")
	www := filepath.Join(h.dir, "www")
	os.MkdirAll(www, 0o755)
	bigSum := randomFile(t, filepath.Join(www, "big"), 32<<20)
	randomFile(t, filepath.Join(www, "small"), 512)
	addr := h.serverIP + ":8080"
	h.startNginx(t, addr)
	before := h.n.stats(t)

	for _, limit := range []string{"0", "40M"} {
		body := h.client.Output(t, appTimeout, nil, "curl", "--silent", "--show-error", "--fail", "--limit-rate", limit, "http://"+addr+"/big")
		if got := sha(body); got != bigSum {
			t.Fatalf("curl --limit-rate %s got %d bytes, sha256 %s; want %s", limit, len(body), got, bigSum)
		}
	}
	out := string(h.client.Output(t, appTimeout, nil, "wrk", "--threads", "2", "--connections", "16", "--duration", "3s", "http://"+addr+"/small"))
	t.Logf("wrk:\n%s", out)
	if strings.Contains(out, "Socket errors") || strings.Contains(out, "Non-2xx") {
		t.Errorf("wrk saw errors:\n%s", out)
	}
	m := regexp.MustCompile(`(\d+) requests in`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no request count in wrk output:\n%s", out)
	}
	if reqs, _ := strconv.Atoi(m[1]); reqs == 0 {
		t.Fatal("wrk completed no requests")
	}
	after := h.n.stats(t)
	checkAppAccelerated(t, before, after, 32<<20)
}

// redis-server with redis-benchmark (pipelined and not), and a 4 MiB value
// written and read back with redis-cli.
func TestRedis(t *testing.T) {
	h := newAppHost(t, 242, nil, "redis-server", "redis-benchmark", "redis-cli")
	h.server.Start(t, "redis-server", "--bind", h.serverIP, "--port", "6390", "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--dir", h.dir, "--daemonize", "no")
	h.server.WaitListening(t, h.serverIP+":6390")
	before := h.n.stats(t)

	cli := []string{"-h", h.serverIP, "-p", "6390"}
	for _, pipeline := range []string{"1", "16"} {
		args := append([]string{"redis-benchmark"}, cli...)
		args = append(args, "-q", "-e", "-n", "20000", "-c", "16", "-P", pipeline, "-t", "set,get,incr,lpush,lpop,mset")
		// Progress lines end in \r; keep the final result lines.
		var results []string
		for _, l := range strings.FieldsFunc(string(h.client.Output(t, appTimeout, nil, args...)), func(r rune) bool { return r == '\r' || r == '\n' }) {
			if l = strings.TrimSpace(l); strings.Contains(l, "requests per second") || strings.Contains(l, "ERR") {
				results = append(results, l)
			}
		}
		out := strings.Join(results, "\n")
		t.Logf("redis-benchmark -P %s:\n%s", pipeline, out)
		for _, test := range []string{"SET", "GET", "INCR", "LPUSH", "LPOP", "MSET"} {
			if !regexp.MustCompile(`(?m)^` + test + `[^:]*: [0-9.]+ requests per second`).MatchString(out) {
				t.Errorf("redis-benchmark -P %s reported no result for %s", pipeline, test)
			}
		}
		if strings.Contains(out, "ERR") || strings.Contains(out, "Error") {
			t.Errorf("redis-benchmark saw errors:\n%s", out)
		}
	}
	value := filepath.Join(h.dir, "value")
	randomFile(t, value, 4<<20)
	want, _ := os.ReadFile(value)
	f, err := os.Open(value)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if out := h.client.Output(t, appTimeout, f, append(append([]string{"redis-cli"}, cli...), "-x", "SET", "big")...); !bytes.HasPrefix(out, []byte("OK")) {
		t.Fatalf("SET big: %q", out)
	}
	got := h.client.Output(t, appTimeout, nil, append(append([]string{"redis-cli"}, cli...), "--raw", "GET", "big")...)
	// redis-cli -x sends stdin as is; --raw prints the value and a newline.
	if !bytes.Equal(bytes.TrimSuffix(got, []byte("\n")), want) {
		t.Fatalf("GET big returned %d bytes (sha256 %s), want %d (sha256 %s)", len(got), sha(got), len(want), sha(want))
	}
	checkAppAccelerated(t, before, h.n.stats(t), 2*4<<20)
}

// checkAppAccelerated asserts that the program's traffic took the fast
// path: at least minBytes redirected, no insert failures.
func checkAppAccelerated(t *testing.T, before, after accel.Stats, minBytes uint64) {
	t.Helper()
	if after.Inserted == before.Inserted {
		t.Error("no connection was accelerated")
	}
	if got := after.RedirectedBytes - before.RedirectedBytes; got < minBytes {
		t.Errorf("redirected %d bytes, want at least %d", got, minBytes)
	}
	if after.InsertErrors != before.InsertErrors || after.MapFull != before.MapFull {
		t.Errorf("insert failures: %d errors, %d map full", after.InsertErrors-before.InsertErrors, after.MapFull-before.MapFull)
	}
	t.Logf("accelerated sockets +%d, redirected %d msgs / %d bytes, passed %d msgs, off: backlog %d splice %d waitall %d oob %d",
		after.Inserted-before.Inserted, after.RedirectedMsgs-before.RedirectedMsgs, after.RedirectedBytes-before.RedirectedBytes,
		after.PassedMsgs-before.PassedMsgs, after.OffBacklog-before.OffBacklog, after.OffSplice-before.OffSplice,
		after.OffWaitall-before.OffWaitall, after.OffOOB-before.OffOOB)
}

// haproxy with kernel splicing in front of nginx: haproxy reads response
// bodies from its nginx connection with splice(2), which cannot return bytes
// already redirected into the socket. Excluding the backend port is the
// documented control: then every response arrives whole, and the client
// side of haproxy stays accelerated.
func TestHAProxySpliceWithBackendExcluded(t *testing.T) {
	h := newAppHost(t, 243, func(c *accel.Config) { c.ExcludePorts = []uint16{8080} }, "haproxy", "nginx", "curl")
	bigSum, addr := h.startHAProxy(t, "30s")
	before := h.n.stats(t)
	for i := range 4 {
		body := h.client.Output(t, appTimeout, nil, "curl", "--silent", "--show-error", "--fail", "http://"+addr+"/big")
		if got := sha(body); got != bigSum {
			t.Fatalf("fetch %d through haproxy: %d bytes, sha256 %s; want %s", i, len(body), got, bigSum)
		}
	}
	after := h.n.stats(t)
	// haproxy writes each 16 MiB body in one burst; once curl falls
	// behind it by more than the backlog bound, the rest of that body goes
	// through TCP's flow control (1 to 36 of the 64 MiB stayed on the
	// fast path in runs here). What this test checks is the splice
	// exclusion, so any redirected megabyte proves the client side on it.
	checkAppAccelerated(t, before, after, 1<<20)
	if after.ExcludedPort == before.ExcludedPort {
		t.Error("the haproxy-to-nginx connections were not excluded")
	}
	if after.SpliceStalled != before.SpliceStalled {
		t.Errorf("splice_stalled +%d with the backend port excluded", after.SpliceStalled-before.SpliceStalled)
	}
}

// Without the exclusion, haproxy's first splice on its nginx connection
// finds the response body already redirected: the detector cannot take
// those bytes back, so it keeps the connection ordered (never corrupt),
// counts splice_stalled and reports the process and ports to the daemon.
func TestHAProxySpliceStallIsReported(t *testing.T) {
	h := newAppHost(t, 244, nil, "haproxy", "nginx", "curl")
	events := make(chan accel.UseEvent, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.n.acc.WatchEvents(ctx, func(ev accel.UseEvent) { events <- ev }) }()
	defer func() { cancel(); <-done }()
	bigSum, addr := h.startHAProxy(t, "2s")
	// The stall needs the response body redirected into haproxy's socket
	// before its first splice there; haproxy occasionally splices first,
	// and that fetch succeeds. Fetch again until one stalls: the subject
	// of this test is how a stall is reported.
	const attempts = 5
	var (
		before, after accel.Stats
		err           error
	)
	for i := range attempts {
		before = h.n.stats(t)
		var body []byte
		body, err = h.client.Exec(t, appTimeout, nil, "curl", "--silent", "--show-error", "--fail", "http://"+addr+"/big")
		after = h.n.stats(t)
		if err != nil {
			break
		}
		// A fetch that did not stall must be exact.
		if got := sha(body); got != bigSum {
			t.Fatalf("fetch %d through haproxy succeeded with %d bytes, sha256 %s; want %s", i+1, len(body), got, bigSum)
		}
		t.Logf("fetch %d: no stall, the first splice found nothing redirected unread (splice_stalled +%d)", i+1, after.SpliceStalled-before.SpliceStalled)
	}
	if err == nil {
		// Not a failure of sockaccel (every body arrived whole), and not
		// something CI could fix by retrying longer: the race went the
		// other way each time. TestSpliceStallFailsFast forces a stall
		// with its own splicing reader.
		t.Skipf("no fetch of %d stalled: haproxy spliced before anything was redirected each time, so there was no stall to report", attempts)
	}
	t.Logf("fetch failed as documented: %v", err)
	if after.SpliceStalled == before.SpliceStalled {
		t.Fatal("haproxy's fetch failed but splice_stalled did not count it")
	}
	// Other events (a connection retired) may come first.
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Reason != "splice" {
				continue
			}
			if ev.Comm != "haproxy" || ev.RemotePort != 8080 || ev.Queued == 0 {
				t.Errorf("stall reported as %+v, want comm haproxy, remote port 8080, queued bytes", ev)
			}
			return
		case <-timeout:
			t.Fatal("no stalled-splice event reached the daemon")
		}
	}
}

// With the daemon's event handling running, the first stalled splice makes
// it exclude the backend's port: that one fetch stalls (or, rarely, was
// fast enough to succeed) until the daemon resets haproxy's connection to
// nginx, every later one is intact.
func TestHAProxySpliceLearnsExclusion(t *testing.T) {
	h := newAppHost(t, 245, nil, "haproxy", "nginx", "curl")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.n.acc.RunEvents(ctx) }()
	defer func() { cancel(); <-done }()
	// haproxy's own server timeout well beyond the daemon's 2 s grace: a
	// stalled fetch that fails before it was ended by the reset.
	bigSum, addr := h.startHAProxy(t, "30s")
	fetch := func() ([]byte, error) {
		return h.client.Exec(t, appTimeout, nil, "curl", "--silent", "--show-error", "--fail", "http://"+addr+"/big")
	}
	start := time.Now()
	first, err := fetch()
	took := time.Since(start)
	if err == nil && sha(first) != bigSum {
		t.Fatalf("first fetch succeeded with %d bytes that differ from the file", len(first))
	}
	t.Logf("first fetch: %v after %s", err, took.Round(time.Millisecond))
	if err != nil && took >= 30*time.Second {
		t.Errorf("the stalled fetch failed after %s, at haproxy's server timeout: the daemon did not reset the stalled connection", took)
	}
	waitFor(t, "port 8080 excluded", func() (bool, string) {
		s := h.n.stats(t)
		if err == nil {
			return true, "" // no stall: nothing to learn
		}
		learned, lerr := h.n.acc.LearnedExclusions()
		if lerr != nil {
			t.Fatal(lerr)
		}
		for _, l := range learned {
			if l.Port == 8080 {
				return true, ""
			}
		}
		return false, fmt.Sprintf("splice_stalled %d, learned %+v", s.SpliceStalled, learned)
	})
	before := h.n.stats(t)
	for i := range 3 {
		body, err := fetch()
		if err != nil {
			t.Fatalf("fetch %d after the stall: %v", i+1, err)
		}
		if got := sha(body); got != bigSum {
			t.Fatalf("fetch %d: %d bytes, sha256 %s; want %s", i+1, len(body), got, bigSum)
		}
	}
	after := h.n.stats(t)
	if after.SpliceStalled != before.SpliceStalled {
		t.Errorf("splice stalled %d more times after learning", after.SpliceStalled-before.SpliceStalled)
	}
	if err != nil && after.ExcludedLearned == before.ExcludedLearned {
		t.Error("no connection was excluded after the stall")
	}
}

// startHAProxy serves a 16 MiB file from nginx on 127.0.0.1:8080 through
// haproxy with splicing on, and returns the file's SHA-256 and haproxy's
// address.
func (h appHost) startHAProxy(t *testing.T, serverTimeout string) (string, string) {
	t.Helper()
	www := filepath.Join(h.dir, "www")
	os.MkdirAll(www, 0o755)
	bigSum := randomFile(t, filepath.Join(www, "big"), 16<<20)
	h.startNginx(t, "127.0.0.1:8080")
	conf := filepath.Join(h.dir, "haproxy.cfg")
	cfg := fmt.Sprintf(`global
	maxconn 200
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server %s
	option splice-request
	option splice-response
frontend fe
	bind %s:8081
	default_backend be
backend be
	server nginx 127.0.0.1:8080
`, serverTimeout, h.serverIP)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.server.Start(t, "haproxy", "-db", "-f", conf)
	addr := h.serverIP + ":8081"
	h.server.WaitListening(t, addr)
	return bigSum, addr
}

// cpythonSuites are CPython's own socket-level test suites: blocking and
// non-blocking sockets, MSG_WAITALL, MSG_OOB, sendfile, timeouts, half-close,
// servers in threads, asyncio streams, and the protocol clients built on
// them, written by people who know what TCP must do.
var cpythonSuites = []string{
	"test_socket", "test_selectors", "test_socketserver",
	"test_asyncio.test_sock_lowlevel", "test_asyncio.test_streams", "test_asyncio.test_sendfile",
	"test_telnetlib", "test_ftplib", "test_httplib", "test_urllib2_localnet",
	"test_xmlrpc", "test_imaplib", "test_smtplib",
}

// CPython's socket test suites, run inside the accelerated cgroup over
// loopback, pass as they do on plain TCP, with their connections redirected.
func TestCPythonSocketSuites(t *testing.T) {
	const python = "/usr/bin/python3"
	n := newNode(t, nil)
	n.runEvents(t)
	if out, err := exec.Command(python, "-c", "import test.test_socket").CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CPython's test suite is not installed (make deps installs libpython3.11-testsuite): %s", out)
		}
		t.Skipf("CPython's test suite is not installed (libpython3.11-testsuite): %s", out)
	}
	args := append([]string{python, "-m", "test", "--ignore", "*VSOCK*", "--timeout", "300"}, cpythonSuites...)
	out, err := testenv.Endpoint{Cgroup: &n.cg}.Exec(t, 15*time.Minute, nil, args...)
	summary := string(out)
	if i := strings.LastIndex(summary, "== Tests result"); i >= 0 {
		summary = summary[i:]
	} else if i := strings.LastIndex(summary, "Total duration"); i >= 0 {
		summary = summary[i:]
	}
	s := n.stats(t)
	t.Logf("%s\ninserted %d of %d sockets, redirected %d messages (%d bytes), passed %d; off_waitall %d, off_oob %d, off_splice %d",
		strings.TrimSpace(summary), s.Inserted, s.Established, s.RedirectedMsgs, s.RedirectedBytes, s.PassedMsgs, s.OffWaitall, s.OffOOB, s.OffSplice)
	// "Tests result: SUCCESS" (3.11.2) or "Result: SUCCESS" (later).
	if err != nil || !regexp.MustCompile(`(?m)^(Tests r|R)esult: SUCCESS`).Match(out) {
		t.Errorf("CPython's suites failed accelerated (%v):\n%s", err, out)
	}
	if s.RedirectedMsgs == 0 {
		t.Error("no message was redirected: the suites ran, but not accelerated")
	}
}
