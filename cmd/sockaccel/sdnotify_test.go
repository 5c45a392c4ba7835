package main

import (
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

// Under Type=notify: READY=1 once attached and serving (the "accelerating"
// line is already out), then WATCHDOG=1 while healthy and STATUS=, SIGHUP
// does not kill the daemon, and SIGTERM gives STOPPING=1.
func TestSystemdNotify(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	d := launchDaemon(t, []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=600000"}, "--cgroup", cg.Path, "--pin-dir", pin)
	cmd, log := d.Cmd, d.log

	// next returns the next notification, failing after d.
	next := func(d time.Duration) string {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(d))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification within %s: %v", d, err)
		}
		return string(buf[:n])
	}
	ready := next(30 * time.Second)
	if !strings.HasPrefix(ready, "READY=1\n") || !strings.Contains(ready, "STATUS=accelerating 0 sockets") {
		t.Fatalf("first notification %q, want READY=1 and STATUS=", ready)
	}
	if !strings.Contains(log.String(), `"msg":"accelerating"`) {
		t.Errorf("READY=1 before the start-up line")
	}
	if st := status(t, pin); st["attached"] != true {
		t.Errorf("READY=1 while status says attached=%v", st["attached"])
	}
	// Pings every third of WatchdogSec (200 ms); a generous wait, since a
	// loaded CI machine is no reason to fail (systemd allows the whole
	// WatchdogSec, and the unit sets it far longer).
	for i := 0; i < 3; i++ {
		if m := next(5 * time.Second); !strings.HasPrefix(m, "WATCHDOG=1") {
			t.Fatalf("notification %q, want WATCHDOG=1", m)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if m := next(5 * time.Second); !strings.HasPrefix(m, "WATCHDOG=1") {
		t.Fatalf("after SIGHUP: notification %q, want WATCHDOG=1 (still alive)", m)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if m := next(time.Until(deadline)); strings.HasPrefix(m, "STOPPING=1") {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}
