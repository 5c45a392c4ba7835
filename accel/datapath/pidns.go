//go:build linux

package datapath

import (
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// setDaemonPIDNamespace makes the detectors report PIDs as this daemon
// sees them. Resetting a stalled connection opens its process by PID; a
// daemon in a container has a PID namespace of its own, where the host's
// PIDs name nothing or, worse, another process. A process outside the
// daemon's namespace is reported as PID 0: it cannot be reached at all.
func setDaemonPIDNamespace(spec *ebpf.CollectionSpec) error {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return fmt.Errorf("stat own PID namespace: %w", err)
	}
	for name, value := range map[string]uint64{"daemon_pidns_dev": st.Dev, "daemon_pidns_ino": st.Ino} {
		v, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("embedded BPF object lacks variable %s", name)
		}
		if err := v.Set(value); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}
