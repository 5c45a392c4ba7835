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
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/accel/testenv"
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
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	ns := testenv.NewNetns(t)
	in := testenv.Endpoint{Netns: ns, Cgroup: &cg}
	cfg := writeConfig(t, "exclude-ports: [9101]\n")
	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, "--config", cfg, wideBound)

	ln := in.Listen(t, "tcp4", "127.0.0.1:9102")
	live := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9102", 1)[0]
	defer live.Client.Close()
	defer live.Server.Close()
	roundTrip(t, live, 1<<20)
	st := status(t, pin)
	if st["redirected_bytes"].(float64) < 2<<20 {
		t.Fatalf("the live connection is not on the fast path: redirected %v bytes", st["redirected_bytes"])
	}
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
	if err := os.WriteFile(cfg, []byte("exclude-ports: [9101, 9102]\nlog-level: debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload()
	log = d.waitLog(t, `"msg":"config reloaded"`, 1)
	t.Logf("reloaded: %s", lastLine(log, `"msg":"config reloaded"`))
	if line := lastLine(log, `"msg":"config reloaded"`); !strings.Contains(line, `"connections_taken_off":1`) || !strings.Contains(line, `"log_level":"debug"`) {
		t.Errorf("reload line: %s", line)
	}
	waitStatus(t, pin, "the live connection to be retired", func(s map[string]any) bool {
		return s["retired"].(float64) == before["retired"].(float64)+1 && s["sockhash_entries"].(float64) == before["sockhash_entries"].(float64)-2
	})
	before = status(t, pin)
	roundTrip(t, live, 1<<20)
	if after := status(t, pin); after["redirected_bytes"] != before["redirected_bytes"] || after["passed_bytes"] != before["passed_bytes"] {
		t.Errorf("the retired connection still ran through sk_msg: redirected %v -> %v, passed %v -> %v",
			before["redirected_bytes"], after["redirected_bytes"], before["passed_bytes"], after["passed_bytes"])
	}
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
