//go:build linux

package accel_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

// More rows of the compatibility matrix: readiness, sendfile, sharing the
// socket with another fd or process, and the peer dying.
func init() {
	behaviours = append(behaviours,
		behaviour{name: "epoll edge-triggered, slow reader", run: func(t *testing.T, p testenv.Pair) string {
			return epollRead(t, p, true)
		}},
		behaviour{name: "epoll level-triggered, slow reader", run: func(t *testing.T, p testenv.Pair) string {
			return epollRead(t, p, false)
		}},
		behaviour{name: "sendfile both ways", run: func(t *testing.T, p testenv.Pair) string {
			up := sendfileTo(t, p.Client, p.Server, 3<<20, 1)
			down := sendfileTo(t, p.Server, p.Client, 2<<20, 2)
			return "up " + up + "; down " + down
		}},
		behaviour{name: "sendfile from the socket, first used before anything was queued", off: "splice", run: func(t *testing.T, p testenv.Pair) string {
			out := newPipe(t)
			got := []string{sendfileFrom(t, p.Server, out)}
			for range 2 {
				p.Client.Write(make([]byte, 4096))
				waitReadable(t, p.Server)
				got = append(got, sendfileFrom(t, p.Server, out))
				drainPipe(out)
			}
			return strings.Join(got, "; ")
		}},
		behaviour{name: "sendfile from the socket with bytes already queued",
			differs: "sendfile from a socket reads through splice_read: bytes redirected before it never come out of it",
			run: func(t *testing.T, p testenv.Pair) string {
				p.Client.Write(make([]byte, 4096))
				waitReadable(t, p.Server)
				return sendfileFrom(t, p.Server, newPipe(t))
			}},
		behaviour{name: "fd passed over SCM_RIGHTS", run: func(t *testing.T, p testenv.Pair) string {
			f := passFD(t, p.Server)
			defer f.Close()
			p.Client.Write([]byte("through the passed fd"))
			p.Client.CloseWrite()
			got, err := readAll(f)
			return fmt.Sprintf("%q %s", got, errName(err))
		}},
		behaviour{name: "child process reads after fork", run: func(t *testing.T, p testenv.Pair) string {
			f, err := p.Server.File() // a dup the child inherits as stdin
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd := exec.Command("sha256sum")
			cmd.Stdin = f
			go func() {
				p.Client.Write(make([]byte, 1<<20))
				p.Client.CloseWrite()
			}()
			out, err := cmd.Output()
			return fmt.Sprintf("%.16s %s", out, errName(err))
		}},
		behaviour{name: "peer process killed mid-transfer", run: func(t *testing.T, p testenv.Pair) string {
			f, err := p.Client.File()
			if err != nil {
				t.Fatal(err)
			}
			// The child writes forever; once its first bytes arrive it is
			// killed and, with the test's copies closed, the socket goes.
			cmd := exec.Command("cat", "/dev/zero")
			cmd.Stdout = f
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			p.Client.Close()
			waitReadable(t, p.Server)
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			p.Server.SetReadDeadline(time.Now().Add(10 * time.Second))
			var err2 error
			buf := make([]byte, 1<<20)
			for err2 == nil {
				_, err2 = p.Server.Read(buf)
			}
			return "reader ended with " + errName(err2)
		}},
	)
}

// epollRead streams 4 MiB to a reader that waits on epoll and takes 16 KiB
// per wake-up (edge-triggered: until EAGAIN), pausing between wake-ups: a
// lost wake-up turns into a timeout.
func epollRead(t *testing.T, p testenv.Pair, edge bool) string {
	const size = 4 << 20
	go func() {
		testenv.WriteStream(p.Client, size, 3, 64<<10)
		p.Client.CloseWrite()
	}()
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	var fd int
	rawFD(t, p.Server, func(f int) { fd = f })
	events := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
	if edge {
		events |= unix.EPOLLET
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: int32(fd)}); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	var n int64
	buf := make([]byte, 16<<10)
	evs := make([]unix.EpollEvent, 1)
	for {
		k, err := unix.EpollWait(ep, evs, 10000)
		if err == unix.EINTR {
			continue
		}
		if err != nil || k == 0 {
			return fmt.Sprintf("epoll_wait after %d bytes: %d %v", n, k, err)
		}
		for {
			m, err := unix.Read(fd, buf)
			if m > 0 {
				h.Write(buf[:m])
				n += int64(m)
			}
			if m == 0 && err == nil {
				return fmt.Sprintf("%d bytes sha256=%x EOF", n, h.Sum(nil)[:6])
			}
			if err == unix.EAGAIN {
				break
			}
			if err != nil {
				return fmt.Sprintf("read after %d bytes: %v", n, err)
			}
			if !edge {
				break
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// sendfileTo sends size bytes from a file with sendfile(2) on from and reads
// them on to.
func sendfileTo(t *testing.T, from, to *net.TCPConn, size int, seed byte) string {
	path := filepath.Join(t.TempDir(), "src")
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7) ^ seed
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	res := make(chan string, 1)
	go func() {
		d, err := testenv.ReadStream(io.LimitReader(to, int64(size)))
		res <- fmt.Sprintf("%v %s", d, errName(err))
	}()
	var sent int
	rawFD(t, from, func(fd int) {
		unix.SetNonblock(fd, false)
		for sent < size {
			n, err := unix.Sendfile(fd, int(src.Fd()), nil, size-sent)
			if err != nil {
				break
			}
			sent += n
		}
		unix.SetNonblock(fd, true)
	})
	return fmt.Sprintf("sent %d, read %s", sent, <-res)
}

// sendfileFrom calls one sendfile(2) from the (non-blocking) socket into a
// pipe (the kernel refuses a socket as input for a regular-file output).
func sendfileFrom(t *testing.T, c *net.TCPConn, out pipe) string {
	var n int
	var err error
	rawFD(t, c, func(fd int) { n, err = unix.Sendfile(out[1], fd, nil, 65536) })
	return fmt.Sprintf("sendfile %d %s", n, errName(err))
}

// passFD sends c's descriptor over a unix socket pair with SCM_RIGHTS and
// returns the descriptor that arrives, as a file.
func passFD(t *testing.T, c *net.TCPConn) *os.File {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	rawFD(t, c, func(fd int) {
		if err := unix.Sendmsg(pair[0], []byte{0}, unix.UnixRights(fd), nil, 0); err != nil {
			t.Fatal(err)
		}
	})
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(pair[1], make([]byte, 1), oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("parse SCM_RIGHTS: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("parse SCM_RIGHTS: %v", err)
	}
	unix.SetNonblock(fds[0], false)
	return os.NewFile(uintptr(fds[0]), "passed")
}

func readAll(f *os.File) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}
