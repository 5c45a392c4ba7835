//go:build linux

package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

// memoryCgroup is a memory cgroup of the test's own, on cgroup v2 where the
// memory controller is there, else on v1's memory hierarchy (a hybrid host
// such as this project's CI, where systemd cannot enforce MemoryMax= at all
// but the kernel charges the same objects the same way).
type memoryCgroup struct {
	dir         string
	usage, peak string // files, in bytes
	v1          bool
}

func tempMemoryCgroup(t *testing.T, limit uint64) memoryCgroup {
	t.Helper()
	name := testenv.Name("satestmem")
	var m memoryCgroup
	limitFile := ""
	if root, err := cgroup.V2Root(); err == nil && controllerEnabled(filepath.Join(root, "cgroup.subtree_control"), "memory") {
		m = memoryCgroup{dir: filepath.Join(root, name), usage: "memory.current", peak: "memory.peak"}
		limitFile = "memory.max"
	} else if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil {
		m = memoryCgroup{dir: filepath.Join("/sys/fs/cgroup/memory", name), usage: "memory.usage_in_bytes", peak: "memory.max_usage_in_bytes", v1: true}
		limitFile = "memory.limit_in_bytes"
	} else {
		t.Fatal("no memory controller: neither in the cgroup v2 root's subtree_control nor a v1 memory hierarchy at /sys/fs/cgroup/memory")
	}
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The daemon was killed by then; its charge moves to the parent.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if err := os.Remove(m.dir); err == nil || time.Now().After(deadline) {
				return
			}
		}
	})
	if err := os.WriteFile(filepath.Join(m.dir, limitFile), []byte(strconv.FormatUint(limit, 10)), 0o644); err != nil {
		t.Fatalf("set %s: %v", limitFile, err)
	}
	return m
}

func controllerEnabled(subtreeControl, name string) bool {
	b, err := os.ReadFile(subtreeControl)
	return err == nil && strings.Contains(" "+strings.TrimSpace(string(b))+" ", " "+name+" ")
}

func (m memoryCgroup) read(t *testing.T, file string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(m.dir, file))
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v
}

// kernel is the cgroup's kernel memory (slab and the like, where BPF maps
// and socket storage are charged), steadier than its usage, which page
// cache moves both ways.
func (m memoryCgroup) kernel(t *testing.T) uint64 {
	t.Helper()
	if m.v1 {
		return m.read(t, "memory.kmem.usage_in_bytes")
	}
	b, err := os.ReadFile(filepath.Join(m.dir, "memory.stat"))
	if err != nil {
		t.Fatal(err)
	}
	var slab, percpu uint64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, " ")
		n, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "kernel":
			return n
		case "slab":
			slab = n
		case "percpu":
			percpu = n
		}
	}
	return slab + percpu
}

// unitMemoryMax is the MemoryMax= of the shipped unit, in bytes.
func unitMemoryMax(t *testing.T) uint64 {
	t.Helper()
	f, err := os.Open("../../systemd/sockaccel.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "MemoryMax=")
		if !ok {
			continue
		}
		mult := uint64(1)
		switch {
		case strings.HasSuffix(v, "M"):
			mult, v = 1<<20, strings.TrimSuffix(v, "M")
		case strings.HasSuffix(v, "G"):
			mult, v = 1<<30, strings.TrimSuffix(v, "G")
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("MemoryMax=%s: %v", v, err)
		}
		return n * mult
	}
	t.Fatal("the unit sets no MemoryMax=")
	return 0
}

// The unit's MemoryMax= covers what the daemon is charged. BPF maps and the
// per-socket storage are charged to the memory cgroup of the process that
// created the maps (Linux 5.11+), whichever application's sockets fill
// them. The daemon runs under the unit's limit with the default
// --max-conns and accelerates connections; the charge each adds is
// measured, and a full map at that rate must fit the limit too.
func TestUnitMemoryMaxCoversMaps(t *testing.T) {
	testenv.RequirePrivileged(t)
	limit := unitMemoryMax(t)
	mem := tempMemoryCgroup(t, limit)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	ns := testenv.NewNetns(t)
	in := testenv.Endpoint{Netns: ns, Cgroup: &cg}

	// Into the memory cgroup before exec, so that the maps are created
	// (and charged) there.
	d := launchDaemonVia(t, []string{"/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, mem.dir}, nil,
		"--cgroup", cg.Path, "--pin-dir", pin)
	waitAccelerating(t, d)
	started, startedKernel := mem.read(t, mem.usage), mem.kernel(t)

	const conns = 4000
	before := status(t, pin)
	ln := in.Listen(t, "tcp4", "127.0.0.1:9101")
	pairs := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:9101", conns)
	after := status(t, pin)
	withConns, withConnsKernel := mem.read(t, mem.usage), mem.kernel(t)
	peak := mem.read(t, mem.peak)

	if got := after["inserted"].(float64) - before["inserted"].(float64); got != 2*conns {
		t.Errorf("inserted %v sockets for %d connections, want %d", got, conns, 2*conns)
	}
	for _, k := range []string{"map_full", "insert_errors", "storage_errors"} {
		if after[k] != before[k] {
			t.Errorf("%s went from %v to %v", k, before[k], after[k])
		}
	}
	if err := d.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("daemon died under the limit: %v", err)
	}
	maxConns := uint64(after["max_conns"].(float64))
	var perConn uint64
	if withConnsKernel > startedKernel {
		perConn = (withConnsKernel - startedKernel) / conns
	}
	full := started + perConn*maxConns
	t.Logf("limit %d MiB: charged %.1f MiB after start, %.1f MiB with %d connections (kernel memory %d B each), peak %.1f MiB; a full map of %d connections: %.1f MiB",
		limit>>20, mib(started), mib(withConns), conns, perConn, mib(peak), maxConns, mib(full))
	if peak >= limit {
		t.Errorf("peak charge %.1f MiB reached the limit %d MiB", mib(peak), limit>>20)
	}
	if full >= limit {
		t.Errorf("a full map of %d connections would be charged about %.1f MiB, over MemoryMax=%dM: raise it in the unit and README", maxConns, mib(full), limit>>20)
	}
	for _, p := range pairs {
		p.Client.Close()
		p.Server.Close()
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
