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

// Where the daemon mounts bpffs itself, the mount is root's only and
// carries no set-uid programs, devices or executables (nosuid, nodev,
// noexec, mode 0700). Checked in a private mount namespace, as above.
func TestEnsureBPFFSMountOptions(t *testing.T) {
	testenv.RequirePrivileged(t)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		done <- ensureBPFFSInPrivateMountNamespace()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func ensureBPFFSInPrivateMountNamespace() error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	for unix.Unmount(accel.DefaultBPFFS, unix.MNT_DETACH) == nil {
	}
	if err := accel.EnsureBPFFS(accel.DefaultBPFFS); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(accel.DefaultBPFFS, &st); err != nil || uint32(st.Type) != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not bpffs after EnsureBPFFS (%v)", accel.DefaultBPFFS, err)
	}
	want := int64(unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOEXEC)
	if st.Flags&want != want {
		return fmt.Errorf("bpffs mounted with flags %#x, want nosuid, nodev and noexec", st.Flags)
	}
	var fi unix.Stat_t
	if err := unix.Stat(accel.DefaultBPFFS, &fi); err != nil {
		return err
	}
	// (bpffs always sets the sticky bit on its root.)
	if perm := fi.Mode & 0o777; perm != 0o700 {
		return fmt.Errorf("bpffs root mode %o, want 700", perm)
	}
	return nil
}
