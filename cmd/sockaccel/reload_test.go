//go:build linux

package main

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

// roundTrip sends size random bytes each way over p and checks they arrive
// intact.
func roundTrip(t *testing.T, p testenv.Pair, size int) {
	t.Helper()
	for _, dir := range [][2]*net.TCPConn{{p.Client, p.Server}, {p.Server, p.Client}} {
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = byte(rand.Uint32())
		}
		errc := make(chan error, 1)
		go func() { _, err := dir[0].Write(buf); errc <- err }()
		got := make([]byte, size)
		dir[1].SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(dir[1], got); err != nil || !bytes.Equal(got, buf) {
			t.Fatalf("%d bytes one way: %v (intact: %v)", size, err, bytes.Equal(got, buf))
		}
		if err := <-errc; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
}

// liveHost is a fresh cgroup, pin dir and network namespace for a daemon
// and its live connections.
type liveHost struct {
	cg  cgroup.Target
	pin string
	in  testenv.Endpoint
}

func newLiveHost(t *testing.T) liveHost {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	return liveHost{cg: cg, pin: testenv.TempPinDir(t), in: testenv.Endpoint{Netns: testenv.NewNetns(t), Cgroup: &cg}}
}

// liveConn opens a connection to port once the daemon runs, moves 1 MiB
// each way and checks it went over the fast path.
func (h liveHost) liveConn(t *testing.T, port int) testenv.Pair {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ln := h.in.Listen(t, "tcp4", addr)
	p := testenv.Connect(t, h.in, ln, "tcp4", addr, 1)[0]
	t.Cleanup(func() { p.Client.Close(); p.Server.Close() })
	before := status(t, h.pin)["redirected_bytes"].(float64)
	roundTrip(t, p, 1<<20)
	if got := status(t, h.pin)["redirected_bytes"].(float64) - before; got < 2<<20 {
		t.Fatalf("the live connection is not on the fast path: redirected %v bytes", got)
	}
	return p
}

// checkRetired waits until the live connection left the sockhash (retired
// +1 since before) and checks that its bytes still cross intact, without
// sk_msg.
func (h liveHost) checkRetired(t *testing.T, live testenv.Pair, before map[string]any) {
	t.Helper()
	waitStatus(t, h.pin, "the live connection to be retired", func(s map[string]any) bool {
		return s["retired"].(float64) == before["retired"].(float64)+1 && s["sockhash_entries"].(float64) == before["sockhash_entries"].(float64)-2
	})
	s := status(t, h.pin)
	roundTrip(t, live, 1<<20)
	if after := status(t, h.pin); after["redirected_bytes"] != s["redirected_bytes"] || after["passed_bytes"] != s["passed_bytes"] {
		t.Errorf("the retired connection still ran through sk_msg: redirected %v -> %v, passed %v -> %v",
			s["redirected_bytes"], after["redirected_bytes"], s["passed_bytes"], after["passed_bytes"])
	}
}

// waitLog waits until the daemon has logged want count times in all.
func (d daemon) waitLog(t *testing.T, want string, count int) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		log := d.log.String()
		if strings.Count(log, want) >= count {
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not log %q %d times within 30s; log:\n%s", want, count, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastLine returns the last log line containing want.
func lastLine(log, want string) string {
	var found string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, want) {
			found = l
		}
	}
	return found
}

// sockaccel reload (SIGHUP) with a file that does not validate: one
// warning, and the running exclusions and the live connection stay as they
// were. With a good file: the new exclusion takes the live connection off
// the fast path with every byte intact and retires it, and the log level
// changes without a restart.
func TestReloadThroughSIGHUP(t *testing.T) {
	h := newLiveHost(t)
	pin, in := h.pin, h.in
	cfg := writeConfig(t, "exclude-ports: [9101]\n")
	d := startDaemon(t, "--cgroup", h.cg.Path, "--pin-dir", pin, "--config", cfg, wideBound)
	live := h.liveConn(t, 9102)
	reload := func() {
		t.Helper()
		if r := sockaccel(t, "reload", "--pin-dir", pin); r.code != 0 || strings.Count(r.stdout, "\n") != 1 {
			t.Fatalf("sockaccel reload: exit %d, %q %q", r.code, r.stdout, r.stderr)
		}
	}
	excludedPort := func() float64 {
		t.Helper()
		before := status(t, pin)["excluded_port"].(float64)
		ln := in.Listen(t, "tcp4", "127.0.0.1:9101")
		defer ln.Close()
		p := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9101", 1)[0]
		roundTrip(t, p, 4096)
		p.Client.Close()
		p.Server.Close()
		return status(t, pin)["excluded_port"].(float64) - before
	}

	// A bad file: rejected with one warning naming the key; everything
	// stays.
	if err := os.WriteFile(cfg, []byte("exclude-ports: [9101, 9102]\nexclude-port: [1]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload()
	log := d.waitLog(t, `"msg":"config reload rejected; the running config stays"`, 1)
	t.Logf("rejected: %s", lastLine(log, "config reload rejected"))
	if line := lastLine(log, "config reload rejected"); !strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, `unknown key \"exclude-port\"`) {
		t.Errorf("rejection line: %s", line)
	}
	if got := excludedPort(); got != 2 {
		t.Errorf("after a rejected reload, excluded_port rose by %v for a connection to 9101, want 2: the old exclusion must stay", got)
	}
	before := status(t, pin)
	roundTrip(t, live, 1<<20)
	if after := status(t, pin); after["redirected_bytes"].(float64)-before["redirected_bytes"].(float64) < 2<<20 || after["retired"] != before["retired"] {
		t.Errorf("after a rejected reload the live connection left the fast path: redirected +%v, retired %v -> %v",
			after["redirected_bytes"].(float64)-before["redirected_bytes"].(float64), before["retired"], after["retired"])
	}

	// A good file: 9102 is excluded from now on, live connections too.
	before = status(t, pin)
	if err := os.WriteFile(cfg, []byte("exclude-ports: [9101, 9102]\nlog-level: debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(d.log.String(), `"level":"debug"`) {
		t.Errorf("debug lines at log level info")
	}
	reload()
	log = d.waitLog(t, `"msg":"config reloaded"`, 1)
	d.waitLog(t, `"level":"debug","ts":`, 1) // the new level, without a restart
	t.Logf("reloaded: %s", lastLine(log, `"msg":"config reloaded"`))
	if line := lastLine(log, `"msg":"config reloaded"`); !strings.Contains(line, `"connections_taken_off":1`) || !strings.Contains(line, `"log_level":"debug"`) {
		t.Errorf("reload line: %s", line)
	}
	h.checkRetired(t, live, before)
	// Without a daemon on that pin dir, reload says so.
	if r := sockaccel(t, "reload", "--pin-dir", pin+"-none"); r.code == 0 || !strings.Contains(r.stderr, "no sockaccel runs") {
		t.Errorf("reload without a daemon: exit %d, %q", r.code, r.stderr)
	}
}

// waitStatus waits until status --json satisfies ok.
func waitStatus(t *testing.T, pin, what string, ok func(map[string]any) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := status(t, pin)
		if ok(s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, fmt.Sprint(s))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A restart with a new --exclude-ports, adopting the pins, takes the live
// connection on that port off the fast path and retires it, every byte
// intact.
func TestRestartWithNewExcludePorts(t *testing.T) {
	h := newLiveHost(t)
	d := startDaemon(t, "--cgroup", h.cg.Path, "--pin-dir", h.pin, wideBound)
	live := h.liveConn(t, 9103)
	before := status(t, h.pin)
	if err := d.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(); err != nil {
		t.Fatalf("daemon exit on SIGTERM: %v", err)
	}
	// Still on the fast path while no daemon runs.
	roundTrip(t, live, 1<<20)
	before["sockhash_entries"] = status(t, h.pin)["sockhash_entries"]

	d = startDaemon(t, "--cgroup", h.cg.Path, "--pin-dir", h.pin, wideBound, "--exclude-ports", "9103")
	line := lastLine(d.waitLog(t, `"msg":"took excluded live connections off the fast path"`, 1), "took excluded live connections")
	t.Logf("restart: %s", line)
	if !strings.Contains(line, `"connections":1`) {
		t.Errorf("restart line: %s", line)
	}
	h.checkRetired(t, live, before)
}
