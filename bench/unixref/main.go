//go:build linux

// Command unixref measures the physical-limit reference for the sockaccel
// benchmark: request/response and bulk transfer over an AF_UNIX SOCK_STREAM
// socket pair whose two ends are pinned to two CPUs. No TCP/IP, no netfilter,
// no device: the best any socket-to-socket path on this host can do.
//
// Both ends use plain blocking read(2)/write(2) on locked OS threads, like
// netperf does on TCP sockets, issued as raw syscalls (see rawRead). -sndbuf sets the socket buffer (the default
// AF_UNIX buffer, net.core.wmem_default, is far below what TCP autotunes to,
// which would make the bulk reference slower than TCP itself). Output is one
// line of key=value pairs:
//
//	unixref -test rr -size 1 -duration 5s -cpus 0,1
//	test=UNIX_RR size=1 duration_s=5.000 transactions=... trans_per_s=... p50_us=... p99_us=... mean_us=...
//
//	unixref -test stream -size 65536 -duration 5s -cpus 0,1 -sndbuf 4194304
//	test=UNIX_STREAM size=65536 duration_s=5.000 bytes=... mbit_per_s=... mb_per_s=...
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	test := flag.String("test", "rr", "rr (request/response) or stream (bulk, client to server)")
	size := flag.Int("size", 1, "request and response size for rr, send size for stream (bytes)")
	duration := flag.Duration("duration", 5*time.Second, "how long to run")
	cpus := flag.String("cpus", "0,1", "client CPU,server CPU")
	flag.IntVar(&sndbuf, "sndbuf", 0, "SO_SNDBUF of both ends in bytes (0: system default); set with SO_SNDBUFFORCE, so it may exceed net.core.wmem_max")
	flag.Parse()
	debug.SetGCPercent(-1) // the loops do not allocate; keep GC pauses out of the numbers
	if err := run(*test, *size, *duration, *cpus); err != nil {
		fmt.Fprintln(os.Stderr, "unixref:", err)
		os.Exit(1)
	}
}

func run(test string, size int, d time.Duration, cpuList string) error {
	if size <= 0 {
		return fmt.Errorf("invalid -size %d", size)
	}
	client, server, err := parseCPUs(cpuList)
	if err != nil {
		return err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socketpair: %w", err)
	}
	defer unix.Close(fds[0])
	if sndbuf > 0 {
		for _, fd := range fds {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndbuf); err != nil {
				return fmt.Errorf("SO_SNDBUFFORCE: %w", err)
			}
		}
	}
	switch test {
	case "rr":
		return rr(fds, size, d, client, server)
	case "stream":
		return stream(fds, size, d, client, server)
	default:
		return fmt.Errorf("invalid -test %q (want rr or stream)", test)
	}
}

var sndbuf int

func parseCPUs(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, ",")
	if !ok {
		return 0, 0, fmt.Errorf("invalid -cpus %q (want CLIENT,SERVER)", s)
	}
	c, err1 := strconv.Atoi(a)
	v, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || c < 0 || v < 0 {
		return 0, 0, fmt.Errorf("invalid -cpus %q (want CLIENT,SERVER)", s)
	}
	return c, v, nil
}

// pin locks the calling goroutine to its OS thread and that thread to cpu.
// The thread is never unlocked: it is discarded when the goroutine exits.
func pin(cpu int) error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	return nil
}

// rawRead and rawWrite are read(2) and write(2) retried on EINTR. They go
// through the Go scheduler (entersyscall): an earlier version used raw
// syscalls to save a context switch per transaction, but a goroutine blocked
// in a raw syscall keeps its P through any stop-the-world, and the reference
// then hung forever about once per bench run.
func rawRead(fd int, buf []byte) (int, error) {
	for {
		n, _, e := unix.Syscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

func rawWrite(fd int, buf []byte) (int, error) {
	for {
		n, _, e := unix.Syscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

func readFull(fd int, buf []byte) error {
	for off := 0; off < len(buf); {
		n, err := rawRead(fd, buf[off:])
		if err != nil {
			return err
		}
		if n == 0 {
			return errEOF
		}
		off += n
	}
	return nil
}

func writeFull(fd int, buf []byte) error {
	for off := 0; off < len(buf); {
		n, err := rawWrite(fd, buf[off:])
		if err != nil {
			return err
		}
		off += n
	}
	return nil
}

var errEOF = errors.New("peer closed")

func rr(fds [2]int, size int, d time.Duration, clientCPU, serverCPU int) error {
	var wg sync.WaitGroup
	var serverErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer unix.Close(fds[1])
		if serverErr = pin(serverCPU); serverErr != nil {
			unix.Shutdown(fds[1], unix.SHUT_RDWR)
			return
		}
		buf := make([]byte, size)
		for {
			if err := readFull(fds[1], buf); err != nil {
				if !errors.Is(err, errEOF) {
					serverErr = err
				}
				return
			}
			if err := writeFull(fds[1], buf); err != nil {
				serverErr = err
				return
			}
		}
	}()

	lat, elapsed, clientErr := rrClient(fds[0], size, d, clientCPU)
	unix.Shutdown(fds[0], unix.SHUT_WR)
	wg.Wait()
	if clientErr != nil {
		return clientErr
	}
	if serverErr != nil {
		return serverErr
	}
	if len(lat) == 0 {
		return errors.New("no transaction completed")
	}
	var sum time.Duration
	for _, l := range lat {
		sum += l
	}
	mean := sum / time.Duration(len(lat))
	slices.Sort(lat)
	fmt.Printf("test=UNIX_RR size=%d duration_s=%.3f transactions=%d trans_per_s=%.2f p50_us=%.2f p99_us=%.2f mean_us=%.2f client_cpu=%d server_cpu=%d sndbuf=%d\n",
		size, elapsed.Seconds(), len(lat), float64(len(lat))/elapsed.Seconds(),
		us(pct(lat, 50)), us(pct(lat, 99)), us(mean), clientCPU, serverCPU, sndbuf)
	return nil
}

func rrClient(fd, size int, d time.Duration, cpu int) ([]time.Duration, time.Duration, error) {
	done := make(chan struct{})
	var lat []time.Duration
	var elapsed time.Duration
	var err error
	// Run on a fresh goroutine so that the pinned thread is discarded at the
	// end instead of pinning the main thread for good.
	go func() {
		defer close(done)
		if err = pin(cpu); err != nil {
			return
		}
		buf := make([]byte, size)
		lat = make([]time.Duration, 0, 1<<20)
		start := time.Now()
		deadline := start.Add(d)
		for {
			t0 := time.Now()
			if t0.After(deadline) {
				elapsed = t0.Sub(start)
				return
			}
			if err = writeFull(fd, buf); err != nil {
				return
			}
			if err = readFull(fd, buf); err != nil {
				return
			}
			lat = append(lat, time.Since(t0))
		}
	}()
	<-done
	return lat, elapsed, err
}

func stream(fds [2]int, size int, d time.Duration, clientCPU, serverCPU int) error {
	type result struct {
		bytes int64
		end   time.Time
		err   error
	}
	res := make(chan result, 1)
	go func() {
		defer unix.Close(fds[1])
		if err := pin(serverCPU); err != nil {
			unix.Shutdown(fds[1], unix.SHUT_RDWR)
			res <- result{err: err}
			return
		}
		buf := make([]byte, size)
		var total int64
		for {
			// A scheduler-visible read: 64 KiB per call makes the cost
			// negligible, and a raw read blocked here can hold a P through
			// a stop-the-world and hang the run (seen at end of stream).
			n, err := unix.Read(fds[1], buf)
			if err != nil {
				res <- result{err: err}
				return
			}
			if n == 0 {
				res <- result{bytes: total, end: time.Now()}
				return
			}
			total += int64(n)
		}
	}()

	var start time.Time
	var clientErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Shut down here, not in main: with the reader blocked in a raw
		// read holding the other P, main might never be scheduled to do
		// it, and the reader would wait for EOF forever.
		defer unix.Shutdown(fds[0], unix.SHUT_WR)
		if clientErr = pin(clientCPU); clientErr != nil {
			return
		}
		buf := make([]byte, size)
		start = time.Now()
		deadline := start.Add(d)
		for time.Now().Before(deadline) {
			if _, clientErr = unix.Write(fds[0], buf); clientErr != nil {
				return
			}
		}
	}()
	<-done
	r := <-res
	if clientErr != nil {
		return clientErr
	}
	if r.err != nil {
		return r.err
	}
	elapsed := r.end.Sub(start)
	bps := float64(r.bytes) / elapsed.Seconds()
	fmt.Printf("test=UNIX_STREAM size=%d duration_s=%.3f bytes=%d mbit_per_s=%.2f mb_per_s=%.2f client_cpu=%d server_cpu=%d sndbuf=%d\n",
		size, elapsed.Seconds(), r.bytes, bps*8/1e6, bps/1e6, clientCPU, serverCPU, sndbuf)
	return nil
}

// pct returns the p-th percentile of sorted (nearest rank).
func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return sorted[i-1]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
