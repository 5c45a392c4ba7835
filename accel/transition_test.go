//go:build linux

package accel_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
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
	return []string{"python3", script}
}

// blockingEcho runs conns duplex transfers of size bytes each way between
// blocking peers and returns the two programs, started.
func blockingEcho(t *testing.T, client, server testenv.Endpoint, addr string, port, conns int, size int64) (cl, srv *testenv.Process) {
	t.Helper()
	py := blockPeer(t)
	srv = server.Start(t, append(py, "echo", addr, fmt.Sprint(port), fmt.Sprint(conns))...)
	srv.WaitOutput(t, "listening")
	cl = client.Start(t, append(py, "duplex", addr, fmt.Sprint(port), fmt.Sprint(conns), fmt.Sprint(size))...)
	return cl, srv
}

// checkPeers waits for both programs and fails on any connection that did
// not end with every byte echoed intact.
func checkPeers(t *testing.T, conns int, procs ...*testenv.Process) {
	t.Helper()
	for _, p := range procs {
		err := p.Wait(2 * time.Minute)
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
	err := accel.CleanupWith(context.Background(), n.pin, zap.NewNop(), accel.CleanupOptions{DrainTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	checkPeers(t, conns, cl, srv)
}
