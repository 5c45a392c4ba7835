//go:build linux

package stats

import (
	"fmt"
	"reflect"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// Counter is one counter users read, defined once: where it comes from,
// its status --json key, the line of `sockaccel status` that shows it and
// the Prometheus sample it feeds. README's key table says what it means
// (Doc; a test keeps README in step). JSON keys, metric names and label
// values are a contract with scripts, dashboards and alerts: add, never
// rename.
//
// Adding a counter: the field in struct accel_stats (bpf/accel.h), its
// increment, make generate, a field of Stats with the JSON key, one row
// here and one row of README's key table (KeyDocs); the tests say what is
// missing.
type Counter struct {
	// Key is the status --json key: the json tag of a Stats or Conntrack
	// field.
	Key string
	// BPF is the field of struct accel_stats (bpfobj.AccelAccelStats)
	// summed over CPUs into it; "" for the GC state's counters, which
	// SummarizeConntrack reads.
	BPF string
	// Metric is the Prometheus counter family it is a sample of (see
	// families) and Label its value of the family's label ("" for a
	// family of one sample). "" Metric: not exported.
	Metric, Label string
	// Text is its name where a line of `sockaccel status` lists counters
	// as name=value (see textLines); "" when it is shown otherwise.
	Text string
}

// Counters in the order of status --json.
var Counters = []Counter{
	{Key: "established", BPF: "Established", Metric: "sockaccel_sockets_established_total"},
	{Key: "inserted", BPF: "Inserted", Metric: "sockaccel_sockets_accelerated_total"},
	{Key: "map_full", BPF: "MapFull", Metric: notAccelerated, Label: "map_full", Text: "map_full"},
	{Key: "insert_errors", BPF: "InsertErrors", Metric: notAccelerated, Label: "insert_error", Text: "insert_errors"},
	{Key: "excluded_port", BPF: "ExcludedPort", Metric: notAccelerated, Label: "excluded_port", Text: "excluded_port"},
	{Key: "excluded_cidr", BPF: "ExcludedCidr", Metric: notAccelerated, Label: "excluded_cidr", Text: "excluded_cidr"},
	{Key: "excluded_cgroup", BPF: "ExcludedCgroup", Metric: notAccelerated, Label: "excluded_cgroup", Text: "excluded_cgroup"},
	{Key: "early_data", BPF: "EarlyData", Metric: notAccelerated, Label: "early_data", Text: "early_data"},
	{Key: "storage_errors", BPF: "StorageErrors", Metric: notAccelerated, Label: "storage_error"},
	{Key: "disabled", BPF: "Disabled", Metric: notAccelerated, Label: "disabled", Text: "disabled"},
	{Key: "blocking", BPF: "Blocking", Metric: notAccelerated, Label: "blocking", Text: "blocking"},
	{Key: "redirected_msgs", BPF: "RedirectedMsgs", Metric: "sockaccel_msg_redirected_total"},
	{Key: "redirected_bytes", BPF: "RedirectedBytes", Metric: "sockaccel_msg_redirected_bytes_total"},
	{Key: "passed_msgs", BPF: "PassedMsgs", Metric: "sockaccel_msg_passed_total"},
	{Key: "passed_bytes", BPF: "PassedBytes", Metric: "sockaccel_msg_passed_bytes_total"},
	{Key: "redirect_errors", BPF: "RedirectErrors", Metric: "sockaccel_redirect_errors_total"},
	{Key: "conntrack_created", BPF: "CtCreated", Metric: "sockaccel_conntrack_created_total"},
	{Key: "conntrack_full", BPF: "CtFull", Metric: "sockaccel_conntrack_full_total"},
	{Key: "closed_direct", BPF: "ClosedDirect", Metric: "sockaccel_conntrack_closed_total", Label: "close_callback"},
	{Key: "off_backlog", BPF: "OffBacklog", Metric: "sockaccel_sends_backlog_total", Text: "backlog"},
	{Key: "off_setsockopt", BPF: "OffSetsockopt", Metric: "sockaccel_directions_off_total", Label: "setsockopt", Text: "setsockopt"},
	{Key: "resumed", BPF: "Resumed", Metric: "sockaccel_directions_resumed_total"},
	{Key: "off_splice", BPF: "OffSplice", Metric: connectionsOff, Label: "splice", Text: "splice"},
	{Key: "off_waitall", BPF: "OffWaitall", Metric: connectionsOff, Label: "waitall", Text: "waitall"},
	{Key: "off_oob", BPF: "OffOob", Metric: connectionsOff, Label: "oob", Text: "oob"},
	{Key: "splice_stalled", BPF: "SpliceStalled", Metric: "sockaccel_splice_stalled_total"},
	{Key: "rcvlowat_lowered", BPF: "RcvlowatLowered", Metric: "sockaccel_rcvlowat_lowered_total"},
	{Key: "oob_misread", BPF: "OobMisread", Metric: "sockaccel_oob_misread_total"},
	{Key: "ulp", BPF: "Ulp", Metric: notAccelerated, Label: "ulp", Text: "ulp"},
	{Key: "excluded_learned", BPF: "ExcludedLearned", Metric: notAccelerated, Label: "excluded_learned", Text: "excluded_learned"},
	{Key: "repair", BPF: "Repair", Metric: notAccelerated, Label: "repair", Text: "repair"},
	{Key: "fionread_misread", BPF: "FionreadMisread", Metric: "sockaccel_fionread_misread_total"},
	{Key: "off_fionread", BPF: "OffFionread", Metric: connectionsOff, Label: "fionread", Text: "fionread"},
	{Key: "no_peer", BPF: "NoPeer", Metric: notAccelerated, Label: "no_peer", Text: "no_peer"},
	{Key: "token_no_room", BPF: "TokenNoRoom", Metric: notAccelerated, Label: "token_no_room", Text: "token_no_room"},
	{Key: "token_unconfirmed", BPF: "TokenUnconfirmed", Metric: notAccelerated, Label: "token_unconfirmed", Text: "token_unconfirmed"},
	{Key: "lonely_direct", BPF: "LonelyDirect", Metric: "sockaccel_lonely_ends_direct_total"},
	{Key: "shutdown_wake", BPF: "ShutdownWake", Metric: "sockaccel_shutdown_wake_total"},
	// struct gc_state, kept by the daemon.
	{Key: "closed_gc", Metric: "sockaccel_conntrack_closed_total", Label: "gc"},
	{Key: "gc_runs", Metric: "sockaccel_conntrack_gc_runs_total"},
	{Key: "retired", Metric: "sockaccel_connections_retired_total"},
	{Key: "lonely", Metric: "sockaccel_lonely_ends_total"},
}

// Counter families of more than one sample, by label.
const (
	notAccelerated = "sockaccel_sockets_not_accelerated_total"
	connectionsOff = "sockaccel_connections_off_total"
)

// family is a Prometheus counter family; its samples are the Counters
// naming it.
type family struct {
	name, help string
	label      string // the label's name, "" for a family of one sample
}

// families are the counter families, with the help sentences earlier
// versions exposed.
var families = []family{
	{"sockaccel_msg_redirected_total", "Sends moved straight into the peer socket.", ""},
	{"sockaccel_msg_redirected_bytes_total", "Bytes moved straight into the peer socket.", ""},
	{"sockaccel_msg_passed_total", "Sends of tracked sockets left on the TCP path.", ""},
	{"sockaccel_msg_passed_bytes_total", "Bytes of tracked sockets left on the TCP path.", ""},
	{"sockaccel_redirect_errors_total", "Sends whose peer left the sockhash after this socket had redirected to it.", ""},
	{"sockaccel_sockets_established_total", "Established TCP sockets seen in the target cgroup.", ""},
	{"sockaccel_sockets_accelerated_total", "Sockets put in the sockhash.", ""},
	{notAccelerated, "Established sockets not put in the sockhash, by reason.", "reason"},
	{"sockaccel_sends_backlog_total", "Sends handed to TCP because the receiver was further behind than the backlog bound.", ""},
	{"sockaccel_directions_off_total", "Connection directions taken off the fast path for good, by reason.", "reason"},
	{connectionsOff, "Connections taken off the fast path for good when an application first used a call the redirect path does not honour, by call.", "reason"},
	{"sockaccel_splice_stalled_total", "Sockets an application spliced from while redirected bytes were unread (splice cannot return them: exclude that port or cgroup).", ""},
	{"sockaccel_rcvlowat_lowered_total", "SO_RCVLOWAT calls on sockets that had bytes redirected into them, applied as 1 so that no wait depends on those bytes.", ""},
	{"sockaccel_oob_misread_total", "recv(MSG_OOB) calls on sockets holding redirected bytes, which returned an ordinary byte instead of the urgent one (that service is learned from then on with --learn-splice).", ""},
	{"sockaccel_fionread_misread_total", "ioctl(FIONREAD) calls on sockets holding redirected bytes, on a kernel whose FIONREAD leaves those out, so it reported too little (that service is learned from then on with --learn-splice).", ""},
	{"sockaccel_shutdown_wake_total", "shutdown(SHUT_WR or SHUT_RDWR) calls on blocking accelerated sockets while another thread slept on them, whose recv that wake-up ends with EAGAIN if nothing is queued (that service is learned from then on with --learn-splice).", ""},
	{"sockaccel_directions_resumed_total", "Directions back on the fast path after the receiver read every byte that went through TCP.", ""},
	{"sockaccel_conntrack_closed_total", "Conntrack entries removed, by what removed them.", "by"},
	{"sockaccel_connections_retired_total", "Connections off the fast path both ways for good whose sockets left the sockhash, back to plain TCP.", ""},
	{"sockaccel_lonely_ends_total", "Client ends taken out of the sockhash because their server never joined, back to plain TCP.", ""},
	{"sockaccel_lonely_ends_direct_total", "Client ends sock_ops took out of the sockhash as their accepted end was refused (or conntrack was full), before any byte could reach them, back to plain TCP.", ""},
	{"sockaccel_conntrack_full_total", "Connections not tracked because conntrack was full.", ""},
	{"sockaccel_conntrack_gc_runs_total", "Fallback GC passes (zero while nothing needs collecting).", ""},
	// Added with client_golang; not in the hand-written exposition.
	{"sockaccel_conntrack_created_total", "Conntrack entries created.", ""},
}

// part is the read a counter comes from: the stats array, or the GC state
// that SummarizeConntrack reads.
func (c Counter) part() string {
	if c.BPF != "" {
		return PartStats
	}
	return PartConntrack
}

// counterFields maps each counter's key to its field: the field of Stats or
// Conntrack (within Status) with that json tag.
var counterFields = func() map[string][]int {
	out := map[string][]int{}
	st := reflect.TypeFor[Status]()
	for _, embedded := range []string{"Stats", "Conntrack"} {
		f, _ := st.FieldByName(embedded)
		for i := range f.Type.NumField() {
			sub := f.Type.Field(i)
			if key := jsonKey(sub); key != "" && sub.Type.Kind() == reflect.Uint64 {
				out[key] = []int{f.Index[0], i}
			}
		}
	}
	return out
}()

// Value reads counter key from s.
func (s *Status) Value(key string) uint64 {
	idx, ok := counterFields[key]
	if !ok {
		panic(fmt.Sprintf("stats: no counter %q", key))
	}
	return reflect.ValueOf(s).Elem().FieldByIndex(idx).Uint()
}

func jsonKey(f reflect.StructField) string {
	tag := f.Tag.Get("json")
	for i := range len(tag) {
		if tag[i] == ',' {
			return tag[:i]
		}
	}
	return tag
}

// ReadStats sums the per-CPU counters of sa_stats into Stats, as the
// Counters table maps them.
func ReadStats(m *ebpf.Map) (Stats, error) {
	var perCPU []bpfobj.AccelAccelStats
	if err := m.Lookup(uint32(0), &perCPU); err != nil {
		return Stats{}, fmt.Errorf("read stats: %w", err)
	}
	var s Status
	out := reflect.ValueOf(&s).Elem()
	for _, c := range Counters {
		if c.BPF == "" {
			continue
		}
		dst := out.FieldByIndex(counterFields[c.Key])
		for i := range perCPU {
			dst.SetUint(dst.Uint() + reflect.ValueOf(&perCPU[i]).Elem().FieldByName(c.BPF).Uint())
		}
	}
	return s.Stats, nil
}

// familyCounters are the samples of a counter family, in table order.
func familyCounters(name string) []Counter {
	var out []Counter
	for _, c := range Counters {
		if c.Metric == name {
			out = append(out, c)
		}
	}
	return out
}
