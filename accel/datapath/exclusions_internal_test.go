//go:build linux

package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// TestCIDRKey checks the LPM trie key for each excluded prefix: the
// programs look every address up in its IPv4-mapped form, so an IPv4
// prefix is stored mapped, 96 bits longer, and host bits are cleared.
func TestCIDRKey(t *testing.T) {
	mapped := func(s string) [16]uint8 { return netip.MustParseAddr(s).As16() }
	for _, tc := range []struct {
		prefix string
		bits   uint32
		addr   [16]uint8
	}{
		{"10.0.0.0/8", 104, mapped("10.0.0.0")},
		{"10.1.2.3/8", 104, mapped("10.0.0.0")}, // host bits cleared
		{"192.0.2.1/32", 128, mapped("192.0.2.1")},
		{"0.0.0.0/0", 96, mapped("0.0.0.0")}, // every IPv4 address, no IPv6
		{"fd00::/8", 8, mapped("fd00::")},
		{"fd12:3456::1/16", 16, mapped("fd12::")},
		{"2001:db8::1/128", 128, mapped("2001:db8::1")},
		{"::/0", 0, mapped("::")}, // everything, IPv4 included
	} {
		k := cidrKey(netip.MustParsePrefix(tc.prefix))
		if k.Prefixlen != tc.bits || k.Addr != tc.addr {
			t.Errorf("cidrKey(%s) = /%d %x, want /%d %x", tc.prefix, k.Prefixlen, k.Addr, tc.bits, tc.addr)
		}
	}
}

// key is the conntrack key of client -> server as the programs write it.
func key(client, server string) bpfobj.AccelSockKey {
	c, s := netip.MustParseAddrPort(client), netip.MustParseAddrPort(server)
	words := func(a netip.Addr) (w [4]uint32) {
		b := a.As16()
		for i := range w {
			w[i] = binary.LittleEndian.Uint32(b[4*i:])
		}
		return w
	}
	be := func(p uint16) uint16 { return p<<8 | p>>8 }
	return bpfobj.AccelSockKey{LocalIp: words(c.Addr()), RemoteIp: words(s.Addr()), LocalPort: be(c.Port()), RemotePort: be(s.Port())}
}

// TestMatcher checks which live connections an exclusion change reaches:
// either end's port or address, or either local end's cgroup.
func TestMatcher(t *testing.T) {
	both := bpfobj.AccelCtEntry{Cookie: [2]uint64{1, 2}, CgroupId: [2]uint64{100, 200}}
	clientOnly := bpfobj.AccelCtEntry{Cookie: [2]uint64{1, 0}, CgroupId: [2]uint64{100, 200}}
	k := key("10.0.0.1:40000", "10.0.0.2:80")
	k6 := key("[fd00::1]:40000", "[fd00::2]:443")
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name  string
		m     matcher
		key   bpfobj.AccelSockKey
		entry bpfobj.AccelCtEntry
		want  bool
	}{
		{"nothing excluded", matcher{}, k, both, false},
		{"server port", matcher{ports: []uint16{80}}, k, both, true},
		{"client port", matcher{ports: []uint16{40000}}, k, both, true},
		{"other port", matcher{ports: []uint16{443, 8080}}, k, both, false},
		{"port byte order", matcher{ports: []uint16{0x5000}}, k, both, false},
		{"client address", matcher{cidrs: []netip.Prefix{p("10.0.0.1/32")}}, k, both, true},
		{"server subnet", matcher{cidrs: []netip.Prefix{p("10.0.0.0/24")}}, k, both, true},
		{"other subnet", matcher{cidrs: []netip.Prefix{p("10.0.1.0/24")}}, k, both, false},
		{"ipv6 prefix, ipv4 connection", matcher{cidrs: []netip.Prefix{p("::/0")}}, k, both, false},
		{"ipv6 subnet", matcher{cidrs: []netip.Prefix{p("fd00::/64")}}, k6, both, true},
		{"ipv4 prefix, ipv6 connection", matcher{cidrs: []netip.Prefix{p("0.0.0.0/0")}}, k6, both, false},
		{"client cgroup", matcher{cgroups: map[uint64]bool{100: true}}, k, both, true},
		{"server cgroup", matcher{cgroups: map[uint64]bool{200: true}}, k, both, true},
		{"other cgroup", matcher{cgroups: map[uint64]bool{300: true}}, k, both, false},
		// A side with no local socket has no cgroup of ours: its id
		// field is not looked at.
		{"cgroup of a remote end", matcher{cgroups: map[uint64]bool{200: true}}, k, clientOnly, false},
	} {
		if got := tc.m.match(tc.key, tc.entry); got != tc.want {
			t.Errorf("%s: match = %v, want %v", tc.name, got, tc.want)
		}
	}
}
