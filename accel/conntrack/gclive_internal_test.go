//go:build linux

package conntrack

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// The GC's batched check reads the cookie a user-space lookup returns for
// each key in the sockhash, and 0 for a key it does not hold, across more
// than one batch.
func TestCookieReaderMatchesLookup(t *testing.T) {
	requireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockHash, KeySize: 44, ValueSize: 8, MaxEntries: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const socks = 3
	var keys []bpfobj.AccelSockKey
	want := map[int]uint64{}
	for i := range 2*gcliveMax + 7 {
		k := bpfobj.AccelSockKey{LocalIsn: uint32(i + 1), LocalPort: uint16(i)}
		keys = append(keys, k)
		if i%50 != 0 || len(want) == socks {
			continue
		}
		fd, err := bpfobj.ScratchListener()
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := m.Put(&k, uint64(fd)); err != nil {
			t.Fatal(err)
		}
		var cookie uint64
		if err := m.Lookup(&k, &cookie); err != nil || cookie == 0 {
			t.Fatalf("lookup: cookie %d, %v", cookie, err)
		}
		want[i] = cookie
	}
	r, err := newCookieReader(m)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := r.cookies(keys)
	if err != nil {
		t.Fatal(err)
	}
	for i := range keys {
		if got[i] != want[i] {
			t.Errorf("key %d: cookie %d, want %d", i, got[i], want[i])
		}
	}
}

// A GC pass over a map large enough for the batched check finds dead
// exactly the entries with no end in the sockhash under its cookie: an
// entry whose client end is gone but whose server end is there stays, and
// so does one whose only end is there; a key holding another socket than
// the entry's does not keep it.
func TestGCDeadBatched(t *testing.T) {
	requireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockHash, KeySize: 44, ValueSize: 8, MaxEntries: 4 * batchedLivenessMin})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	insert := func(k bpfobj.AccelSockKey) uint64 {
		t.Helper()
		fd, err := bpfobj.ScratchListener()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := m.Put(&k, uint64(fd)); err != nil {
			t.Fatal(err)
		}
		var cookie uint64
		if err := m.Lookup(&k, &cookie); err != nil {
			t.Fatal(err)
		}
		return cookie
	}
	var entries []ctCheck
	wantDead := map[bpfobj.AccelSockKey]bool{}
	for i := range batchedLivenessMin + 10 {
		key := bpfobj.AccelSockKey{LocalIsn: uint32(i + 1), RemoteIsn: uint32(i + 100000), LocalPort: 1, RemotePort: 2}
		e := bpfobj.AccelCtEntry{Cookie: [2]uint64{uint64(1000000 + 2*i), uint64(1000001 + 2*i)}}
		switch i {
		case 3: // server end alive only
			e.Cookie[1] = insert(bpfobj.Mirror(key))
		case 500: // client end alive, no server end
			e.Cookie[0] = insert(key)
			e.Cookie[1] = 0
		case 700: // the key holds another socket
			insert(key)
			wantDead[key] = true
		case 900: // alive, but the entry says that end closed
			e.Cookie[0] = insert(key)
			e.Closed = 1
			wantDead[key] = true
		default:
			wantDead[key] = true
		}
		entries = append(entries, newCtCheck(key, &e))
	}
	g := &gc{sockhash: m, log: zap.NewNop()}
	dead := g.dead(entries)
	if g.batchWarned.Load() {
		t.Fatal("batched liveness fell back to lookups")
	}
	got := map[bpfobj.AccelSockKey]bool{}
	for _, k := range dead {
		got[k] = true
	}
	if len(got) != len(wantDead) {
		t.Errorf("%d dead, want %d", len(got), len(wantDead))
	}
	for k := range wantDead {
		if !got[k] {
			t.Errorf("entry %+v not found dead", k)
		}
	}
}

// requireRoot is testenv.RequirePrivileged, which this package's internal
// tests cannot import (testenv imports accel, which imports conntrack).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to create BPF maps (CI=true forbids skipping)")
		}
		t.Skip("needs root to create BPF maps")
	}
}
