//go:build linux

package accel_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

func (n *node) backlog(t *testing.T) accel.Backlog {
	t.Helper()
	b, err := n.backlogReader(t).Read()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// backlogReader opens repeated backlog reads of the node's sockhash, closed
// when the test ends.
func (n *node) backlogReader(t *testing.T) *accel.BacklogReader {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(n.pin, "sa_sockhash"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	br, err := accel.OpenBacklog(m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	return br
}

// The trap the teardown is designed around, confirmed on this kernel: a
// socket that leaves the sockhash loses the redirected bytes queued for it.
func TestKernelFreesQueuedBytesWhenSocketLeavesSockhash(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7201")
	p := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7201", 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()

	sent, err := testenv.WriteStream(p.Client, 1<<20, 1, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	p.Client.CloseWrite()
	if b := n.backlog(t); b.Bytes != 1<<20 || b.Sockets != 1 {
		t.Fatalf("backlog %+v, want 1 MiB queued on one socket", b)
	}

	// Remove the server socket from the sockhash, as freeing the map would.
	m, err := ebpf.LoadPinnedMap(filepath.Join(n.pin, "sa_sockhash"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var key, next [44]byte
	var serverKey *[44]byte
	var cur any
	for m.NextKey(cur, &next) == nil {
		k := next
		// local port (network order) at offset 40
		if k[40] == 7201>>8 && k[41] == 7201&0xff {
			serverKey = &k
		}
		key = next
		cur = &key
	}
	if serverKey == nil {
		t.Fatal("server socket not found in the sockhash")
	}
	if err := m.Delete(serverKey); err != nil {
		t.Fatal(err)
	}

	p.Server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := testenv.ReadStream(p.Server)
	t.Logf("sent %v; after unlinking the reader got %v (err %v)", sent, got, err)
	if got.N >= sent.N {
		t.Fatalf("no bytes lost on unlink: the kernel no longer frees queued data, revisit the drain in Cleanup")
	}
}

func TestCleanupUnderLoadLosesNothing(t *testing.T) {
	n := newNode(t, nil)
	tc := newTwoContainers(t, 221)
	ln := n.in(tc.server).Listen(t, "tcp4", "10.221.0.2:7202")
	const conns, size = 6, 48 << 20
	pairs := testenv.Connect(t, n.in(tc.client), ln, "tcp4", "10.221.0.2:7202", conns)
	results := testenv.SlowStreams(pairs, size, 300*time.Microsecond)

	waitFor(t, "redirected bytes to queue up at the readers", func() (bool, string) {
		b := n.backlog(t)
		return b.Bytes > 4<<20, "backlog too small"
	})
	queued := n.backlog(t)
	start := time.Now()
	if err := accel.CleanupWith(context.Background(), n.pin, zap.NewNop(), accel.CleanupOptions{DrainTimeout: time.Minute}); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	t.Logf("cleanup with %d bytes queued on %d sockets drained in %s", queued.Bytes, queued.Sockets, time.Since(start).Round(time.Millisecond))

	for range conns {
		r := <-results
		if r.Err != nil || r.Got != r.Sent {
			t.Errorf("stream across cleanup: sent %v, got %v, err %v", r.Sent, r.Got, r.Err)
		}
	}
	if _, err := os.Stat(n.pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir %s still exists after cleanup", n.pin)
	}
	if got := testenv.SockOpsPrograms(t, n.cg.Path); got != 0 {
		t.Errorf("%d sock_ops programs on the cgroup after cleanup", got)
	}
	// New connections still work, on plain TCP: nothing of ours is left to
	// see them.
	more := testenv.Connect(t, n.in(tc.client), ln, "tcp4", "10.221.0.2:7202", 2)
	wireBefore := tc.wireBytes(t)
	testenv.ExchangeAll(t, more, 2<<20, 2<<20, 9)
	if wire := tc.wireBytes(t) - wireBefore; wire < 8<<20 {
		t.Errorf("new connection moved only %d bytes over the veth: it was still accelerated", wire)
	}
}

// A reader that does not read holds cleanup back, with nothing lost; once
// it reads, a second cleanup completes.
func TestCleanupWaitsForUnreadBytes(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7203")
	p := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7203", 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	sent, err := testenv.WriteStream(p.Client, 2<<20, 3, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	p.Client.CloseWrite()

	err = accel.CleanupWith(context.Background(), n.pin, zap.NewNop(), accel.CleanupOptions{DrainTimeout: 300 * time.Millisecond})
	if !errors.Is(err, accel.ErrDrainTimeout) {
		t.Fatalf("cleanup with an unread 2 MiB: %v, want ErrDrainTimeout", err)
	}
	t.Logf("cleanup said: %v", err)
	if _, err := os.Stat(filepath.Join(n.pin, "sa_sockhash")); err != nil {
		t.Fatalf("sockhash unpinned although bytes were unread: %v", err)
	}

	p.Server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := testenv.ReadStream(p.Server)
	if err != nil || got != sent {
		t.Fatalf("after a timed-out cleanup: sent %v, got %v, err %v", sent, got, err)
	}
	if err := accel.CleanupWith(context.Background(), n.pin, zap.NewNop(), accel.CleanupOptions{DrainTimeout: time.Second}); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
	if _, err := os.Stat(n.pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir still there after the second cleanup")
	}
}
