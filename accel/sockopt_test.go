//go:build linux

package accel_test

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

func rawFD(t *testing.T, c *net.TCPConn, f func(fd int)) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Control(func(fd uintptr) { f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
}

func readable(t *testing.T, c *net.TCPConn, wait time.Duration) bool {
	t.Helper()
	var ok bool
	rawFD(t, c, func(fd int) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(wait.Milliseconds()))
		if err != nil {
			t.Fatal(err)
		}
		ok = n > 0 && fds[0].Revents&unix.POLLIN != 0
	})
	return ok
}

// SO_RCVLOWAT: poll must not report readable below the low-water mark. The
// redirect queue ignores it, so the setsockopt hook keeps redirected bytes
// out of such a socket; the behaviour then matches plain TCP exactly.
func TestRcvlowatMatchesPlainTCP(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	for _, accelerated := range []bool{false, true} {
		ep := testenv.Endpoint{Netns: ns}
		name := "plain"
		if accelerated {
			ep = n.in(ns)
			name = "accelerated"
		}
		t.Run(name, func(t *testing.T) {
			before := n.stats(t)
			ln := ep.Listen(t, "tcp4", "127.0.0.1:0")
			p := testenv.Connect(t, ep, ln, "tcp4", ln.Addr().String(), 1)[0]
			defer p.Client.Close()
			defer p.Server.Close()
			rawFD(t, p.Server, func(fd int) {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1000); err != nil {
					t.Fatal(err)
				}
			})
			p.Client.Write(make([]byte, 500))
			if readable(t, p.Server, 300*time.Millisecond) {
				t.Error("readable with 500 bytes under SO_RCVLOWAT 1000")
			}
			p.Client.Write(make([]byte, 600))
			if !readable(t, p.Server, 5*time.Second) {
				t.Error("not readable with 1100 bytes over SO_RCVLOWAT 1000")
			}
			s := n.stats(t)
			if accelerated && (s.OffSetsockopt-before.OffSetsockopt != 1 || s.RedirectedBytes != before.RedirectedBytes) {
				t.Errorf("off_setsockopt +%d, redirected +%d: want the direction into the socket off the fast path",
					s.OffSetsockopt-before.OffSetsockopt, s.RedirectedBytes-before.RedirectedBytes)
			}
			// The other direction is still accelerated.
			if accelerated {
				p.Server.Write([]byte("reply"))
				buf := make([]byte, 5)
				p.Client.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := p.Client.Read(buf); err != nil {
					t.Fatal(err)
				}
				if s2 := n.stats(t); s2.RedirectedBytes-s.RedirectedBytes != 5 {
					t.Errorf("server->client not redirected after SO_RCVLOWAT on the server")
				}
			}
		})
	}
}

// Socket options larger than a page pass through the setsockopt hook
// untouched (older kernels turned them into EFAULT unless the hook says so).
func TestLargeSetsockoptPassesThrough(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	ep := n.in(ns)
	ln := ep.Listen(t, "tcp4", "127.0.0.1:0")
	p := testenv.Connect(t, ep, ln, "tcp4", ln.Addr().String(), 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	big := make([]byte, 3*4096)
	big[1] = 1 // SO_RCVBUF 256 on little-endian; the kernel reads the first int
	rawFD(t, p.Client, func(fd int) {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, string(big)); err != nil {
			t.Errorf("setsockopt with a %d-byte optval: %v", len(big), err)
		}
	})
}

// A socket that asks for a ULP (kTLS: setsockopt(TCP_ULP, "tls")) leaves the
// fast path in both directions before its next byte: records kTLS would
// frame must go through TCP. This kernel has no CONFIG_TLS, so the kernel
// refuses the option (ENOENT) after the hook has seen it; the connection is
// kept off the fast path either way, which costs only its acceleration.
func TestULPTakesConnectionOffFastPath(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	ep := n.in(ns)
	ln := ep.Listen(t, "tcp4", "127.0.0.1:0")
	p := testenv.Connect(t, ep, ln, "tcp4", ln.Addr().String(), 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	before := n.stats(t)
	rawFD(t, p.Client, func(fd int) {
		err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_ULP, "tls")
		t.Logf("setsockopt(TCP_ULP, tls): %v", err)
	})
	if err := testenv.Exchange(p.Client, p.Server, 1<<20, 1<<20, 11, testenv.Concurrent); err != nil {
		t.Fatal(err)
	}
	s := n.stats(t)
	if s.OffSetsockopt-before.OffSetsockopt != 1 || s.RedirectedMsgs != before.RedirectedMsgs {
		t.Errorf("off_setsockopt +%d, redirected +%d: want the connection off the fast path both ways",
			s.OffSetsockopt-before.OffSetsockopt, s.RedirectedMsgs-before.RedirectedMsgs)
	}
}

// MPTCP subflows are TCP sockets with a ULP, which the kernel refuses in a
// sockhash: they stay on TCP, work, and are counted as ulp, not as insert
// errors (which is what the 4 insert_errors in 27,000 sockets of other
// projects' test suites turned out to be).
func TestMPTCPSubflowsStayOnTCP(t *testing.T) {
	n := newNode(t, nil)
	ns := testenv.NewNetns(t)
	if out, err := exec.Command("ip", "netns", "exec", ns.Name, "sysctl", "-n", "net.mptcp.enabled").Output(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Skipf("this kernel has no MPTCP (net.mptcp.enabled: %q, %v)", out, err)
	}
	testenv.RequireTools(t, "python3")
	const script = `
import socket
IPPROTO_MPTCP = 262
ln = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
ln.bind(("127.0.0.1", 7350)); ln.listen(1)
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
c.settimeout(10); c.connect(("127.0.0.1", 7350))
s, _ = ln.accept(); s.settimeout(10)
c.sendall(b"over mptcp"); got = s.recv(100)
s.sendall(got[::-1]); print(c.recv(100).decode())
`
	before := n.stats(t)
	out := n.in(ns).Output(t, 30*time.Second, nil, "python3", "-c", script)
	if got := strings.TrimSpace(string(out)); got != "pctpm revo" {
		t.Fatalf("MPTCP echo: %q", got)
	}
	s := n.stats(t)
	t.Logf("established +%d, ulp +%d, insert_errors +%d, inserted +%d", s.Established-before.Established, s.ULP-before.ULP,
		s.InsertErrors-before.InsertErrors, s.Inserted-before.Inserted)
	if s.ULP-before.ULP != 2 || s.InsertErrors != before.InsertErrors || s.Inserted != before.Inserted {
		t.Errorf("ulp +%d, insert_errors +%d, inserted +%d: want both subflow ends counted as ulp and nothing inserted",
			s.ULP-before.ULP, s.InsertErrors-before.InsertErrors, s.Inserted-before.Inserted)
	}
}
