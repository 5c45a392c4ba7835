//go:build linux

package detect

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/conntrack"
	"github.com/sockaccel/sockaccel/cgroup"
)

// LearnedExclusion is a service kept on TCP after a UseEvent. A service is
// the port its clients connect to, seen from one end (End), and the cgroup
// of the sockets at that end: a proxy that splices from its upstream
// connections keeps only its own connections to that port on TCP, not
// every tenant's service that happens to listen on the same port number.
// Learned exclusions are pinned: they outlive daemon restarts until cleanup.
type LearnedExclusion struct {
	Port uint16 `json:"port"`
	// "server": the service's own sockets (local port Port); "client": the
	// sockets that connect to Port.
	End string `json:"end"`
	// The cgroup v2 id of the sockets at End; 0 matches every cgroup (an
	// exclusion learned by an older version, which knew only ports).
	CgroupID uint64 `json:"cgroup_id"`
	// That cgroup's path below the cgroup v2 root, while it exists.
	Cgroup    string    `json:"cgroup"`
	Reasons   []string  `json:"reasons"`
	Comm      string    `json:"comm"`
	PID       uint32    `json:"pid"`
	LearnedAt time.Time `json:"learned_at"`
}

// Learning is rate-limited so that a process misusing sockets on purpose
// cannot fill the learned map (1024 entries) or keep the daemon busy:
// at most learnBurst new services, then one per learnEvery.
const (
	learnBurst = 16
	learnEvery = 4 * time.Second
)

var errLearnRate = errors.New("learned exclusion rate limit reached")

var errSeen = errors.New("socket already reported")

// seenUses remembers which sockets already reported which use, so that a
// socket repeating a call costs one map lookup, not a conntrack walk.
type seenUses struct {
	mu sync.Mutex
	m  map[seenUse]struct{}
}

type seenUse struct {
	cookie uint64
	reason string
}

// seenUsesMax bounds the memory; past it the set starts over, which costs
// at most one more conntrack walk per socket.
const seenUsesMax = 4096

func (s *seenUses) first(cookie uint64, reason string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := seenUse{cookie, reason}
	if _, ok := s.m[k]; ok {
		return false
	}
	if s.m == nil || len(s.m) >= seenUsesMax {
		s.m = make(map[seenUse]struct{})
	}
	s.m[k] = struct{}{}
	return true
}

// learnLimiter is a token bucket for new learned exclusions.
type learnLimiter struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func (l *learnLimiter) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.tokens = learnBurst
	} else {
		l.tokens = min(learnBurst, l.tokens+float64(now.Sub(l.last))/float64(learnEvery))
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// learn records the service behind ev's socket in sa_learned and turns the
// lookup on. fresh is false when that service was already learned for this
// reason.
func (a *Detector) learn(ev UseEvent) (l LearnedExclusion, fresh bool, err error) {
	// A socket reports every misread call (FIONREAD in a loop, say); one
	// look at its connection per socket and reason is enough.
	if !a.seen.first(ev.Cookie, ev.Reason) {
		return l, false, errSeen
	}
	key, err := a.serviceOf(ev.Cookie)
	if errors.Is(err, conntrack.ErrConnGone) {
		// Closed before the event was handled (the close callback removed
		// its conntrack entry): the event itself names the socket.
		key, err = serviceFromEvent(ev)
	}
	if err != nil {
		return l, false, err
	}
	var use bpfobj.AccelLearnedUse
	err = a.maps.SaLearned.Lookup(key, &use)
	switch {
	case err == nil:
	case errors.Is(err, ebpf.ErrKeyNotExist):
		if !a.learnRate.allow(time.Now()) {
			return l, false, errLearnRate
		}
		use = bpfobj.AccelLearnedUse{Pid: ev.PID, UnixTime: uint64(time.Now().Unix())}
		copy(use.Comm[:], cChars(ev.Comm))
	default:
		return l, false, fmt.Errorf("read learned exclusion: %w", err)
	}
	bit := uint32(useBits[ev.Reason])
	fresh = use.Reasons&bit == 0
	use.Reasons |= bit
	if fresh {
		if err := a.maps.SaLearned.Put(key, use); err != nil {
			return l, false, fmt.Errorf("pin learned exclusion for port %d: %w", key.Port, err)
		}
		if err := a.dp.UpdateFlags(uint32(bpfobj.AccelConfigFlagsCONFIG_F_LEARNED), 0); err != nil {
			return l, false, err
		}
	}
	return learnedExclusion(key, use), fresh, nil
}

var useBits = map[string]bpfobj.AccelUseReason{
	"splice":   bpfobj.AccelUseReasonUSE_SPLICE,
	"oob":      bpfobj.AccelUseReasonUSE_OOB,
	"fionread": bpfobj.AccelUseReasonUSE_FIONREAD,
	"shutdown": bpfobj.AccelUseReasonUSE_SHUTDOWN,
}

// serviceOf finds the tracked connection one of whose ends has cookie and
// names its service from that end.
func (a *Detector) serviceOf(cookie uint64) (bpfobj.AccelLearnedKey, error) {
	key, entry, err := a.ct.EntryByCookie(cookie)
	if err != nil {
		return bpfobj.AccelLearnedKey{}, err
	}
	side := bpfobj.AccelCtSideCT_SIDE_ACTIVE
	if entry.Cookie[bpfobj.AccelCtSideCT_SIDE_PASSIVE] == cookie {
		side = bpfobj.AccelCtSideCT_SIDE_PASSIVE
	}
	lk := bpfobj.AccelLearnedKey{CgroupId: entry.CgroupId[side], Port: bpfobj.NetToHost16(key.RemotePort), End: uint8(bpfobj.AccelLearnedEndLEARNED_CLIENT)}
	if side == bpfobj.AccelCtSideCT_SIDE_PASSIVE {
		lk.End = uint8(bpfobj.AccelLearnedEndLEARNED_SERVER)
	}
	return lk, nil
}

// serviceFromEvent names the service of an event whose connection is gone:
// the socket was the server's end if its process listens on its local port
// (in its own network namespace, as /proc/PID/net shows it), else a
// client's end.
func serviceFromEvent(ev UseEvent) (bpfobj.AccelLearnedKey, error) {
	if ev.CgroupID == 0 {
		return bpfobj.AccelLearnedKey{}, errors.New("event names no cgroup")
	}
	listening, err := listensOn(ev.PID, ev.LocalPort)
	if err != nil {
		return bpfobj.AccelLearnedKey{}, fmt.Errorf("connection closed before it was learned, and its process's listeners are unknown: %w", err)
	}
	if listening {
		return bpfobj.AccelLearnedKey{CgroupId: ev.CgroupID, Port: ev.LocalPort, End: uint8(bpfobj.AccelLearnedEndLEARNED_SERVER)}, nil
	}
	return bpfobj.AccelLearnedKey{CgroupId: ev.CgroupID, Port: ev.RemotePort, End: uint8(bpfobj.AccelLearnedEndLEARNED_CLIENT)}, nil
}

// listensOn reports whether a TCP socket listens on port in pid's network
// namespace.
func listensOn(pid uint32, port uint16) (bool, error) {
	const listen = "0A"
	want := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if errors.Is(err, os.ErrNotExist) && f == "tcp6" {
			continue // IPv6 disabled
		}
		if err != nil {
			return false, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st ...
			fields := strings.Fields(line)
			if len(fields) > 3 && fields[3] == listen && strings.HasSuffix(fields[1], want) {
				return true, nil
			}
		}
	}
	return false, nil
}

func learnedExclusion(k bpfobj.AccelLearnedKey, use bpfobj.AccelLearnedUse) LearnedExclusion {
	l := LearnedExclusion{
		Port:      k.Port,
		End:       "client",
		CgroupID:  k.CgroupId,
		Reasons:   useReasons(use.Reasons),
		Comm:      cString(use.Comm[:]),
		PID:       use.Pid,
		LearnedAt: time.Unix(int64(use.UnixTime), 0).UTC(),
	}
	if k.End == uint8(bpfobj.AccelLearnedEndLEARNED_SERVER) {
		l.End = "server"
	}
	return l
}

// ReadLearned lists the learned exclusions in m (sa_learned), by port.
func ReadLearned(m *ebpf.Map) ([]LearnedExclusion, error) {
	var (
		key bpfobj.AccelLearnedKey
		use bpfobj.AccelLearnedUse
		out = []LearnedExclusion{}
	)
	it := m.Iterate()
	for it.Next(&key, &use) {
		out = append(out, learnedExclusion(key, use))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read learned exclusions: %w", err)
	}
	if root, err := cgroup.V2Root(); err == nil {
		for i := range out {
			if out[i].CgroupID != 0 {
				out[i].Cgroup, _ = cgroup.PathByID(root, out[i].CgroupID)
			}
		}
	}
	slices.SortFunc(out, func(x, y LearnedExclusion) int {
		return cmp.Or(cmp.Compare(x.Port, y.Port), cmp.Compare(x.End, y.End), cmp.Compare(x.CgroupID, y.CgroupID))
	})
	return out, nil
}

// LearnedExclusions lists the services kept on TCP after use events.
func (a *Detector) LearnedExclusions() ([]LearnedExclusion, error) {
	return ReadLearned(a.maps.SaLearned)
}
