//go:build linux

package accel_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

// blockPeer is testdata/blockpeer.py: servers and clients with blocking
// sockets, one thread per connection, as many Python and C programs are
// written. Go's runtime never sleeps inside recv(2), so Go peers cannot see
// what a blocking reader sees when its connection changes path.
func blockPeer(t *testing.T) []string {
	t.Helper()
	testenv.RequireTools(t, "python3")
	script, err := filepath.Abs("testdata/blockpeer.py")
	if err != nil {
		t.Fatal(err)
	}
	return []string{pythonExecutable(), script}
}

// pythonExecutable is the interpreter python3 runs: a version manager's
// python3 (pyenv's here) can be a shell script that takes over a second to
// start one on a loaded machine, and tests start hundreds.
var pythonExecutable = sync.OnceValue(func() string {
	out, err := exec.Command("python3", "-c", "import sys; print(sys.executable)").Output()
	if exe := strings.TrimSpace(string(out)); err == nil && exe != "" {
		return exe
	}
	return "python3"
})

// blockingEcho runs conns duplex transfers of size bytes each way between
// blocking peers and returns the two programs, started.
func blockingEcho(t *testing.T, client, server testenv.Endpoint, addr string, port, conns int, size int64, echoArgs ...string) (cl, srv *testenv.Process) {
	t.Helper()
	py := blockPeer(t)
	srv = server.Start(t, append(append(py, "echo", addr, fmt.Sprint(port), fmt.Sprint(conns)), echoArgs...)...)
	srv.WaitOutput(t, "listening")
	cl = client.Start(t, append(py, "duplex", addr, fmt.Sprint(port), fmt.Sprint(conns), fmt.Sprint(size))...)
	return cl, srv
}

// checkPeers waits for both programs and fails on any connection that did
// not end with every byte echoed intact.
func checkPeers(t *testing.T, conns int, procs ...*testenv.Process) {
	t.Helper()
	for _, p := range procs {
		err := p.Wait(time.Minute)
		out := p.Output()
		if err != nil || strings.Count(out, "ok ") != conns {
			t.Errorf("%s: %v\n%s", p.Cmd.Args[len(p.Cmd.Args)-5:], err, out)
		}
	}
}

// Cleanup while blocking readers sleep in recv: no call may fail. On main
// before the graceful drain, 8 of 28 runs had a server's blocking recv()
// fail with EAGAIN (tcp_bpf_recvmsg ends its wait on any wake-up, and the
// TCP sends that cleanup switched the connections to wake the reader of the
// same socket when send buffer space frees up).
func TestCleanupUnderLoadBlockingPeers(t *testing.T) {
	n := newNode(t, nil)
	tc := newTwoContainers(t, 231)
	const conns, size = 8, 64 << 20
	cl, srv := blockingEcho(t, n.in(tc.client), n.in(tc.server), "10.231.0.2", 7301, conns, size)

	waitFor(t, "the transfers to be under way on the fast path", func() (bool, string) {
		s := n.stats(t)
		return s.RedirectedBytes > 64<<20, fmt.Sprintf("redirected %d bytes", s.RedirectedBytes)
	})
	err := n.acc.Cleanup(context.Background(), accel.CleanupOptions{DrainTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	checkPeers(t, conns, cl, srv)
}

// The same blocking peers with nothing changing under them but the backlog
// bound: slow phases hand a direction to TCP and back.
func TestBlockingPeersAcrossBacklogFallback(t *testing.T) {
	n := newNode(t, nil)
	tc := newTwoContainers(t, 232)
	const conns = 8
	size := int64(64 << 20)
	if os.Getenv("SOCKACCEL_TEST_EMULATED") == "1" {
		size /= 4 // make test-kernel: the same phases, within the waits
	}
	cl, srv := blockingEcho(t, n.in(tc.client), n.in(tc.server), "10.232.0.2", 7302, conns, size)
	checkPeers(t, conns, cl, srv)
	s := n.stats(t)
	t.Logf("redirected %d bytes, passed %d; off_backlog %d, resumed %d", s.RedirectedBytes, s.PassedBytes, s.OffBacklog, s.Resumed)
}

// Restarts of the daemon (a new binary adopting the pins) under blocking
// peers: live connections keep their path and no call sees anything TCP
// would not give.
func TestRestartUnderLoadBlockingPeers(t *testing.T) {
	n := newNode(t, nil)
	tc := newTwoContainers(t, 235)
	const conns, size = 8, 64 << 20
	cl, srv := blockingEcho(t, n.in(tc.client), n.in(tc.server), "10.235.0.2", 7303, conns, size)
	acc := n.acc
	var last uint64
	for round := range 3 {
		// Each restart comes after some more bytes went the fast path,
		// unless the transfers are done (slow kernels under emulation
		// hand much of them to TCP).
		waitFor(t, "more bytes on the fast path", func() (bool, string) {
			s, err := acc.Stats()
			done, _ := cl.Exited()
			return done || (err == nil && s.RedirectedBytes > last+16<<20), fmt.Sprintf("redirected %d bytes (%v)", s.RedirectedBytes, err)
		})
		if s, err := acc.Stats(); err == nil {
			last = s.RedirectedBytes
		}
		t.Logf("restart %d after %d bytes redirected", round+1, last)
		acc.Close()
		acc = testenv.Start(t, accel.Config{Cgroup: n.cg, PinDir: n.pin, MaxConns: 1024})
		if !acc.Adopted() {
			t.Fatalf("restart %d did not adopt the pins", round+1)
		}
	}
	checkPeers(t, conns, cl, srv)
}

// A blocking server whose every recv asks for MSG_WAITALL: the detector
// takes each connection off the fast path at its first such call, and once
// nothing redirected is unread its sockets leave the sockhash (retired)
// while the server may be asleep in recv. Neither transition may fail a
// call or lose a byte.
func TestWaitallUnderLoadBlockingPeers(t *testing.T) {
	n := newNode(t, nil)
	n.runEvents(t)
	tc := newTwoContainers(t, 236)
	const conns, size = 8, 32 << 20
	cl, srv := blockingEcho(t, n.in(tc.client), n.in(tc.server), "10.236.0.2", 7304, conns, size, "waitall")
	checkPeers(t, conns, cl, srv)
	s := n.stats(t)
	t.Logf("off_waitall %d, redirected %d bytes, passed %d, retired %d", s.OffWaitall, s.RedirectedBytes, s.PassedBytes, n.status(t).Retired)
	if s.OffWaitall == 0 {
		t.Error("no connection went off the fast path for MSG_WAITALL: this test showed nothing")
	}
}

// Blocking full-duplex clients (a reader and a writer thread on one
// blocking socket, as Java's stream I/O after a timed connect) to a server
// that reads slowly, on a host with a small tcp_rmem ceiling: the backlog
// bound hands the client's direction to TCP, where the client's writer
// blocks as over TCP, and its reader, asleep waiting for the echo, must not
// be woken into EAGAIN by the write space its own TCP sends free up.
//
// A known gap, not fixed: the reader does get EAGAIN (tcp_bpf_recvmsg ends
// a blocking wait woken with nothing queued), the client stops reading and
// the transfer hangs, in 3 of 3 runs here. Plain TCP: all intact in 2.2 s.
// See README "Known gaps"; runs only with SOCKACCEL_TEST_KNOWN_GAPS=1.
func TestBlockingDuplexClientsSlowServer(t *testing.T) {
	if os.Getenv("SOCKACCEL_TEST_KNOWN_GAPS") != "1" {
		t.Skip("known gap (README: Known gaps); SOCKACCEL_TEST_KNOWN_GAPS=1 runs it")
	}
	n := newNode(t, func(c *accel.Config) { c.Conservative = true })
	tc := newTwoContainers(t, 237)
	for _, ns := range []*testenv.Netns{tc.client, tc.server} {
		ns.Run(t, "sysctl", "-q", "-w", "net.ipv4.tcp_rmem=4096 131072 2097152")
	}
	const conns, size = 4, 32 << 20
	py := blockPeer(t)
	srv := n.in(tc.server).Start(t, append(py, "echo", "10.237.0.2", "7305", fmt.Sprint(conns), "slow")...)
	srv.WaitOutput(t, "listening")
	cl := n.in(tc.client).Start(t, append(py, "duplex", "10.237.0.2", "7305", fmt.Sprint(conns), fmt.Sprint(size), "blocking")...)
	checkPeers(t, conns, cl, srv)
	s := n.stats(t)
	t.Logf("inserted %d, redirected %d bytes, passed %d; off_backlog %d, resumed %d", s.Inserted, s.RedirectedBytes, s.PassedBytes, s.OffBacklog, s.Resumed)
	if s.Inserted != 2*conns {
		t.Errorf("inserted %d sockets, want %d: the blocking clients were not accelerated, so this shows nothing", s.Inserted, 2*conns)
	}
}

// firstEAGAIN is what a non-blocking writer pushing 256 KiB writes to a
// reader taking 64 KiB every 5 ms manages before its first EAGAIN, and how
// much of that the reader had not read at that moment (what the kernel
// holds for the connection). The rest of the stream then goes out paced by
// EPOLLOUT and must arrive intact.
type firstEAGAIN struct {
	accepted, unread int64
}

func writeUntilEAGAIN(t *testing.T, ep testenv.Endpoint, port int) firstEAGAIN {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ln := ep.Listen(t, "tcp4", addr)
	p := testenv.Connect(t, ep, ln, "tcp4", addr, 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	deadline := time.Now().Add(2 * time.Minute)
	p.Client.SetDeadline(deadline)
	p.Server.SetDeadline(deadline)

	var read atomic.Int64
	var got testenv.Digest
	var readErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		got, readErr = testenv.ReadStream(countingReader{slowReader{p.Server, 64 << 10, 5 * time.Millisecond}, &read})
	}()

	const total = 8 << 20
	w := &digestWriter{}
	chunk := make([]byte, 256<<10)
	var res firstEAGAIN
	var eagain atomic.Int64
	for sent := 0; sent < total; sent += len(chunk) {
		for i := range chunk {
			chunk[i] = byte(sent/len(chunk) + i*7)
		}
		w.add(chunk)
		if res.accepted == 0 {
			var n int
			var err error
			rawFD(t, p.Client, func(fd int) { n, err = unix.Write(fd, chunk) })
			if err == nil && n == len(chunk) {
				continue
			}
			if err != nil && !errors.Is(err, unix.EAGAIN) {
				t.Fatalf("write: %v", err)
			}
			res = firstEAGAIN{accepted: int64(sent + max(n, 0)), unread: int64(sent+max(n, 0)) - read.Load()}
			if err := writeNonBlocking(p.Client, chunk[max(n, 0):], &eagain); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := writeNonBlocking(p.Client, chunk, &eagain); err != nil {
			t.Fatal(err)
		}
	}
	if res.accepted == 0 {
		res = firstEAGAIN{accepted: total, unread: total - read.Load()}
	}
	p.Client.CloseWrite()
	<-done
	if readErr != nil || got != w.digest() {
		t.Fatalf("reader got %v (err %v), writer sent %v", got, readErr, w.digest())
	}
	return res
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// A slow reader must push back on its writer as plain TCP does, whatever
// net.ipv4.tcp_rmem allows autotuning to reach: before, with a 32 MiB
// ceiling, the writer never saw EAGAIN and all it wrote sat unread in the
// receiver's kernel memory.
func TestBackpressureLikeTCP(t *testing.T) {
	n := newNode(t, nil)
	for i, rmemMax := range []int{6 << 20, 32 << 20} {
		t.Run(fmt.Sprintf("tcp_rmem_max=%dMiB", rmemMax>>20), func(t *testing.T) {
			ns := testenv.NewNetns(t)
			ns.Run(t, "sysctl", "-q", "-w", fmt.Sprintf("net.ipv4.tcp_rmem=4096 131072 %d", rmemMax))
			plain := writeUntilEAGAIN(t, testenv.Endpoint{Netns: ns}, 7310+3*i)
			before := n.stats(t)
			acc := writeUntilEAGAIN(t, n.in(ns), 7311+3*i)
			after := n.stats(t)
			// TCP's own figure moves by some 15% from run to run (send
			// buffer autotuning): measure it on both sides of the
			// accelerated run.
			plain2 := writeUntilEAGAIN(t, testenv.Endpoint{Netns: ns}, 7312+3*i)
			most := max(plain.accepted, plain2.accepted)
			t.Logf("bytes accepted before the first EAGAIN: plain TCP %d and %d, accelerated %d (%.2fx the larger); unread then: plain %d, accelerated %d; redirected %d, passed %d, off_backlog %d, resumed %d",
				plain.accepted, plain2.accepted, acc.accepted, float64(acc.accepted)/float64(most), plain.unread, acc.unread,
				after.RedirectedBytes-before.RedirectedBytes, after.PassedBytes-before.PassedBytes,
				after.OffBacklog-before.OffBacklog, after.Resumed-before.Resumed)
			if after.RedirectedBytes == before.RedirectedBytes {
				t.Fatal("nothing redirected: the connection was not accelerated")
			}
			// An empty receiver takes one message (256 KiB here) before
			// the bound applies; beyond that, what TCP itself holds. The
			// 20% is TCP's own spread: after the switch the writer's bytes
			// go through TCP, whose figure moved by up to 16% between
			// runs here (clean-clone CI: 1.16x, with 256 KiB redirected
			// and the rest through TCP; the larger of the plain runs and
			// 10% did not cover it).
			if limit := int64(1.2*float64(most)) + 256<<10; acc.accepted > limit {
				t.Errorf("accelerated writer pushed %d bytes before its first EAGAIN, plain TCP at most %d (limit %d)", acc.accepted, most, limit)
			}
		})
	}
}

// readUpTo reads want bytes from the raw fd, either with poll and
// non-blocking recv or with blocking recv (the fd switched to blocking mode,
// as a C program's socket is), and says what happened.
func readUpTo(t *testing.T, c *net.TCPConn, want int, blocking bool) string {
	t.Helper()
	var got int
	var result string
	rawFD(t, c, func(fd int) {
		buf := make([]byte, want)
		var hung atomic.Bool
		if blocking {
			unix.SetNonblock(fd, false)
			defer unix.SetNonblock(fd, true)
			// A hang fails the test instead of blocking it forever.
			timer := time.AfterFunc(10*time.Second, func() {
				hung.Store(true)
				unix.Shutdown(fd, unix.SHUT_RD)
			})
			defer timer.Stop()
			defer func() {
				if hung.Load() {
					result = fmt.Sprintf("hung: blocking recv had %d of %d bytes after 10s", got, want)
				}
			}()
		}
		deadline := time.Now().Add(10 * time.Second)
		for got < want {
			if !blocking {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				if _, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds())); err != nil && !errors.Is(err, unix.EINTR) {
					result = "poll: " + err.Error()
					return
				}
				if time.Now().After(deadline) {
					result = fmt.Sprintf("hung: %d of %d bytes after 10s", got, want)
					return
				}
			}
			flags := 0
			if !blocking {
				flags = unix.MSG_DONTWAIT
			}
			n, _, err := unix.Recvfrom(fd, buf[got:], flags)
			if errors.Is(err, unix.EAGAIN) && !blocking {
				continue
			}
			if err != nil {
				result = fmt.Sprintf("recv after %d bytes: %v", got, err)
				return
			}
			if n == 0 {
				result = fmt.Sprintf("EOF after %d of %d bytes", got, want)
				return
			}
			got += n
		}
		result = fmt.Sprintf("%d bytes", got)
	})
	return result
}

// SO_RCVLOWAT set after bytes were redirected into the socket: before, the
// reader got the first 5000 bytes (from the redirect queue, which the mark
// does not count) and then waited forever for 10000 more in the TCP queue.
//
// A blocking recv is checked accelerated only: over plain TCP it hangs here
// too (seen on 6.18: recv copies the first 5000 bytes and sleeps, and
// tcp_data_ready wakes it only once 10000 bytes beyond what it already
// copied have arrived), so "as TCP" would be a hang there.
func TestRcvlowatAfterRedirectedBytes(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	for _, blocking := range []bool{false, true} {
		for _, accelerated := range []bool{false, true} {
			if blocking && !accelerated {
				continue
			}
			ep := testenv.Endpoint{Netns: ns}
			if accelerated {
				ep = n.in(ns)
			}
			t.Run(fmt.Sprintf("blocking=%v/accelerated=%v", blocking, accelerated), func(t *testing.T) {
				ln := ep.Listen(t, "tcp4", "127.0.0.1:0")
				p := testenv.Connect(t, ep, ln, "tcp4", ln.Addr().String(), 1)[0]
				defer p.Client.Close()
				defer p.Server.Close()
				before := n.stats(t)
				if _, err := p.Server.Write(make([]byte, 5000)); err != nil {
					t.Fatal(err)
				}
				if accelerated {
					waitFor(t, "the first 5000 bytes to be redirected", func() (bool, string) {
						s := n.stats(t)
						return s.RedirectedBytes-before.RedirectedBytes == 5000, fmt.Sprintf("redirected %d", s.RedirectedBytes-before.RedirectedBytes)
					})
				}
				rawFD(t, p.Client, func(fd int) {
					if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 10000); err != nil {
						t.Fatal(err)
					}
				})
				go func() {
					time.Sleep(300 * time.Millisecond)
					p.Server.Write(make([]byte, 5000))
				}()
				if got := readUpTo(t, p.Client, 10000, blocking); got != "10000 bytes" {
					t.Errorf("reader: %s", got)
				}
				if s := n.stats(t); accelerated && s.RcvlowatLowered-before.RcvlowatLowered != 1 {
					t.Errorf("rcvlowat_lowered +%d, want 1", s.RcvlowatLowered-before.RcvlowatLowered)
				}
			})
		}
	}
}

// oobExchange: 1000 bytes, one urgent byte, 1000 bytes; the receiver waits
// for all of it, asks for the urgent byte, then reads the normal stream.
func oobExchange(t *testing.T, p testenv.Pair) (urgent string, inline int) {
	t.Helper()
	rawFD(t, p.Client, func(fd int) {
		unix.Sendto(fd, bytes.Repeat([]byte("a"), 1000), 0, nil)
		unix.Sendto(fd, []byte("!"), unix.MSG_OOB, nil)
		unix.Sendto(fd, bytes.Repeat([]byte("b"), 1000), 0, nil)
	})
	p.Client.CloseWrite()
	t.Cleanup(func() {
		p.Client.Close()
		p.Server.Close()
	})
	waitReadable(t, p.Server)
	time.Sleep(50 * time.Millisecond) // let the urgent mark and the rest arrive
	n, b, err := recvRaw(t, p.Server, 1, unix.MSG_OOB|unix.MSG_DONTWAIT)
	urgent = fmt.Sprintf("%d %q %s", n, b, errName(err))
	return urgent, readToEOF(t, p.Server)
}

// readToEOF counts the bytes left in the stream with poll and raw recv. At
// an urgent mark TCP's recvmsg returns EAGAIN while a signal is pending (Go
// preempts goroutines with SIGURG), after which Go's edge-triggered poller
// would wait for a readiness edge that never comes.
func readToEOF(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	total := 0
	rawFD(t, c, func(fd int) {
		buf := make([]byte, 64<<10)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 100)
			n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
			switch {
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
				continue
			case err != nil:
				t.Fatalf("read the stream after %d bytes: %v", total, err)
			case n == 0:
				return
			}
			total += n
		}
		t.Fatalf("no end of stream after %d bytes and 10s", total)
	})
	return total
}

// Urgent data sent while the receiver holds redirected bytes cannot be
// delivered as TCP would: the misread is counted, the service port learned
// (pinned, listed in status) and the next connection to it behaves as TCP.
func TestOOBMisreadIsCountedAndLearned(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	n.runEvents(t)

	plain := testenv.Endpoint{Netns: ns}
	ln := plain.Listen(t, "tcp4", "127.0.0.1:7320")
	wantUrgent, wantInline := oobExchange(t, testenv.Connect(t, plain, ln, "tcp4", "127.0.0.1:7320", 1)[0])

	ln = n.in(ns).Listen(t, "tcp4", "127.0.0.1:7321")
	first := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7321", 1)[0]
	before := n.stats(t)
	urgent, inline := oobExchange(t, first)
	t.Logf("plain TCP: urgent %s, %d inline bytes; first accelerated connection: urgent %s, %d inline bytes", wantUrgent, wantInline, urgent, inline)
	if s := n.stats(t); s.OOBMisread-before.OOBMisread != 1 {
		t.Errorf("oob_misread +%d, want 1", s.OOBMisread-before.OOBMisread)
	}
	waitFor(t, "the service to be learned", func() (bool, string) {
		st := n.status(t)
		return len(st.LearnedExclusions) == 1 && st.LearnedExclusions[0].Port == 7321, fmt.Sprintf("%+v", st.LearnedExclusions)
	})
	cgid, err := cgroup.Inode(n.cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	l := n.status(t).LearnedExclusions[0]
	if !slices.Equal(l.Reasons, []string{"oob"}) || l.Comm == "" || l.End != "server" || l.CgroupID != cgid || l.Cgroup != n.cg.Path {
		t.Errorf("learned exclusion %+v, want reason oob, the process name, the server end and cgroup %s (id %d)", l, n.cg.Path, cgid)
	}

	before = n.stats(t)
	second := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7321", 1)[0]
	urgent, inline = oobExchange(t, second)
	if urgent != wantUrgent || inline != wantInline {
		t.Errorf("next connection: urgent %s, %d inline bytes; plain TCP: urgent %s, %d", urgent, inline, wantUrgent, wantInline)
	}
	if s := n.stats(t); s.ExcludedLearned-before.ExcludedLearned != 1 {
		t.Errorf("excluded_learned +%d, want the server end of the next connection excluded", s.ExcludedLearned-before.ExcludedLearned)
	}

	// Another tenant's service on the same port number, in a cgroup of
	// its own, stays on the fast path.
	tenant := testenv.ChildCgroup(t, n.cg, "tenant")
	other := testenv.Endpoint{Netns: testenv.NewNetns(t), Cgroup: &tenant}
	before = n.stats(t)
	oln := other.Listen(t, "tcp4", "127.0.0.1:7321")
	op := testenv.Connect(t, other, oln, "tcp4", "127.0.0.1:7321", 1)[0]
	defer op.Client.Close()
	defer op.Server.Close()
	if _, err := op.Client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(op.Server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if s := n.stats(t); s.ExcludedLearned != before.ExcludedLearned || s.Inserted-before.Inserted != 2 || s.RedirectedMsgs == before.RedirectedMsgs {
		t.Errorf("another cgroup's service on port 7321: excluded_learned +%d, inserted +%d, redirected +%d; want 0, 2, 1",
			s.ExcludedLearned-before.ExcludedLearned, s.Inserted-before.Inserted, s.RedirectedMsgs-before.RedirectedMsgs)
	}

	// Learned exclusions survive a restart of the daemon.
	n.acc.Close()
	again := testenv.Start(t, accel.Config{Cgroup: n.cg, PinDir: n.pin, MaxConns: 1024})
	st, err := again.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.LearnedExclusions) != 1 || !reflect.DeepEqual(st.LearnedExclusions[0], l) {
		t.Errorf("after a restart learned exclusions are %+v, want %+v", st.LearnedExclusions, l)
	}
	before, _ = again.Stats()
	third := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7321", 1)[0]
	defer third.Client.Close()
	defer third.Server.Close()
	third.Client.Write([]byte("x"))
	third.Server.Read(make([]byte, 1))
	if after, _ := again.Stats(); after.ExcludedLearned-before.ExcludedLearned != 1 {
		t.Errorf("after a restart excluded_learned +%d, want 1", after.ExcludedLearned-before.ExcludedLearned)
	}
}

// A relay that splices (Go's io.Copy between two *net.TCPConn, as countless
// proxies and port-forwarders do) from a connection that already holds
// redirected bytes can never read them. Before, such a relay hung for good
// (a SOCKS5 proxy for over 6 minutes); now the daemon resets that
// connection after a short grace, so the relay's copy fails with an error
// it can act on (Go's splice is non-blocking: it retries on the wakeup and
// gets ECONNRESET), the client sees ECONNRESET too, and the service port
// is learned, so the next connection is relayed intact over TCP.
func TestSpliceStallFailsFast(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	n.runEvents(t)

	ep := n.in(ns)
	sink := testenv.Endpoint{Netns: ns}.Listen(t, "tcp4", "127.0.0.1:7331") // plain TCP: where the relay copies to
	relay := ep.Listen(t, "tcp4", "127.0.0.1:7330")
	relayOnce := func(payload []byte, closeWrite bool) (copyErr error, got []byte, clientErr error) {
		p := testenv.Connect(t, ep, relay, "tcp4", "127.0.0.1:7330", 1)[0]
		defer p.Client.Close()
		defer p.Server.Close()
		out, err := testenv.Endpoint{Netns: ns}.Dial(t, "tcp4", "", "127.0.0.1:7331")
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		in, err := sink.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		// The client's bytes are redirected before the relay starts.
		if _, err := p.Client.Write(payload); err != nil {
			t.Fatal(err)
		}
		if closeWrite {
			p.Client.CloseWrite()
		}
		waitReadable(t, p.Server)
		copied := make(chan error, 1)
		go func() {
			_, err := io.Copy(out, p.Server) // splices: *net.TCPConn to *net.TCPConn
			out.CloseWrite()
			copied <- err
		}()
		in.SetReadDeadline(time.Now().Add(time.Minute))
		got, _ = io.ReadAll(in)
		select {
		case copyErr = <-copied:
		case <-time.After(time.Minute):
			t.Fatal("the relay's io.Copy still hangs after a minute")
		}
		if copyErr != nil {
			// What the client, waiting for its answer, sees of the reset.
			p.Client.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, clientErr = p.Client.Read(make([]byte, 1))
		}
		return copyErr, got, clientErr
	}

	// The client keeps its connection open (a request waiting for its
	// answer). Had it closed, the relay's splice would read its FIN, which
	// took TCP, as end of stream, ahead of the redirected bytes: see the
	// README's matrix.
	payload := bytes.Repeat([]byte("relay me "), 1000)
	start := time.Now()
	err, got, clientErr := relayOnce(payload, false)
	took := time.Since(start)
	t.Logf("first relayed connection: io.Copy ended after %s with %v, %d of %d bytes arrived; the client read %v",
		took.Round(time.Millisecond), err, len(got), len(payload), clientErr)
	if !errors.Is(err, unix.ECONNRESET) {
		t.Errorf("io.Copy of a stalled splice ended with %v (%d of %d bytes delivered), want ECONNRESET", err, len(got), len(payload))
	}
	if !errors.Is(clientErr, unix.ECONNRESET) {
		t.Errorf("the client of the reset connection read %v, want ECONNRESET", clientErr)
	}
	// Not before the grace the daemon gives an application to fall back to
	// recv; the upper bound only tells a hang from a reset.
	if took < 2*time.Second || took > 30*time.Second {
		t.Errorf("io.Copy failed after %s, want the 2 s grace and then the reset", took)
	}
	if s := n.stats(t); s.SpliceStalled != 1 {
		t.Errorf("splice_stalled %d, want 1", s.SpliceStalled)
	}
	waitFor(t, "the relay's port to be learned", func() (bool, string) {
		st := n.status(t)
		return len(st.LearnedExclusions) == 1 && st.LearnedExclusions[0].Port == 7330, fmt.Sprintf("%+v", st.LearnedExclusions)
	})

	err, got, _ = relayOnce(payload, true)
	if err != nil || !bytes.Equal(got, payload) {
		t.Errorf("next relayed connection: io.Copy %v, %d of %d bytes", err, len(got), len(payload))
	}
}

// A connection that leaves the fast path both ways for good (here: both
// ends ask for MSG_WAITALL) is handed back to TCP completely: once no
// redirected byte is unread the daemon takes its sockets out of the
// sockhash, and from then on FIONREAD and everything else is plain TCP.
func TestConnectionOffForGoodIsRetired(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	n.runEvents(t)
	ep := n.in(ns)
	ln := ep.Listen(t, "tcp4", "127.0.0.1:7340")
	p := testenv.Connect(t, ep, ln, "tcp4", "127.0.0.1:7340", 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	oneWay := func(from, to *net.TCPConn, size int) {
		t.Helper()
		buf := bytes.Repeat([]byte{byte(size)}, size)
		go from.Write(buf)
		got := make([]byte, size)
		to.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(to, got); err != nil || !bytes.Equal(got, buf) {
			t.Fatalf("%d bytes one way: %v", size, err)
		}
	}
	oneWay(p.Client, p.Server, 1<<20)
	oneWay(p.Server, p.Client, 1<<20)
	before := n.status(t)

	// recv(MSG_WAITALL) marks the socket (seen at syscall entry, whatever
	// the call then returns); the next send takes the direction into it
	// off the fast path for good. Both ends ask, so both directions go.
	recvRaw(t, p.Server, 4, unix.MSG_WAITALL|unix.MSG_DONTWAIT)
	recvRaw(t, p.Client, 4, unix.MSG_WAITALL|unix.MSG_DONTWAIT)
	oneWay(p.Client, p.Server, 4)
	waitFor(t, "the connection's sockets to leave the sockhash", func() (bool, string) {
		st := n.status(t)
		return st.Retired == before.Retired+1 && st.SockhashEntries == before.SockhashEntries-2,
			fmt.Sprintf("retired %d, sockhash entries %d (before %d)", st.Retired-before.Retired, st.SockhashEntries, before.SockhashEntries)
	})

	// Plain TCP from here on: FIONREAD counts what is queued, and bytes
	// cross intact both ways without being redirected.
	p.Client.Write(make([]byte, 1234))
	waitReadable(t, p.Server)
	time.Sleep(20 * time.Millisecond)
	rawFD(t, p.Server, func(fd int) {
		if q, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err != nil || q != 1234 {
			t.Errorf("FIONREAD after retirement: %d %v, want 1234", q, err)
		}
	})
	io.ReadFull(p.Server, make([]byte, 1234))
	s := n.stats(t)
	oneWay(p.Client, p.Server, 1<<20)
	oneWay(p.Server, p.Client, 1<<20)
	if after := n.stats(t); after.RedirectedBytes != s.RedirectedBytes || after.PassedBytes != s.PassedBytes {
		t.Errorf("after retirement the connection still ran through sk_msg: redirected +%d, passed +%d",
			after.RedirectedBytes-s.RedirectedBytes, after.PassedBytes-s.PassedBytes)
	}
}

// runEvents runs the daemon's detector-event loop (logging, learning,
// resets, retirement) for the rest of the test.
func (n *node) runEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.acc.RunEvents(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("event loop: %v", err)
		}
	})
}

// The same stall in a C relay that splices with blocking calls: its splice
// sleeps in the kernel instead of returning EAGAIN, and the reset ends it.
// A thread asleep when the daemon disconnects the socket gets EPIPE on
// kernels with 419ce133ab92 (6.6 and later; Debian 12's 6.1 too), which
// fails whatever a disconnect interrupted; ECONNRESET, the socket's error,
// on kernels before 4faeee0cf8a5. The client sees ECONNRESET either way.
func TestCSpliceRelayStallFailsFast(t *testing.T) {
	testenv.RequireTools(t, "cc")
	n := newNode(t, nil)
	n.runEvents(t)
	ns := testenv.NewNetns(t)
	relayBin := filepath.Join(t.TempDir(), "splicerelay")
	src, err := filepath.Abs("testdata/splicerelay.c")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cc", "-O2", "-Wall", "-o", relayBin, src).CombinedOutput(); err != nil {
		t.Fatalf("build splicerelay: %v\n%s", err, out)
	}
	sink := testenv.Endpoint{Netns: ns}.Listen(t, "tcp4", "127.0.0.1:7361") // plain TCP upstream
	relayOnce := func(closeWrite bool) (relay string, got int, clientErr error) {
		r := n.in(ns).Start(t, relayBin, "127.0.0.1", "7360", "7361", "300")
		r.WaitOutput(t, "listening")
		c, err := n.in(ns).Dial(t, "tcp4", "", "127.0.0.1:7360")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		up, err := sink.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		if _, err := c.Write(bytes.Repeat([]byte("relay me "), 1000)); err != nil {
			t.Fatal(err)
		}
		if closeWrite {
			c.CloseWrite()
		}
		done := make(chan int, 1)
		go func() {
			up.SetReadDeadline(time.Now().Add(time.Minute))
			b, _ := io.ReadAll(up)
			done <- len(b)
		}()
		if err := r.Wait(time.Minute); err != nil && !strings.Contains(r.Output(), "error") {
			t.Fatalf("relay: %v: %s", err, r.Output())
		}
		if !closeWrite {
			// What the client, waiting for its answer, sees of the reset.
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, clientErr = c.Read(make([]byte, 1))
		}
		c.Close()
		return strings.TrimSpace(strings.TrimPrefix(r.Output(), "listening\n")), <-done, clientErr
	}

	start := time.Now()
	relay, got, clientErr := relayOnce(false)
	took := time.Since(start)
	t.Logf("first connection: relay said %q after %s; upstream got %d bytes; the client read %v",
		relay, took.Round(time.Millisecond), got, clientErr)
	if !strings.HasPrefix(relay, "error EPIPE ") && !strings.HasPrefix(relay, "error ECONNRESET ") {
		t.Errorf("the stalled relay's splice ended with %q, want EPIPE or ECONNRESET", relay)
	}
	if !errors.Is(clientErr, unix.ECONNRESET) {
		t.Errorf("the client of the reset connection read %v, want ECONNRESET", clientErr)
	}
	// Not before the grace the daemon gives an application to fall back to
	// recv; the upper bound only tells a hang from a reset.
	if took < 2*time.Second || took > 30*time.Second {
		t.Errorf("the relay failed after %s, want the 2 s grace and then the reset", took)
	}
	waitFor(t, "the relay's port to be learned", func() (bool, string) {
		st := n.status(t)
		return len(st.LearnedExclusions) == 1 && st.LearnedExclusions[0].Port == 7360, fmt.Sprintf("%+v", st.LearnedExclusions)
	})
	relay, got, _ = relayOnce(true)
	if relay != "ok 9000" || got != 9000 {
		t.Errorf("next connection: relay said %q, upstream got %d of 9000 bytes", relay, got)
	}
}

// The blocking splice of TestCSpliceRelayStallFailsFast without a C
// compiler, so that it runs on every test kernel: a thread asleep in
// splice when the daemon resets its connection. It gets EPIPE on kernels
// with 419ce133ab92 (a disconnect fails whatever it interrupted),
// ECONNRESET on kernels before 4faeee0cf8a5; on kernels with 4faeee0cf8a5
// alone the kernel refuses the disconnect (EBUSY) and the splice would
// sleep on, which the 30 s bound reports.
func TestSpliceStallBlockingFailsFast(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	n.runEvents(t)
	ep := n.in(ns)
	ln := ep.Listen(t, "tcp4", "127.0.0.1:7336")
	p := testenv.Connect(t, ep, ln, "tcp4", "127.0.0.1:7336", 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	if _, err := p.Client.Write(bytes.Repeat([]byte("x"), 4096)); err != nil {
		t.Fatal(err)
	}
	waitReadable(t, p.Server)
	f, err := p.Server.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Fd puts the open file, shared with p.Server, in blocking mode: the
	// splice sleeps in the kernel, as a C relay's does.
	fd := int(f.Fd())
	pp := newPipe(t)
	before := n.status(t)
	start := time.Now()
	spliced := make(chan error, 1)
	go func() {
		for {
			_, err := unix.Splice(fd, nil, pp[1], nil, 65536, 0)
			if err != unix.EINTR {
				spliced <- err
				return
			}
		}
	}()
	select {
	case err = <-spliced:
	case <-time.After(30 * time.Second):
		unix.Shutdown(fd, unix.SHUT_RDWR) // wakes the splice so the test can end
		<-spliced
		t.Fatal("a blocking splice of a stalled connection still sleeps after 30 s: was it reset?")
	}
	took := time.Since(start)
	p.Client.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, clientErr := p.Client.Read(make([]byte, 1))
	t.Logf("the blocking splice failed after %s with %v; the client read %v", took.Round(time.Millisecond), err, clientErr)
	// The daemon then takes the reset socket out of the sockhash, so that
	// its redirected bytes go with the connection: a read after the error
	// fails as on a reset TCP socket, instead of returning those bytes
	// and then waiting for ever.
	waitFor(t, "the reset socket to leave the sockhash", func() (bool, string) {
		in := n.status(t).SockhashEntries
		return in == before.SockhashEntries-1, fmt.Sprintf("%d sockets in the sockhash, %d before the reset", in, before.SockhashEntries)
	})
	for i := range 2 {
		k, _, rerr := unix.Recvfrom(fd, make([]byte, 65536), unix.MSG_DONTWAIT)
		t.Logf("read %d after the reset: %d %v", i+1, k, rerr)
		if k >= 0 || (rerr != unix.ECONNRESET && rerr != unix.ENOTCONN) {
			t.Errorf("read %d after the reset: %d %v, want ECONNRESET or ENOTCONN", i+1, k, rerr)
		}
	}
	if !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.ECONNRESET) {
		t.Errorf("the blocking splice of a reset connection ended with %v, want EPIPE or ECONNRESET", err)
	}
	if !errors.Is(clientErr, unix.ECONNRESET) {
		t.Errorf("the client of the reset connection read %v, want ECONNRESET", clientErr)
	}
	if took < 2*time.Second {
		t.Errorf("reset after %s, before the 2 s grace", took)
	}
}

// On kernels whose FIONREAD leaves redirected bytes out (Debian 12's 6.1)
// the daemon watches ioctl(FIONREAD) (Config.DetectFIONREAD, which the
// kernel probe sets there). A FIONREAD while redirected bytes are unread is
// counted and reported, takes that connection off the fast path, and the
// service is learned: its next connection is plain TCP, where FIONREAD is
// exact. The mechanism is tested on every kernel by turning it on.
func TestFIONREADUsersAreLearned(t *testing.T) {
	n := newNode(t, func(c *accel.Config) { c.DetectFIONREAD = true })
	ns := testenv.NewNetns(t)
	n.runEvents(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7390")
	payload := bytes.Repeat([]byte("f"), 1234)
	// The connections stay open until the test ends, as an application's
	// would while it uses them (a connection closed before the daemon
	// handles the event is learned from the event alone: see
	// serviceFromEvent).
	exchange := func() int {
		t.Helper()
		p := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7390", 1)[0]
		t.Cleanup(func() {
			p.Client.Close()
			p.Server.Close()
		})
		if _, err := p.Client.Write(payload); err != nil {
			t.Fatal(err)
		}
		waitReadable(t, p.Server)
		var inq int
		rawFD(t, p.Server, func(fd int) {
			var err error
			if inq, err = unix.IoctlGetInt(fd, unix.SIOCINQ); err != nil {
				t.Fatalf("FIONREAD: %v", err)
			}
		})
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(p.Server, got); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("read %d bytes back: %v", len(payload), err)
		}
		return inq
	}

	before := n.stats(t)
	first := exchange()
	s := n.stats(t)
	t.Logf("first connection: FIONREAD said %d of %d queued bytes", first, len(payload))
	if s.FIONREADMisread-before.FIONREADMisread != 1 || s.OffFIONREAD != before.OffFIONREAD {
		t.Errorf("fionread_misread +%d, off_fionread +%d; want 1 and 0 (the connection sent nothing after the call)",
			s.FIONREADMisread-before.FIONREADMisread, s.OffFIONREAD-before.OffFIONREAD)
	}
	waitFor(t, "the service to be learned", func() (bool, string) {
		st := n.status(t)
		return len(st.LearnedExclusions) == 1 && st.LearnedExclusions[0].Port == 7390 && st.LearnedExclusions[0].End == "server" &&
			slices.Equal(st.LearnedExclusions[0].Reasons, []string{"fionread"}), fmt.Sprintf("%+v", st.LearnedExclusions)
	})

	before = n.stats(t)
	if second := exchange(); second != len(payload) {
		t.Errorf("next connection: FIONREAD said %d, want %d as over TCP", second, len(payload))
	}
	if s := n.stats(t); s.ExcludedLearned-before.ExcludedLearned != 1 || s.FIONREADMisread != before.FIONREADMisread {
		t.Errorf("next connection: excluded_learned +%d, fionread_misread +%d; want 1 and 0",
			s.ExcludedLearned-before.ExcludedLearned, s.FIONREADMisread-before.FIONREADMisread)
	}
}

// The ioctl detector is attached exactly where the kernel probe found
// FIONREAD leaving redirected bytes out (Debian 12's 6.1), not elsewhere.
func TestFIONREADDetectorFollowsProbe(t *testing.T) {
	n := newNode(t, nil)
	want := 9 // eight for splice, MSG_WAITALL and MSG_OOB, one for shutdown
	if !n.acc.KernelBehaviour().FIONREADCountsRedirected() {
		want++
	}
	if got := testenv.DetectLinks(t, n.pin); got != want {
		t.Errorf("%d detector links with fionread probe %+v, want %d", got, n.acc.KernelBehaviour().Probes, want)
	}
}
