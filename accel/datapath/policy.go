//go:build linux

package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/conntrack"
	"github.com/sockaccel/sockaccel/cgroup"
)

// Exclusions are what the operator keeps off the fast path: connections
// with either end on one of Ports or in one of CIDRs, and sockets of
// processes in one of Cgroups or anywhere below them.
type Exclusions struct {
	Ports   []uint16
	CIDRs   []netip.Prefix
	Cgroups []cgroup.Target
}

// WriteExclusions replaces the excluded ports, CIDRs and cgroups: new
// connections see the change at once; OffExcluded then reaches the live
// ones.
//
// Cgroups are resolved by path now: a cgroup deleted and recreated since
// the last call is a new cgroup (a new id), and only this call excludes it.
func (a *Datapath) WriteExclusions(ex Exclusions) error {
	ids, err := cgroupIDs(ex.Cgroups)
	if err != nil {
		return err
	}
	set, err := a.writeExclusions(ex.Ports, ex.CIDRs)
	if err != nil {
		return err
	}
	if err := a.writeExcludedCgroups(ex.Cgroups, ids); err != nil {
		return err
	}
	if len(ids) > 0 {
		set |= uint32(bpfobj.AccelConfigFlagsCONFIG_F_EXCL_CGROUPS)
	}
	all := uint32(bpfobj.AccelConfigFlagsCONFIG_F_EXCL_PORTS | bpfobj.AccelConfigFlagsCONFIG_F_EXCL_CIDRS | bpfobj.AccelConfigFlagsCONFIG_F_EXCL_CGROUPS)
	if err := a.UpdateFlags(set, all&^set); err != nil {
		return err
	}
	a.exclMu.Lock()
	a.cfg.ExcludeCgroups, a.exclCgroupIDs = ex.Cgroups, ids
	a.exclMu.Unlock()
	return nil
}

// cgroupIDs resolves each cgroup's path to its id now.
func cgroupIDs(targets []cgroup.Target) ([]uint64, error) {
	ids := make([]uint64, 0, len(targets))
	for _, t := range targets {
		id, err := cgroup.Inode(t.Path)
		if err != nil {
			return nil, fmt.Errorf("exclude cgroup %s: %w", t.Path, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// subtreeIDs lists the ids of the cgroups at and below each target: the
// programs exclude a socket whose cgroup has an excluded ancestor, and a
// conntrack entry records only the socket's own cgroup.
func subtreeIDs(targets []cgroup.Target) (map[uint64]bool, error) {
	ids := make(map[uint64]bool)
	for _, t := range targets {
		err := filepath.WalkDir(t.Path, func(path string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed under the walk
			}
			if err != nil {
				return err
			}
			if !d.IsDir() {
				return nil
			}
			id, err := cgroup.Inode(path)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			ids[id] = true
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("list cgroups below %s: %w", t.Path, err)
		}
	}
	return ids, nil
}

// excludedConn is a live connection that matches an exclusion.
type excludedConn struct {
	key    bpfobj.AccelSockKey
	cookie [2]uint64
	off    uint32 // its direction bits when found
}

// inSockhash reports whether a socket of the entry is still in the
// sockhash (checked by cookie).
func (a *Datapath) inSockhash(key bpfobj.AccelSockKey, e bpfobj.AccelCtEntry) bool {
	for side, k := range [2]bpfobj.AccelSockKey{key, bpfobj.Mirror(key)} {
		var got uint64
		if e.Cookie[side] != 0 && a.objs.SaSockhash.Lookup(&k, &got) == nil && got == e.Cookie[side] {
			return true
		}
	}
	return false
}

// matcher tells whether a conntrack entry matches the exclusions.
type matcher struct {
	ports   []uint16
	cidrs   []netip.Prefix
	cgroups map[uint64]bool
}

func (m matcher) match(key bpfobj.AccelSockKey, e bpfobj.AccelCtEntry) bool {
	for _, p := range []uint16{bpfobj.NetToHost16(key.LocalPort), bpfobj.NetToHost16(key.RemotePort)} {
		if slices.Contains(m.ports, p) {
			return true
		}
	}
	for _, addr := range []netip.Addr{bpfobj.KeyAddr(key.LocalIp), bpfobj.KeyAddr(key.RemoteIp)} {
		for _, p := range m.cidrs {
			if p.Contains(addr) {
				return true
			}
		}
	}
	for side := range 2 {
		if e.Cookie[side] != 0 && m.cgroups[e.CgroupId[side]] {
			return true
		}
	}
	return false
}

// sweepAttempts bounds how often one sweep restarts its walk of conntrack
// when entries keep leaving under it.
const sweepAttempts = 5

// OffExcluded takes every live connection that matches ex off the fast
// path, both ways for good, and hands it back to plain TCP (retired; see
// retireExcluded for the order): no byte is lost and no application sees an
// error. It returns how many connections it started taking off; spawn runs
// each retirement in the background (the caller owns those goroutines), as
// for a connection whose ends both used a call the redirect path does not
// honour. Live connections are found through conntrack, so with conntrack
// disabled only new connections see an exclusion.
func (a *Datapath) OffExcluded(ex Exclusions, spawn func(func())) (int, error) {
	if a.cfg.DisableConntrack {
		return 0, nil
	}
	ids, err := subtreeIDs(ex.Cgroups)
	if err != nil {
		return 0, err
	}
	m := matcher{ports: ex.Ports, cidrs: ex.CIDRs, cgroups: ids}
	if len(m.ports) == 0 && len(m.cidrs) == 0 && len(m.cgroups) == 0 {
		return 0, nil
	}
	var conns []excludedConn
	for range sweepAttempts {
		if conns, err = a.excludedConns(m); !errors.Is(err, ebpf.ErrIterationAborted) {
			break
		}
	}
	if err != nil {
		return 0, err
	}
	moved := 0
	for _, c := range conns {
		// Once per connection, also when exclusions change again while
		// it is leaving, or the programs announced it off both ways.
		cookie := c.anyCookie()
		if !a.ct.ClaimRetire(cookie) {
			continue
		}
		res, err := a.connOff(c, intoPassive)
		if err != nil {
			a.ct.ReleaseRetire(cookie)
			return moved, err
		}
		if res == bpfobj.PolicyPolicyResultPOLICY_GONE {
			a.ct.ReleaseRetire(cookie)
			continue // closed meanwhile
		}
		if c.off != bothWays {
			moved++
		}
		a.log.Debug("excluded connection leaving the fast path", zap.Uint64("cookie", cookie), zap.Uint32("off_before", c.off))
		spawn(func() {
			defer a.ct.ReleaseRetire(cookie)
			a.retireExcluded(c)
		})
	}
	return moved, nil
}

// Direction d is the one sent by side d (see struct ct_entry).
const (
	active      = int(bpfobj.AccelCtSideCT_SIDE_ACTIVE)
	passive     = int(bpfobj.AccelCtSideCT_SIDE_PASSIVE)
	intoPassive = 1 << active
	bothWays    = 3
)

func (c excludedConn) anyCookie() uint64 {
	if c.cookie[active] != 0 {
		return c.cookie[active]
	}
	return c.cookie[passive]
}

// retireExcluded hands an excluded connection back to plain TCP, one end
// at a time, so that the end that accept()ed never receives through the
// redirect path while sending through TCP. That combination is what a
// blocking reader cannot survive: every socket in the sockhash receives
// through tcp_bpf_recvmsg, which waits once and returns EAGAIN when a
// wake-up finds nothing queued, and the ACKs of a socket's own TCP sends
// wake its readers whenever send-buffer space frees up. Taking both
// directions off at once and retiring both sockets together (conntrack.RetireConn)
// failed a blocking Python echo server's recv with EAGAIN in 5 of 10 runs
// of TestExclusionReachesLiveBlockingPeers.
//
// The accepting end (X) keeps redirecting its sends while the connecting
// end (Y) sends through TCP; once X holds nothing redirected unread, X
// leaves the sockhash (its sends are plain TCP from then on), then Y does
// once it holds nothing unread. Y is the end exposed meanwhile: in the
// default conservative mode it was in non-blocking mode when it connected,
// where EAGAIN is an ordinary answer. Both ends blocking (--conservative=
// false) leaves Y as exposed as any connection that goes off both ways.
func (a *Datapath) retireExcluded(c excludedConn) {
	cookie := c.anyCookie()
	start := time.Now()
	time.Sleep(conntrack.RetireGrace)
	r, ok := a.ct.WaitDrained(cookie, passive)
	if !ok {
		a.log.Debug("excluded connection closed before its accepting end left the sockhash", zap.Uint64("cookie", cookie), zap.Duration("after", time.Since(start)))
		return
	}
	removed := a.ct.RemoveSides(r, passive)
	a.log.Debug("excluded connection's accepting end left the sockhash", zap.Uint64("cookie", cookie), zap.Int("removed", removed), zap.Duration("after", time.Since(start)))
	// Nothing runs sk_msg on X's sends any more; the bit keeps the entry
	// saying what the connection is.
	if _, err := a.connOff(c, bothWays); err != nil {
		a.log.Warn("take an excluded connection off the fast path", zap.Error(err))
		return
	}
	// Sends of X redirected just before it left land in Y first.
	time.Sleep(conntrack.RetireGrace)
	if r, ok = a.ct.WaitDrained(cookie, active); !ok {
		a.log.Debug("excluded connection closed before its connecting end left the sockhash", zap.Uint64("cookie", cookie), zap.Duration("after", time.Since(start)))
		return
	}
	removed += a.ct.RemoveSides(r, active)
	a.ct.CountRetired(removed)
	a.log.Debug("excluded connection retired", zap.Uint64("cookie", cookie), zap.Int("removed", removed), zap.Duration("after", time.Since(start)))
}

func (a *Datapath) excludedConns(m matcher) ([]excludedConn, error) {
	var (
		out   []excludedConn
		key   bpfobj.AccelSockKey
		entry bpfobj.AccelCtEntry
	)
	it := a.objs.SaConntrack.Iterate()
	for it.Next(&key, &entry) {
		if !m.match(key, entry) {
			continue
		}
		// Off both ways already: retired, or retiring; or its retirement
		// was cut short (a restart) or gave up (unread bytes), and its
		// sockets are still in the sockhash.
		if entry.Off == bothWays && !a.inSockhash(key, entry) {
			continue
		}
		out = append(out, excludedConn{key: key, cookie: entry.Cookie, off: entry.Off})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("walk conntrack: %w", err)
	}
	return out, nil
}

// policyReqOffset is where policy.c reads its request in the test packet:
// after an Ethernet header.
const policyReqOffset = 14

// connOff runs policy.c's program on one connection: the direction bits
// set atomically in its conntrack entry if it is still the connection with
// those cookies.
func (a *Datapath) connOff(c excludedConn, bits uint32) (bpfobj.PolicyPolicyResult, error) {
	prog, err := a.policyProgram()
	if err != nil {
		return 0, err
	}
	req := bpfobj.PolicyPolicyReq{Key: bpfobj.PolicySockKey(c.key), Bits: bits, Cookie: c.cookie}
	packet := make([]byte, policyReqOffset+binary.Size(req))
	if _, err := binary.Encode(packet[policyReqOffset:], binary.NativeEndian, req); err != nil {
		return 0, fmt.Errorf("encode policy request: %w", err)
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: packet})
	if err != nil {
		return 0, fmt.Errorf("run policy program: %w", err)
	}
	res := bpfobj.PolicyPolicyResult(ret)
	if res == bpfobj.PolicyPolicyResultPOLICY_BAD {
		return 0, errors.New("policy program could not read its request")
	}
	return res, nil
}

// policyProgram loads policy.c against this daemon's conntrack map, once.
func (a *Datapath) policyProgram() (*ebpf.Program, error) {
	a.policyOnce.Do(func() {
		spec, err := bpfobj.LoadPolicy()
		if err != nil {
			a.policyErr = fmt.Errorf("load embedded policy program: %w", err)
			return
		}
		spec.Maps[bpfobj.PolicyMapSaConntrack].MaxEntries = a.objs.SaConntrack.MaxEntries()
		opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{bpfobj.PolicyMapSaConntrack: a.objs.SaConntrack}}
		if err := spec.LoadAndAssign(&a.policy, opts); err != nil {
			a.policyErr = fmt.Errorf("load policy program: %w", err)
		}
	})
	return a.policy.ConnOff, a.policyErr
}
