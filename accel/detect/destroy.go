//go:build linux

package detect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// stallGrace is how long a connection whose reader spliced with redirected
// bytes unread may stay stuck before it is reset: an application that
// falls back to recv reads those bytes in time and keeps its connection.
const stallGrace = 2 * time.Second

// failStalled resets the connection of a stalled splice if, after
// stallGrace, its socket still holds redirected bytes: splice can never
// return them, so without this the application would wait forever. A reset
// is what the application can act on: its splice fails with ECONNABORTED
// and the peer sees ECONNRESET, instead of a hang.
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
	if err := destroySocket(ev.PID, ev.FD, local, remote, ev.Cookie); err != nil {
		a.log.Warn("reset a connection stalled in splice", zap.Uint32("pid", ev.PID), zap.String("comm", ev.Comm),
			zap.Stringer("local", local), zap.Stringer("remote", remote), zap.Error(err))
		return
	}
	a.log.Warn("reset a connection stalled in splice: its application could never read the redirected bytes",
		zap.Uint32("pid", ev.PID), zap.String("comm", ev.Comm), zap.Stringer("local", local), zap.Stringer("remote", remote),
		zap.Uint32("queued_bytes", queued))
}

// inetDiagReq is struct inet_diag_req_v2 (linux/inet_diag.h).
type inetDiagReq struct {
	Family, Protocol, Ext, Pad uint8
	States                     uint32
	SPort, DPort               [2]byte // network byte order
	Src, Dst                   [16]byte
	If                         uint32
	Cookie                     [2]uint32
}

// destroySocket aborts the TCP socket local->remote whose cookie is
// cookie (SOCK_DESTROY, as ss -K does; needs CONFIG_INET_DIAG_DESTROY). The
// request must come from the socket's own network namespace, which need not
// be its process's: the socket is borrowed from the process (pidfd_getfd,
// checked by cookie) and asked for its namespace (SIOCGSKNS). A dual-stack
// socket with IPv4 addresses is an AF_INET6 socket with mapped ones, so
// both families are tried.
func destroySocket(pid uint32, fd int32, local, remote netip.AddrPort, cookie uint64) error {
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
	const siocgskns = 0x894C // SIOCGSKNS: the socket's network namespace
	ns, err := unix.IoctlRetInt(sock, siocgskns)
	if err != nil {
		return fmt.Errorf("the socket's network namespace: %w", err)
	}
	defer unix.Close(ns)

	errc := make(chan error, 1)
	go func() {
		// The thread enters the namespace and is never unlocked: it
		// exits with this goroutine instead of serving others.
		runtime.LockOSThread()
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter the socket's network namespace: %w", err)
			return
		}
		err := sockDestroy(unix.AF_INET6, local, remote, cookie)
		if local.Addr().Is4() && errors.Is(err, unix.ENOENT) {
			err = sockDestroy(unix.AF_INET, local, remote, cookie)
		}
		errc <- err
	}()
	return <-errc
}

func sockDestroy(family uint8, local, remote netip.AddrPort, cookie uint64) error {
	req := inetDiagReq{Family: family, Protocol: unix.IPPROTO_TCP, States: ^uint32(0)}
	binary.BigEndian.PutUint16(req.SPort[:], local.Port())
	binary.BigEndian.PutUint16(req.DPort[:], remote.Port())
	if family == unix.AF_INET {
		l4, r4 := local.Addr().As4(), remote.Addr().As4()
		copy(req.Src[:], l4[:])
		copy(req.Dst[:], r4[:])
	} else {
		req.Src, req.Dst = local.Addr().As16(), remote.Addr().As16()
	}
	req.Cookie = [2]uint32{uint32(cookie), uint32(cookie >> 32)}

	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("open sock_diag netlink socket: %w", err)
	}
	defer unix.Close(fd)
	const sockDestroyMsg = 21 // SOCK_DESTROY
	hdrLen := unix.SizeofNlMsghdr
	msg := make([]byte, hdrLen+int(unsafe.Sizeof(req)))
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], sockDestroyMsg)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	if _, err := binary.Encode(msg[hdrLen:], binary.NativeEndian, req); err != nil {
		return err
	}
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send SOCK_DESTROY: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("read SOCK_DESTROY answer: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return fmt.Errorf("parse SOCK_DESTROY answer: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return fmt.Errorf("SOCK_DESTROY: %w", unix.Errno(-code))
			}
			return nil
		}
	}
	return errors.New("SOCK_DESTROY: no answer")
}
