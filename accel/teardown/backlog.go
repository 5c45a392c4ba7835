//go:build linux

package teardown

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// Backlog is what sockets in the sockhash hold for their applications:
// bytes redirected to them and not read yet.
type Backlog struct {
	Sockets int    `json:"queued_sockets"`
	Bytes   uint64 `json:"queued_bytes"`
}

// keyOffset is where backlog.c reads the sockhash key in its test
// packet: after an Ethernet header.
const keyOffset = 14

// Reader asks the kernel, socket by socket, how many redirected bytes
// each socket of the sockhash holds unread: it walks the sockhash keys from
// userspace and runs backlog.c's tc program (BPF_PROG_TEST_RUN) on each.
type Reader struct {
	objs     bpfobj.BacklogObjects
	sockhash *ebpf.Map
}

// OpenBacklog prepares repeated backlog reads of sockhash.
func OpenBacklog(sockhash *ebpf.Map) (*Reader, error) {
	spec, err := bpfobj.LoadBacklog()
	if err != nil {
		return nil, fmt.Errorf("load embedded backlog program: %w", err)
	}
	info, err := sockhash.Info()
	if err != nil {
		return nil, fmt.Errorf("sockhash info: %w", err)
	}
	spec.Maps[bpfobj.BacklogMapSaSockhash].MaxEntries = info.MaxEntries
	r := &Reader{sockhash: sockhash}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{bpfobj.BacklogMapSaSockhash: sockhash}}
	if err := spec.LoadAndAssign(&r.objs, opts); err != nil {
		return nil, fmt.Errorf("load sockhash backlog program (needs kernel BTF): %w", err)
	}
	return r, nil
}

// backlogWalkAttempts bounds how often one read restarts its walk of the
// sockhash: the map iterator gives up when sockets keep leaving it under the
// walk (connections closing while cleanup drains).
const backlogWalkAttempts = 5

// Read walks the sockhash once.
func (r *Reader) Read() (Backlog, error) {
	var err error
	for range backlogWalkAttempts {
		var b Backlog
		if b, err = r.walk(); !errors.Is(err, ebpf.ErrIterationAborted) {
			return b, err
		}
	}
	return Backlog{}, err
}

func (r *Reader) walk() (Backlog, error) {
	var (
		b      Backlog
		key    bpfobj.AccelSockKey
		cookie uint64
	)
	// The iterator starts over when the key it stands on is deleted:
	// count each socket once.
	seen := make(map[bpfobj.AccelSockKey]struct{})
	packet := make([]byte, keyOffset+binary.Size(key))
	it := r.sockhash.Iterate()
	for it.Next(&key, &cookie) {
		if _, dup := seen[key]; dup {
			continue
		}
		seen[key] = struct{}{}
		if _, err := binary.Encode(packet[keyOffset:], binary.NativeEndian, key); err != nil {
			return Backlog{}, fmt.Errorf("encode sockhash key: %w", err)
		}
		queued, err := r.objs.SockhashBacklog.Run(&ebpf.RunOptions{Data: packet})
		if err != nil {
			return Backlog{}, fmt.Errorf("run sockhash backlog program: %w", err)
		}
		if queued > 0 {
			b.Sockets++
			b.Bytes += uint64(queued)
		}
	}
	if err := it.Err(); err != nil {
		return Backlog{}, fmt.Errorf("walk sockhash: %w", err)
	}
	return b, nil
}

// Close releases the program.
func (r *Reader) Close() error {
	return r.objs.Close()
}

// QueuedAt reads the redirected bytes unread at the socket of one key of
// sockhash.
func QueuedAt(sockhash *ebpf.Map, key bpfobj.AccelSockKey) (uint32, error) {
	r, err := OpenBacklog(sockhash)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	packet := make([]byte, keyOffset+binary.Size(key))
	if _, err := binary.Encode(packet[keyOffset:], binary.NativeEndian, key); err != nil {
		return 0, fmt.Errorf("encode sockhash key: %w", err)
	}
	return r.objs.SockhashBacklog.Run(&ebpf.RunOptions{Data: packet})
}
