//go:build linux

package stats

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/conntrack"
	"github.com/sockaccel/sockaccel/accel/datapath"
)

// gauge is a size or state metric read from Status (counters are in
// Counters and families). Every name, help sentence and label is what the
// hand-written exposition of earlier versions emitted, so dashboards and
// alerts keep working. Add, never rename.
type gauge struct {
	name, help string
	part       string // the read it needs (Part*), "" for none
	value      func(s *Status) float64
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// gauges reads everything from a Status built without walking the cgroup
// tree (see Collector).
var gauges = []gauge{
	{"sockaccel_attached", "Whether the sock_ops program is attached to its cgroup (1) or not (0).", PartLink,
		func(s *Status) float64 { return boolValue(s.Attached) }},
	{"sockaccel_sockhash_entries", "Sockets currently in the sockhash.", PartSockhash,
		func(s *Status) float64 { return float64(s.SockhashEntries) }},
	{"sockaccel_sockhash_entries_limit", "Sockets the sockhash can hold (two per connection).", "",
		func(s *Status) float64 { return float64(2 * uint64(s.MaxConns)) }},
	{"sockaccel_conntrack_entries", "Connections currently tracked.", PartConntrack,
		func(s *Status) float64 { return float64(s.Conntrack.Entries) }},
	{"sockaccel_conntrack_entries_limit", "Connections the conntrack map can hold.", PartConntrack,
		func(s *Status) float64 { return float64(s.Conntrack.Capacity) }},
	{"sockaccel_learned_exclusions", "Services kept on TCP by a learned exclusion (pinned until cleanup).", PartLearned,
		func(s *Status) float64 { return float64(s.LearnedExclusionsCount) }},
}

// Parts of a scrape that can fail on their own; the scrape error counter
// carries one of these as its part label.
const (
	PartStats     = "stats"
	PartSockhash  = "sockhash"
	PartConntrack = "conntrack"
	PartLink      = "sock_ops_link"
	PartLearned   = "learned"
	partHealth    = "health"
)

// Source is what the collector reads at scrape time: the running daemon.
type Source interface {
	// Aggregates reads counters and sizes from the maps the daemon
	// holds; each part (Part*) that failed is in failed, the rest is
	// valid.
	Aggregates() (s Status, failed map[string]error)
	Health() datapath.Health
	GCMetrics() *conntrack.GCMetrics
}

// Collector is a prometheus.Collector that reads the daemon's BPF state at
// scrape time, from the maps and links the daemon holds open; it never walks
// the cgroup tree. It reads the stats, config and GC state arrays (one
// lookup each), counts learned exclusions, runs the health check (which
// opens each pin to compare it with the held object: a few syscalls a pin),
// and still walks two maps, because the kernel keeps no element count that
// user space can read: the sockhash key by key (sockhash has no batch
// operations) and conntrack in batches.
type Collector struct {
	src     Source
	log     *zap.Logger
	version string

	gaugeDescs   []*prometheus.Desc
	familyDescs  []*prometheus.Desc
	buildInfo    *prometheus.Desc
	programs     *prometheus.Desc
	healthy      *prometheus.Desc
	gcRunning    *prometheus.Desc
	scrapeErrors *prometheus.CounterVec
}

// NewCollector returns the collector of src's metrics; register it on a
// registry of its own.
func NewCollector(src Source, version string, log *zap.Logger) *Collector {
	c := &Collector{src: src, log: log, version: version}
	for _, g := range gauges {
		c.gaugeDescs = append(c.gaugeDescs, prometheus.NewDesc(g.name, g.help, nil, nil))
	}
	for _, f := range families {
		var labels []string
		if f.label != "" {
			labels = []string{f.label}
		}
		c.familyDescs = append(c.familyDescs, prometheus.NewDesc(f.name, f.help, labels, nil))
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
	for _, p := range []string{PartStats, PartSockhash, PartConntrack, PartLink, PartLearned, partHealth} {
		c.scrapeErrors.WithLabelValues(p)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.gaugeDescs {
		ch <- d
	}
	for _, d := range c.familyDescs {
		ch <- d
	}
	ch <- c.buildInfo
	ch <- c.programs
	ch <- c.healthy
	ch <- c.gcRunning
	c.scrapeErrors.Describe(ch)
	c.src.GCMetrics().Duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, c.version)

	s, failed := c.src.Aggregates()
	for part, err := range failed {
		c.scrapeErrors.WithLabelValues(part).Inc()
		c.log.Warn("read for metrics", zap.String("part", part), zap.Error(err))
	}
	for i, g := range gauges {
		if g.part == "" || failed[g.part] == nil {
			ch <- prometheus.MustNewConstMetric(c.gaugeDescs[i], prometheus.GaugeValue, g.value(&s))
		}
	}
	for i, f := range families {
		// A failed read leaves out the families it feeds rather than
		// reporting zeros.
		members := familyCounters(f.name)
		if slices.ContainsFunc(members, func(m Counter) bool { return failed[m.part()] != nil }) {
			continue
		}
		for _, m := range members {
			if f.label == "" {
				ch <- prometheus.MustNewConstMetric(c.familyDescs[i], prometheus.CounterValue, float64(s.Value(m.Key)))
			} else {
				ch <- prometheus.MustNewConstMetric(c.familyDescs[i], prometheus.CounterValue, float64(s.Value(m.Key)), m.Label)
			}
		}
	}

	h := c.src.Health()
	if h.Err() != nil {
		c.scrapeErrors.WithLabelValues(partHealth).Inc()
		c.log.Warn("read for metrics", zap.String("part", partHealth), zap.Error(h.Err()))
	} else {
		for _, p := range h.Programs {
			ch <- prometheus.MustNewConstMetric(c.programs, prometheus.GaugeValue, boolValue(p.Attached), p.Name)
		}
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, boolValue(h.OK()))
	}

	g := c.src.GCMetrics()
	running := 0.0
	if start := g.Started(); start != 0 {
		running = time.Since(time.Unix(0, start)).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(c.gcRunning, prometheus.GaugeValue, running)
	g.Duration.Collect(ch)
	c.scrapeErrors.Collect(ch)
}

// MetricNames lists the names of the metrics the Collector exposes (a
// histogram by its base name), for checking dashboards and alert rules.
func MetricNames() []string {
	names := []string{"sockaccel_build_info", "sockaccel_program_attached", "sockaccel_healthy",
		"sockaccel_conntrack_gc_running_seconds", "sockaccel_scrape_errors_total", "sockaccel_conntrack_gc_duration_seconds"}
	for _, g := range gauges {
		names = append(names, g.name)
	}
	for _, f := range families {
		names = append(names, f.name)
	}
	return names
}
