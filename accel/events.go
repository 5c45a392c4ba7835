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
	Cookie     uint64 // the socket's cookie, as in Conn.Cookies
	PID        uint32
	Comm       string
	LocalPort  uint16
	RemotePort uint16
	Queued     uint32
}

// RunEvents handles what the use detector reports until ctx is done. Each
// stalled splice is logged as one warning naming the process and ports, and,
// unless DisableSpliceLearning, the server port of that connection is
// excluded from then on: the connection that stalled cannot be helped, but
// the application's next connections to that service stay on TCP, where
// splice works.
func (a *Accelerator) RunEvents(ctx context.Context) error {
	return a.WatchEvents(ctx, func(ev StalledSplice) {
		fields := []zap.Field{zap.Uint32("pid", ev.PID), zap.String("comm", ev.Comm),
			zap.Uint16("local_port", ev.LocalPort), zap.Uint16("remote_port", ev.RemotePort),
			zap.Uint32("queued_bytes", ev.Queued)}
		if a.cfg.DisableSpliceLearning {
			a.log.Warn("application spliced from an accelerated socket with redirected bytes unread; splice cannot return them, so this connection stalls: exclude the port (--exclude-ports) or the application's cgroup (--exclude-cgroups)", fields...)
			return
		}
		port, err := a.serverPort(ev.Cookie)
		if err != nil {
			a.log.Warn("application spliced from an accelerated socket with redirected bytes unread, so this connection stalls; its connection was not found to exclude its service port", append(fields, zap.Error(err))...)
			return
		}
		if err := a.learnExcludedPort(port); err != nil {
			a.log.Error("exclude port after a stalled splice", append(fields, zap.Uint16("port", port), zap.Error(err))...)
			return
		}
		a.log.Warn("application spliced from an accelerated socket with redirected bytes unread, so this connection stalls; its service port is excluded from now on (set it in --exclude-ports to keep it across restarts)",
			append(fields, zap.Uint16("excluded_port", port))...)
	})
}

// serverPort finds the tracked connection one of whose ends has cookie and
// returns its server's port.
func (a *Accelerator) serverPort(cookie uint64) (uint16, error) {
	if cookie == 0 {
		return 0, errors.New("socket has no cookie")
	}
	conns, err := a.Conns()
	if err != nil {
		return 0, err
	}
	for _, c := range conns {
		if c.Cookies[0] == cookie || c.Cookies[1] == cookie {
			return c.Server.Port(), nil
		}
	}
	return 0, fmt.Errorf("no tracked connection with socket cookie %d", cookie)
}

// learnExcludedPort adds port to the excluded ports, beside the configured
// ones.
func (a *Accelerator) learnExcludedPort(port uint16) error {
	a.exclMu.Lock()
	if a.learnedPorts == nil {
		a.learnedPorts = map[uint16]bool{}
	}
	a.learnedPorts[port] = true
	ports, cidrs := a.exclPorts, a.exclCIDRs
	a.exclMu.Unlock()
	return a.SetExclusions(ports, cidrs)
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
			Cookie:     ev.Cookie,
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
