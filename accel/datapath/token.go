//go:build linux

package datapath

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
)

// writeTokenKey draws the SipHash key the programs derive each connection's
// pairing token from (bpf/token.h). A new one at every start: a token only
// has to be unpredictable, and one connection's two ends read the same token
// off the wire, whichever program drew it. The map is not pinned, so the key
// is never in bpffs.
func writeTokenKey(m *ebpf.Map) error {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("draw pairing token key: %w", err)
	}
	key := [2]uint64{binary.NativeEndian.Uint64(raw[:8]), binary.NativeEndian.Uint64(raw[8:])}
	if key == [2]uint64{} {
		key[0] = 1 // all zero means "no key" to the programs
	}
	if err := m.Put(uint32(0), key); err != nil {
		return fmt.Errorf("write pairing token key: %w", err)
	}
	return nil
}
