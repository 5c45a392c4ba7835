//go:build linux

package bpfobj

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Mirror returns the key of the other end of a connection: struct sock_key
// is written from the socket's own point of view.
func Mirror(k AccelSockKey) AccelSockKey {
	return AccelSockKey{
		LocalIp:    k.RemoteIp,
		RemoteIp:   k.LocalIp,
		LocalIsn:   k.RemoteIsn,
		RemoteIsn:  k.LocalIsn,
		LocalPort:  k.RemotePort,
		RemotePort: k.LocalPort,
	}
}

// KeyAddr turns the stored (network byte order, IPv4-mapped) address into
// an address, unmapping IPv4.
func KeyAddr(words [4]uint32) netip.Addr {
	var b [16]byte
	for i, w := range words {
		binary.LittleEndian.PutUint32(b[i*4:], w) // memory order is network order
	}
	return netip.AddrFrom16(b).Unmap()
}

// NetToHost16 converts a port stored in network byte order.
func NetToHost16(v uint16) uint16 { return bits.ReverseBytes16(v) }

// Client and Server are the two ends of a conntrack key (the active end's
// view of the connection).
func (k AccelSockKey) Client() netip.AddrPort {
	return netip.AddrPortFrom(KeyAddr(k.LocalIp), NetToHost16(k.LocalPort))
}

// Server is the passive end of a conntrack key.
func (k AccelSockKey) Server() netip.AddrPort {
	return netip.AddrPortFrom(KeyAddr(k.RemoteIp), NetToHost16(k.RemotePort))
}

// CountKeys counts the keys of m by walking them: the kernel keeps no
// element count user space can read, and a sockhash has no batch lookups.
func CountKeys(m *ebpf.Map) (uint64, error) {
	var n uint64
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var cur any // nil: start from the first key
	// A key deleted under us restarts the walk; the cap keeps that finite.
	for limit := uint64(m.MaxEntries()) * 2; n < limit; {
		err := m.NextKey(cur, next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		copy(key, next)
		cur = key
	}
	return n, nil
}
