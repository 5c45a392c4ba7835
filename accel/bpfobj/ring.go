//go:build linux

package bpfobj

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// ReadRing decodes each record of the ring buffer m into a T and calls f
// with it, until ctx is done.
func ReadRing[T any](ctx context.Context, m *ebpf.Map, what string, f func(T)) error {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return fmt.Errorf("open %s ring buffer: %w", what, err)
	}
	defer rd.Close()
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()
	for {
		rec, err := rd.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		var v T
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &v); err != nil {
			return fmt.Errorf("decode %s: %w", what, err)
		}
		f(v)
	}
}
