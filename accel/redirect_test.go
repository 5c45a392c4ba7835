//go:build linux

package accel_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

const mib = 1 << 20

// node is a test host: a target cgroup and sockaccel attached to it.
type node struct {
	cg  cgroup.Target
	pin string
	acc *accel.Accelerator
}

func newNode(t *testing.T, mutate func(*accel.Config)) *node {
	t.Helper()
	testenv.RequirePrivileged(t)
	n := &node{cg: testenv.TempCgroup(t), pin: testenv.TempPinDir(t)}
	cfg := accel.Config{Cgroup: n.cg, PinDir: n.pin, MaxConns: 1024}
	if mutate != nil {
		mutate(&cfg)
	}
	n.acc = testenv.Start(t, cfg)
	return n
}

// wideBound keeps bulk test transfers on the fast path whatever their
// readers' pace, for tests about something other than the backlog bound:
// with the default, autotuned bound, a reader that falls behind a burst
// hands the rest of the transfer to TCP, as TCP would slow its writer.
func wideBound(c *accel.Config) { c.BacklogBytes = 64 << 20 }

func (n *node) in(ns *testenv.Netns) testenv.Endpoint {
	return testenv.Endpoint{Netns: ns, Cgroup: &n.cg}
}

func (n *node) stats(t *testing.T) accel.Stats {
	t.Helper()
	s, err := n.acc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// twoContainers is two network namespaces joined by a veth pair.
type twoContainers struct {
	client, server     *testenv.Netns
	clientIf, serverIf string
}

func newTwoContainers(t *testing.T, subnet byte) twoContainers {
	t.Helper()
	c, s := testenv.NewNetns(t), testenv.NewNetns(t)
	ci, si := testenv.Veth(t, c, s,
		[]string{fmt.Sprintf("10.%d.0.1/24", subnet), fmt.Sprintf("fd00:%d::1/64", subnet)},
		[]string{fmt.Sprintf("10.%d.0.2/24", subnet), fmt.Sprintf("fd00:%d::2/64", subnet)})
	return twoContainers{client: c, server: s, clientIf: ci, serverIf: si}
}

// wireBytes is what crossed the veth pair in both directions.
func (tc twoContainers) wireBytes(t *testing.T) uint64 {
	return tc.client.Link(t, tc.clientIf).TxBytes + tc.server.Link(t, tc.serverIf).TxBytes
}

// checkAccounted asserts that the counters cover the payload without
// inventing bytes, and that a good share of it was redirected: eight
// connections per round write 2 MiB each way at once on two CPUs, so
// readers fall behind their writers and the backlog bound hands the rest of
// a transfer to TCP's flow control, as TCP would slow those writers down.
// (passed_bytes can under-count: after a TCP push fails with EAGAIN the
// kernel reuses the PASS verdict for the next send without running the
// program.)
func checkAccounted(t *testing.T, s accel.Stats, payload int64) {
	t.Helper()
	if got := int64(s.RedirectedBytes + s.PassedBytes); got > payload {
		t.Errorf("redirected %d + passed %d = %d bytes, more than the %d bytes of payload", s.RedirectedBytes, s.PassedBytes, got, payload)
	}
	if int64(s.RedirectedBytes) < payload/10 {
		t.Errorf("only %d of %d payload bytes were redirected", s.RedirectedBytes, payload)
	}
	if s.InsertErrors != 0 || s.MapFull != 0 || s.StorageErrors != 0 {
		t.Errorf("unexpected insert failures: %+v", s)
	}
}

func TestRedirectIntegrityAcrossVeth(t *testing.T) {
	n := newNode(t, nil)
	tc := newTwoContainers(t, 211)
	// Dual-stack listener: IPv4 clients pair with an AF_INET6 socket.
	ln := n.in(tc.server).Listen(t, "tcp", "[::]:7001")

	const rounds, conns, each = 25, 8, 2 * mib
	var payload int64
	wireBefore := tc.wireBytes(t)
	for r := 0; r < rounds; r++ {
		network, addr := "tcp4", "10.211.0.2:7001"
		if r%2 == 1 {
			network, addr = "tcp6", "[fd00:211::2]:7001"
		}
		pairs := testenv.Connect(t, n.in(tc.client), ln, network, addr, conns)
		payload += testenv.ExchangeAll(t, pairs, each, each, uint64(r)*1000)
	}
	wire := tc.wireBytes(t) - wireBefore
	s := n.stats(t)
	t.Logf("payload %d MiB over %d connections: redirected %d bytes in %d msgs, passed %d bytes, veth carried %d bytes",
		payload/mib, rounds*conns, s.RedirectedBytes, s.RedirectedMsgs, s.PassedBytes, wire)
	checkAccounted(t, s, payload)
	if s.Inserted != 2*rounds*conns {
		t.Errorf("inserted %d sockets, want %d", s.Inserted, 2*rounds*conns)
	}
	// The veth carries handshakes, FINs and whatever was passed to TCP,
	// never the redirected payload.
	if limit := s.PassedBytes + s.PassedBytes/4 + uint64(rounds*conns)*16<<10; wire > limit {
		t.Errorf("veth carried %d bytes; redirected payload must not cross it (limit %d)", wire, limit)
	}
}

func TestRedirectIntegrityLoopback(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp", "[::]:7002")

	const rounds, conns, each = 15, 8, 2 * mib
	var payload int64
	for r := 0; r < rounds; r++ {
		network, addr := "tcp4", "127.0.0.1:7002"
		if r%2 == 1 {
			network, addr = "tcp6", "[::1]:7002"
		}
		pairs := testenv.Connect(t, n.in(ns), ln, network, addr, conns)
		payload += testenv.ExchangeAll(t, pairs, each, each, uint64(r)*1000)
	}
	s := n.stats(t)
	t.Logf("payload %d MiB: redirected %d bytes in %d msgs, passed %d bytes", payload/mib, s.RedirectedBytes, s.RedirectedMsgs, s.PassedBytes)
	checkAccounted(t, s, payload)
}

// The client is established (and in the sockhash) before the server. With
// the handshake's final ACK withheld on the client's veth, the server only
// becomes established when the client's first data segment arrives, so every
// client starts streaming while its peer is not in the map: those bytes go
// through TCP, and nothing the client sends later may overtake them.
func TestOrderingWhenServerEntryIsLate(t *testing.T) {
	n := newNode(t, wideBound)
	tc := newTwoContainers(t, 212)
	dropped := testenv.DropPureACKs(t, tc.client, tc.clientIf, 7003)
	ln := n.in(tc.server).Listen(t, "tcp", "[::]:7003")

	const conns, up, down = 8, 4 * mib, mib
	testenv.StreamOnConnect(t, n.in(tc.client), ln, "tcp4", "10.212.0.2:7003", conns, up, down, 77)

	s := n.stats(t)
	t.Logf("redirected %d bytes, passed %d bytes in %d msgs; %d pure ACKs withheld; %d directions resumed", s.RedirectedBytes, s.PassedBytes, s.PassedMsgs, dropped(), s.Resumed)
	if s.PassedMsgs == 0 {
		t.Fatal("no send reached TCP before the server entry existed: the test did not create the race")
	}
	// Each server is inserted before it sends, its client long before:
	// server->client is redirected from the first byte. client->server
	// only once the server has read every byte that went through TCP.
	if s.RedirectedBytes < conns*down {
		t.Errorf("redirected %d bytes, want at least the %d bytes sent server->client", s.RedirectedBytes, conns*down)
	}
}

// Two "containers" hold connections with identical 4-tuples at the same
// time; each client must only ever hear its own server.
func TestIsolationIdenticalTuples(t *testing.T) {
	n := newNode(t, wideBound)

	t.Run("loopback", func(t *testing.T) {
		var pairs []testenv.Pair
		for range 2 {
			ns := testenv.NewNetns(t)
			ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:8080")
			pairs = append(pairs, connectFrom(t, n.in(ns), ln, "127.0.0.1:40000", "127.0.0.1:8080"))
		}
		exchangeIsolated(t, n, pairs)
	})
	t.Run("veth overlapping subnets", func(t *testing.T) {
		var pairs []testenv.Pair
		for range 2 {
			tc := newTwoContainers(t, 213)
			ln := n.in(tc.server).Listen(t, "tcp4", "10.213.0.2:8080")
			pairs = append(pairs, connectFrom(t, n.in(tc.client), ln, "10.213.0.1:40001", "10.213.0.2:8080"))
		}
		exchangeIsolated(t, n, pairs)
	})
}

func connectFrom(t *testing.T, from testenv.Endpoint, ln interface {
	AcceptTCP() (*netTCPConn, error)
}, laddr, raddr string) testenv.Pair {
	t.Helper()
	c, err := from.Dial(t, "tcp4", laddr, raddr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", raddr, laddr, err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	return testenv.Pair{Client: c, Server: s}
}

func exchangeIsolated(t *testing.T, n *node, pairs []testenv.Pair) {
	t.Helper()
	if pairs[0].Client.LocalAddr().String() != pairs[1].Client.LocalAddr().String() ||
		pairs[0].Client.RemoteAddr().String() != pairs[1].Client.RemoteAddr().String() {
		t.Fatalf("tuples differ: %s->%s vs %s->%s", pairs[0].Client.LocalAddr(), pairs[0].Client.RemoteAddr(),
			pairs[1].Client.LocalAddr(), pairs[1].Client.RemoteAddr())
	}
	before := n.stats(t)
	// Different seeds per pair: a byte crossing over breaks a digest.
	payload := testenv.ExchangeAll(t, pairs, 8*mib, 8*mib, uint64(time.Now().UnixNano()))
	s := n.stats(t)
	redirected := s.RedirectedBytes - before.RedirectedBytes
	if int64(redirected) < payload/2 {
		t.Errorf("only %d of %d bytes redirected: isolation was not exercised on the fast path", redirected, payload)
	}
	if s.InsertErrors != before.InsertErrors {
		t.Errorf("key collisions: insert_errors rose by %d", s.InsertErrors-before.InsertErrors)
	}
}

func TestScope(t *testing.T) {
	n := newNode(t, func(c *accel.Config) {
		wideBound(c)
		c.ExcludePorts = []uint16{7005}
		c.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.215.0.0/16")}
	})
	tc := newTwoContainers(t, 214)
	outside := func(ns *testenv.Netns) testenv.Endpoint { return testenv.Endpoint{Netns: ns} }

	t.Run("outside the cgroup", func(t *testing.T) {
		before := n.stats(t)
		ln := outside(tc.server).Listen(t, "tcp4", "10.214.0.2:7004")
		pairs := testenv.Connect(t, outside(tc.client), ln, "tcp4", "10.214.0.2:7004", 4)
		testenv.ExchangeAll(t, pairs, mib, mib, 5)
		s := n.stats(t)
		if s.Established != before.Established || s.RedirectedMsgs != before.RedirectedMsgs {
			t.Errorf("sockets outside the cgroup were touched: before %+v after %+v", before, s)
		}
	})
	t.Run("excluded port", func(t *testing.T) {
		before := n.stats(t)
		ln := n.in(tc.server).Listen(t, "tcp4", "10.214.0.2:7005")
		pairs := testenv.Connect(t, n.in(tc.client), ln, "tcp4", "10.214.0.2:7005", 4)
		testenv.ExchangeAll(t, pairs, mib, mib, 6)
		s := n.stats(t)
		if got := s.ExcludedPort - before.ExcludedPort; got != 8 {
			t.Errorf("excluded_port rose by %d, want 8 (both ends of 4 connections)", got)
		}
		if s.RedirectedMsgs != before.RedirectedMsgs {
			t.Errorf("excluded connections were redirected")
		}

		// Lifting the exclusion applies to new connections without reload.
		if err := n.acc.SetExclusions(nil, nil); err != nil {
			t.Fatal(err)
		}
		before = n.stats(t)
		pairs = testenv.Connect(t, n.in(tc.client), ln, "tcp4", "10.214.0.2:7005", 2)
		testenv.ExchangeAll(t, pairs, mib, mib, 7)
		if s := n.stats(t); s.RedirectedBytes == before.RedirectedBytes {
			t.Errorf("port no longer excluded but not redirected")
		}
	})
	t.Run("excluded cgroup subtree", func(t *testing.T) {
		if err := n.acc.SetExclusions(nil, nil); err != nil {
			t.Fatal(err)
		}
		excluded := testenv.ChildCgroup(t, n.cg, "excluded")
		deeper := testenv.ChildCgroup(t, excluded, "deeper")
		kept := testenv.ChildCgroup(t, n.cg, "kept")
		if err := n.acc.SetExcludedCgroups([]cgroup.Target{excluded}); err != nil {
			t.Fatal(err)
		}
		in := func(ns *testenv.Netns, cg cgroup.Target) testenv.Endpoint {
			return testenv.Endpoint{Netns: ns, Cgroup: &cg}
		}
		// Server two levels below the excluded cgroup, client in a
		// sibling: only the server ends are excluded, and without them
		// nothing is redirected.
		before := n.stats(t)
		ln := in(tc.server, deeper).Listen(t, "tcp4", "10.214.0.2:7007")
		pairs := testenv.Connect(t, in(tc.client, kept), ln, "tcp4", "10.214.0.2:7007", 3)
		testenv.ExchangeAll(t, pairs, mib, mib, 9)
		s := n.stats(t)
		if got := s.ExcludedCgroup - before.ExcludedCgroup; got != 3 {
			t.Errorf("excluded_cgroup rose by %d, want 3 (the server ends)", got)
		}
		if s.RedirectedMsgs != before.RedirectedMsgs {
			t.Errorf("connections into an excluded cgroup were redirected")
		}
		// Both ends in kept: accelerated.
		before = n.stats(t)
		ln = in(tc.server, kept).Listen(t, "tcp4", "10.214.0.2:7008")
		pairs = testenv.Connect(t, in(tc.client, kept), ln, "tcp4", "10.214.0.2:7008", 2)
		testenv.ExchangeAll(t, pairs, mib, mib, 10)
		if s := n.stats(t); s.RedirectedBytes-before.RedirectedBytes < 4*mib || s.ExcludedCgroup != before.ExcludedCgroup {
			t.Errorf("connections in a sibling of the excluded cgroup: redirected %d bytes, excluded_cgroup +%d",
				s.RedirectedBytes-before.RedirectedBytes, s.ExcludedCgroup-before.ExcludedCgroup)
		}
		if err := n.acc.SetExcludedCgroups(nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("excluded cidr", func(t *testing.T) {
		if err := n.acc.SetExclusions(nil, []netip.Prefix{netip.MustParsePrefix("10.214.0.0/24")}); err != nil {
			t.Fatal(err)
		}
		before := n.stats(t)
		ln := n.in(tc.server).Listen(t, "tcp4", "10.214.0.2:7006")
		pairs := testenv.Connect(t, n.in(tc.client), ln, "tcp4", "10.214.0.2:7006", 2)
		testenv.ExchangeAll(t, pairs, mib, mib, 8)
		s := n.stats(t)
		if got := s.ExcludedCIDR - before.ExcludedCIDR; got != 4 {
			t.Errorf("excluded_cidr rose by %d, want 4", got)
		}
		if s.RedirectedMsgs != before.RedirectedMsgs {
			t.Errorf("excluded connections were redirected")
		}
	})
}

func TestCapacity(t *testing.T) {
	n := newNode(t, func(c *accel.Config) { c.MaxConns = 16 })
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7007")

	// All 100 connections are open at once, so 200 sockets compete for the
	// 32 slots.
	pairs := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7007", 100)
	testenv.ExchangeAll(t, pairs, 256<<10, 256<<10, 9)

	s := n.stats(t)
	t.Logf("established %d inserted %d map_full %d no_peer %d redirected %d bytes", s.Established, s.Inserted, s.MapFull, s.NoPeer, s.RedirectedBytes)
	// A server whose client found the map full is refused before it
	// tries (no_peer): it could only have been a lonely end.
	if s.Established != 200 || s.Inserted != 32 || s.MapFull+s.NoPeer != 168 {
		t.Errorf("established %d inserted %d map_full %d no_peer %d; want 200, 32, 168 together", s.Established, s.Inserted, s.MapFull, s.NoPeer)
	}
	if s.RedirectedBytes == 0 {
		t.Error("the connections that fit were not redirected")
	}
	// Conntrack holds 16 connections; an inserted socket whose connection
	// found it full is counted and left on TCP (nothing would bound it).
	if s.CtCreated > 16 {
		t.Errorf("conntrack created %d entries with capacity 16", s.CtCreated)
	}
	t.Logf("conntrack created %d, full %d", s.CtCreated, s.CtFull)
	// Closing the sockets empties the map: the kernel unlinks on close.
	waitFor(t, "sockhash to empty after close", func() (bool, string) {
		e, err := n.acc.SockhashEntries()
		return err == nil && e == 0, fmt.Sprintf("%d entries, err %v", e, err)
	})
}

// A second start on the same pins adopts them: still exactly one sock_ops
// program on the cgroup, and counters keep counting.
func TestRestartAdoptsPins(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg, pin := testenv.TempCgroup(t), testenv.TempPinDir(t)
	cfg := accel.Config{Cgroup: cg, PinDir: pin, MaxConns: 64}
	wideBound(&cfg)
	first, err := accel.New(cfg, nopLog())
	if err != nil {
		t.Fatal(err)
	}
	ns := testenv.NewNetns(t)
	ln := testenv.Endpoint{Netns: ns, Cgroup: &cg}.Listen(t, "tcp4", "127.0.0.1:7008")
	pairs := testenv.Connect(t, testenv.Endpoint{Netns: ns, Cgroup: &cg}, ln, "tcp4", "127.0.0.1:7008", 2)
	// Nine syscall tracepoints, and ioctl where FIONREAD misses
	// redirected bytes (Debian 12's 6.1).
	detectTracepoints := 9
	if !first.KernelBehaviour().FIONREADCountsRedirected() {
		detectTracepoints++
	}
	first.Close()
	if got := testenv.DetectLinks(t, pin); got != detectTracepoints {
		t.Errorf("%d use-detector links after the first start, want %d", got, detectTracepoints)
	}

	second := testenv.Start(t, cfg)
	if !second.Adopted() {
		t.Error("second start did not adopt the pins")
	}
	if got := testenv.SockOpsPrograms(t, cg.Path); got != 1 {
		t.Errorf("%d sock_ops programs on the cgroup after restart, want 1", got)
	}
	if got := testenv.DetectLinks(t, pin); got != detectTracepoints {
		t.Errorf("%d use-detector links after restart, want %d (replaced, not added)", got, detectTracepoints)
	}
	// Connections from before the restart still redirect.
	testenv.ExchangeAll(t, pairs, mib, mib, 10)
	s, err := second.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.RedirectedBytes < 2*mib {
		t.Errorf("redirected %d bytes across the restart, want >= %d", s.RedirectedBytes, 2*mib)
	}
	// Different capacity: the pinned sockhash no longer matches (tried
	// with the daemon stopped: while it runs, the pin dir is locked).
	second.Close()
	bad := cfg
	bad.MaxConns = 128
	if _, err := accel.New(bad, nopLog()); err == nil {
		t.Error("start with a different --max-conns adopted an incompatible sockhash")
	} else {
		t.Logf("incompatible pin reported as: %v", err)
	}
	if got := testenv.SockOpsPrograms(t, cg.Path); got != 1 {
		t.Errorf("%d sock_ops programs after the refused start, want 1", got)
	}
}

func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
