//go:build linux

package conntrack

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// GCMetrics times the fallback GC's passes; the stats collector exposes
// them.
type GCMetrics struct {
	Duration prometheus.Histogram
	started  atomic.Int64 // start of the pass under way (unix ns), 0 between passes
}

// Started is when the pass under way started (unix ns), 0 between passes.
func (m *GCMetrics) Started() int64 { return m.started.Load() }

func newGCMetrics() *GCMetrics {
	return &GCMetrics{Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sockaccel_conntrack_gc_duration_seconds",
		Help:    "Time each fallback GC pass took, from the first key read to the last delete.",
		Buckets: []float64{.0001, .001, .01, .1, .5, 1, 2.5, 5, 10, 30},
	})}
}
