//go:build linux

package accel_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

// blockingClient connects a blocking (no O_NONBLOCK, no timeout) socket from
// ep to addr, the way a plain C or Python client does.
func blockingClient(t *testing.T, ep testenv.Endpoint, addr *net.TCPAddr) int {
	t.Helper()
	fd := -1
	var err error
	ep.Do(t, func() {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return
		}
		sa := &unix.SockaddrInet4{Port: addr.Port}
		copy(sa.Addr[:], addr.IP.To4())
		err = unix.Connect(fd, sa)
	})
	if err != nil {
		t.Fatalf("blocking connect to %s: %v", addr, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// requestAfterShutdown: a blocking client sends a request, shuts down
// writing and blocks in recv for the answer, which the server sends a little
// later. Returns what the client's recv said.
func requestAfterShutdown(t *testing.T, client, server testenv.Endpoint, port int) string {
	t.Helper()
	ln := server.Listen(t, "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	served := make(chan error, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		if _, err := io.Copy(io.Discard, readOnly{c}); err != nil {
			served <- err
			return
		}
		// The scenario, not a wait: the answer comes while the client's
		// blocking read is (most likely) already asleep; either order
		// must work, so nothing depends on which it was.
		time.Sleep(30 * time.Millisecond)
		_, err = c.Write([]byte("answer"))
		served <- err
	}()
	fd := blockingClient(t, client, ln.Addr().(*net.TCPAddr))
	if _, err := unix.Write(fd, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	unix.Shutdown(fd, unix.SHUT_WR)
	buf := make([]byte, 16)
	n, err := unix.Read(fd, buf)
	if serr := <-served; serr != nil {
		t.Fatal(serr)
	}
	if err != nil {
		return "recv: " + errName(err)
	}
	return fmt.Sprintf("recv %q", buf[:n])
}

// readOnly hides WriteTo/ReadFrom so io.Copy reads with read(2), not splice.
type readOnly struct{ r io.Reader }

func (r readOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

func TestBlockingRecvAfterShutdown(t *testing.T) {
	testenv.RequirePrivileged(t)
	ns := testenv.NewNetns(t)
	plain := testenv.Endpoint{Netns: ns}
	want := requestAfterShutdown(t, plain, plain, 7501)
	if want != `recv "answer"` {
		t.Fatalf("plain TCP: %s", want)
	}

	t.Run("default mode", func(t *testing.T) {
		n := newNode(t, nil)
		got := requestAfterShutdown(t, n.in(ns), n.in(ns), 7502)
		// The known kernel behaviour the conservative mode exists for: the
		// FIN_WAIT1 -> FIN_WAIT2 wake-up ends tcp_bpf_recvmsg's single
		// wait with nothing queued.
		if got != "recv: EAGAIN" {
			t.Errorf("accelerated blocking recv after shutdown: %s; the README documents EAGAIN here", got)
		}
	})
	t.Run("conservative mode", func(t *testing.T) {
		// A bound that 1 MiB each way cannot reach: the check below wants
		// every byte of the non-blocking connection redirected.
		n := newNode(t, func(c *accel.Config) { c.Conservative = true; c.BacklogBytes = 4 << 20 })
		got := requestAfterShutdown(t, n.in(ns), n.in(ns), 7503)
		if got != want {
			t.Errorf("conservative: %s, plain TCP: %s", got, want)
		}
		s := n.stats(t)
		if s.Blocking != 1 {
			t.Errorf("blocking %d, want the blocking client counted once", s.Blocking)
		}
		// Non-blocking sockets are still accelerated in conservative mode.
		ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7504")
		pairs := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7504", 1)
		testenv.ExchangeAll(t, pairs, 1<<20, 1<<20, 1)
		if s2 := n.stats(t); s2.RedirectedBytes-s.RedirectedBytes != 2<<20 {
			t.Errorf("non-blocking connection not accelerated in conservative mode")
		}
	})
}

// zerocopyCompletion sends with MSG_ZEROCOPY and waits for the completion
// notification the kernel posts on the error queue.
func zerocopyCompletion(t *testing.T, p testenv.Pair) string {
	t.Helper()
	var result string
	rawFD(t, p.Client, func(fd int) {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ZEROCOPY, 1); err != nil {
			result = "SO_ZEROCOPY: " + err.Error()
			return
		}
		if _, err := unix.SendmsgN(fd, make([]byte, 64<<10), nil, nil, unix.MSG_ZEROCOPY); err != nil {
			result = "send: " + err.Error()
			return
		}
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			oob := make([]byte, 128)
			_, oobn, _, _, err := unix.Recvmsg(fd, make([]byte, 1), oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
			if err == nil && oobn > 0 {
				result = "completion"
				return
			}
			if err != nil && !errors.Is(err, unix.EAGAIN) {
				result = "errqueue: " + err.Error()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		result = "no completion"
	})
	go io.Copy(io.Discard, readOnly{p.Server})
	return result
}

// MSG_ZEROCOPY senders wait for completions that the redirect path never
// posts; SO_ZEROCOPY keeps the socket's sends on TCP.
func TestZerocopySenderGetsCompletions(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	for _, ep := range []testenv.Endpoint{{Netns: ns}, n.in(ns)} {
		ln := ep.Listen(t, "tcp4", "127.0.0.1:0")
		p := testenv.Connect(t, ep, ln, "tcp4", ln.Addr().String(), 1)[0]
		if got := zerocopyCompletion(t, p); got != "completion" {
			t.Errorf("accelerated=%v: %s", ep.Cgroup != nil, got)
		}
		p.Client.Close()
		p.Server.Close()
	}
	if s := n.stats(t); s.OffSetsockopt != 1 || s.RedirectedBytes != 0 {
		t.Errorf("off_setsockopt %d redirected %d: want the zero-copy sender on TCP", s.OffSetsockopt, s.RedirectedBytes)
	}
}
