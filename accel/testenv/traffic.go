//go:build linux

package testenv

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/cgroup"
)

// MaxChunk is the largest single write the traffic generator issues.
const MaxChunk = 1 << 20

// pool is the random byte source writes are cut from; which slice of it each
// write takes is itself random, so streams differ per seed.
var pool = func() []byte {
	b := make([]byte, 2*MaxChunk)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

// Digest identifies a byte stream: its length and SHA-256.
type Digest struct {
	N   int64
	Sum [32]byte
}

func (d Digest) String() string { return fmt.Sprintf("%d bytes sha256=%x", d.N, d.Sum[:6]) }

// WriteStream writes size bytes to w in writes of random length between 1
// byte and maxChunk, and returns the digest of what it wrote.
func WriteStream(w io.Writer, size int64, seed uint64, maxChunk int) (Digest, error) {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	h := sha256.New()
	var d Digest
	for d.N < size {
		n := 1 + r.IntN(maxChunk)
		if rem := size - d.N; int64(n) > rem {
			n = int(rem)
		}
		off := r.IntN(len(pool) - n + 1)
		chunk := pool[off : off+n]
		m, err := w.Write(chunk)
		h.Write(chunk[:m])
		d.N += int64(m)
		if err != nil {
			copy(d.Sum[:], h.Sum(nil))
			return d, fmt.Errorf("write after %d bytes: %w", d.N, err)
		}
	}
	copy(d.Sum[:], h.Sum(nil))
	return d, nil
}

// ReadStream reads r to EOF and returns the digest of what it read.
func ReadStream(r io.Reader) (Digest, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	d := Digest{N: n}
	copy(d.Sum[:], h.Sum(nil))
	if err != nil {
		return d, fmt.Errorf("read after %d bytes: %w", n, err)
	}
	return d, nil
}

// Mode orders the two directions of an exchange.
type Mode int

const (
	// Concurrent: both ends write and read at once; each half-closes when
	// done writing.
	Concurrent Mode = iota
	// ClientFirst: the client writes everything and half-closes; the
	// server reads to EOF, then answers and closes.
	ClientFirst
	// ServerFirst: the mirror image of ClientFirst.
	ServerFirst
)

func (m Mode) String() string {
	return [...]string{"concurrent", "client-first", "server-first"}[m]
}

// Exchange moves up bytes client->server and down bytes server->client
// over one connection and checks that each direction arrived complete, once
// and in order, up to EOF. Both conns are closed on return.
func Exchange(client, server *net.TCPConn, up, down int64, seed uint64, mode Mode) error {
	return exchange(client, func() (*net.TCPConn, error) { return server, nil }, up, down, seed, mode)
}

// exchange is Exchange with the server end supplied late: in Concurrent
// mode the client starts writing before the server end is known, as a client
// that streams from its first moment does.
func exchange(client *net.TCPConn, serverEnd func() (*net.TCPConn, error), up, down int64, seed uint64, mode Mode) error {
	defer client.Close()
	// A stuck connection is a failure, not a hang.
	deadline := time.Now().Add(2 * time.Minute)
	client.SetDeadline(deadline)

	type result struct {
		d   Digest
		err error
	}
	send := func(c *net.TCPConn, size int64, s uint64) result {
		d, err := WriteStream(c, size, s, MaxChunk)
		if err == nil {
			err = c.CloseWrite()
		}
		return result{d, err}
	}
	recv := func(c *net.TCPConn) result {
		d, err := ReadStream(c)
		return result{d, err}
	}
	var sentUp, sentDown, gotUp, gotDown result
	var wg sync.WaitGroup
	var server *net.TCPConn
	getServer := func() error {
		var err error
		if server, err = serverEnd(); err != nil {
			return fmt.Errorf("server end: %w", err)
		}
		server.SetDeadline(deadline)
		return nil
	}
	switch mode {
	case Concurrent:
		wg.Add(2)
		go func() { defer wg.Done(); sentUp = send(client, up, seed) }()
		go func() { defer wg.Done(); gotDown = recv(client) }()
		if err := getServer(); err != nil {
			client.Close()
			wg.Wait()
			return err
		}
		wg.Add(2)
		go func() { defer wg.Done(); sentDown = send(server, down, seed+1) }()
		go func() { defer wg.Done(); gotUp = recv(server) }()
		wg.Wait()
	case ClientFirst:
		if err := getServer(); err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); gotUp = recv(server); sentDown = send(server, down, seed+1) }()
		sentUp = send(client, up, seed)
		gotDown = recv(client)
		wg.Wait()
	case ServerFirst:
		if err := getServer(); err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); gotDown = recv(client); sentUp = send(client, up, seed) }()
		sentDown = send(server, down, seed+1)
		gotUp = recv(server)
		wg.Wait()
	}
	server.Close()
	var errs []error
	for _, r := range []struct {
		what string
		res  result
	}{{"client send", sentUp}, {"server send", sentDown}, {"server recv", gotUp}, {"client recv", gotDown}} {
		if r.res.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.what, r.res.err))
		}
	}
	if gotUp.d != sentUp.d {
		errs = append(errs, fmt.Errorf("client->server: sent %v, received %v", sentUp.d, gotUp.d))
	}
	if gotDown.d != sentDown.d {
		errs = append(errs, fmt.Errorf("server->client: sent %v, received %v", sentDown.d, gotDown.d))
	}
	return errors.Join(errs...)
}

// StreamOnConnect dials n connections from client to ln (at raddr); each
// client starts streaming the moment connect returns, before its server end
// is accepted. Every exchange is checked as in Exchange (Concurrent mode).
func StreamOnConnect(t testing.TB, client Endpoint, ln *net.TCPListener, network, raddr string, n int, up, down int64, seed uint64) int64 {
	t.Helper()
	var mu sync.Mutex
	waiting := make(map[string]chan *net.TCPConn, n)
	slot := func(addr string) chan *net.TCPConn {
		mu.Lock()
		defer mu.Unlock()
		ch, ok := waiting[addr]
		if !ok {
			ch = make(chan *net.TCPConn, 1)
			waiting[addr] = ch
		}
		return ch
	}
	go func() {
		for i := 0; i < n; i++ {
			s, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			slot(s.RemoteAddr().String()) <- s
		}
	}()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		c, err := client.Dial(t, network, "", raddr)
		if err != nil {
			t.Fatalf("dial %s (connection %d): %v", raddr, i, err)
		}
		ch := slot(c.LocalAddr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			serverEnd := func() (*net.TCPConn, error) {
				select {
				case s := <-ch:
					return s, nil
				case <-time.After(time.Minute):
					return nil, errors.New("not accepted within a minute")
				}
			}
			if err := exchange(c, serverEnd, up, down, seed+uint64(i)*2, Concurrent); err != nil {
				errs[i] = fmt.Errorf("connection %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return int64(n) * (up + down)
}

// Endpoint says where sockets are created: in which namespace and, if Cgroup
// is set, charged to which cgroup.
type Endpoint struct {
	Netns  *Netns
	Cgroup *cgroup.Target
}

// Do runs f with sockets it creates placed in e's namespace and cgroup.
func (e Endpoint) Do(t testing.TB, f func()) {
	t.Helper()
	inNS := func() {
		if e.Netns == nil {
			f()
			return
		}
		e.Netns.Do(t, f)
	}
	if e.Cgroup == nil {
		inNS()
		return
	}
	InCgroup(t, *e.Cgroup, inNS)
}

// Listen opens a TCP listener at e; closed at cleanup.
func (e Endpoint) Listen(t testing.TB, network, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	var err error
	e.Do(t, func() { ln, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// Dial connects from e to raddr, from laddr if it is not empty.
func (e Endpoint) Dial(t testing.TB, network, laddr, raddr string) (*net.TCPConn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 30 * time.Second}
	if laddr != "" {
		la, err := net.ResolveTCPAddr(network, laddr)
		if err != nil {
			return nil, err
		}
		d.LocalAddr = la
	}
	var c net.Conn
	var err error
	e.Do(t, func() { c, err = d.Dial(network, raddr) })
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Pair is one connection seen from both ends.
type Pair struct {
	Client, Server *net.TCPConn
}

// Connect opens n connections from client to ln (at raddr) and pairs each
// with its accepted end.
func Connect(t testing.TB, client Endpoint, ln *net.TCPListener, network, raddr string, n int) []Pair {
	t.Helper()
	accepted := make(chan *net.TCPConn, n)
	acceptErr := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			c, err := ln.AcceptTCP()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	clients := make(map[string]*net.TCPConn, n)
	for i := 0; i < n; i++ {
		c, err := client.Dial(t, network, "", raddr)
		if err != nil {
			t.Fatalf("dial %s (connection %d): %v", raddr, i, err)
		}
		clients[c.LocalAddr().String()] = c
	}
	pairs := make([]Pair, 0, n)
	for i := 0; i < n; i++ {
		select {
		case s := <-accepted:
			c, ok := clients[s.RemoteAddr().String()]
			if !ok {
				t.Fatalf("accepted %s matches no client", s.RemoteAddr())
			}
			pairs = append(pairs, Pair{Client: c, Server: s})
		case err := <-acceptErr:
			t.Fatalf("accept: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("accepted %d of %d connections", i, n)
		}
	}
	return pairs
}

// ExchangeAll runs Exchange on every pair at once, cycling through the
// modes, and returns the total payload moved.
func ExchangeAll(t testing.TB, pairs []Pair, up, down int64, seed uint64) int64 {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(pairs))
	for i, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mode := Mode(i % 3)
			if err := Exchange(p.Client, p.Server, up, down, seed+uint64(i)*2, mode); err != nil {
				errs[i] = fmt.Errorf("connection %d (%s): %w", i, mode, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return int64(len(pairs)) * (up + down)
}

// throttled reads at most 64 KiB at a time and pauses before each read, so
// redirected bytes queue up at the receiver and a transfer lasts a while.
type throttled struct {
	r     io.Reader
	pause time.Duration
}

func (t throttled) Read(p []byte) (int, error) {
	time.Sleep(t.pause)
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	return t.r.Read(p)
}

// StreamResult is one one-way stream's outcome.
type StreamResult struct {
	Sent, Got Digest
	Err       error
}

// SlowStreams sends size bytes client->server on every pair while each server
// reads slowly (pause before every read of up to 64 KiB). A result arrives
// on the channel when each stream reached EOF; both ends are then closed.
func SlowStreams(pairs []Pair, size int64, pause time.Duration) <-chan StreamResult {
	out := make(chan StreamResult, len(pairs))
	for i, p := range pairs {
		go func() {
			var r StreamResult
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.Server.SetReadDeadline(time.Now().Add(5 * time.Minute))
				r.Got, r.Err = ReadStream(throttled{p.Server, pause})
			}()
			sent, err := WriteStream(p.Client, size, uint64(i)+100, MaxChunk)
			if err == nil {
				err = p.Client.CloseWrite()
			}
			r.Sent = sent
			wg.Wait()
			if r.Err == nil {
				r.Err = err
			}
			p.Client.Close()
			p.Server.Close()
			out <- r
		}()
	}
	return out
}
