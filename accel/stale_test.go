//go:build linux

package accel_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

// Pins left by a daemon whose cgroup has since been removed are stale, not
// "attached to another cgroup": the next start replaces the dead links and
// keeps the maps.
func TestStalePinsReplaced(t *testing.T) {
	testenv.RequirePrivileged(t)
	pin := testenv.TempPinDir(t)
	parent := testenv.TempCgroup(t)
	oldPath := filepath.Join(parent.Path, "gone")
	if err := os.Mkdir(oldPath, 0o755); err != nil {
		t.Fatal(err)
	}
	old, err := cgroup.ResolveIn(parent.Root, oldPath)
	if err != nil {
		os.Remove(oldPath)
		t.Fatal(err)
	}
	a, err := accel.New(accel.Config{Cgroup: old, PinDir: pin, MaxConns: 1024}, nopLog())
	if err != nil {
		os.Remove(oldPath)
		t.Fatalf("start on %s: %v", oldPath, err)
	}
	a.Close()
	if err := os.Remove(oldPath); err != nil {
		t.Fatal(err)
	}
	// The kernel releases the cgroup, and detaches its links, asynchronously.
	sockops := filepath.Join(pin, "links", "sockops")
	for deadline := time.Now().Add(10 * time.Second); ; {
		l, err := link.LoadPinnedLink(sockops, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		if info.Cgroup().CgroupId == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pinned link still reports cgroup %d 10 s after rmdir", info.Cgroup().CgroupId)
		}
		time.Sleep(50 * time.Millisecond)
	}

	b := testenv.Start(t, accel.Config{Cgroup: parent, PinDir: pin, MaxConns: 1024})
	if !b.Adopted() {
		t.Error("maps not adopted after replacing stale links")
	}
	if n := testenv.SockOpsPrograms(t, parent.Path); n != 1 {
		t.Errorf("%d sock_ops programs on %s, want 1", n, parent.Path)
	}
	if n := testenv.CgroupPrograms(t, parent.Path, ebpf.AttachCGroupSetsockopt); n != 1 {
		t.Errorf("%d setsockopt programs on %s, want 1", n, parent.Path)
	}
	st, err := b.Status()
	if err != nil || !st.Attached || st.CgroupID == 0 {
		t.Errorf("status after replacing stale links: attached %v, cgroup id %d, %v", st.Attached, st.CgroupID, err)
	}
}
