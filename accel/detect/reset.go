//go:build linux

package detect

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/conntrack"
)

// stallGrace is how long a connection whose reader spliced with redirected
// bytes unread may stay stuck before it is reset: an application that
// falls back to recv reads those bytes in time and keeps its connection.
const stallGrace = 2 * time.Second

// failStalled resets the connection of a stalled splice if, after
// stallGrace, its socket still holds redirected bytes: splice can never
// return them, so without this the application would wait forever. A reset
// is what the application can act on: its splice fails (ECONNRESET, or
// EPIPE for a thread already asleep in it: see resetSocket) and the peer
// sees ECONNRESET, instead of a hang.
func (a *Detector) failStalled(ev UseEvent) {
	time.Sleep(stallGrace)
	key, local, remote, err := a.ct.EndByCookie(ev.Cookie)
	if err != nil {
		return // closed meanwhile: nothing is stuck
	}
	queued, err := a.ct.QueuedAt(key)
	if err != nil {
		a.log.Warn("read a stalled socket's redirected bytes", zap.Error(err))
		return
	}
	if queued == 0 {
		return // the application read them after all
	}
	if ev.PID == 0 {
		a.log.Warn("cannot reset a connection stalled in splice: its process is outside this daemon's PID namespace (run the daemon in the host's)",
			zap.String("comm", ev.Comm), zap.Stringer("local", local), zap.Stringer("remote", remote), zap.Uint32("queued_bytes", queued))
		return
	}
	if err := resetSocket(ev.PID, ev.FD, ev.Cookie); err != nil {
		a.log.Warn("reset a connection stalled in splice", zap.Uint32("pid", ev.PID), zap.String("comm", ev.Comm),
			zap.Stringer("local", local), zap.Stringer("remote", remote), zap.Error(err))
		return
	}
	// A disconnected socket keeps its psock, and so the redirected bytes,
	// until it is closed (sockmap has had no unhash hook since
	// b8b8315e39ff, 5.16 and 5.15 stable; measured on 6.18): a recv would
	// still return those bytes and then wait for ever, since
	// tcp_bpf_recvmsg never looks at the socket's error. Out of the sockhash, the bytes are freed and
	// reads fail as TCP's do: ECONNRESET unless splice took it, then
	// ENOTCONN. Only after the disconnect: before it, a send from the peer
	// would take TCP and splice would read it ahead of the bytes it lost.
	a.ct.RemoveSides(conntrack.Retiring{Keys: [2]bpfobj.AccelSockKey{key}, Cookies: [2]uint64{ev.Cookie}}, 0)
	a.log.Warn("reset a connection stalled in splice: its application could never read the redirected bytes",
		zap.Uint32("pid", ev.PID), zap.String("comm", ev.Comm), zap.Stringer("local", local), zap.Stringer("remote", remote),
		zap.Uint32("queued_bytes", queued))
}

// resetSocket resets the TCP connection of descriptor fd in process pid,
// if that descriptor is still the socket whose cookie is cookie.
//
// pidfd_getfd (5.6+; CAP_SYS_PTRACE unless the process is the daemon's
// own user with no capabilities beyond the daemon's) installs the
// process's own struct file in this process, so what is done to the copy
// is done to the application's socket, and the cookie is checked on the
// copy itself: however the process reuses its descriptor afterwards, the
// reset hits the right connection.
//
// connect() with an AF_UNSPEC address runs tcp_disconnect(), in whatever
// network namespace the socket lives (no setns, so no CAP_SYS_ADMIN, and
// nothing like CONFIG_INET_DIAG_DESTROY): for a connected socket it sends
// a RST, sets the socket's error to ECONNRESET, goes to CLOSE and wakes
// every waiter. What the application then sees:
//   - a non-blocking splice (Go's io.Copy, haproxy) that retries on the
//     wakeup gets ECONNRESET;
//   - a thread asleep in a blocking splice or recv gets EPIPE on kernels
//     with commit 419ce133ab92 ("tcp: allow again tcp_disconnect() when
//     threads are waiting": 6.6, and Debian 12's 6.1, measured on
//     6.1.0-57): sk_wait_event fails whatever a disconnect interrupted.
//     Before 4faeee0cf8a5 it gets ECONNRESET, the socket's error;
//   - afterwards, once failStalled has taken the socket out of the
//     sockhash, reads fail with ECONNRESET (unless splice took it), then
//     ENOTCONN, never end of stream: a disconnected socket has no shutdown
//     flags, unlike one aborted by SOCK_DESTROY (the reset before this
//     one), which reads as EOF once its error is taken.
//
// Kernels with 4faeee0cf8a5 ("tcp: deny tcp_disconnect() when threads are
// waiting") but not yet 419ce133ab92 (6.4 and 6.5, and the stable releases
// between the two backports, such as 6.1.33 into the autumn of 2023)
// refuse with EBUSY while a thread is asleep on the socket; the error says
// so. A non-blocking splice, which sleeps in poll instead, is reset there
// too.
func resetSocket(pid uint32, fd int32, cookie uint64) error {
	pidfd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	sock, err := unix.PidfdGetfd(pidfd, int(fd), 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd %d of %d: %w", fd, pid, err)
	}
	defer unix.Close(sock)
	got, err := unix.GetsockoptUint64(sock, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil || got != cookie {
		return fmt.Errorf("descriptor %d of %d is no longer that socket (cookie %d, want %d, %v)", fd, pid, got, cookie, err)
	}
	if err := disconnect(sock); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("disconnect: the kernel refuses while a thread is blocked on the socket (it has commit 4faeee0cf8a5 without its fix 419ce133ab92; update it): %w", err)
		}
		return fmt.Errorf("disconnect: %w", err)
	}
	return nil
}

// disconnect is connect(fd, {AF_UNSPEC}), which x/sys/unix has no
// Sockaddr for.
func disconnect(fd int) error {
	sa := unix.RawSockaddrAny{}
	sa.Addr.Family = unix.AF_UNSPEC
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa.Addr))
	if errno != 0 {
		return errno
	}
	return nil
}
