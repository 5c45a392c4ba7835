//go:build linux

package accel_test

import (
	"io"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

// repairSocket creates a TCP socket in repair mode bound to local with the
// send and receive sequence numbers the caller chose; repairConnect then
// establishes it without a handshake, the way CRIU restores a connection,
// and the kernel runs the established callback for it. Any process with
// CAP_NET_ADMIN in its own network namespace can do this.
// TCP_REPAIR_QUEUE values (include/uapi/linux/tcp.h), which x/sys lacks.
const (
	tcpRecvQueue = 1
	tcpSendQueue = 2
)

func repairSocket(t *testing.T, local netip.AddrPort, sndSeq, rcvSeq uint32) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	for _, o := range []struct {
		opt, val int
	}{
		{unix.TCP_REPAIR, 1},
		{unix.TCP_REPAIR_QUEUE, tcpSendQueue}, {unix.TCP_QUEUE_SEQ, int(sndSeq)},
		{unix.TCP_REPAIR_QUEUE, tcpRecvQueue}, {unix.TCP_QUEUE_SEQ, int(rcvSeq)},
	} {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, o.opt, o.val); err != nil {
			t.Fatalf("setsockopt %d=%d: %v", o.opt, o.val, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.Addr().As4(), Port: int(local.Port())}); err != nil {
		t.Fatalf("bind %s: %v", local, err)
	}
	return fd
}

func repairConnect(t *testing.T, fd int, remote netip.AddrPort) {
	t.Helper()
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: remote.Addr().As4(), Port: int(remote.Port())}); err != nil {
		t.Fatalf("repair connect to %s: %v", remote, err)
	}
}

// Two repair-mode sockets whose tuples and sequence numbers mirror each
// other are exactly what a local process would build to claim the key of a
// connection it wants to read or inject into. sockaccel never pairs a
// socket that was in repair mode, whether it was put there while sockaccel
// watched (the setsockopt hook) or before it attached (checked at
// establishment); legitimate connections beside them are paired as usual.
func TestRepairSocketsAreNeverPaired(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	ns := testenv.NewNetns(t)
	ep := testenv.Endpoint{Netns: ns, Cgroup: &cg}
	a := netip.MustParseAddrPort("127.0.0.1:7381")
	b := netip.MustParseAddrPort("127.0.0.1:7382")

	// Put in repair mode before sockaccel attached: only the check at
	// establishment can see it.
	var early int
	ep.Do(t, func() { early = repairSocket(t, a, 1000, 5000) })

	acc := testenv.Start(t, accel.Config{Cgroup: cg, PinDir: pin, MaxConns: 1024})
	stats := func() accel.Stats {
		t.Helper()
		s, err := acc.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, c := range []struct {
		name    string
		connect func()
	}{
		{"put in repair mode before sockaccel attached", func() { repairConnect(t, early, b) }},
		// The mirror image of the first, whose key it would pair with.
		{"put in repair mode under sockaccel", func() { repairConnect(t, repairSocket(t, b, 5000, 1000), a) }},
	} {
		before := stats()
		ep.Do(t, c.connect)
		s := stats()
		t.Logf("%s: established +%d, inserted +%d, repair +%d", c.name, s.Established-before.Established, s.Inserted-before.Inserted, s.Repair-before.Repair)
		if s.Established-before.Established != 1 {
			t.Fatalf("%s: established +%d: the repair connect did not reach sock_ops, so this shows nothing", c.name, s.Established-before.Established)
		}
		if s.Inserted != before.Inserted || s.Repair-before.Repair != 1 {
			t.Errorf("%s: inserted +%d, repair +%d; want 0 and 1", c.name, s.Inserted-before.Inserted, s.Repair-before.Repair)
		}
	}
	if n, err := acc.SockhashEntries(); err != nil || n != 0 {
		t.Errorf("sockhash holds %d sockets (%v), want none", n, err)
	}

	// An ordinary connection beside them is paired and redirected.
	before := stats()
	ln := ep.Listen(t, "tcp4", "127.0.0.1:7385")
	p := testenv.Connect(t, ep, ln, "tcp4", "127.0.0.1:7385", 1)[0]
	defer p.Client.Close()
	defer p.Server.Close()
	if _, err := p.Client.Write([]byte("legit")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(p.Server, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if s := stats(); s.Inserted-before.Inserted != 2 || s.RedirectedMsgs == before.RedirectedMsgs {
		t.Errorf("legitimate connection: inserted +%d, redirected +%d; want 2 and at least 1", s.Inserted-before.Inserted, s.RedirectedMsgs-before.RedirectedMsgs)
	}
}
