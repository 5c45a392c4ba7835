package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel"
)

// statusInterval is how often STATUS= is refreshed for `systemctl status`
// (only sent when it changed: an idle daemon sends nothing between pings).
const statusInterval = 10 * time.Second

// supervise tells systemd (Type=notify) that the daemon is ready, then, until
// ctx is done, pings its watchdog while the daemon is healthy and keeps
// STATUS= up to date; on the way out it says STOPPING=1. Outside systemd
// (no NOTIFY_SOCKET) every notification is a no-op. Ready means: every
// program attached and the listeners up, so `systemctl start` returns only
// once connections are being accelerated.
func supervise(ctx context.Context, a *accel.Accelerator, log *zap.Logger) <-chan struct{} {
	done := make(chan struct{})
	notify(log, sd.SdNotifyReady+"\nSTATUS="+statusLine(a))
	watchdog, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("read systemd watchdog settings", zap.Error(err))
	}
	every := statusInterval
	if watchdog > 0 && watchdog/3 < every {
		// A third of the interval: two pings may be late before systemd
		// gives up on the daemon.
		every = watchdog / 3
	}
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		last := ""
		for {
			select {
			case <-ctx.Done():
				notify(log, sd.SdNotifyStopping+"\nSTATUS=stopping; pinned programs keep accelerating")
				return
			case <-t.C:
			}
			st, err := a.Status()
			if err == nil && !st.Attached {
				err = errors.New("sock_ops link not attached")
			}
			if err != nil {
				// No ping: if this persists, systemd's watchdog restarts
				// the daemon, which re-attaches from the pins.
				log.Warn("unhealthy; not pinging the watchdog", zap.Error(err))
				continue
			}
			msg := ""
			if watchdog > 0 {
				msg = sd.SdNotifyWatchdog
			}
			if s := formatStatus(st); s != last {
				last = s
				msg += "\nSTATUS=" + s
			}
			if msg != "" {
				notify(log, strings.TrimPrefix(msg, "\n"))
			}
		}
	}()
	return done
}

func notify(log *zap.Logger, state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		log.Warn("notify systemd", zap.Error(err))
	}
}

func statusLine(a *accel.Accelerator) string {
	st, err := a.Status()
	if err != nil {
		return "status unavailable: " + oneLine(err.Error())
	}
	return formatStatus(st)
}

// formatStatus is the one line `systemctl status` shows: connections
// accelerated now and how full the maps are.
func formatStatus(st accel.Status) string {
	s := fmt.Sprintf("accelerating %d sockets (sockhash %.1f%% of %d connections), %s redirected",
		st.SockhashEntries, 100*float64(st.SockhashEntries)/float64(2*max(st.MaxConns, 1)), st.MaxConns,
		humanBytes(st.RedirectedBytes))
	if st.Conntrack.Enabled {
		s += fmt.Sprintf(", conntrack %d/%d", st.Conntrack.Entries, st.Conntrack.Capacity)
	}
	return s
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
