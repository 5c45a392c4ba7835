//go:build linux

// Package teardown takes sockaccel down without any application noticing:
// cleanup stops new connections, waits for the accelerated ones to close (or,
// forced, for their redirected bytes to be read) and removes every pin; the
// backlog reader measures those unread bytes.
package teardown

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/pins"
)

// DefaultDrainTimeout bounds how long Cleanup waits for accelerated
// connections to close (with Force: for their redirected bytes to be read).
const DefaultDrainTimeout = 30 * time.Second

// CleanupOptions tune Cleanup.
type CleanupOptions struct {
	// DrainTimeout bounds the wait for accelerated connections to close
	// (with Force, for redirected bytes to be read).
	DrainTimeout time.Duration
	// Force takes live connections off the fast path instead of waiting
	// for them to close: redirects stop at once, and after DrainTimeout
	// the sockets are removed even if their applications have not read
	// every redirected byte (the kernel frees those). A blocking reader
	// asleep in recv while this happens can see one EAGAIN.
	Force bool
}

// ErrDrainTimeout is returned when accelerated connections were still open
// at the end of the wait (with Force: sockets still held unread redirected
// bytes). Nothing was removed and those connections keep working.
var ErrDrainTimeout = errors.New("accelerated connections still open")

// Cleanup stops acceleration without any application noticing and removes
// everything sockaccel pinned in pinDir. It is idempotent: a missing pin dir
// is not an error.
//
// No live connection is moved off the fast path. Switching one to TCP under
// its application is what applications notice: tcp_bpf_recvmsg, the receive
// path of every socket in a sockhash, ends a blocking reader's wait on any
// wake-up and returns EAGAIN when nothing is queued, and the TCP sends of a
// switched connection wake the readers of their own socket whenever send
// buffer space frees up. Removing a socket from the sockhash early is no
// better: the kernel frees the redirected bytes still queued for it
// (sk_psock_drop -> sk_psock_stop).
//
// So Cleanup stops putting new connections in the sockhash, leaves the
// existing ones on the fast path, and waits until their applications have
// closed them all (the kernel unlinks a socket when it is closed). Only an
// empty sockhash is torn down. If connections are still open after
// DrainTimeout, everything stays in place, they keep working, and
// ErrDrainTimeout says how many there are; opts.Force takes them off the
// fast path instead.
func Cleanup(pinDir string, log *zap.Logger) error {
	return CleanupWith(context.Background(), pinDir, log, CleanupOptions{DrainTimeout: DefaultDrainTimeout})
}

// CleanupWith is Cleanup with options. It takes the pin dir's lock first
// and refuses, changing nothing, while a daemon runs with this pin dir
// (ErrLocked); a daemon cleans up its own pins with CleanupLocked.
//
// Only what sockaccel creates is touched: its fixed link names in links/,
// progs/sk_msg and the maps the BPF object pins by name. Nothing is
// followed: a symlink, even under one of those names, and every other
// entry stay where they are, logged as left, and so does any directory
// they keep from being empty.
func CleanupWith(ctx context.Context, pinDir string, log *zap.Logger, opts CleanupOptions) error {
	lock, err := pins.LockIfExists(pinDir)
	if err != nil {
		return err
	}
	if lock == nil {
		return nil // no pin dir: nothing to do
	}
	defer lock.Release()
	return CleanupLocked(ctx, lock.Dir(), log, opts)
}

// CleanupLocked is CleanupWith for a caller that holds the pin dir's lock
// already: a daemon cleaning up its own pins on the way out, or undoing a
// start that failed.
func CleanupLocked(ctx context.Context, pinDir string, log *zap.Logger, opts CleanupOptions) error {
	var errs []error

	stop := bpfobj.AccelConfigFlagsCONFIG_F_NO_NEW
	if opts.Force {
		stop |= bpfobj.AccelConfigFlagsCONFIG_F_NO_REDIRECT
	}
	if err := setConfigFlags(pinDir, log, stop); err != nil {
		errs = append(errs, err)
	}

	hashPath := filepath.Join(pinDir, bpfobj.AccelMapSaSockhash)
	var hash *ebpf.Map
	if pins.Owned(hashPath, log) {
		var err error
		hash, err = ebpf.LoadPinnedMap(hashPath, nil)
		switch {
		case err == nil:
			defer hash.Close()
			if opts.Force {
				// sock_ops and setsockopt first: no new sockets.
				errs = append(errs, detachLinks(pinDir, log, pins.CgroupLinks)...)
				err = drain(ctx, hash, log, opts)
			} else {
				err = waitClosed(ctx, hash, pinDir, log, opts.DrainTimeout)
			}
			if err != nil {
				return errors.Join(append(errs, err)...)
			}
		case !errors.Is(err, os.ErrNotExist):
			errs = append(errs, fmt.Errorf("load pinned sockhash: %w", err))
		}
	}

	errs = append(errs, detachLinks(pinDir, log, pins.Links())...)

	progPath := filepath.Join(pinDir, pins.SkMsgProg)
	if pins.Owned(progPath, log) {
		if prog, err := ebpf.LoadPinnedProgram(progPath, nil); err == nil {
			if hash != nil {
				err := link.RawDetachProgram(link.RawDetachProgramOptions{
					Target:  hash.FD(),
					Program: prog,
					Attach:  ebpf.AttachSkMsgVerdict,
				})
				// ENOENT: a newer program replaced it; the map goes away below.
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, fmt.Errorf("detach sk_msg: %w", err))
				}
			}
			prog.Close()
			log.Info("detached sk_msg", zap.String("pin", progPath))
		}
		if err := os.Remove(progPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", progPath, err))
		}
	}

	names, err := pins.Maps()
	if err != nil {
		return err
	}
	for _, name := range names {
		path := filepath.Join(pinDir, name)
		if !pins.Owned(path, log) {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", name, err))
		}
	}
	for _, d := range []string{filepath.Join(pinDir, pins.ProgDir), filepath.Join(pinDir, pins.LinkDir), pinDir} {
		errs = append(errs, removeDirIfOurs(d, d == pinDir, log))
	}
	return errors.Join(errs...)
}

// removeDirIfOurs removes dir once cleanup has removed what sockaccel put
// there. Entries it did not create stay, each logged, and so does dir.
func removeDirIfOurs(dir string, isPinDir bool, log *zap.Logger) error {
	err := os.Remove(dir)
	switch {
	case err == nil, errors.Is(err, os.ErrNotExist):
		return nil
	case !errors.Is(err, syscall.ENOTEMPTY):
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	entries, rerr := os.ReadDir(dir)
	if rerr != nil {
		return fmt.Errorf("list %s: %w", dir, rerr)
	}
	for _, e := range entries {
		if isPinDir && e.IsDir() && (e.Name() == pins.LinkDir || e.Name() == pins.ProgDir) {
			continue // what keeps it is reported on its own
		}
		log.Warn("left in place: not created by sockaccel", zap.String("path", filepath.Join(dir, e.Name())), zap.Stringer("mode", e.Type()))
	}
	return nil
}

// setConfigFlags sets flags in the pinned config, leaving the others.
func setConfigFlags(pinDir string, log *zap.Logger, flags bpfobj.AccelConfigFlags) error {
	path := filepath.Join(pinDir, bpfobj.AccelMapSaConfig)
	if !pins.Owned(path, log) {
		return nil
	}
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned config: %w", err)
	}
	defer m.Close()
	var cfg bpfobj.AccelAccelConfig
	if err := m.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cfg.Flags |= uint32(flags)
	if err := m.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// closeSettle is how long the sockhash must stay empty, with sock_ops
// detached, before it is torn down: a socket whose establishment callback
// read the config just before new entries were stopped may still be
// inserting itself.
const closeSettle = 50 * time.Millisecond

// waitClosed waits until no socket is left in the sockhash, detaching
// sock_ops and setsockopt once it first finds it empty.
func waitClosed(ctx context.Context, hash *ebpf.Map, pinDir string, log *zap.Logger, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	detached, logged := false, false
	for {
		n, err := bpfobj.CountKeys(hash)
		if err != nil {
			return fmt.Errorf("count sockets in the sockhash: %w", err)
		}
		if n == 0 {
			if detached {
				if logged {
					log.Info("accelerated connections closed")
				}
				return nil
			}
			if errs := detachLinks(pinDir, log, pins.CgroupLinks); len(errs) > 0 {
				return errors.Join(errs...)
			}
			detached = true
		} else if !logged {
			log.Info("waiting for accelerated connections to close; they stay on the fast path meanwhile, and new ones are not accelerated",
				zap.Uint64("sockets", n), zap.Duration("timeout", timeout))
			logged = true
		}
		if n != 0 && time.Now().After(deadline) {
			return fmt.Errorf("%w: %d accelerated sockets still open after %s; they keep working on the fast path, new connections are not accelerated, and nothing was removed: run cleanup again once they have closed, raise --timeout, or use --force to move them to TCP now",
				ErrDrainTimeout, n, timeout)
		}
		wait := 20 * time.Millisecond
		if detached {
			wait = closeSettle
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// detachLinks detaches, unpins and closes the named links in pinDir/links,
// even if a running daemon still holds them open. Names that are not pins
// (a symlink planted there) are left alone, never followed.
func detachLinks(pinDir string, log *zap.Logger, names []string) []error {
	dir := filepath.Join(pinDir, pins.LinkDir)
	var errs []error
	for _, name := range names {
		path := filepath.Join(dir, name)
		if !pins.Owned(path, log) {
			continue
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", path, err))
			continue
		}
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", name, err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
		l.Close()
		log.Info("detached", zap.String("link", name))
	}
	return errs
}

// drainSettle is how long the backlog must read zero before the sockets are
// released: a send whose verdict ran just before redirects were turned off
// may still be queueing its bytes.
const drainSettle = 50 * time.Millisecond

func drain(ctx context.Context, hash *ebpf.Map, log *zap.Logger, opts CleanupOptions) error {
	r, err := OpenBacklog(hash)
	if err != nil {
		if opts.Force {
			log.Warn("cannot measure unread redirected bytes; removing sockets anyway (--force)", zap.Error(err))
			return nil
		}
		return fmt.Errorf("%w; without it sockaccel cannot tell whether removing sockets would drop unread data (use --force to remove them anyway)", err)
	}
	defer r.Close()

	deadline := time.Now().Add(opts.DrainTimeout)
	var zeroSince time.Time
	logged := false
	for {
		b, err := r.Read()
		if err != nil {
			return err
		}
		now := time.Now()
		switch {
		case b.Bytes != 0:
			zeroSince = time.Time{}
		case zeroSince.IsZero():
			zeroSince = now
		case now.Sub(zeroSince) >= drainSettle:
			if logged {
				log.Info("redirected bytes drained")
			}
			return nil
		}
		if b.Bytes != 0 && !logged {
			log.Info("waiting for applications to read redirected bytes",
				zap.Int("sockets", b.Sockets), zap.Uint64("bytes", b.Bytes), zap.Duration("timeout", opts.DrainTimeout))
			logged = true
		}
		if b.Bytes != 0 && now.After(deadline) {
			if opts.Force {
				log.Warn("dropping unread redirected bytes (--force)", zap.Int("sockets", b.Sockets), zap.Uint64("bytes", b.Bytes))
				return nil
			}
			return fmt.Errorf("%w: %d sockets still hold %d redirected bytes their applications have not read after %s; redirects are off and nothing was lost: run cleanup again later, raise --timeout, or use --force to drop them",
				ErrDrainTimeout, b.Sockets, b.Bytes, opts.DrainTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
