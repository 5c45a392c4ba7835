//go:build linux

package accel_test

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

// writeNonBlocking writes buf with raw write(2) on the non-blocking socket.
// On EAGAIN it returns to Go's netpoller, which waits for EPOLLOUT: a lost
// wake-up would hang here (and fail on the deadline).
func writeNonBlocking(c *net.TCPConn, buf []byte, eagain *atomic.Int64) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	for len(buf) > 0 {
		var werr error
		err := raw.Write(func(fd uintptr) bool {
			n, err := unix.Write(int(fd), buf)
			if errors.Is(err, unix.EAGAIN) {
				eagain.Add(1)
				return false // wait for EPOLLOUT
			}
			if n > 0 {
				buf = buf[n:]
			}
			werr = err
			return true
		})
		if err != nil {
			return err
		}
		if werr != nil {
			return werr
		}
	}
	return nil
}

func TestBacklogBoundGivesBackpressure(t *testing.T) {
	const bound = 256 << 10
	n := newNode(t, func(c *accel.Config) { c.BacklogBytes = bound })
	ns := testenv.NewNetns(t)
	ln := n.in(ns).Listen(t, "tcp4", "127.0.0.1:7301")
	p := testenv.Connect(t, n.in(ns), ln, "tcp4", "127.0.0.1:7301", 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	deadline := time.Now().Add(2 * time.Minute)
	p.Client.SetDeadline(deadline)
	p.Server.SetDeadline(deadline)

	// A slow reader: 16 KiB per millisecond.
	var got testenv.Digest
	var readErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		got, readErr = testenv.ReadStream(slowReader{p.Server, 16 << 10, time.Millisecond})
	}()

	// Sample the receiver's unread redirected bytes while the writer runs.
	br := n.backlogReader(t)
	var maxQueued atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if b, err := br.Read(); err == nil && b.Bytes > maxQueued.Load() {
				maxQueued.Store(b.Bytes)
			}
		}
	}()

	const total = 16 << 20
	var eagain atomic.Int64
	w := &digestWriter{}
	chunk := make([]byte, 64<<10)
	for sent := 0; sent < total; sent += len(chunk) {
		for i := range chunk {
			chunk[i] = byte(sent/len(chunk) + i)
		}
		w.add(chunk)
		if err := writeNonBlocking(p.Client, chunk, &eagain); err != nil {
			t.Fatalf("write after %d bytes: %v", sent, err)
		}
	}
	p.Client.CloseWrite()
	wg.Wait()
	close(stop)
	<-sampled

	s := n.stats(t)
	t.Logf("writer saw EAGAIN %d times; max unread redirected bytes %d (bound %d); redirected %d, passed %d; off_backlog %d, resumed %d",
		eagain.Load(), maxQueued.Load(), bound, s.RedirectedBytes, s.PassedBytes, s.OffBacklog, s.Resumed)
	if readErr != nil || got != w.digest() {
		t.Fatalf("reader got %v (err %v), writer sent %v", got, readErr, w.digest())
	}
	if eagain.Load() == 0 {
		t.Error("the writer never saw EAGAIN: no backpressure")
	}
	if maxQueued.Load() == 0 {
		t.Error("never saw redirected bytes queued: the sampler missed the backlog")
	}
	if maxQueued.Load() > bound {
		t.Errorf("unread redirected bytes reached %d, above the bound %d", maxQueued.Load(), bound)
	}
	if s.OffBacklog == 0 || s.RedirectedBytes == 0 || s.PassedBytes == 0 {
		t.Errorf("off_backlog %d, redirected %d, passed %d: want sends handed to TCP past the bound", s.OffBacklog, s.RedirectedBytes, s.PassedBytes)
	}
}

type slowReader struct {
	c     *net.TCPConn
	max   int
	pause time.Duration
}

func (r slowReader) Read(p []byte) (int, error) {
	time.Sleep(r.pause)
	if len(p) > r.max {
		p = p[:r.max]
	}
	return r.c.Read(p)
}

type digestWriter struct {
	buf []byte
}

func (d *digestWriter) add(p []byte) { d.buf = append(d.buf, p...) }

func (d *digestWriter) digest() testenv.Digest {
	got, _ := testenv.ReadStream(bytes.NewReader(d.buf))
	return got
}
