//go:build linux

// Command scaletool is the capacity benchmark's helper (bench/scale/run.sh):
//
//	scaletool serve ADDR...          accept and hold every connection
//	scaletool dial -n N ADDR...      open N connections round-robin, hold them
//	scaletool start LOG CMD ARGS...  start CMD (a daemon) and time it to READY=1
//
// serve and dial print "ready N" on stdout once listening / once all N
// connections are established, then hold everything until stdin reaches
// EOF: that is the application closing its connections. They close every
// connection, print "closed N" and exit. No goroutine per connection: the
// connections are only held, as idle keep-alive connections are.
//
// start runs CMD with NOTIFY_SOCKET pointing at a socket of its own,
// stderr and stdout appended to LOG, and prints "PID SECONDS": the time
// from just before exec to the daemon's READY=1 (what systemd's Type=notify
// waits for). It then exits; the daemon keeps running in a session of its
// own (its later notifications find no socket and are logged as warnings).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: scaletool serve|dial|start ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "dial":
		err = dial(os.Args[2:])
	case "start":
		err = start(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scaletool:", err)
		os.Exit(1)
	}
}

// holder keeps connections until told to close them.
type holder struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (h *holder) add(c net.Conn) {
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
}

func (h *holder) closeAll() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
	return len(h.conns)
}

// waitStdin blocks until stdin reaches EOF.
func waitStdin() { _, _ = io.Copy(io.Discard, os.Stdin) }

func serve(addrs []string) error {
	if len(addrs) == 0 {
		return errors.New("serve: no address")
	}
	var (
		h   holder
		lns []net.Listener
		wg  sync.WaitGroup
	)
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return // closed below
				}
				h.add(c)
			}
		}()
	}
	fmt.Println("ready", len(lns))
	waitStdin()
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait()
	fmt.Println("closed", h.closeAll())
	return nil
}

func dial(args []string) error {
	fs := flag.NewFlagSet("dial", flag.ContinueOnError)
	n := fs.Int("n", 0, "connections to open")
	par := fs.Int("parallel", 16, "connects in flight at once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addrs := fs.Args()
	if len(addrs) == 0 {
		return errors.New("dial: no address")
	}
	var h holder
	jobs := make(chan string)
	errc := make(chan error, *par)
	var wg sync.WaitGroup
	for range *par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range jobs {
				// Go's sockets are non-blocking, so the daemon's
				// conservative mode accelerates them.
				c, err := net.DialTimeout("tcp", a, 30*time.Second)
				if err != nil {
					errc <- fmt.Errorf("connect to %s: %w", a, err)
					return
				}
				h.add(c)
			}
		}()
	}
	var failed error
feed:
	for i := range *n {
		select {
		case jobs <- addrs[i%len(addrs)]:
		case failed = <-errc:
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if failed == nil {
		select {
		case failed = <-errc:
		default:
		}
	}
	if failed != nil {
		h.closeAll()
		return failed
	}
	fmt.Println("ready", *n)
	waitStdin()
	fmt.Println("closed", h.closeAll())
	return nil
}

func start(args []string) error {
	if len(args) < 2 {
		return errors.New("start: LOG CMD [ARGS...]")
	}
	logf, err := os.OpenFile(args[0], os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open daemon log: %w", err)
	}
	defer logf.Close()
	dir, err := os.MkdirTemp("", "scaletool-notify-")
	if err != nil {
		return fmt.Errorf("create notify socket dir: %w", err)
	}
	defer os.RemoveAll(dir)
	sockPath := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("listen on notify socket: %w", err)
	}
	defer conn.Close()

	cmd := exec.Command(args[1], args[2:]...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sockPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	exited := make(chan error, 1)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", args[1], err)
	}
	go func() { exited <- cmd.Wait() }()
	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				ready <- fmt.Errorf("read notify socket: %w", err)
				return
			}
			sc := bufio.NewScanner(strings.NewReader(string(buf[:n])))
			for sc.Scan() {
				if sc.Text() == "READY=1" {
					ready <- nil
					return
				}
			}
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			cmd.Process.Kill()
			return err
		}
	case err := <-exited:
		return fmt.Errorf("%s exited before READY=1: %v (see %s)", args[1], err, args[0])
	case <-time.After(5 * time.Minute):
		cmd.Process.Kill()
		return errors.New("no READY=1 within 5 minutes")
	}
	fmt.Println(cmd.Process.Pid, time.Since(t0).Seconds())
	// The daemon is not waited for: it stays up after this process exits.
	cmd.Process.Release()
	return nil
}
