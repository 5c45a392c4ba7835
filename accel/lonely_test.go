//go:build linux

package accel_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/bpfobj"
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
		// The plain peer is a server whose listener is in scope and
		// whose accepted end is refused with the map full (MaxConns 1,
		// one of the two sockhash slots taken beforehand): the client is
		// inserted and sock_ops takes it out again as its server is
		// refused.
		refused bool
		// The plain peer is a server in scope whose service (its port,
		// any cgroup) was learned: its accepted end is excluded, and the
		// client, whose own check does not cover a server-end service,
		// must not be inserted either.
		learned bool
	}{
		{name: "server", side: "server", every: 1 << 20},
		{name: "client", side: "client", every: 1 << 20},
		// The client's reader is asleep in recv from before its first
		// send until the peer has read 16 MiB.
		{name: "client-long-wait", side: "client", every: 16 << 20},
		// A listener in scope answered the client's SYN but its
		// accepted end will be excluded: the client is not inserted
		// either (it used to be, until the daemon took it out again).
		{name: "client-excluded-server", side: "client", every: 1 << 20, excluded: true},
		// The same with the client's reader asleep from the start: once
		// the daemon's removal came after that recv had entered
		// tcp_bpf_recvmsg, and the next write-space wake-up ended it
		// with EAGAIN (20 of 20 runs).
		{name: "client-excluded-server-long-wait", side: "client", every: 16 << 20, excluded: true},
		{name: "client-refused-server-long-wait", side: "client", every: 16 << 20, refused: true},
		{name: "client-learned-server-long-wait", side: "client", every: 16 << 20, learned: true},
	} {
		side := tc.side
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, func(c *accel.Config) {
				c.Conservative = true
				if tc.refused {
					c.MaxConns = 1 // two sockhash slots
				}
			})
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
			if tc.refused {
				n.takeSockhashSlot(t)
				plain.Cgroup = &n.cg // its listener in scope
			}
			if tc.learned {
				n.learnServerPort(t, 7402)
				plain.Cgroup = &n.cg
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
			if !tc.excluded && !tc.refused && !tc.learned {
				// Its peer is not a local socket in scope: it is not
				// inserted at all.
				if ins, np := s.Inserted-before.Inserted, s.NoPeer-before.NoPeer; ins != 0 || np != 1 {
					t.Errorf("%s end of a plain peer: inserted %d, no_peer %d; want 0, 1", side, ins, np)
				}
				return
			}
			if tc.excluded || tc.learned {
				// Nothing ever entered the sockhash.
				ex := s.ExcludedCgroup - before.ExcludedCgroup
				if tc.learned {
					ex = s.ExcludedLearned - before.ExcludedLearned
				}
				if ins, np := s.Inserted-before.Inserted, s.NoPeer-before.NoPeer; ins != 0 || ex != 1 || np != 1 {
					t.Errorf("inserted %d, excluded %d, no_peer %d; want 0, 1 (the server), 1 (the client)", ins, ex, np)
				}
			} else if ins, full, ld := s.Inserted-before.Inserted, s.MapFull-before.MapFull, s.LonelyDirect-before.LonelyDirect; ins != 1 || full != 1 || ld != 1 {
				t.Errorf("inserted %d, map_full %d, lonely_direct %d; want 1 (the client), 1 (the server), 1 (the client out again)", ins, full, ld)
			}
			st := n.status(t)
			want := uint64(0)
			if tc.refused {
				want = 1 // the slot taken beforehand
			}
			if st.Lonely != 0 || st.SockhashEntries != want || st.Conntrack.Entries != 0 {
				t.Errorf("lonely %d, sockhash entries %d, conntrack entries %d; want 0, %d, 0", st.Lonely, st.SockhashEntries, st.Conntrack.Entries, want)
			}
		})
	}
}

// takeSockhashSlot puts an established socket of the test process (outside
// the target cgroup) in the node's sockhash under a key no connection has,
// until the test ends.
func (n *node) takeSockhashSlot(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := ebpf.LoadPinnedMap(filepath.Join(n.pin, "sa_sockhash"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	key := bpfobj.AccelSockKey{LocalPort: 1, RemotePort: 1}
	if err := m.Update(&key, uint64(f.Fd()), ebpf.UpdateNoExist); err != nil {
		t.Fatalf("take a sockhash slot: %v", err)
	}
}

// learnServerPort writes a learned exclusion of the service on port (its
// server end, in any cgroup) into the node's pinned map, as the detector
// would after a misread, and turns its lookups on.
func (n *node) learnServerPort(t *testing.T, port uint16) {
	t.Helper()
	learned, err := ebpf.LoadPinnedMap(filepath.Join(n.pin, "sa_learned"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer learned.Close()
	key := bpfobj.AccelLearnedKey{Port: port, End: uint8(bpfobj.AccelLearnedEndLEARNED_SERVER)}
	if err := learned.Put(&key, &bpfobj.AccelLearnedUse{Reasons: uint32(bpfobj.AccelUseReasonUSE_SPLICE)}); err != nil {
		t.Fatalf("learn port %d: %v", port, err)
	}
	cfgMap, err := ebpf.LoadPinnedMap(filepath.Join(n.pin, "sa_config"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cfgMap.Close()
	var cfg bpfobj.AccelAccelConfig
	if err := cfgMap.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Flags |= uint32(bpfobj.AccelConfigFlagsCONFIG_F_LEARNED)
	if err := cfgMap.Put(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
}
