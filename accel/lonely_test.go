//go:build linux

package accel_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

// smallRcvbuf gives the plain peer a small receive buffer, so that the
// accelerated end's writer keeps filling its send buffer and every ACK
// frees space: the write-space wake-ups a blocking reader must sleep
// through.
func smallRcvbuf(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 32<<10)
	})
	return errors.Join(err, serr)
}

// plainDuplex is the peer that is not accelerated: it reads everything the
// accelerated end sends, in small reads, and sends it a small message
// after every `every` bytes it has read; at EOF it shuts down writing. It returns
// what it read and what it sent, as "BYTES SHA256".
func plainDuplex(c *net.TCPConn, every int64) (got, sent string, err error) {
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	rh, sh := sha256.New(), sha256.New()
	var rn, sn int64
	buf := make([]byte, 16<<10)
	msg := []byte(strings.Repeat("now and then ", 10))
	next := every
	for {
		n, rerr := c.Read(buf)
		rh.Write(buf[:n])
		rn += int64(n)
		for rn >= next {
			next += every
			if _, err := c.Write(msg); err != nil {
				return "", "", fmt.Errorf("plain peer write: %w", err)
			}
			sh.Write(msg)
			sn += int64(len(msg))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return "", "", fmt.Errorf("plain peer read after %d bytes: %w", rn, rerr)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return "", "", err
	}
	return fmt.Sprintf("%d %s", rn, hex.EncodeToString(rh.Sum(nil))), fmt.Sprintf("%d %s", sn, hex.EncodeToString(sh.Sum(nil))), nil
}

// A socket in the sockhash whose peer never is (a "lonely end": the peer is
// on another host, outside the target cgroup, or excluded) sends everything
// through TCP, but as long as it is in the sockhash it receives through
// tcp_bpf_recvmsg, which ends a blocking reader's wait on any wake-up and
// returns EAGAIN if nothing is queued: the write-space wake-ups of its own
// writer thread's TCP sends are such wake-ups. A blocking full-duplex
// Python endpoint inside the cgroup talks to a Go peer that is not
// accelerated and must see no error and every byte intact both ways, as the
// accepted (server) end and as a client that connected with a timeout and
// then switched to blocking mode (what --conservative accelerates).
func TestLonelyEndBlockingDuplex(t *testing.T) {
	py := blockPeer(t)
	const size = 64 << 20
	for _, tc := range []struct {
		name, side string
		every      int64 // the plain peer sends after every this many bytes it read
		// The plain peer is a server in an excluded cgroup below the
		// target (its listener is in scope, its accepted socket is not),
		// not a process outside the target cgroup.
		excluded bool
		knownGap bool
	}{
		{name: "server", side: "server", every: 1 << 20},
		{name: "client", side: "client", every: 1 << 20},
		// The client's reader is asleep in recv from before its first
		// send until the peer has read 16 MiB.
		{name: "client-long-wait", side: "client", every: 16 << 20},
		// The client enters the sockhash (a listener in scope answered
		// its SYN) and its server does not: the daemon takes it out.
		{name: "client-excluded-server", side: "client", every: 1 << 20, excluded: true},
		// The same with the client's reader asleep from the start: the
		// removal comes after that recv entered tcp_bpf_recvmsg, where
		// the next write-space wake-up still ends it with EAGAIN. Known
		// gap (8 of 10 runs fail), run with SOCKACCEL_TEST_LONELY_GAP=1.
		{name: "client-excluded-server-long-wait", side: "client", every: 16 << 20, excluded: true, knownGap: true},
	} {
		side := tc.side
		t.Run(tc.name, func(t *testing.T) {
			if tc.knownGap && os.Getenv("SOCKACCEL_TEST_LONELY_GAP") == "" {
				t.Skip("known gap: a client recv asleep since before the daemon removed it (SOCKACCEL_TEST_LONELY_GAP=1 runs it)")
			}
			n := newNode(t, func(c *accel.Config) { c.Conservative = true })
			n.runEvents(t)
			ns := testenv.NewNetns(t)
			plain := testenv.Endpoint{Netns: ns} // the test process: outside the target cgroup
			if tc.excluded {
				excluded := testenv.ChildCgroup(t, n.cg, "excluded")
				if err := n.acc.SetExcludedCgroups([]cgroup.Target{excluded}); err != nil {
					t.Fatal(err)
				}
				plain.Cgroup = &excluded
			}
			before := n.stats(t)
			var (
				proc *testenv.Process
				conn *net.TCPConn
				err  error
			)
			if side == "server" {
				proc = n.in(ns).Start(t, append(py, "lonely-server", "127.0.0.1", "7401", fmt.Sprint(size))...)
				proc.WaitOutput(t, "listening")
				d := net.Dialer{Timeout: 30 * time.Second, Control: smallRcvbuf}
				var c net.Conn
				plain.Do(t, func() { c, err = d.Dial("tcp4", "127.0.0.1:7401") })
				if err != nil {
					t.Fatal(err)
				}
				conn = c.(*net.TCPConn)
			} else {
				lc := net.ListenConfig{Control: smallRcvbuf}
				var ln net.Listener
				plain.Do(t, func() { ln, err = lc.Listen(t.Context(), "tcp4", "127.0.0.1:7402") })
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				proc = n.in(ns).Start(t, append(py, "lonely-client", "127.0.0.1", "7402", fmt.Sprint(size))...)
				c, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				conn = c.(*net.TCPConn)
			}
			defer conn.Close()
			got, sent, perr := plainDuplex(conn, tc.every)
			werr := proc.Wait(3 * time.Minute)
			out := strings.TrimSpace(proc.Output())
			s := n.stats(t)
			t.Logf("%s end: inserted %d, passed %d bytes, redirected %d", side, s.Inserted-before.Inserted, s.PassedBytes-before.PassedBytes, s.RedirectedBytes-before.RedirectedBytes)
			if perr != nil || werr != nil {
				t.Fatalf("plain peer: %v; accelerated end: %v: %s", perr, werr, out)
			}
			lines := strings.Split(out, "\n")
			f := strings.Fields(lines[len(lines)-1]) // after "listening"
			if len(f) != 5 || f[0] != "ok" {
				t.Fatalf("accelerated end said %q", out)
			}
			if want := f[1] + " " + f[2]; got != want {
				t.Errorf("plain peer read %s, accelerated end sent %s", got, want)
			}
			if have := f[3] + " " + f[4]; sent != have {
				t.Errorf("plain peer sent %s, accelerated end read %s", sent, have)
			}
			if !tc.excluded {
				// Its peer is not a local socket in scope: it is not
				// inserted at all.
				if ins, np := s.Inserted-before.Inserted, s.NoPeer-before.NoPeer; ins != 0 || np != 1 {
					t.Errorf("%s end of a plain peer: inserted %d, no_peer %d; want 0, 1", side, ins, np)
				}
				return
			}
			if ins, ex := s.Inserted-before.Inserted, s.ExcludedCgroup-before.ExcludedCgroup; ins != 1 || ex != 1 {
				t.Errorf("inserted %d, excluded_cgroup %d; want the client inserted and the server excluded", ins, ex)
			}
			waitFor(t, "the lonely client end to leave the sockhash", func() (bool, string) {
				st := n.status(t)
				return st.Lonely == 1 && st.SockhashEntries == 0 && st.Conntrack.Entries == 0,
					fmt.Sprintf("lonely %d, sockhash entries %d, conntrack entries %d", st.Lonely, st.SockhashEntries, st.Conntrack.Entries)
			})
		})
	}
}
