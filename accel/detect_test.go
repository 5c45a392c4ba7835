//go:build linux

package accel_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

// splice(2) reads only the TCP receive queue. When an application first
// splices from a socket that still has redirected bytes unread, those bytes
// can only come out through recv, and bytes sent through TCP from then on
// would be spliced ahead of them. So the connection keeps redirecting until
// the splicing end has read them, and only then leaves the fast path: no
// byte is lost or reordered, and splice works from that point on.
func TestSpliceWithRedirectedBytesQueued(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	ep := n.in(ns)
	ln := ep.Listen(t, "tcp4", "127.0.0.1:0")
	p := testenv.Connect(t, ep, ln, "tcp4", ln.Addr().String(), 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	rng := rand.New(rand.NewPCG(7, 7))
	chunk := func() []byte {
		b := make([]byte, 4096)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	before := n.stats(t)

	first := chunk()
	p.Client.Write(first)
	waitReadable(t, p.Server)
	pipe := newPipe(t)
	if n, err := spliceOnce(t, p.Server, pipe); n > 0 || err != unix.EAGAIN {
		t.Fatalf("splice with only redirected bytes queued: %d %v, want EAGAIN (README matrix)", n, err)
	}
	// The splice is seen; the first chunk is still unread, so the second
	// must queue behind it rather than take TCP.
	second := chunk()
	p.Client.Write(second)
	if s := n.stats(t); s.OffSplice != before.OffSplice || s.RedirectedMsgs-before.RedirectedMsgs != 2 {
		t.Fatalf("with redirected bytes unread: off_splice +%d, redirected +%d; want +0 and +2",
			s.OffSplice-before.OffSplice, s.RedirectedMsgs-before.RedirectedMsgs)
	}
	got := make([]byte, 2*4096)
	if _, err := io.ReadFull(p.Server, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(first, second...)) {
		t.Fatal("recv after the first splice returned the queued bytes out of order")
	}

	// Everything redirected was read: the next send leaves the fast path
	// and splice reads it.
	third := chunk()
	p.Client.Write(third)
	waitReadable(t, p.Server)
	if n, err := spliceOnce(t, p.Server, pipe); n != int64(len(third)) || err != nil {
		t.Fatalf("splice after the queue drained: %d %v, want %d", n, err, len(third))
	}
	out := make([]byte, len(third))
	if n, _ := unix.Read(pipe[0], out); n != len(third) || !bytes.Equal(out, third) {
		t.Fatal("spliced bytes differ from what was sent")
	}
	s := n.stats(t)
	if s.OffSplice-before.OffSplice != 1 || s.PassedMsgs-before.PassedMsgs != 1 {
		t.Fatalf("off_splice +%d, passed +%d; want +1 and +1", s.OffSplice-before.OffSplice, s.PassedMsgs-before.PassedMsgs)
	}
}
