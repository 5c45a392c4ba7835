//go:build linux

// Package stats turns the datapath's counters and sizes into what users
// read: the Status of sockaccel status (--json keys are a contract), the
// Prometheus collector behind /metrics, and the reading of both from the
// pins without a daemon.
package stats

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/datapath"
	"github.com/sockaccel/sockaccel/accel/detect"
	"github.com/sockaccel/sockaccel/accel/pins"
	"github.com/sockaccel/sockaccel/cgroup"
)

// Status is what the pinned objects say, read without a running daemon.
// JSON keys are a contract with scripts: add, never rename.
type Status struct {
	PinDir          string `json:"pin_dir"`
	Attached        bool   `json:"attached"`
	Cgroup          string `json:"cgroup"`
	CgroupID        uint64 `json:"cgroup_id"`
	SockhashEntries uint64 `json:"sockhash_entries"`
	MaxConns        uint32 `json:"max_conns"`
	// Services kept on TCP after a stalled splice, a misread urgent byte
	// or FIONREAD; pinned, so they outlive restarts until cleanup.
	LearnedExclusions []detect.LearnedExclusion `json:"learned_exclusions"`
	// How many learned exclusions there are: the one thing about them the
	// daemon's TCP /status shows (it lists no services).
	LearnedExclusionsCount int `json:"learned_exclusions_count"`
	// What the behaviour probes found on this kernel when the daemon first
	// started after boot (or since cleanup), with the policy of its last
	// start; empty when nothing was probed.
	KernelProbes []detect.KernelProbe `json:"kernel_probes"`
	// The kernel release probed and when (RFC 3339); empty without probes.
	KernelProbesKernel string `json:"kernel_probes_kernel"`
	KernelProbesAt     string `json:"kernel_probes_at"`
	Stats
	Conntrack
}

// Conntrack summarises connection tracking.
type Conntrack struct {
	Enabled  bool    `json:"conntrack_enabled"`
	Entries  uint64  `json:"conntrack_entries"`
	Capacity uint32  `json:"conntrack_capacity"`
	Load     float64 `json:"conntrack_load"`
	ClosedGC uint64  `json:"closed_gc"`
	GCRuns   uint64  `json:"gc_runs"`
	// Connections off the fast path both ways for good whose sockets the
	// daemon took out of the sockhash, back to plain TCP.
	Retired uint64 `json:"retired"`
	// Client ends the daemon took out of the sockhash because their
	// server never joined (another host, outside the target cgroup,
	// excluded), back to plain TCP.
	Lonely uint64 `json:"lonely"`
}

// Stats are the BPF counters summed over CPUs.
type Stats struct {
	Established     uint64 `json:"established"`
	Inserted        uint64 `json:"inserted"`
	MapFull         uint64 `json:"map_full"`
	InsertErrors    uint64 `json:"insert_errors"`
	ExcludedPort    uint64 `json:"excluded_port"`
	ExcludedCIDR    uint64 `json:"excluded_cidr"`
	ExcludedCgroup  uint64 `json:"excluded_cgroup"`
	EarlyData       uint64 `json:"early_data"`
	StorageErrors   uint64 `json:"storage_errors"`
	Disabled        uint64 `json:"disabled"`
	Blocking        uint64 `json:"blocking"`
	RedirectedMsgs  uint64 `json:"redirected_msgs"`
	RedirectedBytes uint64 `json:"redirected_bytes"`
	PassedMsgs      uint64 `json:"passed_msgs"`
	PassedBytes     uint64 `json:"passed_bytes"`
	RedirectErrors  uint64 `json:"redirect_errors"`
	CtCreated       uint64 `json:"conntrack_created"`
	CtFull          uint64 `json:"conntrack_full"`
	ClosedDirect    uint64 `json:"closed_direct"`
	// Sends handed to TCP because the receiver was past the backlog bound.
	OffBacklog uint64 `json:"off_backlog"`
	// Directions taken off the fast path for good (SO_RCVLOWAT, TCP_ULP,
	// SO_ZEROCOPY).
	OffSetsockopt uint64 `json:"off_setsockopt"`
	// Directions back on the fast path once the receiver read every byte
	// that had gone through TCP.
	Resumed uint64 `json:"resumed"`
	// Connections taken off the fast path for good when one end first
	// used splice, recv(MSG_WAITALL) or MSG_OOB.
	OffSplice  uint64 `json:"off_splice"`
	OffWaitall uint64 `json:"off_waitall"`
	OffOOB     uint64 `json:"off_oob"`
	// Sockets spliced from while redirected bytes were unread: those
	// connections stall (see the README's compatibility matrix).
	SpliceStalled uint64 `json:"splice_stalled"`
	// SO_RCVLOWAT set on a socket that had bytes redirected into it,
	// applied as 1 so that no wait depends on those bytes.
	RcvlowatLowered uint64 `json:"rcvlowat_lowered"`
	// recv(MSG_OOB) calls on a socket holding redirected bytes: they
	// returned the first of those instead of the urgent byte.
	OOBMisread uint64 `json:"oob_misread"`
	// Not accelerated: the socket had a ULP (MPTCP subflows, kTLS),
	// which the kernel refuses in a sockhash.
	ULP uint64 `json:"ulp"`
	// Not accelerated: a learned exclusion matched the socket.
	ExcludedLearned uint64 `json:"excluded_learned"`
	// Not accelerated: the socket was in TCP_REPAIR mode, whose chosen
	// sequence numbers could claim another connection's key.
	Repair uint64 `json:"repair"`
	// ioctl(FIONREAD) calls on sockets holding redirected bytes, on a
	// kernel whose FIONREAD leaves those out: they reported too little.
	FIONREADMisread uint64 `json:"fionread_misread"`
	// Connections taken off the fast path for good when one end first
	// asked FIONREAD (only where the kernel gets it wrong).
	OffFIONREAD uint64 `json:"off_fionread"`
	// Not accelerated: an accepted socket whose client is not in the
	// sockhash (another host, outside the target cgroup, excluded,
	// refused, blocking in conservative mode).
	NoPeer uint64 `json:"no_peer"`
	// Not accelerated: a client whose SYN had no room left for the
	// pairing token option (TCP-MD5, a Fast Open cookie, other options).
	TokenNoRoom uint64 `json:"token_no_room"`
	// Not accelerated: a client answered by a listener in scope whose
	// SYN-ACK did not echo its pairing token (stripped on the way, a SYN
	// cookie, no room in the SYN-ACK).
	TokenUnconfirmed uint64 `json:"token_unconfirmed"`
	// Client ends sock_ops took out of the sockhash again before any byte
	// could reach them: their accepted end was refused, or conntrack was
	// full. Plain TCP sockets again.
	LonelyDirect uint64 `json:"lonely_direct"`
	// shutdown(SHUT_WR/SHUT_RDWR) calls on blocking accelerated sockets
	// while another thread slept on them: that thread's recv was woken
	// into EAGAIN if nothing was queued.
	ShutdownWake uint64 `json:"shutdown_wake"`
}

// ReadStatus reads the pins in pinDir. A pin dir with nothing in it reports
// attached=false and zero counters.
func ReadStatus(pinDir string) (Status, error) {
	s := Status{PinDir: pinDir, KernelProbes: []detect.KernelProbe{}}
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if l, err := link.LoadPinnedLink(filepath.Join(pinDir, pins.SockOpsLink), nil); err == nil {
		id, err := datapath.LinkCgroupID(l)
		l.Close()
		if err != nil {
			return s, err
		}
		// A detached cgroup link reports cgroup id 0.
		s.Attached = id != 0
		s.CgroupID = id
		if id != 0 {
			if root, err := cgroup.V2Root(); err == nil {
				if p, err := cgroup.PathByID(root, id); err == nil {
					s.Cgroup = p
				}
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("load pinned sock_ops link: %w", err)
	}

	if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpfobj.AccelMapSaSockhash), nil); err == nil {
		defer m.Close()
		s.MaxConns = m.MaxEntries() / 2
		n, err := bpfobj.CountKeys(m)
		if err != nil {
			return s, fmt.Errorf("count sockhash entries: %w", err)
		}
		s.SockhashEntries = n
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("load pinned sockhash: %w", err)
	}

	if b, ok, err := detect.ReadBehaviour(pinDir); err != nil {
		return s, err
	} else if ok {
		s.KernelProbes = b.Probes
		s.KernelProbesKernel = b.Kernel
		s.KernelProbesAt = b.ProbedAt.Format(time.RFC3339Nano)
	}

	ct, err := readConntrack(pinDir)
	if err != nil {
		return s, err
	}
	s.Conntrack = ct

	s.LearnedExclusions = []detect.LearnedExclusion{}
	if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpfobj.AccelMapSaLearned), nil); err == nil {
		learned, err := detect.ReadLearned(m)
		m.Close()
		if err != nil {
			return s, err
		}
		s.LearnedExclusions = learned
		s.LearnedExclusionsCount = len(learned)
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("load pinned learned exclusions: %w", err)
	}

	if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpfobj.AccelMapSaStats), nil); err == nil {
		defer m.Close()
		st, err := ReadStats(m)
		if err != nil {
			return s, err
		}
		s.Stats = st
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("load pinned stats: %w", err)
	}
	return s, nil
}

func readConntrack(pinDir string) (Conntrack, error) {
	maps := make([]*ebpf.Map, 3)
	for i, name := range []string{bpfobj.AccelMapSaConfig, bpfobj.AccelMapSaConntrack, bpfobj.AccelMapSaGc} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Conntrack{}, fmt.Errorf("load pinned %s: %w", name, err)
		}
		defer m.Close()
		maps[i] = m
	}
	return SummarizeConntrack(maps[0], maps[1], maps[2])
}

// SummarizeConntrack reads the conntrack summary from the config, conntrack
// and GC state maps; a nil map (not pinned) leaves its part zero.
func SummarizeConntrack(config, conntrack, gc *ebpf.Map) (Conntrack, error) {
	var ct Conntrack
	if config != nil {
		var cfg bpfobj.AccelAccelConfig
		if err := config.Lookup(uint32(0), &cfg); err != nil {
			return ct, fmt.Errorf("read config: %w", err)
		}
		ct.Enabled = cfg.Flags&uint32(bpfobj.AccelConfigFlagsCONFIG_F_NO_CONNTRACK) == 0
	}
	if conntrack != nil {
		n, err := countConntrack(conntrack)
		if err != nil {
			return ct, fmt.Errorf("count conntrack entries: %w", err)
		}
		ct.Entries = n
		ct.Capacity = conntrack.MaxEntries()
		if ct.Capacity > 0 {
			ct.Load = float64(n) / float64(ct.Capacity)
		}
	}
	if gc != nil {
		var g bpfobj.AccelGcState
		if err := gc.Lookup(uint32(0), &g); err != nil {
			return ct, fmt.Errorf("read gc state: %w", err)
		}
		ct.ClosedGC, ct.GCRuns, ct.Retired, ct.Lonely = g.ClosedGc, g.GcRuns, g.Retired, g.Lonely
	}
	return ct, nil
}

// countBatch is how many conntrack entries one batch syscall reads.
const countBatch = 256

// countConntrack counts conntrack entries a batch at a time: one syscall per
// countBatch entries instead of one per entry. Kernels or maps without batch
// lookups fall back to walking the keys.
func countConntrack(m *ebpf.Map) (uint64, error) {
	keys := make([]bpfobj.AccelSockKey, countBatch)
	vals := make([]bpfobj.AccelCtEntry, countBatch)
	var (
		cursor ebpf.MapBatchCursor
		n      uint64
	)
	for {
		got, err := m.BatchLookup(&cursor, keys, vals, nil)
		n += uint64(got)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return bpfobj.CountKeys(m)
		}
		if err != nil {
			return n, err
		}
	}
}
