//go:build linux

package accel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf/ringbuf"
	"go.uber.org/zap"
)

// StalledSplice is an application that spliced from an accelerated socket
// while bytes redirected into it were still unread.
type StalledSplice struct {
	PID        uint32
	Comm       string
	LocalPort  uint16
	RemotePort uint16
	Queued     uint32
}

// RunEvents logs what the use detector reports until ctx is done: each
// stalled splice as one warning naming the process and ports, so an operator
// knows what to exclude.
func (a *Accelerator) RunEvents(ctx context.Context) error {
	return a.WatchEvents(ctx, func(ev StalledSplice) {
		a.log.Warn("application spliced from an accelerated socket with redirected bytes unread; splice cannot return them, so this connection stalls: exclude the port (--exclude-ports) or run the application outside the accelerated cgroup",
			zap.Uint32("pid", ev.PID), zap.String("comm", ev.Comm),
			zap.Uint16("local_port", ev.LocalPort), zap.Uint16("remote_port", ev.RemotePort),
			zap.Uint32("queued_bytes", ev.Queued))
	})
}

// WatchEvents calls f for each detector event until ctx is done.
func (a *Accelerator) WatchEvents(ctx context.Context, f func(StalledSplice)) error {
	rd, err := ringbuf.NewReader(a.objs.SaEvents)
	if err != nil {
		return fmt.Errorf("open detector event ring buffer: %w", err)
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
			return fmt.Errorf("read detector events: %w", err)
		}
		var ev accelUseEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
			return fmt.Errorf("decode detector event: %w", err)
		}
		f(StalledSplice{
			PID:        ev.Pid,
			Comm:       cString(ev.Comm[:]),
			LocalPort:  ev.LocalPort,
			RemotePort: ev.RemotePort,
			Queued:     ev.Queued,
		})
	}
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
