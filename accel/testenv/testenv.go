//go:build linux

// Package testenv builds "two containers on one node" for sockaccel's tests:
// temporary cgroups, bpffs pin dirs and network namespaces joined by veth,
// all removed when the test ends, pass or fail.
package testenv

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/cgroup"
)

// RequirePrivileged skips a test that needs root, except under CI=true where
// a privileged test that cannot run is a failure.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		if err := rlimit.RemoveMemlock(); err != nil {
			t.Fatalf("remove memlock: %v", err)
		}
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("privileged test cannot run: not root (CI=true forbids skipping)")
	}
	t.Skip("needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
}

var seq atomic.Uint64

// Name returns a short unique name with the given prefix, safe for netns,
// interfaces (15 chars) and cgroups.
func Name(prefix string) string {
	return fmt.Sprintf("%s%d%d", prefix, os.Getpid()%10000, seq.Add(1))
}

// TempCgroup creates a child of the cgroup v2 root, removed at cleanup.
func TempCgroup(t testing.TB) cgroup.Target {
	t.Helper()
	root, err := cgroup.V2Root()
	if err != nil {
		t.Fatal(err)
	}
	group := "/" + Name("satest")
	mgr, err := cgroup2.NewManager(root, group, &cgroup2.Resources{})
	if err != nil {
		t.Fatalf("create cgroup %s: %v", group, err)
	}
	t.Cleanup(func() {
		if err := mgr.Delete(); err != nil {
			t.Errorf("remove cgroup %s: %v", group, err)
		}
	})
	target, err := cgroup.ResolveIn(root, group)
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// TempCgroupV1 mounts a throwaway cgroup v1 hierarchy with no controllers
// (-o none,name=satest...) on a temporary directory and returns its path;
// it is unmounted at cleanup (the kernel then drops the empty hierarchy).
// Tests of what sockaccel refuses use it instead of assuming the host
// mounts v1 controllers. Without cgroup v1 in the kernel the case cannot
// arise: the test is skipped, or fails under CI=true.
func TempCgroupV1(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	name := Name("satest")
	if err := unix.Mount("cgroup", dir, "cgroup", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "none,name="+name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount a cgroup v1 hierarchy (none,name=%s) at %s: %v", name, dir, err)
		}
		t.Skipf("cannot mount a cgroup v1 hierarchy (kernel without cgroup v1?): %v", err)
	}
	// Registered after t.TempDir's removal, so it runs before it.
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount cgroup v1 hierarchy %s: %v", dir, err)
		}
	})
	return dir
}

// ChildCgroup creates parent/name, removed at cleanup.
func ChildCgroup(t testing.TB, parent cgroup.Target, name string) cgroup.Target {
	t.Helper()
	path := filepath.Join(parent.Path, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("create cgroup %s: %v", path, err)
	}
	t.Cleanup(func() {
		if err := os.Remove(path); err != nil {
			t.Errorf("remove cgroup %s: %v", path, err)
		}
	})
	target, err := cgroup.ResolveIn(parent.Root, path)
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// TempPinDir returns a fresh directory on bpffs; everything pinned in it is
// cleaned up (detached and unpinned) at the end of the test.
func TempPinDir(t testing.TB) string {
	t.Helper()
	if err := accel.EnsureBPFFS(accel.DefaultBPFFS); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(accel.DefaultBPFFS, Name("satest"))
	t.Cleanup(func() {
		// Forced: a test may end with connections still open (a graceful
		// cleanup would wait for them to close).
		opts := accel.CleanupOptions{DrainTimeout: time.Second, Force: true}
		if err := accel.CleanupWith(context.Background(), dir, zap.NewNop(), opts); err != nil {
			t.Errorf("cleanup pin dir %s: %v", dir, err)
		}
		os.RemoveAll(dir)
	})
	return dir
}

// Start loads and attaches sockaccel for cfg (PinDir and Cgroup must be
// set); it is closed at cleanup before the pin dir is removed.
func Start(t testing.TB, cfg accel.Config) *accel.Accelerator {
	t.Helper()
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 1024
	}
	log := zap.NewNop()
	if os.Getenv("SOCKACCEL_TEST_LOG") != "" {
		log = zap.NewExample() // the daemon's log in the test output, for debugging
	}
	a, err := accel.New(cfg, log)
	if err != nil {
		t.Fatalf("start accelerator: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// Netns is a network namespace created for a test.
type Netns struct {
	Name   string
	Handle netns.NsHandle
}

// NewNetns creates a named network namespace with loopback up.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	name := Name("sans")
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	ns := &Netns{Name: name, Handle: h}
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command in this namespace and fails the test on error.
func (n *Netns) Run(t testing.TB, args ...string) {
	t.Helper()
	Run(t, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Do runs f on an OS thread that has entered the namespace; sockets created
// in f belong to it.
func (n *Netns) Do(t testing.TB, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(n.Handle); err != nil {
		t.Fatalf("enter netns %s: %v", n.Name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread is unusable; LockOSThread without unlock makes
			// the runtime discard it when the goroutine exits.
			panic(fmt.Sprintf("restore netns: %v", err))
		}
	}()
	f()
}

// Link returns the statistics of an interface in this namespace.
func (n *Netns) Link(t testing.TB, name string) *netlink.LinkStatistics {
	t.Helper()
	h, err := netlink.NewHandleAt(n.Handle)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s in %s: %v", name, n.Name, err)
	}
	return l.Attrs().Statistics
}

// Veth joins a and b with a veth pair; each end gets the given addresses
// (CIDR notation, IPv4 and/or IPv6). It returns the interface names.
func Veth(t testing.TB, a, b *Netns, addrsA, addrsB []string) (string, string) {
	t.Helper()
	ifA, ifB := Name("va"), Name("vb")
	Run(t, "ip", "link", "add", ifA, "netns", a.Name, "type", "veth", "peer", "name", ifB, "netns", b.Name)
	for _, ad := range addrsA {
		a.Run(t, "ip", "addr", "add", ad, "dev", ifA, "nodad")
	}
	for _, ad := range addrsB {
		b.Run(t, "ip", "addr", "add", ad, "dev", ifB, "nodad")
	}
	a.Run(t, "ip", "link", "set", ifA, "up")
	b.Run(t, "ip", "link", "set", ifB, "up")
	return ifA, ifB
}

// Run runs a command and fails the test on error.
func Run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// cgroupMu serialises moves of the test process between cgroups: cgroup v2
// membership is per process, so only one placement can be in force.
var cgroupMu sync.Mutex

// InCgroup runs f with the whole test process moved into cg, so that sockets
// created in f are charged to (and seen by programs on) that cgroup. Sockets
// accepted later from a listener created in f inherit its cgroup.
func InCgroup(t testing.TB, cg cgroup.Target, f func()) {
	t.Helper()
	cgroupMu.Lock()
	defer cgroupMu.Unlock()
	orig, err := currentCgroup(cg.Root)
	if err != nil {
		t.Fatal(err)
	}
	moveSelf(t, cg.Path)
	defer moveSelf(t, orig)
	f()
}

func moveSelf(t testing.TB, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
		t.Fatalf("move test process to %s: %v", dir, err)
	}
}

func currentCgroup(root string) (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "0::"); ok {
			return filepath.Join(root, rest), nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 entry in /proc/self/cgroup")
}

// SockOpsPrograms counts the sock_ops programs attached to a cgroup, as the
// kernel reports them.
func SockOpsPrograms(t testing.TB, cgroupPath string) int {
	t.Helper()
	return CgroupPrograms(t, cgroupPath, ebpf.AttachCGroupSockOps)
}

// CgroupPrograms counts the programs of one attach type on a cgroup.
func CgroupPrograms(t testing.TB, cgroupPath string, attach ebpf.AttachType) int {
	t.Helper()
	f, err := os.Open(cgroupPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: attach})
	if err != nil {
		t.Fatalf("query %s programs on %s: %v", attach, cgroupPath, err)
	}
	return len(res.Programs)
}

// PinTree lists "mode uid N path" for dir and everything below it, without
// following symlinks: to compare a pin dir before and after, or check modes.
func PinTree(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, fmt.Sprintf("%s uid %d %s", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid, p))
		return nil
	})
	if err != nil {
		t.Fatalf("list %s: %v", dir, err)
	}
	return out
}

// DetectLinks counts the links on this host whose program is the use
// detector of the sockaccel pinned at pinDir: a detector program whose maps
// include that pin dir's config map, which every detector reads (program
// names are cut to 15 characters by the kernel; other tests' detectors do
// not count).
func DetectLinks(t testing.TB, pinDir string) int {
	t.Helper()
	cfgMap, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "sa_config"), nil)
	if err != nil {
		t.Fatalf("load pinned config map: %v", err)
	}
	defer cfgMap.Close()
	mi, err := cfgMap.Info()
	if err != nil {
		t.Fatal(err)
	}
	configID, _ := mi.ID()
	var n int
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			t.Fatalf("link %d info: %v", it.ID, err)
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			continue // unloaded meanwhile
		}
		pi, err := prog.Info()
		prog.Close()
		if err != nil || !strings.HasPrefix(pi.Name, "sa_det_") {
			continue
		}
		if ids, ok := pi.MapIDs(); ok && slices.Contains(ids, configID) {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate links: %v", err)
	}
	return n
}
