//go:build linux

package accel

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// counter is one metric of the table below: every name, help sentence and
// label is what the hand-written exposition of earlier versions emitted, so
// dashboards and alerts keep working. Add, never rename.
type counter struct {
	name, help string
	typ        prometheus.ValueType
	label      string // the one label name, or "" for a single sample
	samples    func(s *Status) []sample
}

type sample struct {
	label string
	value float64
}

func one(v uint64) []sample { return []sample{{value: float64(v)}} }

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// counters reads everything from a Status built without walking the cgroup
// tree (see Collector).
var counters = []counter{
	{"sockaccel_attached", "Whether the sock_ops program is attached to its cgroup (1) or not (0).", prometheus.GaugeValue, "",
		func(s *Status) []sample { return []sample{{value: boolValue(s.Attached)}} }},
	{"sockaccel_sockhash_entries", "Sockets currently in the sockhash.", prometheus.GaugeValue, "",
		func(s *Status) []sample { return one(s.SockhashEntries) }},
	{"sockaccel_sockhash_entries_limit", "Sockets the sockhash can hold (two per connection).", prometheus.GaugeValue, "",
		func(s *Status) []sample { return one(2 * uint64(s.MaxConns)) }},
	{"sockaccel_conntrack_entries", "Connections currently tracked.", prometheus.GaugeValue, "",
		func(s *Status) []sample { return one(s.Conntrack.Entries) }},
	{"sockaccel_conntrack_entries_limit", "Connections the conntrack map can hold.", prometheus.GaugeValue, "",
		func(s *Status) []sample { return one(uint64(s.Conntrack.Capacity)) }},
	{"sockaccel_msg_redirected_total", "Sends moved straight into the peer socket.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.RedirectedMsgs) }},
	{"sockaccel_msg_redirected_bytes_total", "Bytes moved straight into the peer socket.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.RedirectedBytes) }},
	{"sockaccel_msg_passed_total", "Sends of tracked sockets left on the TCP path.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.PassedMsgs) }},
	{"sockaccel_msg_passed_bytes_total", "Bytes of tracked sockets left on the TCP path.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.PassedBytes) }},
	{"sockaccel_redirect_errors_total", "Sends whose peer left the sockhash after this socket had redirected to it.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.RedirectErrors) }},
	{"sockaccel_sockets_established_total", "Established TCP sockets seen in the target cgroup.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.Established) }},
	{"sockaccel_sockets_accelerated_total", "Sockets put in the sockhash.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.Inserted) }},
	{"sockaccel_sockets_not_accelerated_total", "Established sockets not put in the sockhash, by reason.", prometheus.CounterValue, "reason",
		func(s *Status) []sample {
			return []sample{
				{"map_full", float64(s.MapFull)},
				{"excluded_port", float64(s.ExcludedPort)},
				{"excluded_cidr", float64(s.ExcludedCIDR)},
				{"excluded_cgroup", float64(s.ExcludedCgroup)},
				{"early_data", float64(s.EarlyData)},
				{"insert_error", float64(s.InsertErrors)},
				{"storage_error", float64(s.StorageErrors)},
				{"disabled", float64(s.Disabled)},
				{"blocking", float64(s.Blocking)},
				{"ulp", float64(s.ULP)},
				{"excluded_learned", float64(s.ExcludedLearned)},
				{"repair", float64(s.Repair)},
				{"no_peer", float64(s.NoPeer)},
			}
		}},
	{"sockaccel_sends_backlog_total", "Sends handed to TCP because the receiver was further behind than the backlog bound.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.OffBacklog) }},
	{"sockaccel_directions_off_total", "Connection directions taken off the fast path for good, by reason.", prometheus.CounterValue, "reason",
		func(s *Status) []sample { return []sample{{"setsockopt", float64(s.OffSetsockopt)}} }},
	{"sockaccel_connections_off_total", "Connections taken off the fast path for good when an application first used a call the redirect path does not honour, by call.", prometheus.CounterValue, "reason",
		func(s *Status) []sample {
			return []sample{
				{"splice", float64(s.OffSplice)},
				{"waitall", float64(s.OffWaitall)},
				{"oob", float64(s.OffOOB)},
				{"fionread", float64(s.OffFIONREAD)},
			}
		}},
	{"sockaccel_splice_stalled_total", "Sockets an application spliced from while redirected bytes were unread (splice cannot return them: exclude that port or cgroup).", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.SpliceStalled) }},
	{"sockaccel_rcvlowat_lowered_total", "SO_RCVLOWAT calls on sockets that had bytes redirected into them, applied as 1 so that no wait depends on those bytes.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.RcvlowatLowered) }},
	{"sockaccel_oob_misread_total", "recv(MSG_OOB) calls on sockets holding redirected bytes, which returned an ordinary byte instead of the urgent one (that service is learned from then on with --learn-splice).", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.OOBMisread) }},
	{"sockaccel_fionread_misread_total", "ioctl(FIONREAD) calls on sockets holding redirected bytes, on a kernel whose FIONREAD leaves those out, so it reported too little (that service is learned from then on with --learn-splice).", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.FIONREADMisread) }},
	{"sockaccel_directions_resumed_total", "Directions back on the fast path after the receiver read every byte that went through TCP.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.Resumed) }},
	{"sockaccel_conntrack_closed_total", "Conntrack entries removed, by what removed them.", prometheus.CounterValue, "by",
		func(s *Status) []sample {
			return []sample{{"close_callback", float64(s.ClosedDirect)}, {"gc", float64(s.Conntrack.ClosedGC)}}
		}},
	{"sockaccel_connections_retired_total", "Connections off the fast path both ways for good whose sockets left the sockhash, back to plain TCP.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.Conntrack.Retired) }},
	{"sockaccel_lonely_ends_total", "Client ends taken out of the sockhash because their server never joined, back to plain TCP.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.Conntrack.Lonely) }},
	{"sockaccel_conntrack_full_total", "Connections not tracked because conntrack was full.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.CtFull) }},
	{"sockaccel_conntrack_gc_runs_total", "Fallback GC passes (zero while nothing needs collecting).", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.Conntrack.GCRuns) }},
	// Added with client_golang; not in the hand-written exposition.
	{"sockaccel_conntrack_created_total", "Conntrack entries created.", prometheus.CounterValue, "",
		func(s *Status) []sample { return one(s.CtCreated) }},
	{"sockaccel_learned_exclusions", "Services kept on TCP by a learned exclusion (pinned until cleanup).", prometheus.GaugeValue, "",
		func(s *Status) []sample { return one(uint64(s.LearnedExclusionsCount)) }},
}

// Parts of a scrape that can fail on their own; the scrape error counter
// carries one of these as its part label.
const (
	partStats     = "stats"
	partSockhash  = "sockhash"
	partConntrack = "conntrack"
	partLink      = "sock_ops_link"
	partLearned   = "learned"
	partHealth    = "health"
)

// gcMetrics times the fallback GC's passes; the collector exposes them.
type gcMetrics struct {
	duration prometheus.Histogram
	started  atomic.Int64 // start of the pass under way (unix ns), 0 between passes
}

func newGCMetrics() *gcMetrics {
	return &gcMetrics{duration: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sockaccel_conntrack_gc_duration_seconds",
		Help:    "Time each fallback GC pass took, from the first key read to the last delete.",
		Buckets: []float64{.0001, .001, .01, .1, .5, 1, 2.5, 5, 10, 30},
	})}
}

// Collector is a prometheus.Collector that reads the daemon's BPF state at
// scrape time, from the maps and links the daemon holds open; it never walks
// the cgroup tree. It reads the stats, config and GC state arrays (one
// lookup each), counts learned exclusions, runs the health check (which
// opens each pin to compare it with the held object: a few syscalls a pin),
// and reads the sockhash and conntrack element counts from their memlock
// (mapcount.go), so a scrape costs the same at any number of connections.
// Only on kernels before 6.4, which do not expose those counts, does it
// walk the two maps: the sockhash key by key (it has no batch operations),
// conntrack in batches.
type Collector struct {
	a       *Accelerator
	log     *zap.Logger
	version string

	descs        []*prometheus.Desc
	buildInfo    *prometheus.Desc
	programs     *prometheus.Desc
	healthy      *prometheus.Desc
	gcRunning    *prometheus.Desc
	scrapeErrors *prometheus.CounterVec
}

// NewCollector returns the collector of a's metrics; register it on a
// registry of its own.
func NewCollector(a *Accelerator, version string, log *zap.Logger) *Collector {
	c := &Collector{a: a, log: log, version: version}
	for _, m := range counters {
		var labels []string
		if m.label != "" {
			labels = []string{m.label}
		}
		c.descs = append(c.descs, prometheus.NewDesc(m.name, m.help, labels, nil))
	}
	c.buildInfo = prometheus.NewDesc("sockaccel_build_info", "Version of the running sockaccel binary.", []string{"version"}, nil)
	c.programs = prometheus.NewDesc("sockaccel_program_attached",
		"Whether each program is attached where the daemon put it (1) or not (0): sock_ops and setsockopt to the target cgroup through their pinned links, sk_msg to the sockhash.",
		[]string{"program"}, nil)
	c.healthy = prometheus.NewDesc("sockaccel_healthy",
		"Whether every program is attached and every pin is present and is the object the daemon holds (1), as /healthz reports, or not (0).", nil, nil)
	c.gcRunning = prometheus.NewDesc("sockaccel_conntrack_gc_running_seconds",
		"How long the fallback GC pass under way has been running (0 between passes).", nil, nil)
	c.scrapeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sockaccel_scrape_errors_total",
		Help: "Reads of BPF state that failed during a scrape (their metrics were left out of that scrape), by what was read.",
	}, []string{"part"})
	for _, p := range []string{partStats, partSockhash, partConntrack, partLink, partLearned, partHealth} {
		c.scrapeErrors.WithLabelValues(p)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- c.buildInfo
	ch <- c.programs
	ch <- c.healthy
	ch <- c.gcRunning
	c.scrapeErrors.Describe(ch)
	c.a.gc().metrics.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, c.version)

	s, failed := c.a.aggregates()
	for part, err := range failed {
		c.scrapeErrors.WithLabelValues(part).Inc()
		c.log.Warn("read for metrics", zap.String("part", part), zap.Error(err))
	}
	for i, m := range counters {
		if skip := partsOf(m.name); failed[skip[0]] != nil || failed[skip[1]] != nil {
			continue
		}
		for _, sm := range m.samples(&s) {
			if m.label == "" {
				ch <- prometheus.MustNewConstMetric(c.descs[i], m.typ, sm.value)
			} else {
				ch <- prometheus.MustNewConstMetric(c.descs[i], m.typ, sm.value, sm.label)
			}
		}
	}

	h := c.a.Health()
	if h.err != nil {
		c.scrapeErrors.WithLabelValues(partHealth).Inc()
		c.log.Warn("read for metrics", zap.String("part", partHealth), zap.Error(h.err))
	} else {
		for _, p := range h.Programs {
			ch <- prometheus.MustNewConstMetric(c.programs, prometheus.GaugeValue, boolValue(p.Attached), p.Name)
		}
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, boolValue(h.OK()))
	}

	g := c.a.gc().metrics
	running := 0.0
	if start := g.started.Load(); start != 0 {
		running = time.Since(time.Unix(0, start)).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(c.gcRunning, prometheus.GaugeValue, running)
	g.duration.Collect(ch)
	c.scrapeErrors.Collect(ch)
}

// partsOf names the parts of the aggregates a metric comes from, so that a
// failed read leaves out its metrics rather than reporting zeros.
func partsOf(name string) [2]string {
	switch name {
	case "sockaccel_attached":
		return [2]string{partLink}
	case "sockaccel_sockhash_entries":
		return [2]string{partSockhash}
	case "sockaccel_conntrack_entries", "sockaccel_conntrack_entries_limit", "sockaccel_connections_retired_total", "sockaccel_conntrack_gc_runs_total":
		return [2]string{partConntrack}
	case "sockaccel_conntrack_closed_total":
		return [2]string{partConntrack, partStats}
	case "sockaccel_learned_exclusions":
		return [2]string{partLearned}
	case "sockaccel_sockhash_entries_limit":
		return [2]string{}
	}
	return [2]string{partStats}
}

// aggregates reads the daemon's state from the maps it holds open, without
// opening pins or walking the cgroup tree: what /metrics and the TCP
// /status serve. Each part that failed is in failed; the rest is valid.
func (a *Accelerator) aggregates() (s Status, failed map[string]error) {
	failed = map[string]error{}
	s = Status{PinDir: a.cfg.PinDir, KernelProbes: []KernelProbe{}, LearnedExclusions: []LearnedExclusion{}}
	if id, err := a.sockOpsCgroupID(); err != nil {
		failed[partLink] = err
	} else {
		s.Attached = id != 0
		s.CgroupID = id
		if id != 0 && id == a.cgroupID {
			s.Cgroup = a.cfg.Cgroup.Path
		}
	}
	s.MaxConns = a.objs.SaSockhash.MaxEntries() / 2
	if n, err := countElems(a.objs.SaSockhash, countKeys); err != nil {
		failed[partSockhash] = fmt.Errorf("count sockhash entries: %w", err)
	} else {
		s.SockhashEntries = n
	}
	if ct, err := a.conntrackSummary(); err != nil {
		failed[partConntrack] = err
	} else {
		s.Conntrack = ct
	}
	if st, err := readStats(a.objs.SaStats); err != nil {
		failed[partStats] = err
	} else {
		s.Stats = st
	}
	if n, err := countKeys(a.objs.SaLearned); err != nil {
		failed[partLearned] = fmt.Errorf("count learned exclusions: %w", err)
	} else {
		s.LearnedExclusionsCount = int(n)
	}
	return s, failed
}

// MetricNames lists the names of the metrics the Collector exposes (a
// histogram by its base name), for checking dashboards and alert rules.
func MetricNames() []string {
	names := []string{"sockaccel_build_info", "sockaccel_program_attached", "sockaccel_healthy",
		"sockaccel_conntrack_gc_running_seconds", "sockaccel_scrape_errors_total", "sockaccel_conntrack_gc_duration_seconds"}
	for _, m := range counters {
		names = append(names, m.name)
	}
	return names
}
