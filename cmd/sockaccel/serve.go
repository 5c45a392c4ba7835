package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
)

// DefaultAPISocket is where the daemon serves per-connection data and the
// detailed status, to root only.
const DefaultAPISocket = "/run/sockaccel/sockaccel.sock"

// DefaultMaxRequests caps the requests each listener serves at once.
const DefaultMaxRequests = 8

// pinDirHeader tells a client which pin dir the daemon serves, so that
// `sockaccel status --pin-dir X` never shows another daemon's state.
const pinDirHeader = "Sockaccel-Pin-Dir"

// serveMetrics serves, on the TCP --metrics-addr, what any local user and
// a Prometheus server may see: aggregates only. /metrics (Prometheus text
// or OpenMetrics, negotiated), /healthz, and /status without any list of
// services or connections.
func serveMetrics(ctx context.Context, ln net.Listener, a *accel.Accelerator, maxRequests int, log *zap.Logger) <-chan error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		accel.NewCollector(a, version, log.Named("metrics")),
	)
	metrics := promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		// A failed map read is counted in sockaccel_scrape_errors_total
		// and leaves out only its own metrics.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      zap.NewStdLog(log.Named("metrics")),
		Registry:      reg,
	}))

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.AggregateStatus()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		// The same keys as `status --json` but learned_exclusions, whose
		// rows name services, cgroups and processes: its count stays.
		raw, err := json.Marshal(st)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		delete(m, "learned_exclusions")
		w.Header().Set(pinDirHeader, a.PinDir())
		writeJSON(w, m)
	})
	return serveHTTP(ctx, ln, withHealthz(limitRequests(mux, maxRequests), a, maxRequests), log)
}

// serveAPI serves, on the root-only unix socket, what names connections,
// services and tenants: /status in full (learned exclusions listed) and
// /conns, streamed; /healthz too.
func serveAPI(ctx context.Context, ln net.Listener, a *accel.Accelerator, maxRequests int, log *zap.Logger) <-chan error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.Status()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set(pinDirHeader, a.PinDir())
		writeJSON(w, st)
	})
	mux.HandleFunc("GET /conns", func(w http.ResponseWriter, r *http.Request) {
		streamConns(w, a)
	})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Debug("api request", zap.String("method", r.Method), zap.String("path", r.URL.Path))
		mux.ServeHTTP(w, r)
	})
	return serveHTTP(ctx, &peerCheckListener{ln, log}, withHealthz(limitRequests(h, maxRequests), a, maxRequests), log)
}

// streamConns writes the JSON array of `conns --json` one connection at a
// time, in map order: the daemon never holds the whole list, whatever its
// size. Rows are what 'conns --json' reads from the pins (conntrack.Each
// names each cgroup, once per request); the client sorts them.
func streamConns(w http.ResponseWriter, a *accel.Accelerator) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(pinDirHeader, a.PinDir())
	n := 0
	var buf bytes.Buffer
	err := a.EachConn(func(c accel.Conn) error {
		buf.Reset()
		if n == 0 {
			buf.WriteString("[\n  ")
		} else {
			buf.WriteString(",\n  ")
		}
		b, err := json.MarshalIndent(c, "  ", "  ")
		if err != nil {
			return err
		}
		buf.Write(b)
		n++
		// The write deadline bounds a stalled reader, not the size
		// of the listing: each stretch of rows gets its own.
		if n%1024 == 0 {
			rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		}
		_, err = w.Write(buf.Bytes())
		return err
	})
	if err != nil {
		if n == 0 {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		// Rows went out already: cut the response, so that the client
		// sees a broken listing rather than a short one.
		panic(http.ErrAbortHandler)
	}
	if n == 0 {
		w.Write([]byte("[]\n"))
		return
	}
	w.Write([]byte("\n]\n"))
}

// healthz answers 200 "ok" only while every program is attached and every
// pin is present and is the object the daemon holds; otherwise 503 with
// the reasons, one line.
func healthz(a *accel.Accelerator) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		h := a.Health()
		switch {
		case h.Err() != nil:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "unhealthy: check failed: %s\n", oneLine(h.Err().Error()))
		case !h.OK():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "unhealthy: %s\n", strings.Join(h.Problems, "; "))
		default:
			w.Write([]byte("ok\n"))
		}
	}
}

// withHealthz serves GET /healthz beside h, under a cap of its own, so that
// a flood of scrapes or listings cannot make a health probe fail.
func withHealthz(h http.Handler, a *accel.Accelerator, maxRequests int) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", limitRequests(healthz(a), maxRequests))
	mux.Handle("/", h)
	return mux
}

// limitRequests answers 503 with Retry-After to a request beyond max
// served at once, instead of queueing it: a scrape or listing flood costs
// the daemon at most max map walks in parallel.
func limitRequests(h http.Handler, max int) http.Handler {
	sem := make(chan struct{}, max)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
		default:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many concurrent requests", http.StatusServiceUnavailable)
			return
		}
		defer func() { <-sem }()
		h.ServeHTTP(w, r)
	})
}

const writeTimeout = 30 * time.Second

// serveHTTP serves h on ln until ctx is done. Clients that never send,
// never read or idle forever are cut off.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, log *zap.Logger) <-chan error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          zap.NewStdLog(log),
	}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	context.AfterFunc(ctx, func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	})
	return done
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// listenAPI creates the API socket at path, 0600 and owned by this (root)
// process, in a directory it creates 0700 if there is none. A directory
// that was there keeps its mode (--api-socket /tmp/x.sock must not close
// /tmp to everyone else), but it must be this process's, and not one where
// others could replace the socket (writable by them without the sticky
// bit); a symlink is refused. A socket another daemon serves on is
// refused; a stale one is replaced.
func listenAPI(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	_, err := os.Lstat(dir)
	existed := err == nil
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return nil, fmt.Errorf("%s is not a directory", dir)
	case int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("%s is owned by uid %d, not by this process (uid %d)", dir, st.Uid, os.Geteuid())
	case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
		return nil, asConfig(fmt.Errorf("%s is writable by others without the sticky bit: anyone could replace the API socket; choose another --api-socket", dir))
	}
	if !existed {
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("chmod %s: %w", dir, err)
		}
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, asConfig(fmt.Errorf("%s exists and is not a socket", path))
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("another sockaccel serves on %s (give this one its own --api-socket)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

// peerCheckListener drops connections from any user but the daemon's own
// (root), whatever the socket's mode: the file permissions are the first
// wall, the peer's credentials the second.
type peerCheckListener struct {
	net.Listener
	log *zap.Logger
}

func (l *peerCheckListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			return c, nil
		}
		raw, err := uc.SyscallConn()
		if err != nil {
			c.Close()
			continue
		}
		var cred *unix.Ucred
		var credErr error
		raw.Control(func(fd uintptr) {
			cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		})
		if credErr != nil || int(cred.Uid) != os.Geteuid() {
			l.log.Debug("refused api connection", zap.Error(credErr), zap.Uint32("uid", credUID(cred)))
			c.Close()
			continue
		}
		return c, nil
	}
}

func credUID(c *unix.Ucred) uint32 {
	if c == nil {
		return 0
	}
	return c.Uid
}
