//go:build linux

package accel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"go.uber.org/zap"
)

// UseEvent is an application that used an accelerated socket in a way the
// redirect path cannot serve while bytes redirected into it were unread.
type UseEvent struct {
	// "splice" (the connection stalls), "oob" (the urgent byte was
	// misread), or "retire" (not a call: the connection left the fast path
	// both ways for good, so its sockets can leave the sockhash).
	Reason     string
	Cookie     uint64 // the socket's cookie, as in Conn.Cookies
	PID        uint32
	Comm       string
	LocalPort  uint16
	RemotePort uint16
	Queued     uint32
	FD         int32 // the socket's descriptor in process PID
}

// LearnedExclusion is a service port excluded after a UseEvent. Learned
// exclusions are pinned: they outlive daemon restarts until cleanup.
type LearnedExclusion struct {
	Port      uint16    `json:"port"`
	Reasons   []string  `json:"reasons"`
	Comm      string    `json:"comm"`
	PID       uint32    `json:"pid"`
	LearnedAt time.Time `json:"learned_at"`
}

func useReasons(bits uint32) []string {
	var out []string
	for _, r := range []struct {
		bit  accelUseReason
		name string
	}{{accelUseReasonUSE_SPLICE, "splice"}, {accelUseReasonUSE_WAITALL, "waitall"}, {accelUseReasonUSE_OOB, "oob"}} {
		if bits&uint32(r.bit) != 0 {
			out = append(out, r.name)
		}
	}
	return out
}

// RunEvents handles what the use detector reports until ctx is done. Each
// event is logged as one warning naming the process and ports, and, unless
// DisableSpliceLearning, the server port of that connection is excluded from
// then on (pinned, so restarts keep it): the connection that hit it cannot
// be helped, but the application's next connections to that service stay on
// TCP, where splice and urgent data work.
//
// It also takes lonely client ends out of the sockhash (see runLonely).
func (a *Accelerator) RunEvents(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lonely := make(chan error, 1)
	go func() { lonely <- a.runLonely(ctx) }()
	err := a.WatchEvents(ctx, a.handleUse)
	cancel()
	return errors.Join(err, <-lonely)
}

func (a *Accelerator) handleUse(ev UseEvent) {
	if ev.Reason == "retire" {
		go a.retireConn(ev.Cookie)
		return
	}
	what := "application spliced from an accelerated socket with redirected bytes unread; splice cannot return them, so this connection stalls"
	if ev.Reason == "oob" {
		what = "application asked for urgent data (MSG_OOB) on an accelerated socket with redirected bytes unread; it got the first of those bytes instead, and that byte is gone from the stream"
	}
	fields := []zap.Field{zap.String("reason", ev.Reason), zap.Uint32("pid", ev.PID), zap.String("comm", ev.Comm),
		zap.Uint16("local_port", ev.LocalPort), zap.Uint16("remote_port", ev.RemotePort),
		zap.Uint32("queued_bytes", ev.Queued)}
	if a.cfg.DisableSpliceLearning {
		a.log.Warn(what+": exclude the port (--exclude-ports) or the application's cgroup (--exclude-cgroups)", fields...)
		if ev.Reason == "splice" {
			go a.failStalled(ev)
		}
		return
	}
	port, err := a.serverPort(ev.Cookie)
	if err != nil {
		a.log.Warn(what+"; its connection was not found to exclude its service port", append(fields, zap.Error(err))...)
		return
	}
	if err := a.learnExcludedPort(port, ev); err != nil {
		a.log.Error("exclude a service port after "+ev.Reason, append(fields, zap.Uint16("port", port), zap.Error(err))...)
		return
	}
	a.log.Warn(what+"; its service port is excluded from now on (kept across restarts until cleanup; listed in status as learned_exclusions)",
		append(fields, zap.Uint16("excluded_port", port))...)
	if ev.Reason == "splice" {
		go a.failStalled(ev)
	}
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

// learnExcludedPort records port in the pinned learned ports and adds it to
// the excluded ports, beside the configured ones.
func (a *Accelerator) learnExcludedPort(port uint16, ev UseEvent) error {
	var lp accelLearnedPort
	if err := a.objs.SaLearnedPorts.Lookup(port, &lp); err != nil {
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("read learned port %d: %w", port, err)
		}
		lp = accelLearnedPort{Pid: ev.PID, UnixTime: uint64(time.Now().Unix())}
		copy(lp.Comm[:], cChars(ev.Comm))
	}
	switch ev.Reason {
	case "splice":
		lp.Reasons |= uint32(accelUseReasonUSE_SPLICE)
	case "oob":
		lp.Reasons |= uint32(accelUseReasonUSE_OOB)
	}
	if err := a.objs.SaLearnedPorts.Put(port, lp); err != nil {
		return fmt.Errorf("pin learned port %d: %w", port, err)
	}
	a.exclMu.Lock()
	ports, cidrs := a.exclPorts, a.exclCIDRs
	a.exclMu.Unlock()
	return a.SetExclusions(ports, cidrs)
}

// readLearned lists the learned exclusions in m (sa_learned_ports), by port.
func readLearned(m *ebpf.Map) ([]LearnedExclusion, error) {
	var (
		port uint16
		lp   accelLearnedPort
		out  []LearnedExclusion
	)
	it := m.Iterate()
	for it.Next(&port, &lp) {
		out = append(out, LearnedExclusion{
			Port:      port,
			Reasons:   useReasons(lp.Reasons),
			Comm:      cString(lp.Comm[:]),
			PID:       lp.Pid,
			LearnedAt: time.Unix(int64(lp.UnixTime), 0).UTC(),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read learned ports: %w", err)
	}
	slices.SortFunc(out, func(x, y LearnedExclusion) int { return int(x.Port) - int(y.Port) })
	return out, nil
}

// LearnedExclusions lists the service ports excluded after use events.
func (a *Accelerator) LearnedExclusions() ([]LearnedExclusion, error) {
	return readLearned(a.objs.SaLearnedPorts)
}

// readRing decodes each record of the ring buffer m into a T and calls f
// with it, until ctx is done.
func readRing[T any](ctx context.Context, m *ebpf.Map, what string, f func(T)) error {
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

// WatchEvents calls f for each detector event until ctx is done.
func (a *Accelerator) WatchEvents(ctx context.Context, f func(UseEvent)) error {
	return readRing(ctx, a.objs.SaEvents, "detector event", func(ev accelUseEvent) {
		reason := "splice"
		switch ev.Reason {
		case uint32(accelUseReasonUSE_OOB):
			reason = "oob"
		case uint32(accelUseReasonUSE_RETIRE):
			reason = "retire"
		}
		f(UseEvent{
			Reason:     reason,
			Cookie:     ev.Cookie,
			PID:        ev.Pid,
			Comm:       cString(ev.Comm[:]),
			LocalPort:  ev.LocalPort,
			RemotePort: ev.RemotePort,
			Queued:     ev.Queued,
			FD:         ev.Fd,
		})
	})
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

func cChars(s string) []int8 {
	out := make([]int8, len(s))
	for i := range len(s) {
		out[i] = int8(s[i])
	}
	return out
}
