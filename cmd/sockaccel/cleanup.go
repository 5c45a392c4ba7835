package main

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel"
)

// runCleanup is 'sockaccel cleanup': detach and unpin everything sockaccel
// owns in --pin-dir, once its connections have closed (or, forced, moved to
// TCP).
func runCleanup(args []string) error {
	fs := newFlagSet("cleanup")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "bpffs directory sockaccel pins into")
	timeout := fs.Duration("timeout", accel.DefaultDrainTimeout, "how long to wait for accelerated connections to close (with --force: for redirected bytes to be read)")
	force := fs.Bool("force", false, "move open connections to TCP now instead of waiting for them to close, and remove sockets even if they hold unread redirected bytes (those bytes are lost; a blocking reader can see one EAGAIN)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger("", "info")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := accel.CleanupOptions{DrainTimeout: *timeout, Force: *force}
	if err := accel.CleanupWith(ctx, *pinDir, log.Named("cleanup"), opts); err != nil {
		if errors.Is(err, accel.ErrLocked) {
			return fmt.Errorf("%w: stop it first (or run it with --cleanup-on-exit); nothing was changed", err)
		}
		return err
	}
	log.Info("cleaned up", zap.String("pin_dir", *pinDir))
	return nil
}
