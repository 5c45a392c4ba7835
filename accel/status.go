//go:build linux

package accel

import (
	"fmt"
	"time"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/detect"
	"github.com/sockaccel/sockaccel/accel/stats"
	"github.com/sockaccel/sockaccel/cgroup"
)

// Status reads the running daemon's view, what ReadStatus reads from the
// pins, from the maps the daemon holds. It lists the learned exclusions with
// their cgroups' paths, which walks the cgroup tree once per excluded
// cgroup: it serves the root-only API socket, not scrapes.
func (a *Accelerator) Status() (Status, error) {
	s, err := a.AggregateStatus()
	if err != nil {
		return s, err
	}
	if s.CgroupID != 0 && s.Cgroup == "" {
		// Attached elsewhere than the daemon put it: say where.
		if root, err := cgroup.V2Root(); err == nil {
			s.Cgroup, _ = cgroup.PathByID(root, s.CgroupID)
		}
	}
	learned, err := detect.ReadLearned(a.dp.Maps().SaLearned)
	if err != nil {
		return s, err
	}
	s.LearnedExclusions = learned
	s.LearnedExclusionsCount = len(learned)
	return s, nil
}

// AggregateStatus is Status without the learned exclusions' rows (their
// count stays): counters and sizes only, read from the maps the daemon
// holds without opening a pin or walking the cgroup tree, except for the
// stored kernel probe results.
func (a *Accelerator) AggregateStatus() (Status, error) {
	s, failed := a.Aggregates()
	for _, part := range []string{stats.PartLink, stats.PartSockhash, stats.PartConntrack, stats.PartStats, stats.PartLearned} {
		if err := failed[part]; err != nil {
			return s, err
		}
	}
	if b, ok, err := detect.ReadBehaviour(a.PinDir()); err != nil {
		return s, err
	} else if ok {
		s.KernelProbes = b.Probes
		s.KernelProbesKernel = b.Kernel
		s.KernelProbesAt = b.ProbedAt.Format(time.RFC3339Nano)
	}
	return s, nil
}

// Stats reads the running daemon's counters.
func (a *Accelerator) Stats() (Stats, error) { return stats.ReadStats(a.dp.Maps().SaStats) }

// SockhashEntries counts the sockets currently in the SOCKHASH.
func (a *Accelerator) SockhashEntries() (uint64, error) {
	return bpfobj.CountKeys(a.dp.Maps().SaSockhash)
}

// Aggregates reads the daemon's state from the maps it holds open, without
// opening pins or walking the cgroup tree: what /metrics and the TCP
// /status serve. Each part (stats.Part*) that failed is in failed; the rest
// is valid.
func (a *Accelerator) Aggregates() (s Status, failed map[string]error) {
	failed = map[string]error{}
	cfg, maps := a.dp.Config(), a.dp.Maps()
	s = Status{PinDir: cfg.PinDir, KernelProbes: []KernelProbe{}, LearnedExclusions: []LearnedExclusion{}}
	if id, err := a.dp.SockOpsCgroupID(); err != nil {
		failed[stats.PartLink] = err
	} else {
		s.Attached = id != 0
		s.CgroupID = id
		if id != 0 && id == a.dp.CgroupID() {
			s.Cgroup = cfg.Cgroup.Path
		}
	}
	s.MaxConns = maps.SaSockhash.MaxEntries() / 2
	if n, err := bpfobj.CountKeys(maps.SaSockhash); err != nil {
		failed[stats.PartSockhash] = fmt.Errorf("count sockhash entries: %w", err)
	} else {
		s.SockhashEntries = n
	}
	if ct, err := stats.SummarizeConntrack(maps.SaConfig, maps.SaConntrack, maps.SaGc); err != nil {
		failed[stats.PartConntrack] = err
	} else {
		s.Conntrack = ct
	}
	if st, err := stats.ReadStats(maps.SaStats); err != nil {
		failed[stats.PartStats] = err
	} else {
		s.Stats = st
	}
	if n, err := bpfobj.CountKeys(maps.SaLearned); err != nil {
		failed[stats.PartLearned] = fmt.Errorf("count learned exclusions: %w", err)
	} else {
		s.LearnedExclusionsCount = int(n)
	}
	return s, failed
}
