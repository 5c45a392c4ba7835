//go:build linux

package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/pins"
)

// adoptLegacyLearned moves the port-only exclusions an older version
// learned into sa_learned as exclusions for every cgroup at both ends (what
// they meant), then unpins the old map.
func (a *Datapath) adoptLegacyLearned() error {
	path := filepath.Join(a.cfg.PinDir, pins.LegacyLearnedPorts)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load %s: %w", path, err)
	}
	defer m.Close()
	var (
		port uint16
		use  bpfobj.AccelLearnedUse // the same layout as the old value
	)
	it := m.Iterate()
	for it.Next(&port, &use) {
		for _, end := range []bpfobj.AccelLearnedEnd{bpfobj.AccelLearnedEndLEARNED_SERVER, bpfobj.AccelLearnedEndLEARNED_CLIENT} {
			if err := a.objs.SaLearned.Put(bpfobj.AccelLearnedKey{Port: port, End: uint8(end)}, use); err != nil {
				return fmt.Errorf("move learned port %d: %w", port, err)
			}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("unpin %s: %w", path, err)
	}
	return nil
}

// anyLearned reports whether sa_learned holds anything: the programs skip
// the per-connection lookups otherwise (CONFIG_F_LEARNED).
func (a *Datapath) anyLearned() bool {
	var (
		key bpfobj.AccelLearnedKey
		use bpfobj.AccelLearnedUse
	)
	return a.objs.SaLearned.Iterate().Next(&key, &use)
}
