//go:build linux

package accel_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

func (n *node) status(t *testing.T) accel.Status {
	t.Helper()
	s, err := n.acc.Status()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runGC runs the daemon's GC loop for the rest of the test.
func (n *node) runGC(t *testing.T, interval time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.acc.RunGC(ctx, interval) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gc loop: %v", err)
		}
	})
}

type closeKind int

const (
	cleanClose closeKind = iota
	resetClose           // SO_LINGER 0: RST
	halfClose            // client shuts down writing, server answers, both close
)

// churn opens, uses and closes one connection in the given way.
func churn(c *net.TCPConn, kind closeKind) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	msg := []byte("ping ping ping")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	switch kind {
	case cleanClose:
		buf := make([]byte, len(msg))
		_, err := io.ReadFull(c, buf)
		return err
	case resetClose:
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		return c.SetLinger(0)
	default:
		if err := c.CloseWrite(); err != nil {
			return err
		}
		got, err := io.ReadAll(c)
		if err == nil && string(got) != string(msg) {
			err = fmt.Errorf("half-close reply %q", got)
		}
		return err
	}
}

// echo answers every connection: it echoes until EOF or reset, then closes.
func echo(ln *net.TCPListener) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			// A read/write loop, not io.Copy: TCPConn.ReadFrom splices,
			// and splice(2) cannot read redirected data (see README).
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					if err == io.EOF {
						c.CloseWrite()
					}
					return
				}
			}
		}()
	}
}

func TestConntrackChurn(t *testing.T) {
	n := newNode(t, func(c *accel.Config) { c.MaxConns = 4096 })
	// A GC that would run once a minute: the close callback must leave it
	// nothing to do.
	n.runGC(t, time.Minute)
	ns := testenv.NewNetns(t)
	ns.Run(t, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7101")
	go echo(ln)

	// Meanwhile, read the backlog the way cleanup's drain does: sockets
	// leaving the sockhash under the walk must not make a read fail.
	br := n.backlogReader(t)
	var reads, readErrs atomic.Int64
	var firstReadErr atomic.Value
	stopReads := make(chan struct{})
	readsDone := make(chan struct{})
	go func() {
		defer close(readsDone)
		for {
			select {
			case <-stopReads:
				return
			default:
			}
			if _, err := br.Read(); err != nil {
				readErrs.Add(1)
				firstReadErr.CompareAndSwap(nil, err)
			}
			reads.Add(1)
		}
	}()

	const total, workers = 20000, 16
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	// The whole run inside the cgroup; each worker pins its own thread
	// into the namespace once instead of per connection.
	testenv.InCgroup(t, n.cg, func() {
		for range workers {
			wg.Add(1)
			go ns.Do(t, func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= total {
						return
					}
					c, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7101})
					if err == nil {
						err = churn(c, closeKind(i%3))
					}
					if err != nil {
						errs <- fmt.Errorf("connection %d: %w", i, err)
						return
					}
				}
			})
		}
		wg.Wait()
	})
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	close(stopReads)
	<-readsDone
	t.Logf("%d backlog reads during the churn", reads.Load())
	if reads.Load() == 0 {
		t.Error("no backlog read completed during the churn")
	}
	if readErrs.Load() != 0 {
		t.Errorf("%d of %d backlog reads failed under churn, first: %v", readErrs.Load(), reads.Load(), firstReadErr.Load())
	}
	waitFor(t, "sockhash and conntrack to empty", func() (bool, string) {
		s := n.status(t)
		return s.SockhashEntries == 0 && s.Conntrack.Entries == 0,
			fmt.Sprintf("sockhash %d conntrack %d", s.SockhashEntries, s.Conntrack.Entries)
	})
	s := n.status(t)
	t.Logf("%d connections in %s: established %d inserted %d conntrack created %d closed_direct %d closed_gc %d gc_runs %d redirected %d msgs",
		total, time.Since(start).Round(time.Millisecond), s.Established, s.Inserted, s.CtCreated, s.ClosedDirect, s.ClosedGC, s.GCRuns, s.RedirectedMsgs)
	if s.CtCreated != total || s.ClosedDirect != total {
		t.Errorf("conntrack created %d, closed_direct %d; want %d each", s.CtCreated, s.ClosedDirect, total)
	}
	if s.ClosedGC != 0 || s.GCRuns != 0 {
		t.Errorf("closed_gc %d gc_runs %d; the close callback should have left the GC nothing", s.ClosedGC, s.GCRuns)
	}
	if s.RedirectedMsgs == 0 {
		t.Error("churned connections were not accelerated")
	}
}

// swapSockOps replaces the program behind the pinned sock_ops link with one
// that does nothing, as a newer or foreign program would: closes that happen
// meanwhile are never reported to sockaccel.
func swapSockOps(t *testing.T, pinDir string) (restore func()) {
	t.Helper()
	noop, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SockOps,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, "links", "sockops"), nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	orig, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Update(noop); err != nil {
		t.Fatal(err)
	}
	return func() {
		defer l.Close()
		defer noop.Close()
		defer orig.Close()
		if err := l.Update(orig); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConntrackMissedClose(t *testing.T) {
	n := newNode(t, wideBound)
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7102")
	pairs := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7102", 2)
	idle, doomed := pairs[0], pairs[1]
	if s := n.status(t); s.Conntrack.Entries != 2 {
		t.Fatalf("conntrack has %d entries for 2 connections", s.Conntrack.Entries)
	}

	restore := swapSockOps(t, n.pin)
	doomed.Client.Close()
	doomed.Server.Close()
	waitFor(t, "the closed sockets to leave the sockhash", func() (bool, string) {
		s := n.status(t)
		return s.SockhashEntries == 2, fmt.Sprintf("%d entries", s.SockhashEntries)
	})
	restore()
	s := n.status(t)
	if s.Conntrack.Entries != 2 || s.ClosedDirect != 0 {
		t.Fatalf("the close was reported after all: entries %d closed_direct %d", s.Conntrack.Entries, s.ClosedDirect)
	}

	// The GC finds the dead entry, and only it, however often it runs.
	n.runGC(t, 20*time.Millisecond)
	waitFor(t, "the GC to remove the dead entry and run again", func() (bool, string) {
		s := n.status(t)
		return s.ClosedGC == 1 && s.GCRuns >= 5, fmt.Sprintf("closed_gc %d gc_runs %d", s.ClosedGC, s.GCRuns)
	})
	conns, err := n.acc.Conns()
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 1 || conns[0].Client.String() != idle.Client.LocalAddr().String() {
		t.Fatalf("conntrack after GC: %+v; want only the idle connection %s", conns, idle.Client.LocalAddr())
	}
	// The idle connection is untouched and still redirected.
	before := n.stats(t)
	testenv.ExchangeAll(t, []testenv.Pair{idle}, 1<<20, 1<<20, 3)
	if after := n.stats(t); after.RedirectedBytes-before.RedirectedBytes != 2<<20 {
		t.Errorf("idle connection redirected %d bytes after GC, want %d", after.RedirectedBytes-before.RedirectedBytes, 2<<20)
	}
	waitFor(t, "conntrack to empty after the last close", func() (bool, string) {
		s := n.status(t)
		return s.Conntrack.Entries == 0 && s.ClosedDirect == 1, fmt.Sprintf("entries %d closed_direct %d", s.Conntrack.Entries, s.ClosedDirect)
	})
}

// With conntrack empty the GC sleeps on the wake-up ring buffer: no runs at
// all, however short its interval.
func TestGCIdleDoesNothing(t *testing.T) {
	n := newNode(t, nil)
	n.runGC(t, 10*time.Millisecond)
	// Not a wait for a condition: absence needs a window, here 100 of the
	// GC's intervals, in which a GC that did not park would have run.
	time.Sleep(time.Second)
	if s := n.status(t); s.GCRuns != 0 {
		t.Fatalf("gc ran %d times with conntrack empty", s.GCRuns)
	}

	// A connection wakes it; it runs while the entry exists...
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7103")
	pairs := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7103", 1)
	waitFor(t, "the GC to wake", func() (bool, string) {
		s := n.status(t)
		return s.GCRuns >= 3, fmt.Sprintf("gc_runs %d", s.GCRuns)
	})
	// ...and goes back to sleep once the close empties the map.
	pairs[0].Client.Close()
	pairs[0].Server.Close()
	var settled uint64
	waitFor(t, "the GC to go idle", func() (bool, string) {
		s := n.status(t)
		if s.Conntrack.Entries != 0 {
			return false, "conntrack not empty yet"
		}
		time.Sleep(100 * time.Millisecond) // several intervals
		again := n.status(t)
		settled = again.GCRuns
		return again.GCRuns == s.GCRuns, fmt.Sprintf("gc_runs %d -> %d", s.GCRuns, again.GCRuns)
	})
	time.Sleep(time.Second) // a window for absence, as above
	if s := n.status(t); s.GCRuns != settled || s.ClosedGC != 0 {
		t.Errorf("idle GC kept running: gc_runs %d -> %d, closed_gc %d", settled, s.GCRuns, s.ClosedGC)
	}
}

func TestConntrackDisabled(t *testing.T) {
	n := newNode(t, func(c *accel.Config) { c.DisableConntrack = true })
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7104")
	pairs := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7104", 2)
	testenv.ExchangeAll(t, pairs, 1<<20, 1<<20, 4)
	s := n.status(t)
	if s.Conntrack.Enabled || s.CtCreated != 0 || s.Conntrack.Entries != 0 {
		t.Errorf("conntrack disabled but: %+v", s.Conntrack)
	}
	if s.RedirectedBytes != 4<<20 {
		t.Errorf("redirected %d bytes, want %d", s.RedirectedBytes, 4<<20)
	}
}

func TestConnsReportsBytesPerDirection(t *testing.T) {
	n := newNode(t, wideBound)
	tc := newTwoContainers(t, 216)
	ln := n.in(tc.server).Listen(t, "tcp", "[::]:7105")
	pairs := testenv.Connect(t, n.in(tc.client), ln, "tcp6", "[fd00:216::2]:7105", 1)
	p := pairs[0]
	clientAddr := p.Client.LocalAddr().String()
	// Write without closing so the entry is still there to read.
	if _, err := testenv.WriteStream(p.Client, 300000, 1, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := testenv.WriteStream(p.Server, 70000, 2, 4096); err != nil {
		t.Fatal(err)
	}
	conns, err := n.acc.Conns()
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 1 {
		t.Fatalf("conns = %+v, want one", conns)
	}
	c := conns[0]
	if c.Client.String() != clientAddr || c.Server.String() != "[fd00:216::2]:7105" {
		t.Errorf("endpoints %s -> %s, want %s -> [fd00:216::2]:7105", c.Client, c.Server, clientAddr)
	}
	if c.BytesC2S != 300000 || c.BytesS2C != 70000 || !c.ClientLocal || !c.ServerLocal || c.State != "established" {
		t.Errorf("entry %+v: want 300000 bytes client->server, 70000 back, both ends local, established", c)
	}
	if len(c.CgroupIDs) != 2 || c.CgroupIDs[0] != c.CgroupIDs[1] || c.CgroupIDs[0] == 0 {
		t.Errorf("cgroup ids %v, want the test cgroup twice", c.CgroupIDs)
	}
	p.Client.Close()
	p.Server.Close()
}
