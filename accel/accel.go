//go:build linux

// Package accel loads sockaccel's BPF programs, attaches them to the target
// cgroup and the SOCKHASH, and pins everything in bpffs so that live
// connections never depend on the daemon process.
package accel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/cgroup"
)

// DefaultMaxConns is the default number of connections (both ends) the
// SOCKHASH holds.
const DefaultMaxConns = 65536

// Pin layout below the pin dir. Maps are pinned by name at the top level.
const (
	linkDir        = "links"
	progDir        = "progs"
	sockOpsLink    = linkDir + "/sockops"
	setsockoptLink = linkDir + "/setsockopt"
	// One pinned link per watched syscall tracepoint.
	detectLinkPrefix = "detect-"
	skMsgProgName    = progDir + "/sk_msg"
)

// Config is what the daemon loads and attaches.
type Config struct {
	Cgroup       cgroup.Target
	PinDir       string
	MaxConns     uint32
	ExcludePorts []uint16
	ExcludeCIDRs []netip.Prefix
	// ExcludeCgroups are subtrees (of the target or not) whose sockets are
	// never accelerated.
	ExcludeCgroups []cgroup.Target
	// DisableConntrack turns connection tracking, the close callback and
	// the GC off (--conntrack=false). The backlog bound lives in the
	// conntrack entry, so it goes too.
	DisableConntrack bool
	// BacklogBytes bounds redirected-but-unread bytes per direction; 0
	// means the receiver's receive buffer.
	BacklogBytes uint32
	// Conservative leaves connections whose connect()ing socket is in
	// blocking mode on TCP: a blocking recv on the redirect path can
	// return EAGAIN after the socket's own shutdown(SHUT_WR).
	Conservative bool
	// DisableDetect turns off the syscall-entry watch for splice,
	// MSG_WAITALL and MSG_OOB on accelerated sockets (--detect=false),
	// which otherwise takes those connections off the fast path.
	DisableDetect bool
	// DetectFIONREAD watches ioctl(FIONREAD) on accelerated sockets, for
	// kernels whose FIONREAD leaves redirected bytes out (see the kernel
	// probes): the connection leaves the fast path and its service is
	// learned, like a splice.
	DetectFIONREAD bool
	// DisableSpliceLearning stops RunEvents from excluding the service
	// port of a connection whose splice stalled (--learn-splice=false).
	DisableSpliceLearning bool
	// Lock is the pin dir's lock from LockPinDir, taken before anything
	// else (the daemon takes it before it listens). New takes it over: it
	// is released by Close, or at once if New fails. Nil: New takes it.
	Lock *PinLock
}

// Accelerator holds the loaded objects of a running daemon. Closing it
// releases the daemon's handles only: pinned maps, the pinned sock_ops link
// and the sk_msg attachment keep accelerating until Cleanup.
type Accelerator struct {
	cfg     Config
	log     *zap.Logger
	objs    accelObjects
	links   []link.Link
	adopted bool
	lock    *PinLock // the pin dir's flock, held until Close
	gcOnce  sync.Once
	gcState *gc
	held    heldObjects // what health checks compare the pins with
	// What the behaviour probes found (probed on a fresh start, read from
	// the pins when adopting).
	behaviour KernelBehaviour

	cfgMu     sync.Mutex // serialises read-modify-write of sa_config
	exclMu    sync.Mutex
	exclPorts []uint16
	exclCIDRs []netip.Prefix
	learnRate learnLimiter
	seen      seenUses
	unpinned  []unpinnedLink // attached by this start, pinned at its end
	// What pinLinks logs once they are pinned.
	attachedLog []func()

	// policy.c, loaded on first use (see connOff).
	policyOnce sync.Once
	policy     policyObjects
	policyErr  error
	retiring   sync.WaitGroup  // retirements offExcluded started
	leaving    map[uint64]bool // cookies of connections being retired, under exclMu

	// Resolved by validate, before anything shared changes.
	cgroupID      uint64
	exclCgroupIDs []uint64
	rmemMax       uint32
}

// New probes the kernel, loads the programs (reusing compatible pinned maps),
// attaches sk_msg to the SOCKHASH and sock_ops to the cgroup, and pins all of
// it. If pins from an earlier run exist they are adopted: the sock_ops link is
// updated in place rather than attached a second time.
//
// On failure nothing new stays attached or pinned.
func New(cfg Config, log *zap.Logger) (*Accelerator, error) {
	lock := cfg.Lock
	cfg.Lock = nil
	var err error
	switch {
	case cfg.MaxConns == 0:
		err = errors.New("max conns must be at least 1")
	case cfg.MaxConns > 1<<24:
		err = fmt.Errorf("max conns %d is above the supported 16777216", cfg.MaxConns)
	default:
		err = Probe()
	}
	if err != nil {
		lock.Release()
		return nil, err
	}
	// One daemon per pin dir, held until Close; nothing shared changes
	// before it is held.
	if lock == nil {
		if lock, err = LockPinDir(cfg.PinDir); err != nil {
			return nil, err
		}
	}
	_, statErr := os.Lstat(filepath.Join(cfg.PinDir, sockOpsLink))
	a := &Accelerator{cfg: cfg, log: log, adopted: statErr == nil, lock: lock, leaving: map[uint64]bool{}}
	if err := a.validate(); err != nil {
		lock.Release()
		return nil, err
	}
	// Before anything is attached: the daemon's own sockets may be in the
	// cgroup it accelerates, and once sock_ops runs there the probe's
	// sockets would land in the real sockhash too.
	a.behaviour = a.kernelBehaviour()
	// Where FIONREAD leaves redirected bytes out, its users are found at
	// their first call and their service learned, like splice's.
	if !a.behaviour.FIONREADCountsRedirected() {
		a.cfg.DetectFIONREAD = true
	}
	if err := a.start(); err != nil {
		a.closeHandles()
		if !a.adopted {
			// Undo a fresh start completely; an adopted one keeps serving
			// the connections it already had.
			if cerr := cleanupLocked(context.Background(), cfg.PinDir, log, CleanupOptions{DrainTimeout: DefaultDrainTimeout}); cerr != nil {
				log.Warn("undo partial start", zap.Error(cerr))
			}
		}
		lock.Release()
		return nil, err
	}
	// A restart with new exclusions reaches the connections the pins kept
	// accelerating; a fresh start has none.
	if a.adopted {
		ex := Exclusions{Ports: cfg.ExcludePorts, CIDRs: cfg.ExcludeCIDRs, Cgroups: cfg.ExcludeCgroups}
		moved, err := a.offExcluded(ex)
		if err != nil {
			log.Warn("take excluded live connections off the fast path", zap.Error(err))
		} else if moved > 0 {
			log.Info("took excluded live connections off the fast path", zap.Int("connections", moved))
		}
	}
	return a, nil
}

// validate checks everything a start could refuse on before anything shared
// changes, so that a refused restart leaves the pins, programs, flags and
// exclusions exactly as they were: sockaccel's own pins are what it pinned
// (root's, not symlinks), the links an earlier run pinned are attached to
// the cgroup asked for, and the excluded cgroups exist.
func (a *Accelerator) validate() error {
	if err := checkOwnedPins(a.cfg.PinDir); err != nil {
		return err
	}
	want, err := cgroup.Inode(a.cfg.Cgroup.Path)
	if err != nil {
		return err
	}
	a.cgroupID = want
	for _, pin := range []string{sockOpsLink, setsockoptLink} {
		path := filepath.Join(a.cfg.PinDir, pin)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load pinned link %s: %w", path, err)
		}
		got, err := linkCgroupID(l)
		l.Close()
		if err != nil {
			return fmt.Errorf("pinned link %s: %w", path, err)
		}
		if got == staleCgroupID {
			continue // replaced by attachCgroup
		}
		if got != want {
			return fmt.Errorf("sockaccel is already attached to another cgroup (id %d) through %s; run 'sockaccel cleanup --pin-dir %s' first",
				got, a.cfg.PinDir, a.cfg.PinDir)
		}
	}
	if a.exclCgroupIDs, err = cgroupIDs(a.cfg.ExcludeCgroups); err != nil {
		return err
	}
	if a.rmemMax, err = tcpRmemMax(); err != nil {
		return err
	}
	return nil
}

func (a *Accelerator) start() error {
	spec, err := loadAccel()
	if err != nil {
		return fmt.Errorf("load embedded BPF object: %w", err)
	}
	// Two sockets per connection, one conntrack entry.
	spec.Maps[accelMapSaSockhash].MaxEntries = 2 * a.cfg.MaxConns
	spec.Maps[accelMapSaConntrack].MaxEntries = a.cfg.MaxConns

	carried, err := carryValues(a.cfg.PinDir, spec.Maps)
	if err != nil {
		return err
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: a.cfg.PinDir}}
	if err := spec.LoadAndAssign(&a.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		switch {
		case errors.Is(err, ebpf.ErrMapIncompatible):
			return fmt.Errorf("%w: a pinned map in %s was created by another sockaccel version or another --max-conns; run 'sockaccel cleanup --pin-dir %s' and start again",
				err, a.cfg.PinDir, a.cfg.PinDir)
		case errors.As(err, &ve):
			return fmt.Errorf("load BPF programs: %-20v", ve)
		}
		return fmt.Errorf("load BPF programs: %w", err)
	}
	if err := restoreValues(map[string]*ebpf.Map{accelMapSaStats: a.objs.SaStats, accelMapSaGc: a.objs.SaGc}, carried); err != nil {
		return err
	}
	a.held.cgroupLinks = map[string]link.Link{}
	a.held.detectLinks = map[string]link.Link{}
	var pinned []string
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			pinned = append(pinned, name)
		}
	}
	if err := a.recordHeld(pinned); err != nil {
		return err
	}
	var flags uint32
	if a.cfg.DisableConntrack {
		flags |= uint32(accelConfigFlagsCONFIG_F_NO_CONNTRACK)
	}
	if a.cfg.Conservative {
		flags |= uint32(accelConfigFlagsCONFIG_F_CONSERVATIVE)
	}
	// Exclusions first, then the whole config in one write: the programs
	// never see the exclusion flags cleared in between.
	exclFlags, err := a.writeExclusions(a.cfg.ExcludePorts, a.cfg.ExcludeCIDRs)
	if err != nil {
		return err
	}
	if err := a.writeExcludedCgroups(a.cfg.ExcludeCgroups, a.exclCgroupIDs); err != nil {
		return err
	}
	flags |= exclFlags
	if len(a.exclCgroupIDs) > 0 {
		flags |= uint32(accelConfigFlagsCONFIG_F_EXCL_CGROUPS)
	}
	if err := a.adoptLegacyLearned(); err != nil {
		return err
	}
	if a.anyLearned() {
		flags |= uint32(accelConfigFlagsCONFIG_F_LEARNED)
	}
	hashInfo, err := a.objs.SaSockhash.Info()
	if err != nil {
		return fmt.Errorf("read sockhash info: %w", err)
	}
	hashID, _ := hashInfo.ID()
	if err := a.objs.SaConfig.Put(uint32(0), accelAccelConfig{Flags: flags, BacklogBytes: a.cfg.BacklogBytes, RcvbufMax: a.rmemMax, SockhashId: uint32(hashID)}); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	// Before sock_ops runs: without a key no connection gets a pairing
	// token, so none is paired (bpf/token.h).
	if err := writeTokenKey(a.objs.SaTokenKey); err != nil {
		return err
	}
	// sk_msg first: a socket inserted by sock_ops takes the SOCKHASH's
	// programs at insertion time, so it must already be there. setsockopt
	// before sock_ops, so no socket is established unseen.
	if err := a.attachSkMsg(); err != nil {
		return err
	}
	if err := a.attachCgroup(setsockoptLink, ebpf.AttachCGroupSetsockopt, a.objs.SaSetsockopt); err != nil {
		return err
	}
	if err := a.attachDetect(); err != nil {
		return err
	}
	if err := a.attachCgroup(sockOpsLink, ebpf.AttachCGroupSockOps, a.objs.SaSockops); err != nil {
		return err
	}
	return a.pinLinks()
}

// unpinnedLink is a link attached by this start and held only by this
// process until pinLinks: if the process dies first, the kernel detaches
// it, so a start killed at any point before then leaves nothing attached.
type unpinnedLink struct {
	link link.Link
	path string
}

// pinLinks pins the links this start attached, sock_ops last, each under a
// temporary name renamed over the final one (which releases the link an
// earlier run pinned there). A start killed between two of these renames
// leaves the ones done pinned; the next start adopts or replaces them.
func (a *Accelerator) pinLinks() error {
	for _, u := range a.unpinned {
		if err := os.MkdirAll(filepath.Dir(u.path), 0o700); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(u.path), err)
		}
		if _, err := os.Lstat(u.path); errors.Is(err, os.ErrNotExist) {
			// Nothing to replace: pinned where it belongs, one syscall.
			if err := u.link.Pin(u.path); err != nil {
				return fmt.Errorf("pin link %s (needs bpf_link, Linux 5.7+): %w", u.path, err)
			}
			continue
		}
		tmp := u.path + "-new" // bpffs reserves names with dots
		os.Remove(tmp)
		if err := u.link.Pin(tmp); err != nil {
			// Without bpf_link pinning the attachment dies with this
			// process, which would break the promise that restarts do
			// not touch connections.
			return fmt.Errorf("pin link %s (needs bpf_link, Linux 5.7+): %w", u.path, err)
		}
		if err := os.Rename(tmp, u.path); err != nil {
			u.link.Unpin()
			return fmt.Errorf("pin link %s: %w", u.path, err)
		}
	}
	a.unpinned = nil
	for _, f := range a.attachedLog {
		f()
	}
	a.attachedLog = nil
	return nil
}

// detectTracepointNames are the syscall tracepoints the use detector
// watches; each has a pinned link links/detect-<name>.
var detectTracepointNames = []string{
	"sys_enter_splice", "sys_enter_sendfile64",
	"sys_enter_recvfrom", "sys_enter_recvmmsg", "sys_enter_recvmsg",
	"sys_enter_sendto", "sys_enter_sendmmsg", "sys_enter_sendmsg",
	"sys_enter_ioctl", // only with Config.DetectFIONREAD
}

// detectTracepoints maps each syscall tracepoint the use detector watches
// to its program.
func (a *Accelerator) detectTracepoints() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		"sys_enter_splice":     a.objs.SaDetSplice,
		"sys_enter_sendfile64": a.objs.SaDetSendfile,
		"sys_enter_recvfrom":   a.objs.SaDetRecv,
		"sys_enter_recvmmsg":   a.objs.SaDetRecv,
		"sys_enter_recvmsg":    a.objs.SaDetRecvmsg,
		"sys_enter_sendto":     a.objs.SaDetSend,
		"sys_enter_sendmmsg":   a.objs.SaDetSend,
		"sys_enter_sendmsg":    a.objs.SaDetSendmsg,
		"sys_enter_ioctl":      a.objs.SaDetIoctl,
	}
}

// attachDetect attaches the use detector to its syscall tracepoints, to be
// pinned by pinLinks over the links an earlier run pinned: tracepoint links
// cannot swap programs, and renaming the new pin over the old one releases
// the old link. For a moment both run, which only marks a socket twice.
func (a *Accelerator) attachDetect() error {
	dir := filepath.Join(a.cfg.PinDir, linkDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if !a.cfg.DisableDetect {
		if err := EnsureTracefs(); err != nil {
			return err
		}
	}
	progs := a.detectTracepoints()
	for _, tp := range detectTracepointNames {
		prog := progs[tp]
		path := filepath.Join(dir, detectLinkPrefix+tp)
		if a.cfg.DisableDetect || (tp == "sys_enter_ioctl" && !a.cfg.DetectFIONREAD) {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", path, err)
			}
			continue
		}
		l, err := link.Tracepoint("syscalls", tp, prog, nil)
		if err != nil {
			return fmt.Errorf("attach use detection to tracepoint syscalls/%s (needs tracefs and syscall tracepoints; --detect=false runs without): %w", tp, err)
		}
		a.links = append(a.links, l)
		a.unpinned = append(a.unpinned, unpinnedLink{l, path})
		a.held.detectLinks[tp] = l
	}
	if a.cfg.DisableDetect {
		a.log.Info("use detection off: splice, MSG_WAITALL and MSG_OOB are not watched")
	} else {
		a.attachedLog = append(a.attachedLog, func() {
			a.log.Debug("attached use detection", zap.String("tracepoints", "syscalls/sys_enter_{splice,sendfile64,recvfrom,recvmmsg,recvmsg,sendto,sendmmsg,sendmsg}"),
				zap.Bool("fionread", a.cfg.DetectFIONREAD))
		})
	}
	return nil
}

func (a *Accelerator) attachSkMsg() error {
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  a.objs.SaSockhash.FD(),
		Program: a.objs.SaRedirect,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach sk_msg to sockhash: %w", err)
	}
	// Pin the attached program so cleanup can detach exactly it.
	path := filepath.Join(a.cfg.PinDir, skMsgProgName)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace pinned sk_msg program: %w", err)
	}
	if err := a.objs.SaRedirect.Pin(path); err != nil {
		return fmt.Errorf("pin sk_msg program: %w", err)
	}
	a.log.Debug("attached sk_msg", zap.String("map", accelMapSaSockhash))
	return nil
}

// attachCgroup attaches prog to the target cgroup through a pinned link at
// pin (relative to the pin dir), or adopts the link an earlier run pinned
// there and swaps its program atomically. bpf_link cgroup attachments are
// always multi: other agents' programs on this or parent cgroups stay.
func (a *Accelerator) attachCgroup(pin string, attach ebpf.AttachType, prog *ebpf.Program) error {
	path := filepath.Join(a.cfg.PinDir, pin)
	want := a.cgroupID // validated before anything changed
	l, err := link.LoadPinnedLink(path, nil)
	switch {
	case err == nil:
		got, err := linkCgroupID(l)
		if err != nil {
			l.Close()
			return err
		}
		if got == staleCgroupID {
			return a.replaceStaleLink(l, pin, path, attach, prog)
		}
		if got != want {
			l.Close()
			return fmt.Errorf("sockaccel is already attached to another cgroup (id %d) through %s; run 'sockaccel cleanup --pin-dir %s' first",
				got, a.cfg.PinDir, a.cfg.PinDir)
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return fmt.Errorf("update pinned link %s: %w", path, err)
		}
		a.links = append(a.links, l)
		a.held.cgroupLinks[pin] = l
		a.log.Debug("adopted cgroup link", zap.String("cgroup", a.cfg.Cgroup.Path), zap.String("pin", path))
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("load pinned link %s: %w", path, err)
	}

	l, err = link.AttachCgroup(link.CgroupOptions{Path: a.cfg.Cgroup.Path, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", attach, a.cfg.Cgroup.Path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		l.Close()
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	a.links = append(a.links, l)
	a.unpinned = append(a.unpinned, unpinnedLink{l, path})
	a.held.cgroupLinks[pin] = l
	// Logged by pinLinks, once pinned: only then does it outlive us.
	a.attachedLog = append(a.attachedLog, func() {
		a.log.Debug("attached to cgroup", zap.Stringer("attach", attach), zap.String("cgroup", a.cfg.Cgroup.Path), zap.String("pin", path))
	})
	return nil
}

// staleCgroupID is what a cgroup link reports once its cgroup has been
// removed: the kernel detaches the program and the pinned link stays behind,
// attached to nothing.
const staleCgroupID = 0

// replaceStaleLink attaches prog to the target cgroup and pins the new link
// where stale, a link whose cgroup is gone, was pinned. Nothing is lost: the
// stale link reached no socket any more, and the sockhash and sk_msg, which
// carry the live connections, are untouched.
func (a *Accelerator) replaceStaleLink(stale link.Link, pin, path string, attach ebpf.AttachType, prog *ebpf.Program) error {
	defer stale.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: a.cfg.Cgroup.Path, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", attach, a.cfg.Cgroup.Path, err)
	}
	if err := stale.Unpin(); err != nil {
		l.Close()
		return fmt.Errorf("unpin stale link %s: %w", path, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return fmt.Errorf("pin %s link (needs cgroup bpf_link, Linux 5.7+): %w", attach, err)
	}
	a.links = append(a.links, l)
	a.held.cgroupLinks[pin] = l
	a.log.Warn("replaced stale pinned link: the cgroup it was attached to is gone",
		zap.Stringer("attach", attach), zap.String("cgroup", a.cfg.Cgroup.Path), zap.String("pin", path))
	return nil
}

func linkCgroupID(l link.Link) (uint64, error) {
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("sock_ops link info: %w", err)
	}
	cg := info.Cgroup()
	if cg == nil {
		return 0, errors.New("pinned sock_ops link is not a cgroup link")
	}
	return cg.CgroupId, nil
}

// RunGC runs the fallback conntrack garbage collector until ctx is done. It
// does no periodic work while conntrack is empty, and nothing at all when
// conntrack is disabled.
func (a *Accelerator) RunGC(ctx context.Context, interval time.Duration) error {
	if a.cfg.DisableConntrack {
		<-ctx.Done()
		return nil
	}
	return a.gc().run(ctx, interval)
}

// SetGCInterval changes how often the fallback GC runs while connections
// are tracked, also while RunGC runs (from its next pass on).
func (a *Accelerator) SetGCInterval(d time.Duration) { a.gc().setInterval(d) }

// CollectGarbage runs one GC pass now and returns how many entries it
// removed.
func (a *Accelerator) CollectGarbage() (int, error) {
	removed, _, err := a.gc().collect()
	return removed, err
}

// Conns lists the tracked connections.
func (a *Accelerator) Conns() ([]Conn, error) { return ListConns(a.objs.SaConntrack) }

// EachConn calls fn with each tracked connection, one at a time (see
// EachConn): a listing of any size costs the daemon one entry of memory.
func (a *Accelerator) EachConn(fn func(Conn) error) error { return EachConn(a.objs.SaConntrack, fn) }

// PinDir is the bpffs directory the daemon pins into.
func (a *Accelerator) PinDir() string { return a.cfg.PinDir }

func (a *Accelerator) gc() *gc {
	a.gcOnce.Do(func() {
		a.gcState = &gc{
			conntrack: a.objs.SaConntrack,
			sockhash:  a.objs.SaSockhash,
			state:     a.objs.SaGc,
			wake:      a.objs.SaGcWake,
			log:       a.log.Named("gc"),
			reset:     make(chan struct{}, 1),
			metrics:   newGCMetrics(),
		}
	})
	return a.gcState
}

// Adopted reports whether New took over pins left by an earlier run.
func (a *Accelerator) Adopted() bool { return a.adopted }

// SetExclusions replaces the excluded ports and CIDRs (learned exclusions
// are kept apart, in sa_learned). New connections see the change at once;
// programs are not reloaded.
func (a *Accelerator) SetExclusions(ports []uint16, cidrs []netip.Prefix) error {
	set, err := a.writeExclusions(ports, cidrs)
	if err != nil {
		return err
	}
	all := uint32(accelConfigFlagsCONFIG_F_EXCL_PORTS | accelConfigFlagsCONFIG_F_EXCL_CIDRS)
	return a.updateFlags(set, all&^set)
}

// writeExclusions fills the port and CIDR maps and returns the config flags
// that enable their lookups (the programs skip a lookup while its flag is
// clear); the caller writes the flags.
func (a *Accelerator) writeExclusions(ports []uint16, cidrs []netip.Prefix) (uint32, error) {
	a.exclMu.Lock()
	defer a.exclMu.Unlock()
	a.exclPorts, a.exclCIDRs = ports, cidrs
	if err := replacePorts(a.objs.SaExclPorts, ports); err != nil {
		return 0, fmt.Errorf("update excluded ports: %w", err)
	}
	if err := replaceCIDRs(a.objs.SaExclCidrs, cidrs); err != nil {
		return 0, fmt.Errorf("update excluded cidrs: %w", err)
	}
	var set uint32
	if len(ports) > 0 {
		set |= uint32(accelConfigFlagsCONFIG_F_EXCL_PORTS)
	}
	if len(cidrs) > 0 {
		set |= uint32(accelConfigFlagsCONFIG_F_EXCL_CIDRS)
	}
	return set, nil
}

// SetExcludedCgroups replaces the excluded cgroup subtrees. New connections
// see the change at once.
func (a *Accelerator) SetExcludedCgroups(targets []cgroup.Target) error {
	ids, err := cgroupIDs(targets)
	if err != nil {
		return err
	}
	if err := a.writeExcludedCgroups(targets, ids); err != nil {
		return err
	}
	flag := uint32(accelConfigFlagsCONFIG_F_EXCL_CGROUPS)
	if len(targets) > 0 {
		return a.updateFlags(flag, 0)
	}
	return a.updateFlags(0, flag)
}

// writeExcludedCgroups makes the excluded-cgroup map hold exactly ids (of
// targets, in order); the caller writes the flag.
func (a *Accelerator) writeExcludedCgroups(targets []cgroup.Target, ids []uint64) error {
	want := make(map[uint64]bool, len(ids))
	for i, id := range ids {
		want[id] = true
		if err := a.objs.SaExclCgroups.Put(id, uint8(1)); err != nil {
			return fmt.Errorf("exclude cgroup %s: %w", targets[i].Path, err)
		}
	}
	var stale []uint64
	var id uint64
	var val uint8
	it := a.objs.SaExclCgroups.Iterate()
	for it.Next(&id, &val) {
		if !want[id] {
			stale = append(stale, id)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list excluded cgroups: %w", err)
	}
	for _, id := range stale {
		if err := a.objs.SaExclCgroups.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete excluded cgroup %d: %w", id, err)
		}
	}
	return nil
}

// updateFlags sets and clears config flags, keeping the rest. Only the
// daemon writes the config map.
func (a *Accelerator) updateFlags(set, clear uint32) error {
	a.cfgMu.Lock()
	defer a.cfgMu.Unlock()
	var cfg accelAccelConfig
	if err := a.objs.SaConfig.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read config map: %w", err)
	}
	cfg.Flags = cfg.Flags&^clear | set
	if err := a.objs.SaConfig.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	return nil
}

// Close releases this process's handles and the pin dir's lock. Pins keep
// everything running.
func (a *Accelerator) Close() error {
	err := a.closeHandles()
	a.lock.Release()
	return err
}

func (a *Accelerator) closeHandles() error {
	var errs []error
	for _, l := range a.links {
		// Closing a pinned link does not detach it.
		errs = append(errs, l.Close())
	}
	a.links = nil
	errs = append(errs, a.policy.Close(), a.objs.Close())
	return errors.Join(errs...)
}

// tcpRmemMax is net.ipv4.tcp_rmem[2]: how far TCP autotuning may grow a
// receive buffer, and so how much TCP itself would let a peer queue.
func tcpRmemMax() (uint32, error) {
	const path = "/proc/sys/net/ipv4/tcp_rmem"
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return 0, fmt.Errorf("parse %s: %q", path, b)
	}
	v, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return uint32(v), nil
}

func replacePorts(m *ebpf.Map, ports []uint16) error {
	want := make(map[uint16]bool, len(ports))
	for _, p := range ports {
		want[p] = true
		if err := m.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("put port %d: %w", p, err)
		}
	}
	var stale []uint16
	var key uint16
	var val uint8
	it := m.Iterate()
	for it.Next(&key, &val) {
		if !want[key] {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete port %d: %w", k, err)
		}
	}
	return nil
}

func cidrKey(p netip.Prefix) accelCidrKey {
	p = p.Masked()
	k := accelCidrKey{Prefixlen: uint32(p.Bits())}
	addr := p.Addr()
	if addr.Is4() {
		k.Prefixlen += 96
	}
	k.Addr = addr.As16() // As16 yields the IPv4-mapped form for IPv4
	return k
}

func replaceCIDRs(m *ebpf.Map, cidrs []netip.Prefix) error {
	want := make(map[accelCidrKey]bool, len(cidrs))
	for _, p := range cidrs {
		k := cidrKey(p)
		want[k] = true
		if err := m.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("put cidr %s: %w", p, err)
		}
	}
	var stale []accelCidrKey
	var key accelCidrKey
	var val uint8
	it := m.Iterate()
	for it.Next(&key, &val) {
		if !want[key] {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete cidr: %w", err)
		}
	}
	return nil
}
