//go:build linux

package accel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// carryStats lets a new version adopt the pins of an older one whose counter
// table (struct accel_stats, append only) was shorter: it sums the pinned
// counters over CPUs, unpins the old map so the new layout can be pinned in
// its place, and returns the sums for restoreStats. Live connections do not
// depend on this map; counts made by the old programs between this read and
// their replacement are lost. Any other mismatch is left for the loader to
// report.
func carryStats(pinDir string, spec *ebpf.MapSpec) ([]uint64, error) {
	path := filepath.Join(pinDir, accelMapSaStats)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load pinned counters %s: %w", path, err)
	}
	defer m.Close()
	size := m.ValueSize()
	if m.Type() != spec.Type || size >= spec.ValueSize || size%8 != 0 {
		return nil, nil
	}
	raw, err := m.LookupBytes(uint32(0))
	if err != nil {
		return nil, fmt.Errorf("read pinned counters %s: %w", path, err)
	}
	sums := make([]uint64, size/8)
	for cpu := 0; (cpu+1)*int(size) <= len(raw); cpu++ {
		for i := range sums {
			sums[i] += binary.NativeEndian.Uint64(raw[cpu*int(size)+8*i:])
		}
	}
	if err := os.Remove(path); err != nil {
		return nil, fmt.Errorf("unpin older counters %s: %w", path, err)
	}
	return sums, nil
}

// restoreStats writes counters carried from an older layout into the first
// CPU's copy of the new map; the counters it did not have start at zero.
func restoreStats(m *ebpf.Map, sums []uint64) error {
	if sums == nil {
		return nil
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	var first accelAccelStats
	buf := make([]byte, binary.Size(first))
	for i, v := range sums {
		binary.NativeEndian.PutUint64(buf[8*i:], v)
	}
	if err := binary.Read(bytes.NewReader(buf), binary.NativeEndian, &first); err != nil {
		return fmt.Errorf("decode carried counters: %w", err)
	}
	vals := make([]accelAccelStats, cpus)
	vals[0] = first
	if err := m.Put(uint32(0), vals); err != nil {
		return fmt.Errorf("write carried counters: %w", err)
	}
	return nil
}
