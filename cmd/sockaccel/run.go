package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel"
)

func runDaemon(args []string) error {
	fs := newFlagSet("run")
	fs.String("cgroup", "", "cgroup v2 to accelerate: absolute path or relative to the v2 root (default: the v2 root)")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "bpffs directory for pinned maps, programs and links")
	maxConns := fs.Uint("max-conns", accel.DefaultMaxConns, "connections the sockhash holds (two sockets each); beyond it connections are not accelerated")
	fs.String("exclude-ports", "", "comma-separated ports never accelerated (either end)")
	fs.String("exclude-cidrs", "", "comma-separated networks never accelerated (either end)")
	excludeCgroups := fs.String("exclude-cgroups", "", "comma-separated cgroup v2 paths whose subtrees are never accelerated (either end)")
	fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "", "console, json or journal (default: journal under systemd, else console)")
	conntrack := fs.Bool("conntrack", true, "track connections (conns, close callback, fallback GC); false turns the whole feature off")
	gcInterval := fs.Duration("gc-interval", accel.DefaultGCInterval, "how often the fallback GC runs while connections are tracked")
	backlogBytes := fs.Uint("backlog-bytes", 0, "bound on redirected-but-unread bytes per direction; past it sends go to TCP flow control until the receiver has read everything (0: what TCP would allow the receiver: its receive buffer, up to net.ipv4.tcp_rmem max)")
	detect := fs.Bool("detect", true, "watch syscall entry for splice, recv(MSG_WAITALL) and MSG_OOB on accelerated sockets and take those connections off the fast path")
	learnSplice := fs.Bool("learn-splice", true, "when an application's splice stalls on an accelerated connection, exclude that connection's server port from then on")
	conservative := fs.Bool("conservative", true, "leave connections whose connect()ing socket is blocking on TCP: on the fast path, a blocking recv after the socket's own shutdown(SHUT_WR) can see EAGAIN (kernel); =false accelerates them too")
	metricsAddr := fs.String("metrics-addr", "127.0.0.1:9471", "TCP listen address for /metrics, /healthz and the aggregate /status (what any local user may see); empty disables")
	apiSocket := fs.String("api-socket", DefaultAPISocket, "unix socket (0600, directory 0700, root only) for /conns, the detailed /status and /healthz, used by 'sockaccel status' and 'conns'; empty disables")
	maxRequests := fs.Int("http-max-requests", DefaultMaxRequests, "requests each listener serves at once; more get 503 with Retry-After")
	cleanupOnExit := fs.Bool("cleanup-on-exit", false, "on SIGINT/SIGTERM stop accelerating new connections and remove the pins once the accelerated ones have closed")
	cleanupTimeout := fs.Duration("cleanup-timeout", accel.DefaultDrainTimeout, "with --cleanup-on-exit: how long to wait for accelerated connections to close (then everything stays in place)")
	configPath := fs.String("config", "", "YAML file whose keys are these flags' names (flags given here override it; SIGHUP re-reads it); default: none")
	checkConfig := fs.Bool("check-config", false, "validate the flags and the --config file, say so in one line and exit")
	if err := parseFlags(fs, args); err != nil {
		return asConfig(err)
	}
	if err := applyConfigFile(fs, *configPath); err != nil {
		return asConfig(err)
	}

	// Validate everything before touching the kernel, so bad input leaves
	// nothing behind.
	settings, err := checkRunFlags(fs)
	if err != nil {
		return asConfig(err)
	}
	if *checkConfig {
		fmt.Println("config ok")
		return nil
	}
	log, logLevelVar, err := newLiveLogger(*logFormat, settings.level)
	if err != nil {
		return asConfig(err)
	}
	defer log.Sync() //nolint:errcheck // stderr sync fails on pipes
	ports, cidrs, target, excludedCgroups := settings.ports, settings.cidrs, settings.target, settings.excludedCgroups
	// Catch signals before attaching, so a stop request during start-up
	// still runs the orderly shutdown below.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := notifyReload()

	// One daemon per pin dir: the lock comes first, so that a second run
	// says so (rather than that the metrics address is taken) and changes
	// nothing. accel.New takes it over and holds it until a.Close.
	lock, err := accel.LockPinDir(*pinDir)
	if err != nil {
		if errors.Is(err, accel.ErrLocked) {
			return err
		}
		return asConfig(err) // pin dir refused (owner, mode, symlink, not bpffs)
	}

	// Listen before attaching: a bad address must leave nothing behind.
	var httpLn net.Listener
	if *metricsAddr != "" {
		httpLn, err = net.Listen("tcp", *metricsAddr)
		if err != nil {
			lock.Release()
			err = fmt.Errorf("listen on --metrics-addr %s: %w", *metricsAddr, err)
			if errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) {
				return err // may be free or assigned by the next try
			}
			return asConfig(err)
		}
		defer httpLn.Close()
	}
	var apiLn net.Listener
	if *apiSocket != "" {
		apiLn, err = listenAPI(*apiSocket)
		if err != nil {
			lock.Release()
			return fmt.Errorf("listen on --api-socket %s: %w", *apiSocket, err)
		}
		defer apiLn.Close()
	}

	if err := rlimit.RemoveMemlock(); err != nil {
		lock.Release()
		return fmt.Errorf("remove memlock limit: %w", err)
	}

	a, err := accel.New(accel.Config{
		Cgroup:                target,
		PinDir:                *pinDir,
		MaxConns:              uint32(*maxConns),
		ExcludePorts:          ports,
		ExcludeCIDRs:          cidrs,
		DisableConntrack:      !*conntrack,
		BacklogBytes:          uint32(*backlogBytes),
		Conservative:          *conservative,
		ExcludeCgroups:        excludedCgroups,
		DisableDetect:         !*detect,
		DisableSpliceLearning: !*learnSplice,
		Lock:                  lock,
	}, log.Named("accel"))
	if err != nil {
		return err
	}
	defer a.Close()
	// Serving before the "accelerating" line: that line is what operators
	// and tests wait for, and everything must be up by then.
	var httpDone []<-chan error
	if httpLn != nil {
		httpDone = append(httpDone, serveMetrics(ctx, httpLn, a, *maxRequests, log.Named("http")))
		log.Info("serving metrics", zap.Stringer("addr", httpLn.Addr()))
	}
	if apiLn != nil {
		httpDone = append(httpDone, serveAPI(ctx, apiLn, a, *maxRequests, log.Named("api")))
		log.Info("serving api", zap.String("socket", *apiSocket))
	}
	defer func() {
		if len(httpDone) > 0 {
			// The servers stop when ctx ends; on an error return
			// nobody has cancelled it yet.
			stop()
			for _, done := range httpDone {
				<-done
			}
		}
	}()

	// The one start-up summary line: what the component loggers said on
	// the way is at debug level.
	log.Info("accelerating",
		zap.String("kernel", kernelRelease()),
		zap.String("kernel_probes", probeSummary(a.KernelBehaviour())),
		zap.String("maps", mapsOrigin(a.Adopted())),
		zap.String("cgroup", target.Path),
		zap.String("pin_dir", *pinDir),
		zap.Uint("max_conns", *maxConns),
		zap.Uint16s("exclude_ports", ports),
		zap.Stringers("exclude_cidrs", cidrs),
		zap.String("exclude_cgroups", *excludeCgroups),
		zap.Bool("conntrack", *conntrack),
		zap.Bool("conservative", *conservative),
		zap.Bool("detect", *detect),
		zap.Bool("learn_splice", *learnSplice),
		zap.Bool("adopted", a.Adopted()),
		zap.String("version", version))

	supervised := supervise(ctx, a, log)
	defer func() { stop(); <-supervised }()

	go func() {
		if err := a.RunEvents(ctx); err != nil {
			log.Warn("detector events", zap.Error(err))
		}
	}()
	gcDone := make(chan error, 1)
	go func() { gcDone <- a.RunGC(ctx, *gcInterval) }()
	go newReloader(fs, args, *configPath, a, logLevelVar, log).run(ctx, hup)
	select {
	case <-ctx.Done():
		<-gcDone
	case err := <-gcDone:
		if err != nil {
			return fmt.Errorf("conntrack gc: %w", err)
		}
		<-ctx.Done()
	}
	if *cleanupOnExit {
		log.Info("stopping and cleaning up")
		// Under this daemon's own lock on the pin dir, so that no other
		// sockaccel can start in between.
		return a.Cleanup(context.Background(), accel.CleanupOptions{DrainTimeout: *cleanupTimeout})
	}
	log.Info("stopping; pinned programs keep accelerating until 'sockaccel cleanup'")
	return nil
}
