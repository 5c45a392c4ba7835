//go:build linux

package accel

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

const (
	// retireGrace lets sends whose verdict came just before the
	// connection went off finish queueing before it is looked at.
	retireGrace = 50 * time.Millisecond
	retirePoll  = 100 * time.Millisecond
	// retireGiveUp bounds the wait for an application to read what was
	// redirected to it; the connection then stays as it is (on TCP, its
	// sockets in the sockhash) until it closes.
	retireGiveUp = time.Minute
)

// retireConn takes the sockets of a connection that left the fast path in
// both directions for good out of the sockhash, once neither holds unread
// redirected bytes (the kernel would free them): from then on they are
// plain TCP sockets, with tcp_recvmsg's waits, FIONREAD, SO_RCVLOWAT and
// urgent data exactly as TCP has them. Nothing can be redirected into them
// any more, so the check cannot be outrun.
func (a *Accelerator) retireConn(cookie uint64) {
	time.Sleep(retireGrace)
	entry, ok := a.waitDrained(cookie, 0, 1)
	if !ok {
		return
	}
	a.countRetired(a.removeSides(entry, 0, 1))
}

// waitDrained waits until the given sides of the connection with cookie
// hold no unread redirected bytes, and returns its entry then. false: the
// connection closed meanwhile, or its application did not read them
// within retireGiveUp (it stays as it is until it closes).
func (a *Accelerator) waitDrained(cookie uint64, sides ...int) (retiring, bool) {
	for deadline := time.Now().Add(retireGiveUp); ; time.Sleep(retirePoll) {
		key, entry, err := a.entryByCookie(cookie)
		if err != nil {
			return retiring{}, false // closed meanwhile
		}
		r := retiring{keys: [2]accelSockKey{key, mirror(key)}, cookies: entry.Cookie}
		unread := uint32(0)
		for _, side := range sides {
			if entry.Cookie[side] == 0 {
				continue
			}
			q, err := a.queuedAt(r.keys[side])
			if err != nil {
				a.log.Warn("read redirected bytes of a connection off the fast path", zap.Error(err))
				return retiring{}, false
			}
			unread += q
		}
		if unread == 0 {
			return r, true
		}
		if time.Now().After(deadline) {
			a.log.Info("connection off the fast path still has redirected bytes unread; its sockets stay in the sockhash",
				zap.Uint64("cookie", cookie), zap.Uint32("queued_bytes", unread))
			return retiring{}, false
		}
	}
}

// retiring is what retirement knows of a connection: each side's sockhash
// key and socket cookie.
type retiring struct {
	keys    [2]accelSockKey
	cookies [2]uint64
}

// removeSides deletes the given sides' sockets from the sockhash and
// returns how many it removed. Only the sockets of this connection: a key
// reused since would carry another cookie.
func (a *Accelerator) removeSides(r retiring, sides ...int) int {
	removed := 0
	for _, side := range sides {
		var got uint64
		k := r.keys[side]
		if r.cookies[side] == 0 {
			continue
		}
		if err := a.objs.SaSockhash.Lookup(&k, &got); err != nil || got != r.cookies[side] {
			continue
		}
		if err := a.objs.SaSockhash.Delete(&k); err == nil {
			removed++
		}
	}
	return removed
}

func (a *Accelerator) countRetired(removed int) {
	if removed == 0 {
		return
	}
	if err := a.gc().update(func(s *accelGcState) { s.Retired++ }); err != nil {
		a.log.Warn("count a retired connection", zap.Error(err))
	}
}

// entryByCookie finds the conntrack entry one of whose local ends has
// cookie.
func (a *Accelerator) entryByCookie(cookie uint64) (accelSockKey, accelCtEntry, error) {
	var (
		key   accelSockKey
		entry accelCtEntry
	)
	it := a.objs.SaConntrack.Iterate()
	for it.Next(&key, &entry) {
		if cookie != 0 && (entry.Cookie[0] == cookie || entry.Cookie[1] == cookie) {
			return key, entry, nil
		}
	}
	if err := it.Err(); err != nil {
		return key, entry, fmt.Errorf("iterate conntrack: %w", err)
	}
	return key, entry, fmt.Errorf("%w with socket cookie %d", errConnGone, cookie)
}

// errConnGone: no conntrack entry has that cookie (closed, or never tracked).
var errConnGone = errors.New("no tracked connection")
