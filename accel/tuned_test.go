//go:build linux

package accel_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

// A tunedHost is a host tuning: sysctls set in the test's own network
// namespaces (they are per namespace; the host's are never touched), a veth
// MTU, or socket options its applications set.
type tunedHost struct {
	name    string
	sysctls []string // key=value, in every namespace of the case
	// optional: the kernel may refuse these sysctls in a namespace other
	// than the host's; the case is then skipped, saying so. (6.18 shows
	// net.core.{r,w}mem_default in every namespace, read-only but in the
	// host's.)
	optional bool
	// offSetsockopt: the application's socket options take directions off
	// the fast path (off_setsockopt counts them: at least one), which the
	// placement check leaves out.
	offSetsockopt bool
	mtu           int  // the veth's MTU (0: the default)
	ipv6          bool // the veth and loopback paths over IPv6
	// opts are blockpeer.py's SOCKOPT words for both ends of the Python
	// workloads; sockopts the same options for the Go workload.
	opts     []string
	sockopts func(fd int) error
	// pyLeft and goLeft are where the accelerated run's sockets of the
	// Python and the Go workloads must land when the tuning makes plain
	// TCP the right answer: counter -> sockets per connection. Nil: both
	// ends inserted.
	pyLeft, goLeft map[string]int
	// noRR: no request/response workload (an SO_RCVLOWAT reader waits
	// for more than one small request, over plain TCP too).
	noRR bool
	// noChurn: no connect+close churn (plain TCP loses some of it).
	noChurn bool
}

// Each run of the workloads opens this many connections.
const (
	tunedDuplexConns = 2
	tunedDuplexBytes = 1536 << 10 // each way, per connection
	tunedChurn       = 100
	tunedGoConns     = 2
	tunedGoBytes     = 1 << 20
)

func setsockopts(opts ...[3]int) func(fd int) error {
	return func(fd int) error {
		for _, o := range opts {
			if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
				return err
			}
		}
		return nil
	}
}

var tunedHosts = []tunedHost{
	{name: "defaults"},
	// A blocking sender's bound no longer follows a tiny tcp_rmem max
	// down (TestBlockingEchoTinyBuffers).
	{name: "tcp_rmem+wmem tiny", sysctls: []string{"net.ipv4.tcp_rmem=4096 4096 16384", "net.ipv4.tcp_wmem=4096 4096 16384"}},
	{name: "tcp_rmem+wmem 64MiB", sysctls: []string{"net.ipv4.tcp_rmem=4096 131072 67108864", "net.ipv4.tcp_wmem=4096 16384 67108864"}},
	{name: "core rmem+wmem_default", optional: true, sysctls: []string{"net.core.rmem_default=65536", "net.core.wmem_default=65536"}},
	{name: "tcp_notsent_lowat=16384", sysctls: []string{"net.ipv4.tcp_notsent_lowat=16384"}},
	{name: "tcp_autocorking=0", sysctls: []string{"net.ipv4.tcp_autocorking=0"}},
	{name: "tcp_timestamps=0", sysctls: []string{"net.ipv4.tcp_timestamps=0"}},
	{name: "tcp_sack=0", sysctls: []string{"net.ipv4.tcp_sack=0"}},
	{name: "tcp_window_scaling=0", sysctls: []string{"net.ipv4.tcp_window_scaling=0"}},
	// The SYN-ACK of a SYN cookie carries no token: neither end pairs.
	// Its churn is left out: plain TCP lost 1 or 2 of 100 connect+close
	// connections in 2 of 4 runs (the server never accepted them while
	// every client's connect succeeded).
	{name: "tcp_syncookies=2", sysctls: []string{"net.ipv4.tcp_syncookies=2"}, noChurn: true,
		pyLeft: map[string]int{"no_peer": 2}, goLeft: map[string]int{"no_peer": 2}},
	// Python clients connect with their first bytes (MSG_FASTOPEN, a
	// blocking connect: --conservative keeps them on TCP before anything
	// else is looked at); their servers then find no client. Go does not
	// use Fast Open: accelerated.
	{name: "tcp_fastopen=3", sysctls: []string{"net.ipv4.tcp_fastopen=3"}, opts: []string{"fastopen"},
		pyLeft: map[string]int{"blocking": 1, "no_peer": 1}},
	{name: "tcp_moderate_rcvbuf=0", sysctls: []string{"net.ipv4.tcp_moderate_rcvbuf=0"}},
	{name: "tcp_ecn=1", sysctls: []string{"net.ipv4.tcp_ecn=1"}},
	{name: "mtu 1280 ipv6", mtu: 1280, ipv6: true},
	{name: "mtu 9000", mtu: 9000},
	{name: "SO_RCVBUF+SO_SNDBUF 4096", opts: []string{"rcvbuf=4096", "sndbuf=4096"},
		sockopts: setsockopts([3]int{unix.SOL_SOCKET, unix.SO_RCVBUF, 4096}, [3]int{unix.SOL_SOCKET, unix.SO_SNDBUF, 4096})},
	{name: "SO_RCVLOWAT 16384", opts: []string{"rcvlowat=16384"}, noRR: true, offSetsockopt: true,
		sockopts: setsockopts([3]int{unix.SOL_SOCKET, unix.SO_RCVLOWAT, 16384})},
	{name: "TCP_NODELAY+TCP_CORK", opts: []string{"nodelay", "cork"},
		// Go's writes are not corked: an application corks around what it
		// writes at once, as the Python peers do.
		sockopts: setsockopts([3]int{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1})},
}

func (h tunedHost) churn() int {
	if h.noChurn {
		return 0
	}
	return tunedChurn
}

// pyConns is how many connections the Python workloads open.
func (h tunedHost) pyConns() int {
	n := tunedDuplexConns + h.churn()
	if !h.noRR {
		n++
	}
	return n
}

// setSysctls sets key=value pairs in a namespace and reads each back
// (sysctl -q -w exits 0 when the kernel refuses a value): /proc/sys/net
// is the namespace of the thread that opens it.
func setSysctls(t *testing.T, ns *testenv.Netns, kvs []string) error {
	t.Helper()
	var errs []error
	ns.Do(t, func() {
		for _, kv := range kvs {
			key, val, _ := strings.Cut(kv, "=")
			path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
			if err := os.WriteFile(path, []byte(val), 0); err != nil {
				errs = append(errs, fmt.Errorf("set %s in %s: %w", key, ns.Name, err))
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || strings.Join(strings.Fields(string(got)), " ") != val {
				errs = append(errs, fmt.Errorf("%s in %s reads %q after writing %q (%v)", key, ns.Name, got, val, err))
			}
		}
	})
	return errors.Join(errs...)
}

// placement is where a run's established sockets went: the counters of
// the not-accelerated reasons and inserted.
func placement(t *testing.T, before, after accel.Stats) map[string]int {
	t.Helper()
	counters := func(s accel.Stats) map[string]int64 {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]int64
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	was, is := counters(before), counters(after)
	out := map[string]int{}
	for _, k := range []string{"inserted", "map_full", "insert_errors", "excluded_port", "excluded_cidr", "excluded_cgroup",
		"early_data", "storage_errors", "disabled", "blocking", "ulp", "excluded_learned", "repair", "no_peer",
		"token_no_room", "token_unconfirmed", "off_setsockopt", "redirect_errors"} {
		if d := is[k] - was[k]; d != 0 {
			out[k] = int(d)
		}
	}
	return out
}

// tunedPath is where a case's connections run.
type tunedPath struct {
	name           string
	client, server *testenv.Netns
	listen, addr   string // the listener's address, the one clients dial
	network        string // for the Go workload
}

// TestTunedHosts runs a few workloads, plain and accelerated, on hosts
// whose TCP is tuned: (a) a blocking Python echo server (thread per
// connection, recv/sendall) with blocking full-duplex clients, (b) a
// blocking request/response loop of 1 B to 64 KiB messages, (c) a Go
// (non-blocking, epoll) bulk transfer both ways, and (d) connect + close
// churn, on veth between two namespaces and on loopback. The accelerated
// run must say exactly what the plain one said, with every byte checked,
// and its sockets must all be accelerated, or land where the tuning makes
// plain TCP the right answer.
func TestTunedHosts(t *testing.T) {
	// The daemon's defaults (--conservative included).
	n := newNode(t, func(c *accel.Config) { c.Conservative = true })
	py := blockPeer(t)
	port := 7800
	for i, h := range tunedHosts {
		t.Run(h.name, func(t *testing.T) {
			subnet := byte(100 + i)
			tc := newTwoContainers(t, subnet)
			lo := testenv.NewNetns(t)
			for _, ns := range []*testenv.Netns{tc.client, tc.server, lo} {
				if len(h.sysctls) == 0 {
					break
				}
				if err := setSysctls(t, ns, h.sysctls); err != nil {
					if h.optional {
						t.Skipf("this kernel does not take these sysctls in a network namespace: %v", err)
					}
					t.Fatal(err)
				}
			}
			if h.mtu != 0 {
				tc.client.Run(t, "ip", "link", "set", tc.clientIf, "mtu", fmt.Sprint(h.mtu))
				tc.server.Run(t, "ip", "link", "set", tc.serverIf, "mtu", fmt.Sprint(h.mtu))
			}
			paths := []tunedPath{
				{"veth", tc.client, tc.server, "0.0.0.0", fmt.Sprintf("10.%d.0.2", subnet), "tcp4"},
				{"loopback", lo, lo, "127.0.0.1", "127.0.0.1", "tcp4"},
			}
			if h.ipv6 {
				paths = []tunedPath{
					{"veth", tc.client, tc.server, "::", fmt.Sprintf("fd00:%d::2", subnet), "tcp6"},
					{"loopback", lo, lo, "::1", "::1", "tcp6"},
				}
			}
			for _, pa := range paths {
				t.Run(pa.name, func(t *testing.T) {
					var got [2]string
					for i, accelerated := range []bool{false, true} {
						port++
						cl, sv := testenv.Endpoint{Netns: pa.client}, testenv.Endpoint{Netns: pa.server}
						if accelerated {
							cl, sv = n.in(pa.client), n.in(pa.server)
						}
						before := n.stats(t)
						got[i] = tunedWorkloads(t, py, h, pa, cl, sv, port)
						if !accelerated {
							continue
						}
						after := n.stats(t)
						pyConns := h.pyConns()
						want := map[string]int{}
						for _, w := range []struct {
							left  map[string]int
							conns int
						}{{h.pyLeft, pyConns}, {h.goLeft, tunedGoConns}} {
							if w.left == nil {
								w.left = map[string]int{"inserted": 2}
							}
							for k, v := range w.left {
								want[k] += v * w.conns
							}
						}
						got := placement(t, before, after)
						if h.offSetsockopt {
							if got["off_setsockopt"] == 0 {
								t.Error("SO_RCVLOWAT took no direction off the fast path (off_setsockopt)")
							}
							delete(got, "off_setsockopt")
						}
						if !maps.Equal(got, want) {
							t.Errorf("accelerated run: sockets went %v, want %v", got, want)
						}
						t.Logf("redirected %d bytes, passed %d; off_backlog %d", after.RedirectedBytes-before.RedirectedBytes,
							after.PassedBytes-before.PassedBytes, after.OffBacklog-before.OffBacklog)
					}
					if got[0] != got[1] {
						t.Errorf("plain TCP:\n%s\naccelerated:\n%s", got[0], got[1])
					}
				})
			}
		})
	}
}

// tunedWorkloads runs the four workloads once from cl to sv and returns
// what the applications said, failing the test on any error or stall.
func tunedWorkloads(t *testing.T, py []string, h tunedHost, pa tunedPath, cl, sv testenv.Endpoint, port int) string {
	t.Helper()
	conns := h.pyConns()
	srv := sv.Start(t, append(append(py, "echo", pa.listen, fmt.Sprint(port), fmt.Sprint(conns)), h.opts...)...)
	srv.WaitOutput(t, "listening")
	args := append(py, "suite", pa.addr, fmt.Sprint(port), fmt.Sprint(tunedDuplexConns), fmt.Sprint(tunedDuplexBytes), fmt.Sprint(h.churn()))
	if h.noRR {
		args = append(args, "norr")
	}
	client := cl.Start(t, append(args, h.opts...)...)
	var out []string
	for _, p := range []*testenv.Process{client, srv} {
		err := p.Wait(time.Minute)
		lines := strings.Split(strings.TrimSpace(p.Output()), "\n")
		slices.Sort(lines)
		if err != nil || slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "error") }) {
			t.Errorf("%s: %v\n%s", strings.Join(p.Cmd.Args[4:], " "), err, p.Output())
		}
		out = append(out, strings.Join(lines, "\n"))
	}
	out = append(out, goBulk(t, h, pa, cl, sv, port+1000))
	return strings.Join(out, "\n")
}

// goBulk moves tunedGoBytes each way over tunedGoConns Go connections
// (non-blocking sockets driven by epoll), with the case's socket options
// set before listen and connect.
func goBulk(t *testing.T, h tunedHost, pa tunedPath, cl, sv testenv.Endpoint, port int) string {
	t.Helper()
	control := func(network, address string, c syscall.RawConn) error {
		if h.sockopts == nil {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) { serr = h.sockopts(int(fd)) })
		return errors.Join(err, serr)
	}
	addr := net.JoinHostPort(pa.addr, fmt.Sprint(port))
	var ln net.Listener
	var err error
	sv.Do(t, func() {
		lc := net.ListenConfig{Control: control}
		ln, err = lc.Listen(context.Background(), pa.network, net.JoinHostPort(pa.listen, fmt.Sprint(port)))
	})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	var pairs []testenv.Pair
	for range tunedGoConns {
		var c net.Conn
		cl.Do(t, func() {
			d := net.Dialer{Timeout: 30 * time.Second, Control: control}
			c, err = d.Dial(pa.network, addr)
		})
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, testenv.Pair{Client: c.(*net.TCPConn), Server: s.(*net.TCPConn)})
	}
	moved := testenv.ExchangeAll(t, pairs, tunedGoBytes, tunedGoBytes, uint64(port))
	return fmt.Sprintf("go: %d bytes intact", moved)
}

// A blocking full-duplex client that connected with a timeout and then
// uses its socket blocking (Java's Socket.connect(addr, timeout) with
// stream I/O; Python's create_connection(timeout=...) then
// settimeout(None)), on an untuned host: its writer thread sends
// everything and calls shutdown(SHUT_WR) while its reader is asleep in
// recv waiting for the echo. inet_shutdown wakes the socket's sleepers
// (sk_state_change), as does the FIN_WAIT1 -> FIN_WAIT2 transition, and
// tcp_bpf_recvmsg ends its single wait with EAGAIN when nothing is queued.
// --conservative only keeps clients whose connect() itself was blocking on
// TCP, so these are accelerated.
//
// A known gap, not fixed: EAGAIN in 5 of 5 runs here (the wake-ups seen
// with perf's sched:sched_wakeup stacks: sock_def_wakeup < inet_shutdown);
// plain TCP intact. The shutdown detector counts such a call and learns the
// service, so only the first connection to it sees this (this test does not
// run the event loop; TestShutdownWakeIsCountedAndLearned does). See README
// "Known gaps"; runs only with SOCKACCEL_TEST_KNOWN_GAPS=1.
func TestBlockingDuplexClientOwnShutdown(t *testing.T) {
	if os.Getenv("SOCKACCEL_TEST_KNOWN_GAPS") != "1" {
		t.Skip("known gap (README: Known gaps); SOCKACCEL_TEST_KNOWN_GAPS=1 runs it")
	}
	n := newNode(t, func(c *accel.Config) { c.Conservative = true })
	tc := newTwoContainers(t, 238)
	py := blockPeer(t)
	const conns, size = 2, 1536 << 10
	for i, accelerated := range []bool{false, true} {
		cl, sv := testenv.Endpoint{Netns: tc.client}, testenv.Endpoint{Netns: tc.server}
		if accelerated {
			cl, sv = n.in(tc.client), n.in(tc.server)
		}
		port := fmt.Sprint(7306 + i)
		srv := sv.Start(t, append(py, "echo", "10.238.0.2", port, fmt.Sprint(conns))...)
		srv.WaitOutput(t, "listening")
		client := cl.Start(t, append(py, "duplex", "10.238.0.2", port, fmt.Sprint(conns), fmt.Sprint(size), "blocking")...)
		t.Logf("accelerated=%v", accelerated)
		checkPeers(t, conns, client, srv)
	}
	if s := n.stats(t); s.Inserted != 2*conns {
		t.Errorf("inserted %d sockets, want %d: the clients were not accelerated, so this shows nothing", s.Inserted, 2*conns)
	}
}

// A blocking echo server (thread per connection, recv then sendall) on a
// host tuned to tiny TCP buffers (tcp_rmem and tcp_wmem max 16 KiB), with
// clients that poll. A blocking sender's backlog bound was the receiver's
// tcp_rmem max: every answer the clients had not yet read went through
// TCP, and the ACKs that freed the server's send buffer could wake its next
// blocking recv in tcp_bpf_recvmsg into EAGAIN (1 of 6 runs of
// TestTunedHosts' case here). The server's answers must now stay on the
// fast path: its TCP sequence space carries nothing (tcpi_bytes_acked 0).
// Before the floor on a blocking sender's bound: 4 of 4 connections sent
// part of their answers through TCP.
func TestBlockingEchoTinyBuffers(t *testing.T) {
	n := newNode(t, func(c *accel.Config) { c.Conservative = true })
	tc := newTwoContainers(t, 239)
	for _, ns := range []*testenv.Netns{tc.client, tc.server} {
		if err := setSysctls(t, ns, []string{"net.ipv4.tcp_rmem=4096 4096 16384", "net.ipv4.tcp_wmem=4096 4096 16384"}); err != nil {
			t.Fatal(err)
		}
	}
	py := blockPeer(t)
	const conns, size = 4, 4 << 20
	srv := n.in(tc.server).Start(t, append(py, "echo", "10.239.0.2", "7308", fmt.Sprint(conns), "tcpbytes")...)
	srv.WaitOutput(t, "listening")
	client := n.in(tc.client).Start(t, append(py, "duplex", "10.239.0.2", "7308", fmt.Sprint(conns), fmt.Sprint(size), "poll")...)
	checkPeers(t, conns, client, srv)
	if s := n.stats(t); s.Inserted != 2*conns {
		t.Errorf("inserted %d sockets, want %d", s.Inserted, 2*conns)
	}
	if got := strings.Count(srv.Output(), " tcp_acked=0\n"); got != conns {
		t.Errorf("%d of %d server ends sent nothing through TCP, want all:\n%s", got, conns, srv.Output())
	}
}
