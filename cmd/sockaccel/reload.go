package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
)

// liveKeys are the run flags a reload applies to the running daemon; a
// change to any other is logged as needing a restart.
var liveKeys = map[string]bool{
	"exclude-ports": true, "exclude-cidrs": true, "exclude-cgroups": true,
	"log-level": true, "gc-interval": true,
}

// notifyReload catches SIGHUP from the start, so that one arriving while
// the daemon starts does not kill it (the default action).
func notifyReload() chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch
}

// reloader re-reads the config file on SIGHUP, keeping the command line's
// flags over it, and applies what can change live without detaching
// anything: exclusions (live connections that now match leave the fast
// path), log level, GC interval. Excluded cgroups are resolved by path
// again, also when nothing changed. A file that does not validate is
// rejected with one warning and the running config stays.
type reloader struct {
	flags *flag.FlagSet // run's flags as the daemon started
	args  []string      // the command line
	path  string        // --config ("": none, a reload re-reads the flags only)
	acc   *accel.Accelerator
	level zap.AtomicLevel
	log   *zap.Logger
	// Every flag's value in force now.
	values map[string]string
}

func newReloader(fs *flag.FlagSet, args []string, path string, acc *accel.Accelerator, level zap.AtomicLevel, log *zap.Logger) *reloader {
	r := &reloader{flags: fs, args: args, path: path, acc: acc, level: level, log: log, values: map[string]string{}}
	fs.VisitAll(func(f *flag.Flag) { r.values[f.Name] = f.Value.String() })
	return r
}

func (r *reloader) run(ctx context.Context, hup chan os.Signal) {
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload()
		}
	}
}

func (r *reloader) reload() {
	fs, s, err := r.load()
	if err != nil {
		r.log.Warn("config reload rejected; the running config stays", zap.String("config", r.path), zap.Error(err))
		return
	}
	// The level first, so that what the rest logs follows it.
	r.level.SetLevel(s.level)
	r.acc.SetGCInterval(s.gcInterval)
	start := time.Now()
	moved, err := r.acc.ApplyExclusions(accel.Exclusions{Ports: s.ports, CIDRs: s.cidrs, Cgroups: s.excludedCgroups})
	if err != nil {
		r.log.Warn("apply reloaded exclusions", zap.Error(err))
		return
	}
	var restart []string
	fs.VisitAll(func(f *flag.Flag) {
		v := f.Value.String()
		switch {
		case liveKeys[f.Name]:
			r.values[f.Name] = v
		case !notInFile[f.Name] && v != r.values[f.Name]:
			restart = append(restart, f.Name)
		}
	})
	r.log.Info("config reloaded",
		zap.String("config", r.path),
		zap.Uint16s("exclude_ports", s.ports),
		zap.Stringers("exclude_cidrs", s.cidrs),
		zap.String("exclude_cgroups", r.values["exclude-cgroups"]),
		zap.Stringer("log_level", s.level),
		zap.Duration("gc_interval", s.gcInterval),
		zap.Int("connections_taken_off", moved),
		zap.Duration("took", time.Since(start)))
	if len(restart) > 0 {
		slices.Sort(restart)
		r.log.Warn("config changes not applied: they take effect at the next start", zap.Strings("keys", restart))
	}
}

// load parses the command line and the file again, as at start.
func (r *reloader) load() (*flag.FlagSet, runSettings, error) {
	fs := defaultsOf(r.flags)
	if err := fs.Parse(r.args); err != nil {
		return nil, runSettings{}, err
	}
	if err := applyConfigFile(fs, r.path); err != nil {
		return nil, runSettings{}, err
	}
	s, err := checkRunFlags(fs)
	return fs, s, err
}

// defaultsOf returns a flag set with fs's flags at their defaults.
func defaultsOf(fs *flag.FlagSet) *flag.FlagSet {
	c := newFlagSet(fs.Name())
	fs.VisitAll(func(f *flag.Flag) {
		switch f.Value.(flag.Getter).Get().(type) {
		case bool:
			c.Bool(f.Name, f.DefValue == "true", f.Usage)
		case uint:
			n, _ := strconv.ParseUint(f.DefValue, 10, 0)
			c.Uint(f.Name, uint(n), f.Usage)
		case int:
			n, _ := strconv.Atoi(f.DefValue)
			c.Int(f.Name, n, f.Usage)
		case time.Duration:
			d, _ := time.ParseDuration(f.DefValue)
			c.Duration(f.Name, d, f.Usage)
		default:
			c.String(f.Name, f.DefValue, f.Usage)
		}
	})
	return c
}

// runReload is "sockaccel reload": SIGHUP to the daemon of a pin dir. The
// daemon is found as the holder of the pin dir's lock (/proc/locks), not
// through a pid file: the lock is what makes a process that pin dir's
// daemon, the kernel drops it when the daemon dies (a pid file would go
// stale and could name a reused pid), and it needs no writable /run under
// a hardened unit.
func runReload(args []string) error {
	fs := newFlagSet("reload")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "pin dir of the daemon to reload")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	pid, err := lockHolder(*pinDir)
	if err != nil {
		return err
	}
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		return fmt.Errorf("signal sockaccel (pid %d): %w", pid, err)
	}
	fmt.Printf("asked sockaccel (pid %d) to reload; its log says what it applied\n", pid)
	return nil
}

// lockHolder finds the process holding the flock on dir in /proc/locks.
func lockHolder(dir string) (int, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("no sockaccel runs with pin dir %s (it does not exist)", dir)
		}
		return 0, fmt.Errorf("stat pin dir %s: %w", dir, err)
	}
	// /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF".
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0, fmt.Errorf("find the daemon: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want {
			continue
		}
		pid, err := strconv.Atoi(fields[4])
		if err == nil && pid > 0 {
			return pid, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read /proc/locks: %w", err)
	}
	return 0, fmt.Errorf("no sockaccel runs with pin dir %s", dir)
}
