//go:build linux

package accel_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

// A thread-per-direction proxy on blocking sockets: one thread sits in
// recv while the other sends and then calls shutdown(SHUT_WR) on the same
// socket. inet_shutdown wakes the socket's sleepers (sk_state_change) and
// tcp_bpf_recvmsg ends the reader's single wait with EAGAIN when nothing is
// queued; no BPF program can stop that wake-up. The shutdown detector sees
// the call at syscall entry (a blocking socket of ours with another thread
// asleep on it), counts it (shutdown_wake), logs it and learns the service,
// so the next connection to it stays on plain TCP and runs the same pattern
// intact. Both ends: the proxy pattern on the accepted socket (its service
// learned as the server end) and on a client that connected with a timeout
// and then went blocking (learned as the client end; --conservative
// accelerates those). The other end of each connection polls and sends
// nothing until it has read EOF, so the proxy's reader is asleep when its
// writer shuts down (the writer also waits until /proc says so).
//
// What the first connection sees is logged, not asserted: EAGAIN at the
// proxy end's recv when the wake-up finds nothing queued (README "Known
// gaps" has the counts).
func TestShutdownWakeIsCountedAndLearned(t *testing.T) {
	testenv.RequirePrivileged(t)
	core, logs := observer.New(zap.WarnLevel)
	n := &node{cg: testenv.TempCgroup(t), pin: testenv.TempPinDir(t)}
	acc, err := accel.New(accel.Config{Cgroup: n.cg, PinDir: n.pin, MaxConns: 1024, Conservative: true}, zap.New(core))
	if err != nil {
		t.Fatalf("start accelerator: %v", err)
	}
	t.Cleanup(func() { acc.Close() })
	n.acc = acc
	n.runEvents(t)
	tc := newTwoContainers(t, 240)
	py := blockPeer(t)
	const size = 1 << 20
	const addr = "10.240.0.2"
	peerMode := "pause"
	if os.Getenv("SOCKACCEL_TEST_PEER_NOW") == "1" {
		peerMode = "now" // the peer answers as soon as it read EOF
	}

	for i, end := range []string{"server", "client"} {
		port := 7310 + i
		t.Run(end, func(t *testing.T) {
			// One connection: the proxy pattern at end, the polling peer
			// at the other.
			connect := func() (proxy, peer string) {
				t.Helper()
				srvArgs := []string{"halfclose-server", addr, fmt.Sprint(port), fmt.Sprint(size)}
				cliArgs := []string{"halfclose-client", addr, fmt.Sprint(port), fmt.Sprint(size)}
				if end == "server" {
					cliArgs = append(cliArgs, "peer", peerMode)
				} else {
					srvArgs = append(srvArgs, "peer", peerMode)
				}
				srv := n.in(tc.server).Start(t, append(py, srvArgs...)...)
				srv.WaitOutput(t, "listening")
				cli := n.in(tc.client).Start(t, append(py, cliArgs...)...)
				srv.Wait(time.Minute)
				cli.Wait(time.Minute)
				so, co := strings.TrimSpace(strings.TrimPrefix(srv.Output(), "listening\n")), strings.TrimSpace(cli.Output())
				if end == "server" {
					return so, co
				}
				return co, so
			}

			before := n.stats(t)
			logs.TakeAll()
			proxy, peer := connect()
			t.Logf("first connection: %s end (proxy pattern) %q, peer %q", end, proxy, peer)
			s := n.stats(t)
			if s.Inserted-before.Inserted != 2 {
				t.Fatalf("inserted +%d, want both ends of the first connection accelerated, or this shows nothing", s.Inserted-before.Inserted)
			}
			if got := s.ShutdownWake - before.ShutdownWake; got != 1 {
				t.Errorf("shutdown_wake +%d, want 1", got)
			}
			waitFor(t, "the service to be learned", func() (bool, string) {
				st := n.status(t)
				for _, l := range st.LearnedExclusions {
					if l.Port == uint16(port) && l.End == end && slices.Equal(l.Reasons, []string{"shutdown"}) && l.Comm != "" && l.PID != 0 {
						return true, ""
					}
				}
				return false, fmt.Sprintf("%+v", st.LearnedExclusions)
			})
			warned := logs.FilterField(zap.String("reason", "shutdown")).All()
			if len(warned) != 1 {
				t.Errorf("%d warnings with reason shutdown, want 1: %+v", len(warned), logs.All())
			} else {
				f := warned[0].ContextMap()
				if f["comm"] == "" || f["pid"] == uint32(0) || f["local_port"] == nil || f["remote_port"] == nil || f["service_port"] != uint16(port) {
					t.Errorf("warning %q has fields %v, want comm, pid, both ports and service_port %d", warned[0].Message, f, port)
				}
			}

			// The next connection to that service: the same pattern, plain
			// TCP at the learned end, every byte intact.
			before = n.stats(t)
			proxy, peer = connect()
			if !strings.HasPrefix(proxy, "ok ") || !strings.HasPrefix(peer, "ok ") {
				t.Errorf("next connection: %s end %q, peer %q; want both ok", end, proxy, peer)
			}
			s = n.stats(t)
			if got := s.ExcludedLearned - before.ExcludedLearned; got != 1 {
				t.Errorf("next connection: excluded_learned +%d, want 1 (the %s end)", got, end)
			}
			if got := s.ShutdownWake - before.ShutdownWake; got != 0 {
				t.Errorf("next connection: shutdown_wake +%d, want 0 (its socket is not accelerated)", got)
			}
		})
	}

	// A blocking socket whose only waiter is an epoll instance (Go's
	// netpoller registers every net.Conn): its shutdown wakes no recv.
	// With woken_wake_function readable in /proc/kallsyms the detector
	// tells the two apart; where it is hidden, any waiter counts.
	t.Run("epoll waiter", func(t *testing.T) {
		ns := testenv.NewNetns(t)
		ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7312")
		before := n.stats(t)
		p := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7312", 1)[0]
		defer p.Client.Close()
		defer p.Server.Close()
		rawFD(t, p.Client, func(fd int) {
			if err := unix.SetNonblock(fd, false); err != nil {
				t.Fatal(err)
			}
			if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
				t.Fatal(err)
			}
		})
		want := uint64(0)
		if addr, _ := kallsymsAddr("woken_wake_function"); addr == 0 {
			want = 1
		}
		s := n.stats(t)
		if s.Inserted-before.Inserted != 2 {
			t.Fatalf("inserted +%d, want both ends accelerated, or this shows nothing", s.Inserted-before.Inserted)
		}
		if got := s.ShutdownWake - before.ShutdownWake; got != want {
			t.Errorf("shutdown_wake +%d, want %d", got, want)
		}
	})
}

// kallsymsAddr is symbol name's address in /proc/kallsyms, 0 if hidden.
func kallsymsAddr(name string) (uint64, error) {
	b, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == name && (f[1] == "T" || f[1] == "t") {
			return strconv.ParseUint(f[0], 16, 64)
		}
	}
	return 0, nil
}
