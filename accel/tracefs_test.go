//go:build linux

package accel_test

import (
	"errors"
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

// On a host that booted without tracefs (no systemd to mount it), the
// daemon mounts it itself, the way it mounts bpffs. The test takes tracefs
// away in a private mount namespace, so the host's mounts are untouched.
func TestEnsureTracefsMountsWhenMissing(t *testing.T) {
	testenv.RequirePrivileged(t)
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, and its mount namespace, end with
		// this goroutine.
		runtime.LockOSThread()
		done <- ensureTracefsInPrivateMountNamespace()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func ensureTracefsInPrivateMountNamespace() error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	for _, dir := range []string{accel.DefaultTracefs, "/sys/kernel/debug/tracing", "/sys/kernel/debug"} {
		for unix.Unmount(dir, unix.MNT_DETACH) == nil {
		}
	}
	if isTracefs(accel.DefaultTracefs) {
		return errors.New("tracefs still mounted after unmounting it")
	}
	if err := accel.EnsureTracefs(); err != nil {
		return err
	}
	if !isTracefs(accel.DefaultTracefs) {
		return fmt.Errorf("EnsureTracefs returned nil but %s is not tracefs", accel.DefaultTracefs)
	}
	// Mounted once is enough: a second call finds it.
	return accel.EnsureTracefs()
}

func isTracefs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && uint32(st.Type) == unix.TRACEFS_MAGIC
}
