//go:build linux

package accel

import (
	"context"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/conntrack"
	"github.com/sockaccel/sockaccel/accel/datapath"
	"github.com/sockaccel/sockaccel/accel/detect"
	"github.com/sockaccel/sockaccel/accel/hostfs"
	"github.com/sockaccel/sockaccel/accel/pins"
	"github.com/sockaccel/sockaccel/accel/stats"
	"github.com/sockaccel/sockaccel/accel/teardown"
)

// What cmd/sockaccel uses, under the names it always had: the types and
// functions live in the package that owns their job.
type (
	Config           = datapath.Config
	Exclusions       = datapath.Exclusions
	Health           = datapath.Health
	ProgramState     = datapath.ProgramState
	PinLock          = pins.PinLock
	Conn             = conntrack.Conn
	Status           = stats.Status
	Stats            = stats.Stats
	Conntrack        = stats.Conntrack
	Collector        = stats.Collector
	CleanupOptions   = teardown.CleanupOptions
	KernelProbe      = detect.KernelProbe
	KernelBehaviour  = detect.KernelBehaviour
	LearnedExclusion = detect.LearnedExclusion
	UseEvent         = detect.UseEvent
)

const (
	DefaultMaxConns     = datapath.DefaultMaxConns
	DefaultBPFFS        = hostfs.DefaultBPFFS
	DefaultPinDir       = hostfs.DefaultPinDir
	DefaultTracefs      = hostfs.DefaultTracefs
	DefaultDrainTimeout = teardown.DefaultDrainTimeout
	DefaultGCInterval   = conntrack.DefaultGCInterval
	ConntrackMapName    = conntrack.MapName

	ProbeFIONREAD      = detect.ProbeFIONREAD
	ProbeRcvbufCharged = detect.ProbeRcvbufCharged
	ProbeSplice        = detect.ProbeSplice
	ProbeWaitall       = detect.ProbeWaitall
	ProbeRcvlowat      = detect.ProbeRcvlowat
)

var (
	ErrLocked       = pins.ErrLocked
	ErrDrainTimeout = teardown.ErrDrainTimeout
	ErrPrivateBPFFS = hostfs.ErrPrivateBPFFS
)

// LockPinDir takes the pin dir's lock for a daemon (see pins.LockPinDir).
func LockPinDir(pinDir string) (*PinLock, error) { return pins.LockPinDir(pinDir) }

// EnsureBPFFS makes sure pinDir can be created on bpffs (see hostfs).
func EnsureBPFFS(pinDir string) error { return hostfs.EnsureBPFFS(pinDir) }

// EnsureTracefs makes sure the syscall tracepoints can be looked up.
func EnsureTracefs() error { return hostfs.EnsureTracefs() }

// ReadStatus reads the pins in pinDir without a daemon.
func ReadStatus(pinDir string) (Status, error) { return stats.ReadStatus(pinDir) }

// Cleanup stops acceleration and removes the pins (see teardown.Cleanup).
func Cleanup(pinDir string, log *zap.Logger) error { return teardown.Cleanup(pinDir, log) }

// CleanupWith is Cleanup with options (see teardown.CleanupWith).
func CleanupWith(ctx context.Context, pinDir string, log *zap.Logger, opts CleanupOptions) error {
	return teardown.CleanupWith(ctx, pinDir, log, opts)
}

// ListConns reads every conntrack entry from m (see conntrack.Each).
func ListConns(m *ebpf.Map) ([]Conn, error) { return conntrack.List(m) }

// ProbeBehaviour runs the behaviour probes (see detect.ProbeBehaviour).
func ProbeBehaviour() KernelBehaviour { return detect.ProbeBehaviour() }

// NewCollector returns the collector of a's metrics; register it on a
// registry of its own.
func NewCollector(a *Accelerator, version string, log *zap.Logger) *Collector {
	return stats.NewCollector(a, version, log)
}

// MetricNames lists the names of the metrics the Collector exposes.
func MetricNames() []string { return stats.MetricNames() }
