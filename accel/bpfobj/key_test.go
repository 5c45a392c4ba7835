//go:build linux

package bpfobj

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// sockKey builds the key the BPF programs write for the socket local ->
// remote: addresses IPv4-mapped, in network byte order in memory, ports in
// network byte order (see struct sock_key in bpf/accel.h).
func sockKey(local, remote netip.AddrPort, localISN, remoteISN uint32) AccelSockKey {
	words := func(a netip.Addr) (w [4]uint32) {
		b := a.As16() // IPv4-mapped for IPv4
		for i := range w {
			w[i] = binary.LittleEndian.Uint32(b[4*i:]) // memory order
		}
		return w
	}
	be := func(p uint16) uint16 { return p<<8 | p>>8 }
	return AccelSockKey{
		LocalIp: words(local.Addr()), RemoteIp: words(remote.Addr()),
		LocalPort: be(local.Port()), RemotePort: be(remote.Port()),
		LocalIsn: localISN, RemoteIsn: remoteISN,
	}
}

func TestKeyAddresses(t *testing.T) {
	for _, tc := range []struct {
		name           string
		client, server string
	}{
		{"ipv4", "10.0.0.1:40000", "10.0.0.2:80"},
		{"ipv4 loopback", "127.0.0.1:1", "127.0.0.1:65535"},
		{"ipv6", "[fd00::1]:50000", "[fd00::2]:443"},
		{"ipv6 loopback", "[::1]:12345", "[::1]:8080"},
		{"ipv4 in ipv6 socket", "[::ffff:192.0.2.1]:4000", "[::ffff:192.0.2.2]:5000"},
		{"zero port", "0.0.0.0:0", "255.255.255.255:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := netip.MustParseAddrPort(tc.client), netip.MustParseAddrPort(tc.server)
			k := sockKey(client, server, 1, 2)
			// A dual-stack socket's IPv4 peer is shown as plain IPv4,
			// as ss and conntrack -L show it.
			want := func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
			if got := k.Client(); got != want(client) {
				t.Errorf("Client() = %s, want %s", got, want(client))
			}
			if got := k.Server(); got != want(server) {
				t.Errorf("Server() = %s, want %s", got, want(server))
			}
		})
	}
}

func TestMirror(t *testing.T) {
	a, b := netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.2:80")
	k := sockKey(a, b, 111, 222)
	m := Mirror(k)
	if want := sockKey(b, a, 222, 111); m != want {
		t.Fatalf("Mirror = %+v, want the server's own key %+v", m, want)
	}
	if m.Client() != b || m.Server() != a {
		t.Errorf("mirrored key reads %s -> %s, want %s -> %s", m.Client(), m.Server(), b, a)
	}
	if Mirror(m) != k {
		t.Errorf("Mirror is not its own inverse: %+v", Mirror(m))
	}
	// The ISNs tell apart two connections on one 4-tuple in different
	// network namespaces: swapping them must go with the addresses.
	if m.LocalIsn != k.RemoteIsn || m.RemoteIsn != k.LocalIsn {
		t.Errorf("ISNs not swapped: %+v", m)
	}
}

func TestNetToHost16(t *testing.T) {
	for _, tc := range []struct{ in, want uint16 }{
		{0x0050, 0x5000}, {0x5000, 0x0050}, {0x1234, 0x3412}, {0, 0}, {0xffff, 0xffff},
	} {
		if got := NetToHost16(tc.in); got != tc.want {
			t.Errorf("NetToHost16(%#04x) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
}
