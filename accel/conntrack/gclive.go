//go:build linux

package conntrack

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// Record layout of backlog.c's sockhash_cookies test packet: after an Ethernet header, one
// struct gclive_rec per key (the 44-byte key, padding to 8, the cookie).
const (
	gcliveOffset       = 14
	gcliveMax          = 60
	gcliveRecSize      = 56
	gcliveCookieOffset = 48
)

// cookieReader answers, many keys per syscall, which socket the sockhash
// holds under each key (backlog.c's sockhash_cookies, run through
// BPF_PROG_TEST_RUN). Only that program of the object is loaded.
type cookieReader struct {
	prog *ebpf.Program
}

func newCookieReader(sockhash *ebpf.Map) (*cookieReader, error) {
	spec, err := bpfobj.LoadBacklog()
	if err != nil {
		return nil, fmt.Errorf("load embedded backlog object: %w", err)
	}
	spec.Maps[bpfobj.BacklogMapSaSockhash].MaxEntries = sockhash.MaxEntries()
	var objs struct {
		Prog *ebpf.Program `ebpf:"sockhash_cookies"`
	}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{bpfobj.BacklogMapSaSockhash: sockhash}}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		return nil, fmt.Errorf("load sockhash cookies program (needs kernel BTF): %w", err)
	}
	return &cookieReader{prog: objs.Prog}, nil
}

func (r *cookieReader) Close() error { return r.prog.Close() }

// cookies returns, for each key, the cookie of the socket the sockhash
// holds under it (0 for none).
func (r *cookieReader) cookies(keys []bpfobj.AccelSockKey) ([]uint64, error) {
	out := make([]uint64, len(keys))
	in := make([]byte, gcliveOffset+gcliveMax*gcliveRecSize)
	res := make([]byte, len(in))
	for start := 0; start < len(keys); start += gcliveMax {
		batch := keys[start:min(start+gcliveMax, len(keys))]
		pkt := in[:gcliveOffset+len(batch)*gcliveRecSize]
		for i, k := range batch {
			putKey(pkt[gcliveOffset+i*gcliveRecSize:], k)
		}
		got, err := r.prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: res[:len(pkt)]})
		if err != nil {
			return nil, fmt.Errorf("run sockhash cookies program: %w", err)
		}
		if int(got) != len(batch) {
			return nil, fmt.Errorf("sockhash cookies program answered %d of %d keys", got, len(batch))
		}
		for i := range batch {
			out[start+i] = binary.NativeEndian.Uint64(res[gcliveOffset+i*gcliveRecSize+gcliveCookieOffset:])
		}
	}
	return out, nil
}

// putKey writes k as the C struct sock_key, without binary.Encode's
// reflection (a tenth of a 100k GC pass's CPU samples).
func putKey(b []byte, k bpfobj.AccelSockKey) {
	e := binary.NativeEndian
	for i, w := range k.LocalIp {
		e.PutUint32(b[4*i:], w)
	}
	for i, w := range k.RemoteIp {
		e.PutUint32(b[16+4*i:], w)
	}
	e.PutUint32(b[32:], k.LocalIsn)
	e.PutUint32(b[36:], k.RemoteIsn)
	e.PutUint16(b[40:], k.LocalPort)
	e.PutUint16(b[42:], k.RemotePort)
}
