//go:build linux

package bpfobj

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func requireRootInternal(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to create BPF maps (CI=true forbids skipping)")
		}
		t.Skip("needs root to create BPF maps")
	}
}

// The counts a scrape reads from memlock are the counts a walk finds, for
// both shapes the daemon counts, as elements come and go. On a kernel that
// does not expose the count (before 6.4) CountElems walks, and the
// comparison holds trivially.
func TestCountElemsMatchesWalk(t *testing.T) {
	requireRootInternal(t)
	check := func(t *testing.T, m *ebpf.Map, want uint64) {
		t.Helper()
		walked, err := CountKeys(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := CountElems(m, CountKeys)
		if err != nil {
			t.Fatal(err)
		}
		if walked != want || got != want {
			t.Fatalf("count: memlock path %d, walk %d, want %d", got, walked, want)
		}
	}

	t.Run("hash", func(t *testing.T) {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 24, MaxEntries: 4096, Flags: unix.BPF_F_NO_PREALLOC})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if _, ok := countFromMemlock(m); !ok {
			t.Logf("this kernel does not expose the element count in memlock: the walk is used")
		}
		check(t, m, 0)
		for i := range uint64(300) {
			if err := m.Put(i, make([]byte, 24)); err != nil {
				t.Fatal(err)
			}
			if i == 0 || i == 4 || i == 299 {
				check(t, m, i+1)
			}
		}
		for i := range uint64(100) {
			if err := m.Delete(i); err != nil {
				t.Fatal(err)
			}
		}
		check(t, m, 200)
	})

	t.Run("sockhash", func(t *testing.T) {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockHash, KeySize: 44, ValueSize: 8, MaxEntries: 64})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		check(t, m, 0)
		var fds []int
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		for i := range 3 {
			fd, err := ScratchListener()
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
			key := make([]byte, 44)
			key[0] = byte(i + 1)
			value := make([]byte, 8)
			binary.NativeEndian.PutUint64(value, uint64(fd))
			if err := m.Put(key, value); err != nil {
				t.Fatal(err)
			}
		}
		check(t, m, 3)
		// Closing a socket unlinks it from the sockhash, as a closed
		// connection's sockets leave the daemon's.
		unix.Close(fds[0])
		fds = fds[1:]
		check(t, m, 2)
	})
}
