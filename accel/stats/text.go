//go:build linux

package stats

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// textLine is one line of `sockaccel status`: a label and what follows it.
// A line lists counters as Text=value (list, in that order), prints keys'
// values with format, or is written by rows (several lines, or none).
type textLine struct {
	label  string
	list   []string // counter keys, shown by their Text
	format string   // for keys, after the list if any
	keys   []string
	value  func(s *Status) string
	rows   func(s *Status) []string
}

// textLines is the text output of `sockaccel status`; its counters come
// from Counters (TestCounterTable checks that each one a line names exists
// and that each counter with a Line is listed in that line).
var textLines = []textLine{
	{label: "attached", value: func(s *Status) string { return fmt.Sprint(s.Attached) }},
	{label: "cgroup", value: func(s *Status) string { return s.Cgroup }},
	{label: "pin dir", value: func(s *Status) string { return s.PinDir }},
	{label: "sockhash entries", value: func(s *Status) string {
		return fmt.Sprintf("%d / %d", s.SockhashEntries, 2*uint64(s.MaxConns))
	}},
	{label: "redirected", format: "%d msgs, %d bytes", keys: []string{"redirected_msgs", "redirected_bytes"}},
	{label: "passed to TCP", format: "%d msgs, %d bytes", keys: []string{"passed_msgs", "passed_bytes"}},
	{label: "redirect errors", format: "%d", keys: []string{"redirect_errors"}},
	{label: "sockets established", format: "%d (inserted %d)", keys: []string{"established", "inserted"}},
	{label: "conntrack", value: func(s *Status) string {
		return fmt.Sprintf("%d / %d entries (%.1f%%), enabled=%v", s.Conntrack.Entries, s.Conntrack.Capacity, 100*s.Conntrack.Load, s.Conntrack.Enabled)
	}},
	{label: "closed", format: "direct=%d gc=%d (gc runs %d)", keys: []string{"closed_direct", "closed_gc", "gc_runs"}},
	{label: "retired to plain TCP", format: "%d", keys: []string{"retired"}},
	{label: "lonely client ends to plain TCP", format: "%d (at establishment %d)", keys: []string{"lonely", "lonely_direct"}},
	{label: lineNotAccelerated, list: []string{"map_full", "excluded_port", "excluded_cidr", "excluded_cgroup", "excluded_learned", "early_data", "insert_errors", "disabled", "blocking", "ulp", "repair", "no_peer", "token_no_room", "token_unconfirmed"}},
	{label: lineOff, list: []string{"off_backlog", "off_setsockopt", "off_splice", "off_waitall", "off_oob", "off_fionread"}, format: " (resumed %d)", keys: []string{"resumed"}},
	{label: "splice stalled", format: "%d", keys: []string{"splice_stalled"}},
	{label: "urgent data misread", format: "%d", keys: []string{"oob_misread"}},
	{label: "FIONREAD under-reported", format: "%d", keys: []string{"fionread_misread"}},
	{label: "shutdown woke a reader", format: "%d", keys: []string{"shutdown_wake"}},
	{label: "learned exclusion", rows: func(s *Status) []string {
		var out []string
		for _, l := range s.LearnedExclusions {
			out = append(out, fmt.Sprintf("port %d (%s end, cgroup %s) after %s by %s", l.Port, l.End, learnedCgroup(l.CgroupID, l.Cgroup), strings.Join(l.Reasons, ","), l.Comm))
		}
		return out
	}},
	{label: "SO_RCVLOWAT lowered", format: "%d", keys: []string{"rcvlowat_lowered"}},
	{label: "kernel probes", rows: func(s *Status) []string {
		if len(s.KernelProbes) == 0 {
			return []string{"none stored"}
		}
		return []string{s.KernelProbesKernel + ", " + s.KernelProbesAt}
	}},
}

// Lines that list counters (Counter.Line).
const (
	lineNotAccelerated = "not accelerated"
	lineOff            = "taken off the fast path"
)

func learnedCgroup(id uint64, path string) string {
	switch {
	case id == 0:
		return "any"
	case path != "":
		return path
	}
	return fmt.Sprintf("id %d, gone", id)
}

// WriteText writes s as `sockaccel status` shows it.
func WriteText(w io.Writer, s Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, l := range textLines {
		var text string
		switch {
		case l.rows != nil:
			for _, r := range l.rows(&s) {
				fmt.Fprintf(tw, "%s:\t%s\n", l.label, r)
			}
			continue
		case l.value != nil:
			text = l.value(&s)
		default:
			var parts []string
			for _, key := range l.list {
				parts = append(parts, fmt.Sprintf("%s=%d", counterByKey[key].Text, s.Value(key)))
			}
			text = strings.Join(parts, " ")
			if l.format != "" {
				args := make([]any, len(l.keys))
				for i, key := range l.keys {
					args[i] = s.Value(key)
				}
				text += fmt.Sprintf(l.format, args...)
			}
		}
		fmt.Fprintf(tw, "%s:\t%s\n", l.label, text)
	}
	// The probes' own lines are not label: value pairs.
	for _, p := range s.KernelProbes {
		fmt.Fprintf(tw, "  %s\n", p)
	}
	return tw.Flush()
}

var counterByKey = func() map[string]Counter {
	m := map[string]Counter{}
	for _, c := range Counters {
		m[c.Key] = c
	}
	return m
}()
