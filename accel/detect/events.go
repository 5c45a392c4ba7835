//go:build linux

// Package detect watches how applications use accelerated sockets: the use
// detector's events (splice, MSG_OOB, FIONREAD on a socket holding
// redirected bytes, and connections off the fast path both ways), the
// services learned from them, the reset of a stalled splice, and the
// behaviour probes that tell which of those calls this kernel gets wrong.
package detect

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/conntrack"
	"github.com/sockaccel/sockaccel/accel/datapath"
)

// Detector handles the use detector's events for a running daemon.
type Detector struct {
	dp        *datapath.Datapath
	ct        *conntrack.Tracker
	maps      *bpfobj.AccelMaps
	log       *zap.Logger
	learnRate learnLimiter
	seen      seenUses
}

// New returns the detector of a started datapath.
func New(dp *datapath.Datapath, log *zap.Logger) *Detector {
	return &Detector{dp: dp, ct: dp.Conntrack(), maps: dp.Maps(), log: log}
}

// UseEvent is an application that used an accelerated socket in a way the
// redirect path cannot serve while bytes redirected into it were unread.
type UseEvent struct {
	// "splice" (the connection stalls), "oob" (the urgent byte was
	// misread), "fionread" (it under-reported), "shutdown" (a blocking
	// socket's own shutdown woke another thread's recv into EAGAIN), or "retire" (not a call: the connection left the fast path
	// both ways for good, so its sockets can leave the sockhash).
	Reason     string
	Cookie     uint64 // the socket's cookie, as in Conn.Cookies
	PID        uint32
	Comm       string
	LocalPort  uint16
	RemotePort uint16
	Queued     uint32
	FD         int32  // the socket's descriptor in process PID
	CgroupID   uint64 // the socket's cgroup v2 id
}

func useReasons(bits uint32) []string {
	var out []string
	for _, r := range []struct {
		bit  bpfobj.AccelUseReason
		name string
	}{{bpfobj.AccelUseReasonUSE_SPLICE, "splice"}, {bpfobj.AccelUseReasonUSE_WAITALL, "waitall"}, {bpfobj.AccelUseReasonUSE_OOB, "oob"}, {bpfobj.AccelUseReasonUSE_FIONREAD, "fionread"}, {bpfobj.AccelUseReasonUSE_SHUTDOWN, "shutdown"}} {
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
// It also takes lonely client ends out of the sockhash (see
// conntrack.Tracker.RunLonely).
func (a *Detector) RunEvents(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lonely := make(chan error, 1)
	go func() { lonely <- a.ct.RunLonely(ctx) }()
	err := a.WatchEvents(ctx, a.handleUse)
	cancel()
	return errors.Join(err, <-lonely)
}

func (a *Detector) handleUse(ev UseEvent) {
	if ev.Reason == "retire" {
		// Once per connection: an exclusion change may be retiring it.
		if a.ct.ClaimRetire(ev.Cookie) {
			go func() {
				defer a.ct.ReleaseRetire(ev.Cookie)
				a.ct.RetireConn(ev.Cookie)
			}()
		}
		return
	}
	what := useMessages[ev.Reason]
	fields := []zap.Field{zap.String("reason", ev.Reason), zap.Uint32("pid", ev.PID), zap.String("comm", ev.Comm),
		zap.Uint16("local_port", ev.LocalPort), zap.Uint16("remote_port", ev.RemotePort),
		zap.Uint32("queued_bytes", ev.Queued)}
	if ev.Reason == "splice" {
		defer func() { go a.failStalled(ev) }()
	}
	if a.dp.Config().DisableSpliceLearning {
		a.log.Warn(what+": exclude the port (--exclude-ports) or the application's cgroup (--exclude-cgroups)", fields...)
		return
	}
	l, fresh, err := a.learn(ev)
	switch {
	case errors.Is(err, errSeen):
		a.log.Debug(what+"; already reported", fields...)
	case errors.Is(err, errLearnRate):
		a.log.Warn(what+"; not learned: too many learned exclusions in the last minute", fields...)
	case err != nil:
		a.log.Warn(what+"; its service could not be learned", append(fields, zap.Error(err))...)
	case fresh:
		a.log.Warn(what+"; that service stays on TCP from now on (kept across restarts until cleanup; listed in status as learned_exclusions)",
			append(fields, zap.Uint16("service_port", l.Port), zap.String("end", l.End), zap.Uint64("cgroup_id", l.CgroupID))...)
	default:
		a.log.Debug(what+"; already learned", fields...)
	}
}

var useMessages = map[string]string{
	"splice":   "application spliced from an accelerated socket with redirected bytes unread; splice cannot return them, so this connection stalls",
	"oob":      "application asked for urgent data (MSG_OOB) on an accelerated socket with redirected bytes unread; it got the first of those bytes instead, and that byte is gone from the stream",
	"fionread": "application asked FIONREAD on an accelerated socket with redirected bytes unread; this kernel leaves those out, so the call reported too little",
	"shutdown": "application shut down writing on a blocking accelerated socket while another of its threads slept on it; that thread's recv is woken and, with nothing queued, fails with EAGAIN",
}

// WatchEvents calls f for each detector event until ctx is done.
func (a *Detector) WatchEvents(ctx context.Context, f func(UseEvent)) error {
	return bpfobj.ReadRing(ctx, a.maps.SaEvents, "detector event", func(ev bpfobj.AccelUseEvent) {
		reason := "splice"
		switch ev.Reason {
		case uint32(bpfobj.AccelUseReasonUSE_OOB):
			reason = "oob"
		case uint32(bpfobj.AccelUseReasonUSE_FIONREAD):
			reason = "fionread"
		case uint32(bpfobj.AccelUseReasonUSE_RETIRE):
			reason = "retire"
		case uint32(bpfobj.AccelUseReasonUSE_SHUTDOWN):
			reason = "shutdown"
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
			CgroupID:   ev.CgroupId,
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
