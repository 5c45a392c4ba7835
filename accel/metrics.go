//go:build linux

package accel

import (
	"fmt"
	"io"
	"strings"
)

// WritePrometheus writes s in the Prometheus text exposition format. The
// values are read from the BPF maps at scrape time, so a scrape always shows
// the kernel's current view.
func WritePrometheus(w io.Writer, s Status, version string) error {
	var b strings.Builder
	metric := func(name, typ, help string, samples ...sample) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for _, sm := range samples {
			if sm.labels == "" {
				fmt.Fprintf(&b, "%s %v\n", name, sm.value)
			} else {
				fmt.Fprintf(&b, "%s{%s} %v\n", name, sm.labels, sm.value)
			}
		}
	}
	one := func(v any) sample { return sample{value: v} }
	attached := 0
	if s.Attached {
		attached = 1
	}
	metric("sockaccel_build_info", "gauge", "Version of the running sockaccel binary.",
		sample{fmt.Sprintf("version=%q", version), 1})
	metric("sockaccel_attached", "gauge", "Whether the sock_ops program is attached to its cgroup (1) or not (0).", one(attached))
	metric("sockaccel_sockhash_entries", "gauge", "Sockets currently in the sockhash.", one(s.SockhashEntries))
	metric("sockaccel_sockhash_entries_limit", "gauge", "Sockets the sockhash can hold (two per connection).", one(2*uint64(s.MaxConns)))
	metric("sockaccel_conntrack_entries", "gauge", "Connections currently tracked.", one(s.Conntrack.Entries))
	metric("sockaccel_conntrack_entries_limit", "gauge", "Connections the conntrack map can hold.", one(s.Conntrack.Capacity))
	metric("sockaccel_msg_redirected_total", "counter", "Sends moved straight into the peer socket.", one(s.RedirectedMsgs))
	metric("sockaccel_msg_redirected_bytes_total", "counter", "Bytes moved straight into the peer socket.", one(s.RedirectedBytes))
	metric("sockaccel_msg_passed_total", "counter", "Sends of tracked sockets left on the TCP path.", one(s.PassedMsgs))
	metric("sockaccel_msg_passed_bytes_total", "counter", "Bytes of tracked sockets left on the TCP path.", one(s.PassedBytes))
	metric("sockaccel_redirect_errors_total", "counter", "Sends whose peer left the sockhash after this socket had redirected to it.", one(s.RedirectErrors))
	metric("sockaccel_sockets_established_total", "counter", "Established TCP sockets seen in the target cgroup.", one(s.Established))
	metric("sockaccel_sockets_accelerated_total", "counter", "Sockets put in the sockhash.", one(s.Inserted))
	metric("sockaccel_sockets_not_accelerated_total", "counter", "Established sockets not put in the sockhash, by reason.",
		sample{`reason="map_full"`, s.MapFull},
		sample{`reason="excluded_port"`, s.ExcludedPort},
		sample{`reason="excluded_cidr"`, s.ExcludedCIDR},
		sample{`reason="excluded_cgroup"`, s.ExcludedCgroup},
		sample{`reason="early_data"`, s.EarlyData},
		sample{`reason="insert_error"`, s.InsertErrors},
		sample{`reason="storage_error"`, s.StorageErrors},
		sample{`reason="disabled"`, s.Disabled},
		sample{`reason="blocking"`, s.Blocking},
		sample{`reason="ulp"`, s.ULP},
		sample{`reason="excluded_learned"`, s.ExcludedLearned},
		sample{`reason="repair"`, s.Repair},
		sample{`reason="no_peer"`, s.NoPeer})
	metric("sockaccel_sends_backlog_total", "counter", "Sends handed to TCP because the receiver was further behind than the backlog bound.", one(s.OffBacklog))
	metric("sockaccel_directions_off_total", "counter", "Connection directions taken off the fast path for good, by reason.",
		sample{`reason="setsockopt"`, s.OffSetsockopt})
	metric("sockaccel_connections_off_total", "counter", "Connections taken off the fast path for good when an application first used a call the redirect path does not honour, by call.",
		sample{`reason="splice"`, s.OffSplice},
		sample{`reason="waitall"`, s.OffWaitall},
		sample{`reason="oob"`, s.OffOOB},
		sample{`reason="fionread"`, s.OffFIONREAD})
	metric("sockaccel_splice_stalled_total", "counter", "Sockets an application spliced from while redirected bytes were unread (splice cannot return them: exclude that port or cgroup).", one(s.SpliceStalled))
	metric("sockaccel_rcvlowat_lowered_total", "counter", "SO_RCVLOWAT calls on sockets that had bytes redirected into them, applied as 1 so that no wait depends on those bytes.", one(s.RcvlowatLowered))
	metric("sockaccel_oob_misread_total", "counter", "recv(MSG_OOB) calls on sockets holding redirected bytes, which returned an ordinary byte instead of the urgent one (that service is learned from then on with --learn-splice).", one(s.OOBMisread))
	metric("sockaccel_fionread_misread_total", "counter", "ioctl(FIONREAD) calls on sockets holding redirected bytes, on a kernel whose FIONREAD leaves those out, so it reported too little (that service is learned from then on with --learn-splice).", one(s.FIONREADMisread))
	metric("sockaccel_directions_resumed_total", "counter", "Directions back on the fast path after the receiver read every byte that went through TCP.", one(s.Resumed))
	metric("sockaccel_conntrack_closed_total", "counter", "Conntrack entries removed, by what removed them.",
		sample{`by="close_callback"`, s.ClosedDirect},
		sample{`by="gc"`, s.Conntrack.ClosedGC})
	metric("sockaccel_connections_retired_total", "counter", "Connections off the fast path both ways for good whose sockets left the sockhash, back to plain TCP.", one(s.Conntrack.Retired))
	metric("sockaccel_lonely_ends_total", "counter", "Client ends taken out of the sockhash because their server never joined, back to plain TCP.", one(s.Conntrack.Lonely))
	metric("sockaccel_conntrack_full_total", "counter", "Connections not tracked because conntrack was full.", one(s.CtFull))
	metric("sockaccel_conntrack_gc_runs_total", "counter", "Fallback GC passes (zero while nothing needs collecting).", one(s.Conntrack.GCRuns))
	_, err := io.WriteString(w, b.String())
	return err
}

type sample struct {
	labels string
	value  any
}
