//go:build linux

// Package accel is the sockaccel daemon's core, wired from one package per
// job (see README's Layout):
//
//	bpfobj     bpf2go bindings of bpf/*.c: programs, maps, key and value types
//	hostfs     bpffs and tracefs mounts, the kernel feature probe
//	pins       the pin dir: layout, lock, ownership checks
//	datapath   load, attach, adopt and pin; config flags, exclusions, policy, health
//	conntrack  the connection listing, fallback GC, lonely ends, retirement
//	detect     use-detector events, learned services, behaviour probes
//	teardown   cleanup, drain and the backlog reader
//	stats      status, counters and the Prometheus collector
//
// An Accelerator is a running daemon: New starts (or adopts) the datapath
// and hands its maps to the jobs that watch and maintain them.
package accel

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/conntrack"
	"github.com/sockaccel/sockaccel/accel/datapath"
	"github.com/sockaccel/sockaccel/accel/detect"
	"github.com/sockaccel/sockaccel/accel/teardown"
	"github.com/sockaccel/sockaccel/cgroup"
)

// Accelerator holds the loaded objects of a running daemon. Closing it
// releases the daemon's handles only: pinned maps, the pinned sock_ops link
// and the sk_msg attachment keep accelerating until Cleanup.
type Accelerator struct {
	dp  *datapath.Datapath
	ct  *conntrack.Tracker
	det *detect.Detector
	log *zap.Logger
	// What the behaviour probes found (probed on a fresh start, read from
	// the pins when adopting).
	behaviour KernelBehaviour
	retiring  sync.WaitGroup // retirements OffExcluded started
}

// New probes the kernel, loads the programs (reusing compatible pinned maps),
// attaches sk_msg to the SOCKHASH and sock_ops to the cgroup, and pins all of
// it. If pins from an earlier run exist they are adopted: the sock_ops link is
// updated in place rather than attached a second time.
//
// On failure nothing new stays attached or pinned.
func New(cfg Config, log *zap.Logger) (*Accelerator, error) {
	dp, err := datapath.Open(cfg, log)
	if err != nil {
		return nil, err
	}
	a := &Accelerator{dp: dp, log: log}
	// Before anything is attached (see detect.Behaviour).
	a.behaviour = detect.Behaviour(dp.Config(), dp.Adopted(), log)
	// Where FIONREAD leaves redirected bytes out, its users are found at
	// their first call and their service learned, like splice's.
	if !a.behaviour.FIONREADCountsRedirected() {
		dp.DetectFIONREAD()
	}
	if err := dp.Start(); err != nil {
		return nil, err
	}
	a.ct = dp.Conntrack()
	a.det = detect.New(dp, log)
	// A restart with new exclusions reaches the connections the pins kept
	// accelerating; a fresh start has none.
	if dp.Adopted() {
		ex := Exclusions{Ports: cfg.ExcludePorts, CIDRs: cfg.ExcludeCIDRs, Cgroups: cfg.ExcludeCgroups}
		moved, err := dp.OffExcluded(ex, a.spawnRetire)
		if err != nil {
			log.Warn("take excluded live connections off the fast path", zap.Error(err))
		} else if moved > 0 {
			log.Info("took excluded live connections off the fast path", zap.Int("connections", moved))
		}
	}
	return a, nil
}

// spawnRetire runs one retirement OffExcluded started in the background.
func (a *Accelerator) spawnRetire(f func()) {
	a.retiring.Add(1)
	go func() {
		defer a.retiring.Done()
		f()
	}()
}

// RunGC runs the fallback conntrack garbage collector until ctx is done. It
// does no periodic work while conntrack is empty, and nothing at all when
// conntrack is disabled.
func (a *Accelerator) RunGC(ctx context.Context, interval time.Duration) error {
	if a.dp.Config().DisableConntrack {
		<-ctx.Done()
		return nil
	}
	return a.ct.RunGC(ctx, interval)
}

// SetGCInterval changes how often the fallback GC runs while connections
// are tracked, also while RunGC runs (from its next pass on).
func (a *Accelerator) SetGCInterval(d time.Duration) { a.ct.SetGCInterval(d) }

// CollectGarbage runs one GC pass now and returns how many entries it
// removed.
func (a *Accelerator) CollectGarbage() (int, error) { return a.ct.CollectGarbage() }

// GCMetrics times the GC's passes (for the metrics collector).
func (a *Accelerator) GCMetrics() *conntrack.GCMetrics { return a.ct.GCMetrics() }

// Conns lists the tracked connections.
func (a *Accelerator) Conns() ([]Conn, error) { return a.ct.List() }

// EachConn calls fn with each tracked connection, one at a time (see
// conntrack.Each): a listing of any size costs the daemon one entry of
// memory.
func (a *Accelerator) EachConn(fn func(Conn) error) error { return a.ct.Each(fn) }

// PinDir is the bpffs directory the daemon pins into.
func (a *Accelerator) PinDir() string { return a.dp.PinDir() }

// Adopted reports whether New took over pins left by an earlier run.
func (a *Accelerator) Adopted() bool { return a.dp.Adopted() }

// SetExclusions replaces the excluded ports and CIDRs (learned exclusions
// are kept apart, in sa_learned). New connections see the change at once;
// programs are not reloaded.
func (a *Accelerator) SetExclusions(ports []uint16, cidrs []netip.Prefix) error {
	return a.dp.SetExclusions(ports, cidrs)
}

// SetExcludedCgroups replaces the excluded cgroup subtrees. New connections
// see the change at once.
func (a *Accelerator) SetExcludedCgroups(targets []cgroup.Target) error {
	return a.dp.SetExcludedCgroups(targets)
}

// ApplyExclusions replaces the excluded ports, CIDRs and cgroups, then takes
// every live connection that now matches off the fast path, both ways for
// good, and hands it back to plain TCP (see datapath.OffExcluded): no byte
// is lost and no application sees an error. It returns how many connections
// it started taking off; retirement goes on in the background.
func (a *Accelerator) ApplyExclusions(ex Exclusions) (int, error) {
	if err := a.dp.WriteExclusions(ex); err != nil {
		return 0, err
	}
	return a.dp.OffExcluded(ex, a.spawnRetire)
}

// Health checks the programs and pins (see datapath.Datapath.Health).
func (a *Accelerator) Health() Health { return a.dp.Health() }

// RunEvents handles what the use detector reports until ctx is done (see
// detect.Detector.RunEvents).
func (a *Accelerator) RunEvents(ctx context.Context) error { return a.det.RunEvents(ctx) }

// WatchEvents calls f for each detector event until ctx is done.
func (a *Accelerator) WatchEvents(ctx context.Context, f func(UseEvent)) error {
	return a.det.WatchEvents(ctx, f)
}

// LearnedExclusions lists the services kept on TCP after use events.
func (a *Accelerator) LearnedExclusions() ([]LearnedExclusion, error) {
	return a.det.LearnedExclusions()
}

// KernelBehaviour is what the behaviour probes found, as this start probed
// or read it from the pins.
func (a *Accelerator) KernelBehaviour() KernelBehaviour { return a.behaviour }

// Cleanup is what 'run --cleanup-on-exit' does on the way out: CleanupWith
// under the lock the daemon already holds, so no other sockaccel can start
// in between. The daemon's links are closed first (their pins keep them
// until cleanup removes those); its maps stay open until Close.
func (a *Accelerator) Cleanup(ctx context.Context, opts CleanupOptions) error {
	a.dp.CloseLinks()
	return teardown.CleanupLocked(ctx, a.dp.Config().PinDir, a.log.Named("cleanup"), opts)
}

// Close releases this process's handles and the pin dir's lock. Pins keep
// everything running.
func (a *Accelerator) Close() error { return a.dp.Close() }
