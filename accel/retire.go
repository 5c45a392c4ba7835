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
	for deadline := time.Now().Add(retireGiveUp); ; time.Sleep(retirePoll) {
		key, entry, err := a.entryByCookie(cookie)
		if err != nil {
			return // closed meanwhile
		}
		keys := map[int]accelSockKey{0: key, 1: mirror(key)}
		unread := uint32(0)
		for side, k := range keys {
			if entry.Cookie[side] == 0 {
				delete(keys, side)
				continue
			}
			q, err := a.queuedAt(k)
			if err != nil {
				a.log.Warn("read redirected bytes of a connection off the fast path", zap.Error(err))
				return
			}
			unread += q
		}
		if unread != 0 {
			if time.Now().After(deadline) {
				a.log.Info("connection off the fast path still has redirected bytes unread; its sockets stay in the sockhash",
					zap.Uint64("cookie", cookie), zap.Uint32("queued_bytes", unread))
				return
			}
			continue
		}
		removed := 0
		for side, k := range keys {
			var got uint64
			// Only the sockets of this connection: a key reused since
			// would carry another cookie.
			if err := a.objs.SaSockhash.Lookup(&k, &got); err != nil || got != entry.Cookie[side] {
				continue
			}
			if err := a.objs.SaSockhash.Delete(&k); err == nil {
				removed++
			}
		}
		if removed > 0 {
			if err := a.gc().update(func(s *accelGcState) { s.Retired++ }); err != nil {
				a.log.Warn("count a retired connection", zap.Error(err))
			}
		}
		return
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
	return key, entry, errors.New("no tracked connection with that socket cookie")
}
