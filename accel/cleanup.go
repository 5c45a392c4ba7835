//go:build linux

package accel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
)

// DefaultDrainTimeout bounds how long Cleanup waits for applications to read
// the bytes already redirected to them.
const DefaultDrainTimeout = 30 * time.Second

// CleanupOptions tune Cleanup.
type CleanupOptions struct {
	// DrainTimeout bounds the wait for redirected bytes to be read.
	DrainTimeout time.Duration
	// Force removes the sockets even if they still hold unread redirected
	// bytes, which the kernel then frees: those bytes are lost.
	Force bool
}

// ErrDrainTimeout is returned when sockets still held unread redirected bytes
// at the end of the drain; nothing was lost and acceleration stays off.
var ErrDrainTimeout = errors.New("redirected bytes still unread")

// pinnedMaps lists every map the BPF object pins by name.
func pinnedMaps() ([]string, error) {
	spec, err := loadAccel()
	if err != nil {
		return nil, err
	}
	var names []string
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	return names, nil
}

// Cleanup stops acceleration without losing a byte and removes everything
// sockaccel pinned in pinDir. It is idempotent: a missing pin dir is not an
// error.
//
// The order matters. When a socket leaves the SOCKHASH, the kernel drops its
// psock and frees every redirected message still queued for the application
// (sk_psock_drop -> sk_psock_stop), and freeing the map removes every socket
// at once. So: stop new entries and redirects (sends take the TCP path from
// here on, behind the redirected bytes, which the receiver reads first),
// detach sock_ops, wait until no socket holds unread redirected bytes, and
// only then detach sk_msg and drop the pins. If the wait times out the pins
// stay, redirects stay off, and ErrDrainTimeout says how much is unread.
func Cleanup(pinDir string, log *zap.Logger) error {
	return CleanupWith(context.Background(), pinDir, log, CleanupOptions{DrainTimeout: DefaultDrainTimeout})
}

// CleanupWith is Cleanup with options.
func CleanupWith(ctx context.Context, pinDir string, log *zap.Logger, opts CleanupOptions) error {
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error

	if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, accelMapSaConfig), nil); err == nil {
		var cfg accelAccelConfig
		if err := m.Lookup(uint32(0), &cfg); err != nil {
			errs = append(errs, fmt.Errorf("read config: %w", err))
		}
		cfg.Flags |= uint32(accelConfigFlagsCONFIG_F_NO_NEW | accelConfigFlagsCONFIG_F_NO_REDIRECT)
		if err := m.Put(uint32(0), cfg); err != nil {
			errs = append(errs, fmt.Errorf("disable redirects: %w", err))
		}
		m.Close()
	}

	// sock_ops and setsockopt first: no new sockets.
	errs = append(errs, detachLinks(pinDir, log, func(name string) bool { return name == "sockops" || name == "setsockopt" })...)

	hashPath := filepath.Join(pinDir, accelMapSaSockhash)
	hash, err := ebpf.LoadPinnedMap(hashPath, nil)
	switch {
	case err == nil:
		defer hash.Close()
		if err := drain(ctx, hash, log, opts); err != nil {
			return errors.Join(append(errs, err)...)
		}
	case !errors.Is(err, os.ErrNotExist):
		errs = append(errs, fmt.Errorf("load pinned sockhash: %w", err))
	}

	errs = append(errs, detachLinks(pinDir, log, func(string) bool { return true })...)

	progPath := filepath.Join(pinDir, skMsgProgName)
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

	names, err := pinnedMaps()
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", name, err))
		}
	}
	for _, p := range []string{progPath, filepath.Join(pinDir, progDir), filepath.Join(pinDir, linkDir), pinDir} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// detachLinks detaches, unpins and closes the pinned links in pinDir/links
// whose names match, even if a running daemon still holds them open.
func detachLinks(pinDir string, log *zap.Logger, match func(string) bool) []error {
	dir := filepath.Join(pinDir, linkDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []error{fmt.Errorf("list %s: %w", dir, err)}
	}
	var errs []error
	for _, e := range entries {
		if !match(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", path, err))
			continue
		}
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", e.Name(), err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
		l.Close()
		log.Info("detached", zap.String("link", e.Name()))
	}
	return errs
}

// drainSettle is how long the backlog must read zero before the sockets are
// released: a send whose verdict ran just before redirects were turned off
// may still be queueing its bytes.
const drainSettle = 50 * time.Millisecond

func drain(ctx context.Context, hash *ebpf.Map, log *zap.Logger, opts CleanupOptions) error {
	r, err := newBacklogReader(hash)
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
		b, err := r.read()
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
