//go:build linux

package hostfs

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultTracefs is where systemd (sys-kernel-tracing.mount) mounts tracefs.
const DefaultTracefs = "/sys/kernel/tracing"

// EnsureTracefs makes sure the syscall tracepoints the use detector attaches
// to can be looked up: if tracefs is mounted nowhere (the loader finds it
// wherever it is), it is mounted at /sys/kernel/tracing, as systemd does at
// boot. The mount is left in place: it is the system's, not ours.
func EnsureTracefs() error {
	if mounted, err := tracefsMounted(); err != nil || mounted {
		// Unreadable mountinfo: let the attach report what is missing.
		return nil
	}
	if err := os.MkdirAll(DefaultTracefs, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", DefaultTracefs, err)
	}
	if err := unix.Mount("tracefs", DefaultTracefs, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount tracefs at %s (needed for use detection; --detect=false runs without): %w", DefaultTracefs, err)
	}
	return nil
}

// tracefsMounted reports whether the calling thread's mount namespace has tracefs mounted
// anywhere (a container may bind it somewhere other than /sys).
func tracefsMounted() (bool, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "... - FSTYPE SOURCE OPTIONS": the type follows the separator.
		_, after, ok := strings.Cut(sc.Text(), " - ")
		if ok && strings.HasPrefix(after, "tracefs ") {
			return true, nil
		}
	}
	return false, sc.Err()
}
