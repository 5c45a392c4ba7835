//go:build linux

package conntrack

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// RunLonely takes lonely client ends out of the sockhash as sk_msg reports
// them (sa_lonely) until ctx is done. A lonely end is in the sockhash but
// its peer never will be: it sends everything through TCP yet receives
// through tcp_bpf_recvmsg, which ends a blocking reader's wait on the
// write-space wake-ups of those sends and returns EAGAIN. sock_ops keeps
// most out to begin with (no_peer: an accepted end whose client is not
// tracked, a client no listener in scope answered or whose accepted end
// will be excluded) and takes out the client of an accepted end it
// refuses as that end establishes (lonely_direct); what is left here is a
// client whose accepted end lost the pairing token, so that sock_ops could
// not find the client's key, or a 4-tuple answered in another namespace.
// Nothing was ever redirected into it, so removing it loses nothing: from
// then on it is a plain TCP socket. Idle, this sleeps on the ring buffer.
//
// Only recv calls made after the removal are plain TCP: one already asleep
// in tcp_bpf_recvmsg holds the psock and still returns EAGAIN on the next
// write-space wake-up. The client is lonely from its first send the server
// acknowledged until this runs.
func (t *Tracker) RunLonely(ctx context.Context) error {
	return bpfobj.ReadRing(ctx, t.maps.SaLonely, "lonely end", func(ev bpfobj.AccelLonelyEvent) {
		if err := t.dropLonely(ev.Key, ev.Cookie); err != nil {
			t.log.Warn("take a lonely client end out of the sockhash", zap.Uint64("cookie", ev.Cookie), zap.Error(err))
		}
	})
}

// dropLonely removes the client end with key and cookie from the sockhash
// and its conntrack entry (the connection is not accelerated, and the GC
// would otherwise count the entry as a close it missed), if both are still
// that socket's and the entry still has no server end.
func (t *Tracker) dropLonely(key bpfobj.AccelSockKey, cookie uint64) error {
	var entry bpfobj.AccelCtEntry
	if err := t.maps.SaConntrack.Lookup(&key, &entry); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // closed meanwhile
		}
		return fmt.Errorf("look up conntrack entry: %w", err)
	}
	if entry.Cookie[0] != cookie || entry.Cookie[1] != 0 {
		return nil // another connection's now, or not lonely
	}
	var got uint64
	if err := t.maps.SaSockhash.Lookup(&key, &got); err != nil || got != cookie {
		return nil // closed meanwhile
	}
	if err := t.maps.SaSockhash.Delete(&key); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("delete from sockhash: %w", err)
	}
	if err := t.maps.SaConntrack.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete conntrack entry: %w", err)
	}
	return t.gc().update(func(s *bpfobj.AccelGcState) { s.Lonely++ })
}
