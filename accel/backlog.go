//go:build linux

package accel

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Backlog is what sockets in the sockhash hold for their applications:
// bytes redirected to them and not read yet.
type Backlog struct {
	Sockets int    `json:"queued_sockets"`
	Bytes   uint64 `json:"queued_bytes"`
}

// backlogReader walks the sockhash with a BPF iterator (needs kernel BTF).
type backlogReader struct {
	objs backlogObjects
	iter *link.Iter
}

func newBacklogReader(sockhash *ebpf.Map) (*backlogReader, error) {
	r := &backlogReader{}
	if err := loadBacklogObjects(&r.objs, nil); err != nil {
		return nil, fmt.Errorf("load sockhash backlog iterator (needs kernel BTF): %w", err)
	}
	it, err := link.AttachIter(link.IterOptions{Program: r.objs.SockhashBacklog, Map: sockhash})
	if err != nil {
		r.objs.Close()
		return nil, fmt.Errorf("attach sockhash backlog iterator: %w", err)
	}
	r.iter = it
	return r, nil
}

func (r *backlogReader) read() (Backlog, error) {
	rd, err := r.iter.Open()
	if err != nil {
		return Backlog{}, fmt.Errorf("open sockhash iterator: %w", err)
	}
	defer rd.Close()
	data, err := io.ReadAll(rd)
	if err != nil {
		return Backlog{}, fmt.Errorf("read sockhash iterator: %w", err)
	}
	var b Backlog
	for i := 0; i+4 <= len(data); i += 4 {
		b.Sockets++
		b.Bytes += uint64(binary.LittleEndian.Uint32(data[i:]))
	}
	return b, nil
}

func (r *backlogReader) Close() error {
	r.iter.Close()
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

// Close releases the iterator.
func (b *BacklogReader) Close() error { return b.r.Close() }

// ReadBacklog reports the unread redirected bytes held by the sockets in
// the given sockhash.
func ReadBacklog(sockhash *ebpf.Map) (Backlog, error) {
	r, err := newBacklogReader(sockhash)
	if err != nil {
		return Backlog{}, err
	}
	defer r.Close()
	return r.read()
}
