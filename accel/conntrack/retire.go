//go:build linux

package conntrack

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

const (
	// RetireGrace lets sends whose verdict came just before the
	// connection went off finish queueing before it is looked at.
	RetireGrace = 50 * time.Millisecond
	retirePoll  = 100 * time.Millisecond
	// retireGiveUp bounds the wait for an application to read what was
	// redirected to it; the connection then stays as it is (on TCP, its
	// sockets in the sockhash) until it closes.
	retireGiveUp = time.Minute
)

// RetireConn takes the sockets of a connection that left the fast path in
// both directions for good out of the sockhash, once neither holds unread
// redirected bytes (the kernel would free them): from then on they are
// plain TCP sockets, with tcp_recvmsg's waits, FIONREAD, SO_RCVLOWAT and
// urgent data exactly as TCP has them. Nothing can be redirected into them
// any more, so the check cannot be outrun.
func (t *Tracker) RetireConn(cookie uint64) {
	time.Sleep(RetireGrace)
	entry, ok := t.WaitDrained(cookie, 0, 1)
	if !ok {
		return
	}
	t.CountRetired(t.RemoveSides(entry, 0, 1))
}

// WaitDrained waits until the given sides of the connection with cookie
// hold no unread redirected bytes, and returns its entry then. false: the
// connection closed meanwhile, or its application did not read them
// within retireGiveUp (it stays as it is until it closes).
func (t *Tracker) WaitDrained(cookie uint64, sides ...int) (Retiring, bool) {
	for deadline := time.Now().Add(retireGiveUp); ; time.Sleep(retirePoll) {
		key, entry, err := t.EntryByCookie(cookie)
		if err != nil {
			return Retiring{}, false // closed meanwhile
		}
		r := Retiring{Keys: [2]bpfobj.AccelSockKey{key, bpfobj.Mirror(key)}, Cookies: entry.Cookie}
		unread := uint32(0)
		for _, side := range sides {
			if entry.Cookie[side] == 0 {
				continue
			}
			q, err := t.QueuedAt(r.Keys[side])
			if err != nil {
				t.log.Warn("read redirected bytes of a connection off the fast path", zap.Error(err))
				return Retiring{}, false
			}
			unread += q
		}
		if unread == 0 {
			return r, true
		}
		if time.Now().After(deadline) {
			t.log.Info("connection off the fast path still has redirected bytes unread; its sockets stay in the sockhash",
				zap.Uint64("cookie", cookie), zap.Uint32("queued_bytes", unread))
			return Retiring{}, false
		}
	}
}

// Retiring is what retirement knows of a connection: each side's sockhash
// key and socket cookie.
type Retiring struct {
	Keys    [2]bpfobj.AccelSockKey
	Cookies [2]uint64
}

// RemoveSides deletes the given sides' sockets from the sockhash and
// returns how many it removed. Only the sockets of this connection: a key
// reused since would carry another cookie.
func (t *Tracker) RemoveSides(r Retiring, sides ...int) int {
	removed := 0
	for _, side := range sides {
		var got uint64
		k := r.Keys[side]
		if r.Cookies[side] == 0 {
			continue
		}
		if err := t.maps.SaSockhash.Lookup(&k, &got); err != nil || got != r.Cookies[side] {
			continue
		}
		if err := t.maps.SaSockhash.Delete(&k); err == nil {
			removed++
		}
	}
	return removed
}

// CountRetired counts a retired connection in the GC state (retired in
// status) if any of its sockets left the sockhash.
func (t *Tracker) CountRetired(removed int) {
	if removed == 0 {
		return
	}
	if err := t.gc().update(func(s *bpfobj.AccelGcState) { s.Retired++ }); err != nil {
		t.log.Warn("count a retired connection", zap.Error(err))
	}
}

// EntryByCookie finds the conntrack entry one of whose local ends has
// cookie.
func (t *Tracker) EntryByCookie(cookie uint64) (bpfobj.AccelSockKey, bpfobj.AccelCtEntry, error) {
	var (
		key   bpfobj.AccelSockKey
		entry bpfobj.AccelCtEntry
	)
	it := t.maps.SaConntrack.Iterate()
	for it.Next(&key, &entry) {
		if cookie != 0 && (entry.Cookie[0] == cookie || entry.Cookie[1] == cookie) {
			return key, entry, nil
		}
	}
	if err := it.Err(); err != nil {
		return key, entry, fmt.Errorf("iterate conntrack: %w", err)
	}
	return key, entry, fmt.Errorf("%w with socket cookie %d", ErrConnGone, cookie)
}

// ErrConnGone: no conntrack entry has that cookie (closed, or never tracked).
var ErrConnGone = errors.New("no tracked connection")
