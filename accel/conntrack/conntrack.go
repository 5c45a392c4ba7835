//go:build linux

// Package conntrack owns what the daemon knows of each accelerated
// connection: the one listing of sa_conntrack (sockaccel conns, the API's
// /conns and the tests all read it through Each), the fallback GC, lonely
// client ends and the retirement of connections that left the fast path for
// good.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/cgroup"
)

// MapName is the conntrack map's pin name inside the pin dir.
const MapName = bpfobj.AccelMapSaConntrack

// DefaultGCInterval is how often the fallback GC runs while conntrack holds
// entries. It only matters for closes the kernel never reported; the close
// callback removes every other entry at once.
const DefaultGCInterval = 30 * time.Second

// Conn is one tracked connection, as `sockaccel conns` lists it.
type Conn struct {
	Client      netip.AddrPort `json:"client"`
	Server      netip.AddrPort `json:"server"`
	Age         time.Duration  `json:"-"`
	AgeSeconds  float64        `json:"age_seconds"`
	BytesC2S    uint64         `json:"bytes_client_to_server"`
	BytesS2C    uint64         `json:"bytes_server_to_client"`
	MsgsC2S     uint64         `json:"msgs_client_to_server"`
	MsgsS2C     uint64         `json:"msgs_server_to_client"`
	ClientLocal bool           `json:"client_local"`
	ServerLocal bool           `json:"server_local"`
	CgroupIDs   []uint64       `json:"cgroup_ids"`
	Cgroups     []string       `json:"cgroups"`
	State       string         `json:"state"`
	Cookies     [2]uint64      `json:"cookies"`
}

// List reads every conntrack entry from m.
func List(m *ebpf.Map) ([]Conn, error) {
	var out []Conn
	err := Each(m, func(c Conn) error {
		out = append(out, c)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Each calls fn with each conntrack entry of m in map order, holding one
// at a time; an error from fn stops the walk and is returned. It is the one
// listing: sockaccel conns (from the pins), the API's /conns (streamed) and
// the tests all read connections through it, so each row names its
// cgroups the same way (relative to the cgroup v2 root, "" for one gone;
// each cgroup looked up once per walk).
func Each(m *ebpf.Map, fn func(Conn) error) error {
	now := monotonicNow()
	names := cgroupNames()
	var (
		key   bpfobj.AccelSockKey
		entry bpfobj.AccelCtEntry
	)
	it := m.Iterate()
	for it.Next(&key, &entry) {
		c := Conn{
			Client:      key.Client(),
			Server:      key.Server(),
			MsgsC2S:     entry.Msgs[0],
			MsgsS2C:     entry.Msgs[1],
			BytesC2S:    entry.Bytes[0],
			BytesS2C:    entry.Bytes[1],
			ClientLocal: entry.Cookie[0] != 0,
			ServerLocal: entry.Cookie[1] != 0,
			Cookies:     entry.Cookie,
			State:       ctState(entry),
		}
		if now > entry.EstablishedNs {
			c.Age = time.Duration(now - entry.EstablishedNs)
			c.AgeSeconds = c.Age.Seconds()
		}
		for side := range 2 {
			if entry.Cookie[side] != 0 {
				c.CgroupIDs = append(c.CgroupIDs, entry.CgroupId[side])
			}
		}
		c.Cgroups = names(c.CgroupIDs)
		if err := fn(c); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate conntrack: %w", err)
	}
	return nil
}

func ctState(e bpfobj.AccelCtEntry) string {
	switch {
	case e.Closed&1 != 0 && e.Closed&2 == 0:
		return "client-closed"
	case e.Closed&2 != 0 && e.Closed&1 == 0:
		return "server-closed"
	case e.Closed != 0:
		return "closed"
	}
	return "established"
}

// cgroupNames returns a function that names cgroups by id, relative to the
// v2 root ("" for one gone), looking each id up once.
func cgroupNames() func(ids []uint64) []string {
	root, _ := cgroup.V2Root()
	names := map[uint64]string{}
	return func(ids []uint64) []string {
		out := make([]string, 0, len(ids))
		for _, id := range ids {
			name, ok := names[id]
			if !ok && root != "" {
				if p, err := cgroup.PathByID(root, id); err == nil {
					name = cgroup.Target{Path: p, Root: root}.Rel()
				}
				names[id] = name
			}
			out = append(out, name)
		}
		return out
	}
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

// gc removes conntrack entries whose sockets are gone although no close
// callback said so: programs replaced mid-connection, sockets whose cgroup
// lost the program, anything else the kernel did not report to us.
type gc struct {
	conntrack, sockhash, state, wake *ebpf.Map
	log                              *zap.Logger
	mu                               sync.Mutex // serialises writes to the gc_state entry
	// The pass interval, changeable while the GC runs (reload); reset
	// tells a running loop to pick up a new one at once.
	interval atomic.Int64
	reset    chan struct{}
	metrics  *GCMetrics
}

// setInterval changes the pass interval of a running or future GC loop.
func (g *gc) setInterval(d time.Duration) {
	g.interval.Store(int64(d))
	select {
	case g.reset <- struct{}{}:
	default:
	}
}

// alive reports whether any local end of the entry still exists. The
// sockhash is the authority: the kernel unlinks a socket from it when the
// socket is closed, and a user-space lookup returns the socket's cookie, so
// a reused key cannot pass for the old connection.
func (g *gc) alive(key bpfobj.AccelSockKey, e bpfobj.AccelCtEntry) bool {
	for side := range 2 {
		if e.Cookie[side] == 0 || e.Closed&(1<<side) != 0 {
			continue
		}
		k := key
		if side == 1 {
			k = bpfobj.Mirror(key)
		}
		var cookie uint64
		if err := g.sockhash.Lookup(&k, &cookie); err == nil && cookie == e.Cookie[side] {
			return true
		}
	}
	return false
}

// collect runs one GC pass: it reads the whole map first, then deletes what
// it collected (deleting while iterating a hash map can skip or revisit
// entries). It returns how many entries it removed and how many remain.
func (g *gc) collect() (removed, remaining int, err error) {
	start := time.Now()
	g.metrics.started.Store(start.UnixNano())
	defer func() {
		g.metrics.started.Store(0)
		g.metrics.Duration.Observe(time.Since(start).Seconds())
	}()
	var (
		key   bpfobj.AccelSockKey
		entry bpfobj.AccelCtEntry
		dead  []bpfobj.AccelSockKey
		total int
	)
	it := g.conntrack.Iterate()
	for it.Next(&key, &entry) {
		total++
		if !g.alive(key, entry) {
			dead = append(dead, key)
		}
	}
	if err := it.Err(); err != nil {
		return 0, total, fmt.Errorf("iterate conntrack: %w", err)
	}
	for _, k := range dead {
		// Gone already means the close callback won the race.
		if err := g.conntrack.Delete(&k); err == nil {
			removed++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return removed, total - removed, fmt.Errorf("delete conntrack entry: %w", err)
		}
	}
	if err := g.update(func(s *bpfobj.AccelGcState) {
		s.Armed = 1
		s.ClosedGc += uint64(removed)
		s.GcRuns++
	}); err != nil {
		return removed, total - removed, err
	}
	return removed, total - removed, nil
}

func (g *gc) update(f func(*bpfobj.AccelGcState)) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var s bpfobj.AccelGcState
	if err := g.state.Lookup(uint32(0), &s); err != nil {
		return fmt.Errorf("read gc state: %w", err)
	}
	f(&s)
	if err := g.state.Put(uint32(0), &s); err != nil {
		return fmt.Errorf("write gc state: %w", err)
	}
	return nil
}

func (g *gc) empty() (bool, error) {
	var key bpfobj.AccelSockKey
	err := g.conntrack.NextKey(nil, &key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return true, nil
	}
	return false, err
}

// run is the GC loop. While conntrack is empty it sleeps on the BPF wake-up
// ring buffer, so an idle daemon has no timer at all; while entries exist it
// runs a pass every interval.
func (g *gc) run(ctx context.Context, interval time.Duration) error {
	rd, err := ringbuf.NewReader(g.wake)
	if err != nil {
		return fmt.Errorf("open gc wake-up ring buffer: %w", err)
	}
	defer rd.Close()
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()

	for {
		// Disarm first, then look: an entry created after the look finds
		// the GC disarmed and wakes us.
		if err := g.update(func(s *bpfobj.AccelGcState) { s.Armed = 0 }); err != nil {
			return err
		}
		empty, err := g.empty()
		if err != nil {
			return fmt.Errorf("check conntrack: %w", err)
		}
		if empty {
			if _, err := rd.Read(); err != nil {
				if errors.Is(err, ringbuf.ErrClosed) {
					return nil
				}
				return fmt.Errorf("wait for conntrack entries: %w", err)
			}
		}
		if err := g.update(func(s *bpfobj.AccelGcState) { s.Armed = 1 }); err != nil {
			return err
		}
		if err := g.active(ctx, interval); err != nil || ctx.Err() != nil {
			return err
		}
	}
}

// active runs passes until the map is empty or ctx is done.
func (g *gc) active(ctx context.Context, interval time.Duration) error {
	if d := time.Duration(g.interval.Load()); d > 0 {
		interval = d
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.reset:
			if d := time.Duration(g.interval.Load()); d > 0 && d != interval {
				interval = d
				ticker.Reset(interval)
			}
			continue
		case <-ticker.C:
		}
		start := time.Now()
		removed, remaining, err := g.collect()
		if err != nil {
			return err
		}
		if removed > 0 {
			g.log.Info("removed conntrack entries whose close was not reported",
				zap.Int("removed", removed), zap.Int("remaining", remaining), zap.Duration("took", time.Since(start)))
		} else {
			g.log.Debug("gc pass", zap.Int("remaining", remaining), zap.Duration("took", time.Since(start)))
		}
		if remaining == 0 {
			return nil
		}
	}
}
