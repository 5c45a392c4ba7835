//go:build linux

package accel

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Backlog is what sockets in the sockhash hold for their applications:
// bytes redirected to them and not read yet.
type Backlog struct {
	Sockets int    `json:"queued_sockets"`
	Bytes   uint64 `json:"queued_bytes"`
}

// backlogKeyOffset is where backlog.c reads the sockhash key in its test
// packet: after an Ethernet header.
const backlogKeyOffset = 14

// backlogReader asks the kernel, socket by socket, how many redirected bytes
// each socket of the sockhash holds unread: it walks the sockhash keys from
// userspace and runs backlog.c's tc program (BPF_PROG_TEST_RUN) on each.
type backlogReader struct {
	objs     backlogObjects
	sockhash *ebpf.Map
}

func newBacklogReader(sockhash *ebpf.Map) (*backlogReader, error) {
	spec, err := loadBacklog()
	if err != nil {
		return nil, fmt.Errorf("load embedded backlog program: %w", err)
	}
	info, err := sockhash.Info()
	if err != nil {
		return nil, fmt.Errorf("sockhash info: %w", err)
	}
	spec.Maps[backlogMapSaSockhash].MaxEntries = info.MaxEntries
	r := &backlogReader{sockhash: sockhash}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{backlogMapSaSockhash: sockhash}}
	if err := spec.LoadAndAssign(&r.objs, opts); err != nil {
		return nil, fmt.Errorf("load sockhash backlog program (needs kernel BTF): %w", err)
	}
	return r, nil
}

// backlogWalkAttempts bounds how often one read restarts its walk of the
// sockhash: the map iterator gives up when sockets keep leaving it under the
// walk (connections closing while cleanup drains).
const backlogWalkAttempts = 5

func (r *backlogReader) read() (Backlog, error) {
	var err error
	for range backlogWalkAttempts {
		var b Backlog
		if b, err = r.walk(); !errors.Is(err, ebpf.ErrIterationAborted) {
			return b, err
		}
	}
	return Backlog{}, err
}

func (r *backlogReader) walk() (Backlog, error) {
	var (
		b      Backlog
		key    accelSockKey
		cookie uint64
	)
	// The iterator starts over when the key it stands on is deleted:
	// count each socket once.
	seen := make(map[accelSockKey]struct{})
	packet := make([]byte, backlogKeyOffset+binary.Size(key))
	it := r.sockhash.Iterate()
	for it.Next(&key, &cookie) {
		if _, dup := seen[key]; dup {
			continue
		}
		seen[key] = struct{}{}
		if _, err := binary.Encode(packet[backlogKeyOffset:], binary.NativeEndian, key); err != nil {
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

func (r *backlogReader) Close() error {
	return r.objs.Close()
}

// BacklogReader reads the backlog of one sockhash repeatedly.
type BacklogReader struct{ r *backlogReader }

// OpenBacklog prepares repeated backlog reads of sockhash.
func OpenBacklog(sockhash *ebpf.Map) (*BacklogReader, error) {
	r, err := newBacklogReader(sockhash)
	if err != nil {
		return nil, err
	}
	return &BacklogReader{r}, nil
}

// Read walks the sockhash once.
func (b *BacklogReader) Read() (Backlog, error) { return b.r.read() }

// Close releases the program.
func (b *BacklogReader) Close() error { return b.r.Close() }
