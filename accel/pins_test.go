//go:build linux

package accel_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

// A pin dir someone else could have prepared is refused by run and cleanup
// alike, with one line naming it, and left as it was.
func TestPinDirRefused(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	cases := []struct {
		name  string
		setup func(t *testing.T, pin string) // pin does not exist yet
		want  string
	}{
		{"owned by another user", func(t *testing.T, pin string) {
			mkdirOwned(t, pin, 0o700, 1000)
		}, "is owned by uid 1000, not root: remove it or choose another --pin-dir"},
		{"group writable", func(t *testing.T, pin string) {
			mkdirOwned(t, pin, 0o770, 0)
		}, "is writable by group or others (mode 0770)"},
		{"symlink", func(t *testing.T, pin string) {
			real := pin + "real"
			mkdirOwned(t, real, 0o700, 0)
			t.Cleanup(func() { os.Remove(real) })
			if err := os.Symlink(real, pin); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(pin) })
		}, "is a symlink"},
		{"links dir of another user", func(t *testing.T, pin string) {
			mkdirOwned(t, pin, 0o700, 0)
			mkdirOwned(t, filepath.Join(pin, "links"), 0o700, 1000)
		}, "links is owned by uid 1000, not root"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pin := testenv.TempPinDir(t)
			c.setup(t, pin)
			// Give it back to root before TempPinDir's own cleanup, which
			// would otherwise (rightly) refuse it too.
			t.Cleanup(func() {
				filepath.Walk(pin, func(p string, fi os.FileInfo, err error) error {
					if err == nil && fi.IsDir() {
						os.Chmod(p, 0o700)
					}
					return os.Lchown(p, 0, 0)
				})
			})
			before := testenv.PinTree(t, pin)

			_, err := accel.New(accel.Config{Cgroup: cg, PinDir: pin, MaxConns: 64}, zap.NewNop())
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("start: %v, want one line with %q", err, c.want)
			}
			err = accel.CleanupWith(context.Background(), pin, zap.NewNop(), accel.CleanupOptions{DrainTimeout: time.Second})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("cleanup: %v, want %q", err, c.want)
			}
			if after := testenv.PinTree(t, pin); !slices.Equal(after, before) {
				t.Errorf("refused pin dir changed:\nbefore %s\nafter  %s", before, after)
			}
			if n := testenv.SockOpsPrograms(t, cg.Path); n != 0 {
				t.Errorf("%d sock_ops programs attached after a refused start", n)
			}
		})
	}
}

func mkdirOwned(t *testing.T, path string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.Mkdir(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, 0); err != nil {
		t.Fatal(err)
	}
}

// foreignSockOps loads a sock_ops program that does nothing, attaches it to
// cg through a bpf_link and pins the link at path: another agent's link.
func foreignSockOps(t *testing.T, cgPath, path string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "foreign",
		Type:    ebpf.SockOps,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load foreign program: %v", err)
	}
	defer prog.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgPath, Attach: ebpf.AttachCGroupSockOps, Program: prog})
	if err != nil {
		t.Fatalf("attach foreign program: %v", err)
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		t.Fatalf("pin foreign link: %v", err)
	}
	t.Cleanup(func() { os.Remove(path) }) // unpinned and closed: detached
}

// cleanup removes only what sockaccel pinned: another agent's link pinned
// in links/ under a name of its own, a symlink in links/ under a name
// sockaccel uses (pointing at a foreign link elsewhere) and a symlink at
// the top all stay, and the foreign links stay attached.
func TestCleanupTouchesOnlyItsOwnPins(t *testing.T) {
	// Detection off, so that links/detect-* are free for the planted symlink.
	n := newNode(t, func(c *accel.Config) { c.DisableDetect = true })
	elsewhere := testenv.TempPinDir(t)
	if err := os.Mkdir(elsewhere, 0o700); err != nil {
		t.Fatal(err)
	}
	foreignSockOps(t, n.cg.Path, filepath.Join(n.pin, "links", "other-agent"))
	foreignSockOps(t, n.cg.Path, filepath.Join(elsewhere, "link"))
	planted := []string{
		filepath.Join(n.pin, "links", "detect-sys_enter_splice"),
		filepath.Join(n.pin, "elsewhere"),
	}
	for _, p := range planted {
		if err := os.Symlink(filepath.Join(elsewhere, "link"), p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	if got := testenv.SockOpsPrograms(t, n.cg.Path); got != 3 {
		t.Fatalf("%d sock_ops programs on the cgroup, want sockaccel's and the two foreign ones", got)
	}

	n.acc.Close() // the daemon stopped: cleanup may take the pin dir
	if err := accel.CleanupWith(context.Background(), n.pin, zap.NewNop(), accel.CleanupOptions{DrainTimeout: 5 * time.Second}); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if got := testenv.SockOpsPrograms(t, n.cg.Path); got != 2 {
		t.Errorf("%d sock_ops programs on the cgroup after cleanup, want the 2 foreign ones", got)
	}
	for _, p := range append(planted, filepath.Join(n.pin, "links", "other-agent"), filepath.Join(elsewhere, "link")) {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("cleanup removed %s, which sockaccel did not create: %v", p, err)
		}
	}
	for _, p := range []string{"links/sockops", "links/setsockopt", "progs/sk_msg", "sa_sockhash", "sa_config", "progs"} {
		if _, err := os.Lstat(filepath.Join(n.pin, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cleanup left sockaccel's %s (err %v)", p, err)
		}
	}
}

// A restart onto pins attached to another cgroup is refused before it
// changes anything: programs, config and exclusions stay exactly as they
// were, and a live connection stays accelerated.
func TestRefusedRestartChangesNothing(t *testing.T) {
	testenv.RequirePrivileged(t)
	cgA, cgB := testenv.TempCgroup(t), testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	first := testenv.Start(t, accel.Config{Cgroup: cgA, PinDir: pin, MaxConns: 64, BacklogBytes: 64 << 20,
		Conservative: true, ExcludePorts: []uint16{2222}})
	ns := testenv.NewNetns(t)
	in := testenv.Endpoint{Netns: ns, Cgroup: &cgA}
	ln := in.Listen(t, "tcp4", "127.0.0.1:7401")
	p := testenv.Connect(t, in, ln, "tcp4", "127.0.0.1:7401", 1)
	first.Close() // stopped; the pins stay

	before := pinState(t, pin)
	_, err := accel.New(accel.Config{Cgroup: cgB, PinDir: pin, MaxConns: 64, BacklogBytes: 12345,
		Conservative: false, ExcludePorts: []uint16{3333}, ExcludeCgroups: []cgroup.Target{cgA}}, zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "already attached to another cgroup") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("start on another cgroup: %v, want one line refusing it", err)
	}
	t.Logf("refused with: %v", err)
	if after := pinState(t, pin); !after.equal(before) {
		t.Errorf("a refused start changed the pins:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := testenv.SockOpsPrograms(t, cgB.Path); got != 0 {
		t.Errorf("%d sock_ops programs on cgroup B after the refused start", got)
	}
	if got := testenv.SockOpsPrograms(t, cgA.Path); got != 1 {
		t.Errorf("%d sock_ops programs on cgroup A after the refused start, want 1", got)
	}

	st0, err := accel.ReadStatus(pin)
	if err != nil {
		t.Fatal(err)
	}
	testenv.ExchangeAll(t, p, 1<<20, 1<<20, 5)
	st1, err := accel.ReadStatus(pin)
	if err != nil {
		t.Fatal(err)
	}
	if got := st1.RedirectedBytes - st0.RedirectedBytes; got != 2<<20 {
		t.Errorf("live connection on A redirected %d bytes after the refused start, want all %d", got, 2<<20)
	}
}

// pinned is what a start may change in the pins.
type pinned struct {
	Config      []byte
	ExclPorts   []uint16
	ExclCgroups []uint64
	SkMsgProg   ebpf.ProgramID
	SockOpsProg ebpf.ProgramID
}

func (a pinned) equal(b pinned) bool {
	return bytes.Equal(a.Config, b.Config) && slices.Equal(a.ExclPorts, b.ExclPorts) &&
		slices.Equal(a.ExclCgroups, b.ExclCgroups) && a.SkMsgProg == b.SkMsgProg && a.SockOpsProg == b.SockOpsProg
}

func pinState(t *testing.T, pin string) pinned {
	t.Helper()
	var s pinned
	open := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	cfg := open("sa_config")
	var err error
	if s.Config, err = cfg.LookupBytes(uint32(0)); err != nil {
		t.Fatal(err)
	}
	var port uint16
	var id uint64
	var v uint8
	it := open("sa_excl_ports").Iterate()
	for it.Next(&port, &v) {
		s.ExclPorts = append(s.ExclPorts, port)
	}
	it = open("sa_excl_cgroups").Iterate()
	for it.Next(&id, &v) {
		s.ExclCgroups = append(s.ExclCgroups, id)
	}
	slices.Sort(s.ExclPorts)
	slices.Sort(s.ExclCgroups)
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(pin, "progs", "sk_msg"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	s.SkMsgProg, _ = info.ID()
	l, err := link.LoadPinnedLink(filepath.Join(pin, "links", "sockops"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	li, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	s.SockOpsProg = li.Program
	return s
}
