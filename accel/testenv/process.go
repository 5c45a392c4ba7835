//go:build linux

package testenv

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireTools fails (under CI=true) or skips the test when a program it
// drives is not installed. .ci/run installs all of them.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not installed (CI=true forbids skipping; .ci/run installs it)", n)
			}
			t.Skipf("%s is not installed", n)
		}
	}
}

// command builds a command that runs in e's cgroup (placed there at fork,
// before exec) and then enters e's namespace: ip netns exec remounts /sys,
// which would hide the cgroup mount, so the order matters.
func (e Endpoint) command(t testing.TB, args ...string) (*exec.Cmd, func()) {
	t.Helper()
	if e.Netns != nil {
		args = append([]string{"ip", "netns", "exec", e.Netns.Name}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	release := func() {}
	if e.Cgroup != nil {
		dir, err := os.Open(e.Cgroup.Path)
		if err != nil {
			t.Fatalf("open cgroup %s: %v", e.Cgroup.Path, err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
		release = func() { dir.Close() }
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// A group of its own, so that stopping it reaches the workers it forks.
	cmd.SysProcAttr.Setpgid = true
	return cmd, release
}

// Process is a program a test started; it is killed at cleanup.
type Process struct {
	Cmd    *exec.Cmd
	output lockedBuffer
	done   chan error
}

// lockedBuffer lets a test read what a process wrote while it still writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Output is what the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.output.String() }

// Wait waits for the process to exit and returns how it ended; a process
// still running after timeout is killed and reported as stalled.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		return fmt.Errorf("%s: still running after %s (stalled?)", p.Cmd.Path, timeout)
	}
}

// WaitOutput waits until the process has written want (a server saying it
// listens, say); it fails the test if the process exits or takes too long.
func (p *Process) WaitOutput(t testing.TB, want string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if strings.Contains(p.Output(), want) {
			return
		}
		if done, err := p.Exited(); done {
			t.Fatalf("%s exited (%v) before writing %q: %s", p.Cmd.Path, err, want, p.Output())
		}
	}
	t.Fatalf("%s did not write %q: %s", p.Cmd.Path, want, p.Output())
}

// Start runs a long-lived program (a server) in e until the test ends.
func (e Endpoint) Start(t testing.TB, args ...string) *Process {
	t.Helper()
	cmd, release := e.command(t, args...)
	defer release()
	p := &Process{Cmd: cmd, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = &p.output, &p.output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(args, " "), err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not exit after SIGKILL", args[0])
		}
	})
	return p
}

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case err := <-p.done:
		p.done <- err
		return true, err
	default:
		return false, nil
	}
}

// Output runs a program to completion in e and returns its stdout; the
// test fails if it exits non-zero or runs longer than timeout.
func (e Endpoint) Output(t testing.TB, timeout time.Duration, stdin io.Reader, args ...string) []byte {
	t.Helper()
	out, err := e.Exec(t, timeout, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Exec runs a program to completion in e and returns its stdout, or an
// error naming the command and carrying its stderr if it exits non-zero or
// runs longer than timeout (then it is killed).
func (e Endpoint) Exec(t testing.TB, timeout time.Duration, stdin io.Reader, args ...string) ([]byte, error) {
	t.Helper()
	cmd, release := e.command(t, args...)
	defer release()
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(args, " "), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return stdout.Bytes(), fmt.Errorf("%s: %w\nstderr: %s", strings.Join(args, " "), err, stderr.Bytes())
		}
		return stdout.Bytes(), nil
	case <-time.After(timeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return stdout.Bytes(), fmt.Errorf("%s: still running after %s (stalled?)\nstderr: %s", strings.Join(args, " "), timeout, stderr.Bytes())
	}
}

// WaitListening waits until something accepts TCP connections at addr (as
// seen from e's namespace).
func (e Endpoint) WaitListening(t testing.TB, addr string) {
	t.Helper()
	plain := Endpoint{Netns: e.Netns}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c, err := plain.Dial(t, "tcp", "", addr)
		if err == nil {
			c.Close()
			return
		}
	}
	t.Fatal(fmt.Sprintf("nothing listens at %s", addr))
}
