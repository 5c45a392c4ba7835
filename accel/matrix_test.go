//go:build linux

package accel_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

// A behaviour runs on one fresh connection and reports what the application
// saw: return values, errors, bytes. The matrix runs each over plain TCP and
// over an accelerated connection, on veth and loopback, IPv4 and IPv6, and
// compares.
type behaviour struct {
	name string
	run  func(t *testing.T, p testenv.Pair) string
	// differs documents a known difference of the kernel's redirect path
	// that sockaccel cannot yet keep off the fast path on kernels without
	// kprobes or fentry (this one): the test asserts the difference is
	// still exactly what the README says, so a kernel fix shows up here.
	differs string
}

func errName(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, unix.ECONNRESET):
		return "ECONNRESET"
	case errors.Is(err, unix.EPIPE):
		return "EPIPE"
	case errors.Is(err, unix.EAGAIN):
		return "EAGAIN"
	case errors.Is(err, unix.ENOTCONN):
		return "ENOTCONN"
	}
	return err.Error()
}

// recvRaw calls recvfrom(2) once with flags on the socket, blocking (or not)
// as the flags say, without Go's retry loop.
func recvRaw(t *testing.T, c *net.TCPConn, size, flags int) (int, []byte, error) {
	t.Helper()
	buf := make([]byte, size)
	var n int
	var rerr error
	rawFD(t, c, func(fd int) {
		n, _, rerr = unix.Recvfrom(fd, buf, flags)
	})
	if n < 0 {
		n = 0
	}
	return n, buf[:n], rerr
}

func waitReadable(t *testing.T, c *net.TCPConn) {
	t.Helper()
	if !readable(t, c, 5*time.Second) {
		t.Fatal("peer data never became readable")
	}
}

var behaviours = []behaviour{
	{name: "bulk both ways with half-close", run: func(t *testing.T, p testenv.Pair) string {
		return fmt.Sprint(testenv.Exchange(p.Client, p.Server, 3<<20, 2<<20, 42, testenv.Concurrent))
	}},
	{name: "FIONREAD", run: func(t *testing.T, p testenv.Pair) string {
		p.Client.Write(make([]byte, 1234))
		waitReadable(t, p.Server)
		var v int
		rawFD(t, p.Server, func(fd int) { v, _ = unix.IoctlGetInt(fd, unix.SIOCINQ) })
		return fmt.Sprint("FIONREAD=", v)
	}},
	{name: "MSG_PEEK then read", run: func(t *testing.T, p testenv.Pair) string {
		p.Client.Write([]byte("0123456789abcdef"))
		waitReadable(t, p.Server)
		n1, b1, e1 := recvRaw(t, p.Server, 10, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		n2, b2, e2 := recvRaw(t, p.Server, 16, unix.MSG_DONTWAIT)
		return fmt.Sprintf("peek %d %q %s; read %d %q %s", n1, b1, errName(e1), n2, b2, errName(e2))
	}},
	{name: "MSG_DONTWAIT on empty", run: func(t *testing.T, p testenv.Pair) string {
		n, _, err := recvRaw(t, p.Server, 10, unix.MSG_DONTWAIT)
		return fmt.Sprintf("%d %s", n, errName(err))
	}},
	{name: "many small round trips", run: func(t *testing.T, p testenv.Pair) string {
		b := make([]byte, 1)
		for i := range 2000 {
			p.Client.Write([]byte{byte(i)})
			if _, err := io.ReadFull(p.Server, b); err != nil || b[0] != byte(i) {
				return fmt.Sprintf("request %d: %v %d", i, err, b[0])
			}
			p.Server.Write([]byte{byte(i + 1)})
			if _, err := io.ReadFull(p.Client, b); err != nil || b[0] != byte(i+1) {
				return fmt.Sprintf("reply %d: %v %d", i, err, b[0])
			}
		}
		return "2000 ok"
	}},
	{name: "RST mid-transfer", run: func(t *testing.T, p testenv.Pair) string {
		p.Client.Write(make([]byte, 64<<10))
		waitReadable(t, p.Server)
		p.Client.SetLinger(0)
		p.Client.Close()
		got, err := io.Copy(io.Discard, p.Server)
		return fmt.Sprintf("server read %d then %s", got, errName(err))
	}},
	{name: "MSG_WAITALL", differs: "short read: tcp_bpf_recvmsg returns what the redirect queue holds", run: func(t *testing.T, p testenv.Pair) string {
		p.Client.Write(make([]byte, 100))
		go func() {
			time.Sleep(100 * time.Millisecond)
			p.Client.Write(make([]byte, 100))
		}()
		waitReadable(t, p.Server)
		// Blocking recv: clear O_NONBLOCK for this one call.
		var n int
		var err error
		rawFD(t, p.Server, func(fd int) {
			unix.SetNonblock(fd, false)
			buf := make([]byte, 200)
			n, _, err = unix.Recvfrom(fd, buf, unix.MSG_WAITALL)
			unix.SetNonblock(fd, true)
		})
		return fmt.Sprintf("%d %s", n, errName(err))
	}},
	{name: "splice to a pipe", differs: "splice reads only the TCP receive queue: redirected bytes never come out of it", run: func(t *testing.T, p testenv.Pair) string {
		p.Client.Write(make([]byte, 4096))
		waitReadable(t, p.Server)
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		var n int64
		var err error
		rawFD(t, p.Server, func(fd int) {
			n, err = unix.Splice(fd, nil, fds[1], nil, 65536, unix.SPLICE_F_NONBLOCK)
		})
		return fmt.Sprintf("spliced %d %s", n, errName(err))
	}},
	{name: "MSG_OOB", differs: "urgent data arrives in-band: recv(MSG_OOB) returns the first ordinary byte", run: func(t *testing.T, p testenv.Pair) string {
		rawFD(t, p.Client, func(fd int) {
			unix.Sendto(fd, []byte("ab"), 0, nil)
			unix.Sendto(fd, []byte("!"), unix.MSG_OOB, nil)
		})
		waitReadable(t, p.Server)
		time.Sleep(50 * time.Millisecond)
		n1, b1, e1 := recvRaw(t, p.Server, 1, unix.MSG_OOB|unix.MSG_DONTWAIT)
		n2, b2, e2 := recvRaw(t, p.Server, 10, unix.MSG_DONTWAIT)
		return fmt.Sprintf("oob %d %q %s; inline %d %q %s", n1, b1, errName(e1), n2, b2, errName(e2))
	}},
	{name: "close with unread data", differs: "peer sees EOF instead of ECONNRESET: the unread bytes sit in the psock, so tcp_close sends FIN, not RST", run: func(t *testing.T, p testenv.Pair) string {
		p.Client.Write(make([]byte, 1000))
		waitReadable(t, p.Server)
		p.Server.Close()
		time.Sleep(100 * time.Millisecond)
		p.Client.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := p.Client.Read(make([]byte, 10))
		return "client read: " + errName(err)
	}},
}

func TestCompatibilityMatrix(t *testing.T) {
	n := newNode(t, nil)
	tc := newTwoContainers(t, 231)
	lo := testenv.NewNetns(t)
	type path struct {
		name             string
		client, server   *testenv.Netns
		network, address string
		listen           string
	}
	paths := []path{
		{"veth/ipv4", tc.client, tc.server, "tcp4", "10.231.0.2", "[::]"},
		{"veth/ipv6", tc.client, tc.server, "tcp6", "[fd00:231::2]", "[::]"},
		{"loopback/ipv4", lo, lo, "tcp4", "127.0.0.1", "[::]"},
		{"loopback/ipv6", lo, lo, "tcp6", "[::1]", "[::]"},
	}
	port := 7400
	for _, b := range behaviours {
		for _, pa := range paths {
			t.Run(b.name+"/"+pa.name, func(t *testing.T) {
				var got [2]string
				for i, accelerated := range []bool{false, true} {
					port++
					cl, sv := testenv.Endpoint{Netns: pa.client}, testenv.Endpoint{Netns: pa.server}
					if accelerated {
						cl, sv = n.in(pa.client), n.in(pa.server)
					}
					ln := sv.Listen(t, "tcp", fmt.Sprintf("%s:%d", pa.listen, port))
					before := n.stats(t)
					p := testenv.Connect(t, cl, ln, pa.network, fmt.Sprintf("%s:%d", pa.address, port), 1)[0]
					got[i] = b.run(t, p)
					p.Client.Close()
					p.Server.Close()
					if accelerated && n.stats(t).Inserted-before.Inserted != 2 {
						t.Fatalf("the accelerated run was not accelerated")
					}
				}
				switch {
				case b.differs == "" && got[0] != got[1]:
					t.Errorf("plain TCP: %s\naccelerated: %s", got[0], got[1])
				case b.differs != "" && got[0] == got[1]:
					t.Errorf("documented difference (%s) no longer happens: both %s; update the README matrix", b.differs, got[0])
				case b.differs != "":
					t.Logf("known difference (%s): plain %q, accelerated %q", b.differs, got[0], got[1])
				}
				if strings.Contains(got[0], "error") {
					t.Errorf("plain run failed: %s", got[0])
				}
			})
		}
	}
}
