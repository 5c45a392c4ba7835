//go:build linux

package accel_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

// hashingWriter hashes exactly what its connection accepted.
type hashingWriter struct {
	c *net.TCPConn
	h hash.Hash
	n int64
}

func (w *hashingWriter) Write(p []byte) (int, error) {
	m, err := w.c.Write(p)
	w.h.Write(p[:m])
	w.n += int64(m)
	return m, err
}

// liveStreams keeps a seeded stream flowing both ways on every pair until
// stop is called, so that a change made in between meets transfers under
// way however fast the host is; stop then half-closes each writer and
// checks that each direction arrived intact, once and in order, with no
// error at either end.
func liveStreams(t *testing.T, pairs []testenv.Pair) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4*len(pairs))
	oneWay := func(from, to *net.TCPConn, seed uint64) {
		sent := make(chan testenv.Digest, 1)
		wg.Add(2)
		go func() {
			defer wg.Done()
			w := &hashingWriter{c: from, h: sha256.New()}
			for i := uint64(0); ; i++ {
				select {
				case <-done:
					var d testenv.Digest
					d.N = w.n
					copy(d.Sum[:], w.h.Sum(nil))
					sent <- d
					if err := from.CloseWrite(); err != nil {
						errs <- fmt.Errorf("close write: %w", err)
					}
					return
				default:
				}
				if _, err := testenv.WriteStream(w, 1<<20, seed<<32|i, testenv.MaxChunk); err != nil {
					errs <- fmt.Errorf("write: %w", err)
					sent <- testenv.Digest{N: -1}
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			got, err := testenv.ReadStream(to)
			if err != nil {
				errs <- fmt.Errorf("read: %w", err)
			}
			if want := <-sent; got != want {
				errs <- fmt.Errorf("sent %v, received %v", want, got)
			}
		}()
	}
	for i, p := range pairs {
		oneWay(p.Client, p.Server, uint64(2*i+1))
		oneWay(p.Server, p.Client, uint64(2*i+2))
	}
	return func() {
		t.Helper()
		close(done)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		for _, p := range pairs {
			p.Client.Close()
			p.Server.Close()
		}
	}
}

// liveTransfers starts a node and conns connections between two
// containers (10.SUBNET.0.0/24) to port, streaming both ways on the fast
// path; stop ends and checks the streams.
func liveTransfers(t *testing.T, subnet byte, port, conns int) (n *node, tc twoContainers, stop func()) {
	t.Helper()
	n = newNode(t, wideBound)
	tc = newTwoContainers(t, subnet)
	addr := fmt.Sprintf("10.%d.0.2:%d", subnet, port)
	ln := n.in(tc.server).Listen(t, "tcp4", addr)
	stop = liveStreams(t, testenv.Connect(t, n.in(tc.client), ln, "tcp4", addr, conns))
	waitRedirected(t, n.acc, 64<<20)
	return n, tc, stop
}

// waitRedirected waits until the transfers have moved more bytes over the
// fast path, so that a change made next meets them under way there.
func waitRedirected(t *testing.T, acc *accel.Accelerator, more uint64) {
	t.Helper()
	s0, err := acc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the transfers to be under way on the fast path", func() (bool, string) {
		s, err := acc.Stats()
		return err == nil && s.RedirectedBytes >= s0.RedirectedBytes+more, fmt.Sprintf("redirected %d more bytes (%v)", s.RedirectedBytes-s0.RedirectedBytes, err)
	})
}

// waitRetired waits until n more connections were handed back to plain TCP
// (their sockets out of the sockhash).
func waitRetired(t *testing.T, acc *accel.Accelerator, before accel.Status, n int) {
	t.Helper()
	waitFor(t, "the excluded connections to be retired", func() (bool, string) {
		s, err := acc.Status()
		return err == nil && s.Retired == before.Retired+uint64(n) && s.SockhashEntries == before.SockhashEntries-2*uint64(n),
			fmt.Sprintf("retired +%d, sockhash entries %d (before %d) (%v)", s.Retired-before.Retired, s.SockhashEntries, before.SockhashEntries, err)
	})
}

// Excluding a port that live connections use takes them off the fast path
// mid-transfer: every byte arrives intact both ways, neither end sees an
// error, and each connection is retired (plain TCP again). Bytes sent after
// that never reach sk_msg.
func TestExclusionReachesLiveConnections(t *testing.T) {
	const conns = 4
	n, tc, stop := liveTransfers(t, 251, 7501, conns)
	before := n.status(t)
	moved, err := n.acc.ApplyExclusions(accel.Exclusions{Ports: []uint16{7501}})
	if err != nil {
		t.Fatal(err)
	}
	if moved != conns {
		t.Errorf("took %d connections off the fast path, want %d", moved, conns)
	}
	waitRetired(t, n.acc, before, conns)
	// Retired: the sockets left the sockhash, so sends no longer run
	// sk_msg at all (neither redirected nor passed grows).
	s := n.stats(t)
	waitWritten(t, tc, 32<<20)
	if after := n.stats(t); after.RedirectedBytes != s.RedirectedBytes || after.PassedBytes != s.PassedBytes {
		t.Errorf("retired connections still ran through sk_msg: redirected +%d, passed +%d",
			after.RedirectedBytes-s.RedirectedBytes, after.PassedBytes-s.PassedBytes)
	}
	stop()

	// A second apply of the same exclusions finds nothing left to move.
	if moved, err := n.acc.ApplyExclusions(accel.Exclusions{Ports: []uint16{7501}}); err != nil || moved != 0 {
		t.Errorf("second apply: moved %d (%v), want 0", moved, err)
	}
}

// waitWritten waits until more bytes crossed the veth pair: the transfers
// go on over TCP.
func waitWritten(t *testing.T, tc twoContainers, more uint64) {
	t.Helper()
	w0 := tc.wireBytes(t)
	waitFor(t, "the transfers to go on over TCP", func() (bool, string) {
		w := tc.wireBytes(t)
		return w >= w0+more, fmt.Sprintf("%d more bytes on the wire", w-w0)
	})
}

// The same change under blocking Python peers (one thread per connection,
// blocking recv and sendall, no timeouts): a blocking reader asleep in recv
// while its connection leaves the fast path must see no EAGAIN or reset.
func TestExclusionReachesLiveBlockingPeers(t *testing.T) {
	n := newNode(t, nil)
	tc := newTwoContainers(t, 252)
	const conns, size = 8, 128 << 20
	cl, srv := blockingEcho(t, n.in(tc.client), n.in(tc.server), "10.252.0.2", 7502, conns, size)
	waitRedirected(t, n.acc, 16<<20)
	before := n.status(t)
	moved, err := n.acc.ApplyExclusions(accel.Exclusions{Ports: []uint16{7502}})
	if err != nil {
		t.Fatal(err)
	}
	checkPeers(t, conns, cl, srv)
	// The accepting end leaves the sockhash once it has read what was
	// redirected to it, which here is most of a bound's worth behind the
	// echo: a connection that ends first is closed, not retired.
	n.acc.WaitRetiringForTest()
	after := n.status(t)
	t.Logf("took %d connections off the fast path; retired +%d (the rest ended first)", moved, after.Retired-before.Retired)
	if moved == 0 {
		t.Error("no live connection was taken off the fast path: this test showed nothing")
	}
}

// A restart with a new exclusion, adopting the pins, reaches the
// connections the pins kept accelerating while no daemon ran.
func TestRestartWithExclusionReachesLiveConnections(t *testing.T) {
	const conns = 3
	n, tc, stop := liveTransfers(t, 253, 7503, conns)
	before := n.status(t)
	n.acc.Close()
	n.acc = testenv.Start(t, accel.Config{Cgroup: n.cg, PinDir: n.pin, MaxConns: 1024, BacklogBytes: 64 << 20, ExcludePorts: []uint16{7503}})
	if !n.acc.Adopted() {
		t.Fatal("the restart did not adopt the pins")
	}
	waitRetired(t, n.acc, before, conns)
	waitWritten(t, tc, 32<<20)
	stop()
}

// Excluded cgroups follow the path: a cgroup deleted and recreated (a
// restarted service) is a new cgroup with a new id, which the exclusion
// written earlier does not name; applying the exclusions again (a reload)
// resolves the path anew, excludes new connections from it and takes the
// ones it already has off the fast path.
func TestRecreatedExcludedCgroupAfterReload(t *testing.T) {
	n := newNode(t, wideBound)
	tc := newTwoContainers(t, 254)
	const mib = 1 << 20
	svcPath := n.cg.Path + "/svc"
	mk := func() cgroup.Target {
		t.Helper()
		if err := os.Mkdir(svcPath, 0o755); err != nil {
			t.Fatal(err)
		}
		cg, err := cgroup.ResolveIn(n.cg.Root, svcPath)
		if err != nil {
			t.Fatal(err)
		}
		return cg
	}
	rm := func() {
		if err := os.Remove(svcPath); err != nil {
			t.Error(err)
		}
	}
	svc := mk()
	if _, err := n.acc.ApplyExclusions(accel.Exclusions{Cgroups: []cgroup.Target{svc}}); err != nil {
		t.Fatal(err)
	}
	in := func(ns *testenv.Netns, cg cgroup.Target) testenv.Endpoint {
		return testenv.Endpoint{Netns: ns, Cgroup: &cg}
	}
	exchange := func(port int, seed uint64) accel.Stats {
		t.Helper()
		before := n.stats(t)
		addr := fmt.Sprintf("10.254.0.2:%d", port)
		ln := in(tc.server, svc).Listen(t, "tcp4", addr)
		testenv.ExchangeAll(t, testenv.Connect(t, n.in(tc.client), ln, "tcp4", addr, 1), mib, mib, seed)
		ln.Close()
		s := n.stats(t)
		s.ExcludedCgroup -= before.ExcludedCgroup
		s.RedirectedBytes -= before.RedirectedBytes
		return s
	}
	if s := exchange(7504, 1); s.ExcludedCgroup != 1 || s.RedirectedBytes != 0 {
		t.Fatalf("excluded cgroup: excluded_cgroup +%d, redirected %d bytes; want +1 and none", s.ExcludedCgroup, s.RedirectedBytes)
	}

	// The service restarts: same path, new cgroup.
	rm()
	svc = mk()
	t.Cleanup(rm)
	if s := exchange(7505, 3); s.ExcludedCgroup != 0 || s.RedirectedBytes == 0 {
		t.Errorf("recreated cgroup before the reload: excluded_cgroup +%d, redirected %d bytes; want it accelerated (the old id is gone)", s.ExcludedCgroup, s.RedirectedBytes)
	}
	// A connection of the recreated cgroup, live across the reload.
	ln := in(tc.server, svc).Listen(t, "tcp4", "10.254.0.2:7506")
	live := testenv.Connect(t, n.in(tc.client), ln, "tcp4", "10.254.0.2:7506", 1)
	stop := liveStreams(t, live)
	waitRedirected(t, n.acc, 16<<20)

	before := n.status(t)
	moved, err := n.acc.ApplyExclusions(accel.Exclusions{Cgroups: []cgroup.Target{{Path: svcPath, Root: n.cg.Root}}})
	if err != nil {
		t.Fatal(err)
	}
	if moved != 1 {
		t.Errorf("reload took %d live connections of the recreated cgroup off the fast path, want 1", moved)
	}
	waitRetired(t, n.acc, before, 1)
	stop()
	if s := exchange(7507, 5); s.ExcludedCgroup != 1 || s.RedirectedBytes != 0 {
		t.Errorf("recreated cgroup after the reload: excluded_cgroup +%d, redirected %d bytes; want +1 and none", s.ExcludedCgroup, s.RedirectedBytes)
	}
}

// Bytes redirected to an end that has not read them yet hold its
// retirement back (leaving the sockhash would free them); a restart in
// between picks the connection up again, and once the application reads,
// the connection is retired with every byte intact.
func TestExcludedConnectionWithUnreadBytesAcrossRestart(t *testing.T) {
	n := newNode(t, wideBound)
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7508")
	p := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7508", 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	sent := bytes.Repeat([]byte("unread"), 100000)
	if _, err := p.Client.Write(sent); err != nil {
		t.Fatal(err)
	}
	if s := n.stats(t); s.RedirectedBytes < uint64(len(sent)) {
		t.Fatalf("redirected %d bytes, want the %d just sent", s.RedirectedBytes, len(sent))
	}
	before := n.status(t)
	if moved, err := n.acc.ApplyExclusions(accel.Exclusions{Ports: []uint16{7508}}); err != nil || moved != 1 {
		t.Fatalf("apply: moved %d (%v), want 1", moved, err)
	}
	n.acc.Close()
	n.acc = testenv.Start(t, accel.Config{Cgroup: n.cg, PinDir: n.pin, MaxConns: 1024, BacklogBytes: 64 << 20, ExcludePorts: []uint16{7508}})
	if st := n.status(t); st.Retired != before.Retired || st.SockhashEntries != before.SockhashEntries {
		t.Fatalf("retired +%d, sockhash entries %d (before %d) with %d bytes unread: leaving the sockhash now would free them",
			st.Retired-before.Retired, st.SockhashEntries, before.SockhashEntries, len(sent))
	}
	got := make([]byte, len(sent))
	p.Server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(p.Server, got); err != nil || !bytes.Equal(got, sent) {
		t.Fatalf("read what was redirected before the exclusion: %v (intact: %v)", err, bytes.Equal(got, sent))
	}
	waitRetired(t, n.acc, before, 1)
	// Plain TCP both ways from here on.
	for _, dir := range [][2]*net.TCPConn{{p.Client, p.Server}, {p.Server, p.Client}} {
		go dir[0].Write(sent)
		dir[1].SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(dir[1], got); err != nil || !bytes.Equal(got, sent) {
			t.Fatalf("after retirement: %v (intact: %v)", err, bytes.Equal(got, sent))
		}
	}
}

// A reload's new GC interval reaches the running GC loop: started with an
// hour between passes, it runs passes at the new pace without a restart.
func TestGCIntervalChangesLive(t *testing.T) {
	n := newNode(t, nil)
	n.runGC(t, time.Hour)
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7509")
	// Held open to the end: a connection nobody references is closed by
	// Go's finalizers, and the GC stops once conntrack is empty.
	p := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7509", 1)[0] // wakes the GC
	defer p.Client.Close()
	defer p.Server.Close()
	n.acc.SetGCInterval(10 * time.Millisecond)
	waitFor(t, "the GC to run at the new interval", func() (bool, string) {
		s := n.status(t)
		return s.GCRuns >= 3, fmt.Sprintf("gc_runs %d", s.GCRuns)
	})
}
