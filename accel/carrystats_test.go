//go:build linux

package accel_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
)

// A new version whose counter table grew (it is append only) adopts the
// pins an older one left: its counters carry over, summed over CPUs,
// instead of the start failing on an incompatible pinned map.
func TestRestartCarriesCountersOfAnOlderLayout(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	if err := os.MkdirAll(pin, 0o700); err != nil {
		t.Fatal(err)
	}
	// sa_stats as the release before learned services pinned it: 29
	// counters, established first and inserted second.
	const oldCounters = 29
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sa_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8 * oldCounters, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	vals := make([][oldCounters]uint64, cpus)
	vals[0][0], vals[cpus-1][0] = 40, 2
	vals[0][1] = 7
	if err := old.Put(uint32(0), vals); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(pin, "sa_stats")); err != nil {
		t.Fatal(err)
	}
	old.Close()
	// sa_gc as that release pinned it: armed, padding, closed_gc, gc_runs,
	// retired.
	oldGC, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sa_gc", Type: ebpf.Array, KeySize: 4, ValueSize: 32, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := oldGC.Put(uint32(0), [4]uint64{0, 3, 9, 5}); err != nil {
		t.Fatal(err)
	}
	if err := oldGC.Pin(filepath.Join(pin, "sa_gc")); err != nil {
		t.Fatal(err)
	}
	oldGC.Close()

	acc := testenv.Start(t, accel.Config{Cgroup: cg, PinDir: pin, MaxConns: 1024})
	st, err := acc.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Established != 42 || st.Inserted != 7 || st.Repair != 0 {
		t.Errorf("carried counters: established %d, inserted %d, repair %d; want 42, 7 and 0", st.Established, st.Inserted, st.Repair)
	}
	if st.ClosedGC != 3 || st.GCRuns != 9 || st.Retired != 5 {
		t.Errorf("carried GC state: closed_gc %d, gc_runs %d, retired %d; want 3, 9 and 5", st.ClosedGC, st.GCRuns, st.Retired)
	}
}

// Service ports an older version learned (keyed by port alone, for every
// cgroup) keep their meaning after an upgrade: both ends, any cgroup.
func TestRestartKeepsPortsLearnedByAnOlderVersion(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	if err := os.MkdirAll(pin, 0o700); err != nil {
		t.Fatal(err)
	}
	type learnedPort struct {
		Reasons, PID uint32
		UnixTime     uint64
		Comm         [16]byte
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sa_learned_ports", Type: ebpf.Hash, KeySize: 2, ValueSize: 32, MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	lp := learnedPort{Reasons: 1, PID: 77, UnixTime: 1700000000}
	copy(lp.Comm[:], "haproxy")
	if err := old.Put(uint16(8080), lp); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(pin, "sa_learned_ports")
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	old.Close()

	acc := testenv.Start(t, accel.Config{Cgroup: cg, PinDir: pin, MaxConns: 1024})
	st, err := acc.Status()
	if err != nil {
		t.Fatal(err)
	}
	var ends []string
	for _, l := range st.LearnedExclusions {
		if l.Port != 8080 || l.CgroupID != 0 || l.Comm != "haproxy" || len(l.Reasons) != 1 || l.Reasons[0] != "splice" {
			t.Errorf("learned exclusion %+v, want port 8080 in any cgroup after splice by haproxy", l)
		}
		ends = append(ends, l.End)
	}
	if len(ends) != 2 || ends[0] != "client" || ends[1] != "server" {
		t.Errorf("learned ends %v, want client and server", ends)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the old map is still pinned at %s (%v)", path, err)
	}
}
