//go:build linux

package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// appendOnlyMaps are the pinned single-entry maps whose value structs only
// ever grow at the end (struct accel_stats, struct gc_state): a new version
// can take over an older one's values instead of refusing its pins.
var appendOnlyMaps = []string{bpfobj.AccelMapSaStats, bpfobj.AccelMapSaGc}

// carriedValue is an older pinned value, summed over CPUs for per-CPU maps.
type carriedValue struct {
	name  string
	words []uint64
}

// carryValues lets a new version adopt the pins of an older one whose
// append-only structs were shorter: it reads the pinned values, unpins the
// old maps so the new layout can be pinned in their place, and returns the
// values for restoreValues. Live connections do not depend on these maps;
// counts the old programs make between this read and their replacement are
// lost. Any other mismatch is left for the loader to report.
func carryValues(pinDir string, specs map[string]*ebpf.MapSpec) ([]carriedValue, error) {
	var out []carriedValue
	for _, name := range appendOnlyMaps {
		spec := specs[name]
		path := filepath.Join(pinDir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load pinned %s: %w", path, err)
		}
		size := m.ValueSize()
		if m.Type() != spec.Type || size >= spec.ValueSize || size%8 != 0 {
			m.Close()
			continue
		}
		raw, err := m.LookupBytes(uint32(0))
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("read pinned %s: %w", path, err)
		}
		words := make([]uint64, size/8)
		for cpu := 0; (cpu+1)*int(size) <= len(raw); cpu++ {
			for i := range words {
				words[i] += binary.NativeEndian.Uint64(raw[cpu*int(size)+8*i:])
			}
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("unpin older %s: %w", path, err)
		}
		out = append(out, carriedValue{name, words})
	}
	return out, nil
}

// restoreValues writes values carried from an older layout into the new
// maps (the first CPU's copy of a per-CPU map); fields the older layout did
// not have start at zero.
func restoreValues(maps map[string]*ebpf.Map, carried []carriedValue) error {
	for _, c := range carried {
		m := maps[c.name]
		buf := make([]byte, m.ValueSize())
		for i, v := range c.words {
			binary.NativeEndian.PutUint64(buf[8*i:], v)
		}
		var value any = buf
		if m.Type() == ebpf.PerCPUArray {
			cpus, err := ebpf.PossibleCPU()
			if err != nil {
				return err
			}
			perCPU := make([][]byte, cpus)
			for i := range perCPU {
				perCPU[i] = make([]byte, m.ValueSize())
			}
			perCPU[0] = buf
			value = perCPU
		}
		if err := m.Put(uint32(0), value); err != nil {
			return fmt.Errorf("write carried %s: %w", c.name, err)
		}
	}
	return nil
}
