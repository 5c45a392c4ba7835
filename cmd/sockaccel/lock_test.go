//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

// Two runs started together on one pin dir: one runs, the other exits at
// once with one line, and the cgroup carries exactly one attachment.
// cleanup beside the running daemon refuses and removes nothing; the pins
// are 0600 in 0700 directories; run --cleanup-on-exit still cleans up
// under its own lock.
func TestOneDaemonPerPinDir(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	args := []string{"run", "--log-format", "json", "--metrics-addr", "127.0.0.1:0", "--api-socket", filepath.Join(t.TempDir(), "sockaccel.sock"), "--cgroup", cg.Path, "--pin-dir", pin, wideBound}

	type proc struct {
		cmd  *exec.Cmd
		log  *syncBuffer
		done chan struct{}
	}
	var procs []*proc
	for range 2 {
		p := &proc{cmd: exec.Command(sockaccelBin, args...), log: &syncBuffer{}, done: make(chan struct{})}
		p.cmd.Stderr = p.log
		procs = append(procs, p)
	}
	for _, p := range procs {
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.cmd.Wait(); close(p.done) }()
		t.Cleanup(func() {
			select {
			case <-p.done:
			default:
				p.cmd.Process.Kill()
				<-p.done
			}
			if t.Failed() {
				t.Logf("run log:\n%s", p.log.String())
			}
		})
	}
	exited := func(p *proc) bool {
		select {
		case <-p.done:
			return true
		default:
			return false
		}
	}
	ready := func(p *proc) bool { return strings.Contains(p.log.String(), `"msg":"accelerating"`) }
	var winner, loser *proc
	deadline := time.Now().Add(60 * time.Second)
	for winner == nil || loser == nil {
		if time.Now().After(deadline) {
			t.Fatal("within 60 s, not one run accelerating and one exited")
		}
		for i, p := range procs {
			other := procs[1-i]
			if exited(p) && (ready(other) || exited(other)) {
				winner, loser = other, p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if exited(winner) {
		t.Fatalf("both runs exited: codes %d and %d", procs[0].cmd.ProcessState.ExitCode(), procs[1].cmd.ProcessState.ExitCode())
	}
	want := "sockaccel run: another sockaccel is running with pin dir " + pin + "\n"
	if code := loser.cmd.ProcessState.ExitCode(); code != 1 || loser.log.String() != want {
		t.Errorf("second run: exit %d, stderr %q; want exit 1 and %q", code, loser.log.String(), want)
	}
	attachments := func() (int, int) {
		return testenv.SockOpsPrograms(t, cg.Path), testenv.CgroupPrograms(t, cg.Path, ebpf.AttachCGroupSetsockopt)
	}
	if sockops, setsockopt := attachments(); sockops != 1 || setsockopt != 1 {
		t.Errorf("after two racing runs: %d sock_ops and %d setsockopt programs on the cgroup, want 1 and 1", sockops, setsockopt)
	}

	// What the daemon pinned: directories 0700, pins 0600 (umask 077 and
	// the kernel's 0600 for BPF_OBJ_PIN).
	pins := testenv.PinTree(t, pin)
	for _, e := range pins {
		if strings.HasPrefix(e, "d") && !strings.HasPrefix(e, "drwx------ ") || strings.HasPrefix(e, "-") && !strings.HasPrefix(e, "-rw------- ") {
			t.Errorf("pin with the wrong mode: %s", e)
		}
	}

	// cleanup beside the running daemon refuses and changes nothing.
	r := sockaccel(t, "cleanup", "--pin-dir", pin, "--timeout", "1s")
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "another sockaccel is running with pin dir "+pin) {
		t.Errorf("cleanup beside a running daemon: exit %d, stderr %q", r.code, r.stderr)
	}
	if after := testenv.PinTree(t, pin); !slices.Equal(after, pins) {
		t.Errorf("refused cleanup changed the pins:\nbefore %q\nafter  %q", pins, after)
	}
	if sockops, setsockopt := attachments(); sockops != 1 || setsockopt != 1 {
		t.Errorf("after a refused cleanup: %d sock_ops and %d setsockopt programs, want 1 and 1", sockops, setsockopt)
	}
	if st := status(t, pin); st["attached"] != true {
		t.Error("not attached after a refused cleanup")
	}
	if exited(winner) {
		t.Fatal("the daemon exited during the refused cleanup")
	}

	// Stopped, the daemon no longer holds the pin dir.
	winner.cmd.Process.Signal(syscall.SIGTERM)
	<-winner.done
	if code := winner.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("daemon exit on SIGTERM: %d", code)
	}

	// run --cleanup-on-exit cleans up under the lock it holds.
	d := startDaemon(t, "--cgroup", cg.Path, "--pin-dir", pin, "--cleanup-on-exit", "--cleanup-timeout", "5s", wideBound)
	if !strings.Contains(d.log.String(), `"adopted":true`) {
		t.Error("the --cleanup-on-exit daemon did not adopt the pins")
	}
	d.Process.Signal(syscall.SIGTERM)
	if err := d.Wait(); err != nil {
		t.Errorf("run --cleanup-on-exit: %v", err)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("pin dir %s still there after run --cleanup-on-exit (err %v)", pin, err)
	}
	if sockops, setsockopt := attachments(); sockops != 0 || setsockopt != 0 {
		t.Errorf("after run --cleanup-on-exit: %d sock_ops and %d setsockopt programs, want none", sockops, setsockopt)
	}
}
