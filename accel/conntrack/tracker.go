//go:build linux

package conntrack

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/teardown"
)

// Tracker is a running daemon's hold on conntrack: the maps it loaded, the
// GC and the set of connections being retired.
type Tracker struct {
	maps *bpfobj.AccelMaps
	log  *zap.Logger

	gcOnce  sync.Once
	gcState *gc

	leavingMu sync.Mutex
	leaving   map[uint64]bool // cookies of connections being retired
}

// New returns the tracker of the maps a daemon loaded; log is the daemon's.
func New(maps *bpfobj.AccelMaps, log *zap.Logger) *Tracker {
	return &Tracker{maps: maps, log: log, leaving: map[uint64]bool{}}
}

// RunGC runs the fallback conntrack garbage collector until ctx is done. It
// does no periodic work while conntrack is empty.
func (t *Tracker) RunGC(ctx context.Context, interval time.Duration) error {
	return t.gc().run(ctx, interval)
}

// SetGCInterval changes how often the fallback GC runs while connections
// are tracked, also while RunGC runs (from its next pass on).
func (t *Tracker) SetGCInterval(d time.Duration) { t.gc().setInterval(d) }

// CollectGarbage runs one GC pass now and returns how many entries it
// removed.
func (t *Tracker) CollectGarbage() (int, error) {
	removed, _, err := t.gc().collect()
	return removed, err
}

// GCMetrics times the GC's passes, for the metrics collector.
func (t *Tracker) GCMetrics() *GCMetrics { return t.gc().metrics }

// List lists the tracked connections.
func (t *Tracker) List() ([]Conn, error) { return List(t.maps.SaConntrack) }

// Each calls fn with each tracked connection, one at a time (see Each): a
// listing of any size costs the daemon one entry of memory.
func (t *Tracker) Each(fn func(Conn) error) error { return Each(t.maps.SaConntrack, fn) }

func (t *Tracker) gc() *gc {
	t.gcOnce.Do(func() {
		t.gcState = &gc{
			conntrack: t.maps.SaConntrack,
			sockhash:  t.maps.SaSockhash,
			state:     t.maps.SaGc,
			wake:      t.maps.SaGcWake,
			log:       t.log.Named("gc"),
			reset:     make(chan struct{}, 1),
			metrics:   newGCMetrics(),
		}
	})
	return t.gcState
}

// ClaimRetire marks the connection whose active (else passive) end has
// cookie as being retired; false if it already is.
func (t *Tracker) ClaimRetire(cookie uint64) bool {
	t.leavingMu.Lock()
	defer t.leavingMu.Unlock()
	if t.leaving[cookie] {
		return false
	}
	t.leaving[cookie] = true
	return true
}

// ReleaseRetire ends what ClaimRetire started.
func (t *Tracker) ReleaseRetire(cookie uint64) {
	t.leavingMu.Lock()
	delete(t.leaving, cookie)
	t.leavingMu.Unlock()
}

// EndByCookie finds the tracked end whose socket cookie is cookie: its
// sockhash key and its addresses.
func (t *Tracker) EndByCookie(cookie uint64) (bpfobj.AccelSockKey, netip.AddrPort, netip.AddrPort, error) {
	key, entry, err := t.EntryByCookie(cookie)
	if err != nil {
		return key, netip.AddrPort{}, netip.AddrPort{}, err
	}
	client, server := key.Client(), key.Server()
	if entry.Cookie[0] == cookie {
		return key, client, server, nil
	}
	return bpfobj.Mirror(key), server, client, nil
}

// QueuedAt reads the redirected bytes unread at the socket of one sockhash
// key.
func (t *Tracker) QueuedAt(key bpfobj.AccelSockKey) (uint32, error) {
	return teardown.QueuedAt(t.maps.SaSockhash, key)
}
