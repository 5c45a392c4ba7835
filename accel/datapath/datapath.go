//go:build linux

// Package datapath loads sockaccel's BPF programs, attaches them to the
// target cgroup and the SOCKHASH, and pins everything in bpffs so that live
// connections never depend on the daemon process; on a restart it adopts
// the pins an earlier run left. It also owns what the programs are told:
// the config flags, the operator's exclusions and the policy program that
// takes excluded live connections off the fast path, and the health check
// that compares the pins with what the daemon holds.
package datapath

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/conntrack"
	"github.com/sockaccel/sockaccel/accel/hostfs"
	"github.com/sockaccel/sockaccel/accel/pins"
	"github.com/sockaccel/sockaccel/accel/teardown"
	"github.com/sockaccel/sockaccel/cgroup"
)

// DefaultMaxConns is the default number of connections (both ends) the
// SOCKHASH holds.
const DefaultMaxConns = 65536

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
	Lock *pins.PinLock
}

// Datapath holds the loaded objects of a running daemon. Closing it
// releases the daemon's handles only: pinned maps, the pinned sock_ops link
// and the sk_msg attachment keep accelerating until cleanup.
type Datapath struct {
	cfg     Config
	log     *zap.Logger
	objs    bpfobj.AccelObjects
	links   []link.Link
	adopted bool
	lock    *pins.PinLock      // the pin dir's flock, held until Close
	ct      *conntrack.Tracker // over the loaded maps, once loaded
	held    heldObjects        // what health checks compare the pins with

	cfgMu     sync.Mutex // serialises read-modify-write of sa_config
	exclMu    sync.Mutex
	exclPorts []uint16
	exclCIDRs []netip.Prefix
	unpinned  []unpinnedLink // attached by this start, pinned at its end
	// What pinLinks logs once they are pinned.
	attachedLog []func()

	// policy.c, loaded on first use (see connOff).
	policyOnce sync.Once
	policy     bpfobj.PolicyObjects
	policyErr  error

	// Resolved by validate, before anything shared changes.
	cgroupID      uint64
	exclCgroupIDs []uint64
	rmemMax       uint32
}

// Open checks the kernel and the config, takes the pin dir's lock (unless
// cfg.Lock holds it already) and validates everything a start could refuse
// on, changing nothing shared; Start then loads and attaches. If pins from an
// earlier run exist they are adopted (Adopted). On failure the lock is
// released.
func Open(cfg Config, log *zap.Logger) (*Datapath, error) {
	lock := cfg.Lock
	cfg.Lock = nil
	var err error
	switch {
	case cfg.MaxConns == 0:
		err = errors.New("max conns must be at least 1")
	case cfg.MaxConns > 1<<24:
		err = fmt.Errorf("max conns %d is above the supported 16777216", cfg.MaxConns)
	default:
		err = hostfs.Probe()
	}
	if err != nil {
		lock.Release()
		return nil, err
	}
	// One daemon per pin dir, held until Close; nothing shared changes
	// before it is held.
	if lock == nil {
		if lock, err = pins.LockPinDir(cfg.PinDir); err != nil {
			return nil, err
		}
	}
	_, statErr := os.Lstat(filepath.Join(cfg.PinDir, pins.SockOpsLink))
	a := &Datapath{cfg: cfg, log: log, adopted: statErr == nil, lock: lock}
	if err := a.validate(); err != nil {
		lock.Release()
		return nil, err
	}
	return a, nil
}

// DetectFIONREAD turns on the watch of ioctl(FIONREAD) (Config.DetectFIONREAD)
// before Start: the kernel probes found FIONREAD leaving redirected bytes out.
func (a *Datapath) DetectFIONREAD() { a.cfg.DetectFIONREAD = true }

// Config is the configuration the datapath runs with (ExcludeCgroups as
// the last WriteExclusions left it).
func (a *Datapath) Config() Config {
	a.exclMu.Lock()
	defer a.exclMu.Unlock()
	return a.cfg
}

// Start loads the programs (reusing compatible pinned maps), attaches
// sk_msg to the SOCKHASH and sock_ops to the cgroup, and pins all of it; an
// adopted sock_ops link is updated in place rather than attached a second
// time. On failure nothing new stays attached or pinned (an adopted start
// keeps serving the connections it already had) and the lock is released.
func (a *Datapath) Start() error {
	if err := a.start(); err != nil {
		a.closeHandles()
		if !a.adopted {
			// Undo a fresh start completely; an adopted one keeps serving
			// the connections it already had.
			if cerr := teardown.CleanupLocked(context.Background(), a.cfg.PinDir, a.log, teardown.CleanupOptions{DrainTimeout: teardown.DefaultDrainTimeout}); cerr != nil {
				a.log.Warn("undo partial start", zap.Error(cerr))
			}
		}
		a.lock.Release()
		return err
	}
	return nil
}

// validate checks everything a start could refuse on before anything shared
// changes, so that a refused restart leaves the pins, programs, flags and
// exclusions exactly as they were: sockaccel's own pins are what it pinned
// (root's, not symlinks), the links an earlier run pinned are attached to
// the cgroup asked for, and the excluded cgroups exist.
func (a *Datapath) validate() error {
	if err := pins.CheckOwned(a.cfg.PinDir); err != nil {
		return err
	}
	want, err := cgroup.Inode(a.cfg.Cgroup.Path)
	if err != nil {
		return err
	}
	a.cgroupID = want
	for _, pin := range []string{pins.SockOpsLink, pins.SetsockoptLink} {
		path := filepath.Join(a.cfg.PinDir, pin)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load pinned link %s: %w", path, err)
		}
		got, err := LinkCgroupID(l)
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

func (a *Datapath) start() error {
	spec, err := bpfobj.LoadAccel()
	if err != nil {
		return fmt.Errorf("load embedded BPF object: %w", err)
	}
	// Two sockets per connection, one conntrack entry.
	spec.Maps[bpfobj.AccelMapSaSockhash].MaxEntries = 2 * a.cfg.MaxConns
	spec.Maps[bpfobj.AccelMapSaConntrack].MaxEntries = a.cfg.MaxConns
	if err := setDaemonPIDNamespace(spec); err != nil {
		return err
	}
	if err := setWokenWakeFunction(spec); err != nil {
		return err
	}

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
	if err := restoreValues(map[string]*ebpf.Map{bpfobj.AccelMapSaStats: a.objs.SaStats, bpfobj.AccelMapSaGc: a.objs.SaGc}, carried); err != nil {
		return err
	}
	a.ct = conntrack.New(&a.objs.AccelMaps, a.log)
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
		flags |= uint32(bpfobj.AccelConfigFlagsCONFIG_F_NO_CONNTRACK)
	}
	if a.cfg.Conservative {
		flags |= uint32(bpfobj.AccelConfigFlagsCONFIG_F_CONSERVATIVE)
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
		flags |= uint32(bpfobj.AccelConfigFlagsCONFIG_F_EXCL_CGROUPS)
	}
	if err := a.adoptLegacyLearned(); err != nil {
		return err
	}
	if a.anyLearned() {
		flags |= uint32(bpfobj.AccelConfigFlagsCONFIG_F_LEARNED)
	}
	hashInfo, err := a.objs.SaSockhash.Info()
	if err != nil {
		return fmt.Errorf("read sockhash info: %w", err)
	}
	hashID, _ := hashInfo.ID()
	if err := a.objs.SaConfig.Put(uint32(0), bpfobj.AccelAccelConfig{Flags: flags, BacklogBytes: a.cfg.BacklogBytes, RcvbufMax: a.rmemMax, SockhashId: uint32(hashID)}); err != nil {
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
	if err := a.attachCgroup(pins.SetsockoptLink, ebpf.AttachCGroupSetsockopt, a.objs.SaSetsockopt); err != nil {
		return err
	}
	if err := a.attachDetect(); err != nil {
		return err
	}
	if err := a.attachCgroup(pins.SockOpsLink, ebpf.AttachCGroupSockOps, a.objs.SaSockops); err != nil {
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
func (a *Datapath) pinLinks() error {
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

// detectTracepoints maps each syscall tracepoint the use detector watches
// to its program.
func (a *Datapath) detectTracepoints() map[string]*ebpf.Program {
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
		"sys_enter_shutdown":   a.objs.SaDetShutdown,
	}
}

// attachDetect attaches the use detector to its syscall tracepoints, to be
// pinned by pinLinks over the links an earlier run pinned: tracepoint links
// cannot swap programs, and renaming the new pin over the old one releases
// the old link. For a moment both run, which only marks a socket twice.
func (a *Datapath) attachDetect() error {
	dir := filepath.Join(a.cfg.PinDir, pins.LinkDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if !a.cfg.DisableDetect {
		if err := hostfs.EnsureTracefs(); err != nil {
			return err
		}
	}
	progs := a.detectTracepoints()
	for _, tp := range pins.DetectTracepoints {
		prog := progs[tp]
		path := filepath.Join(dir, pins.DetectLinkPrefix+tp)
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
		a.log.Info("use detection off: splice, MSG_WAITALL, MSG_OOB and shutdown are not watched")
	} else {
		a.attachedLog = append(a.attachedLog, func() {
			a.log.Debug("attached use detection", zap.String("tracepoints", "syscalls/sys_enter_{splice,sendfile64,recvfrom,recvmmsg,recvmsg,sendto,sendmmsg,sendmsg,shutdown}"),
				zap.Bool("fionread", a.cfg.DetectFIONREAD))
		})
	}
	return nil
}

func (a *Datapath) attachSkMsg() error {
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  a.objs.SaSockhash.FD(),
		Program: a.objs.SaRedirect,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach sk_msg to sockhash: %w", err)
	}
	// Pin the attached program so cleanup can detach exactly it.
	path := filepath.Join(a.cfg.PinDir, pins.SkMsgProg)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace pinned sk_msg program: %w", err)
	}
	if err := a.objs.SaRedirect.Pin(path); err != nil {
		return fmt.Errorf("pin sk_msg program: %w", err)
	}
	a.log.Debug("attached sk_msg", zap.String("map", bpfobj.AccelMapSaSockhash))
	return nil
}

// attachCgroup attaches prog to the target cgroup through a pinned link at
// pin (relative to the pin dir), or adopts the link an earlier run pinned
// there and swaps its program atomically. bpf_link cgroup attachments are
// always multi: other agents' programs on this or parent cgroups stay.
func (a *Datapath) attachCgroup(pin string, attach ebpf.AttachType, prog *ebpf.Program) error {
	path := filepath.Join(a.cfg.PinDir, pin)
	want := a.cgroupID // validated before anything changed
	l, err := link.LoadPinnedLink(path, nil)
	switch {
	case err == nil:
		got, err := LinkCgroupID(l)
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
func (a *Datapath) replaceStaleLink(stale link.Link, pin, path string, attach ebpf.AttachType, prog *ebpf.Program) error {
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

// LinkCgroupID reads the cgroup a cgroup link is attached to (0 once its
// cgroup is gone).
func LinkCgroupID(l link.Link) (uint64, error) {
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

// PinDir is the bpffs directory the daemon pins into.
func (a *Datapath) PinDir() string { return a.cfg.PinDir }

// Adopted reports whether New took over pins left by an earlier run.
func (a *Datapath) Adopted() bool { return a.adopted }

// SetExclusions replaces the excluded ports and CIDRs (learned exclusions
// are kept apart, in sa_learned). New connections see the change at once;
// programs are not reloaded.
func (a *Datapath) SetExclusions(ports []uint16, cidrs []netip.Prefix) error {
	set, err := a.writeExclusions(ports, cidrs)
	if err != nil {
		return err
	}
	all := uint32(bpfobj.AccelConfigFlagsCONFIG_F_EXCL_PORTS | bpfobj.AccelConfigFlagsCONFIG_F_EXCL_CIDRS)
	return a.UpdateFlags(set, all&^set)
}

// writeExclusions fills the port and CIDR maps and returns the config flags
// that enable their lookups (the programs skip a lookup while its flag is
// clear); the caller writes the flags.
func (a *Datapath) writeExclusions(ports []uint16, cidrs []netip.Prefix) (uint32, error) {
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
		set |= uint32(bpfobj.AccelConfigFlagsCONFIG_F_EXCL_PORTS)
	}
	if len(cidrs) > 0 {
		set |= uint32(bpfobj.AccelConfigFlagsCONFIG_F_EXCL_CIDRS)
	}
	return set, nil
}

// SetExcludedCgroups replaces the excluded cgroup subtrees. New connections
// see the change at once.
func (a *Datapath) SetExcludedCgroups(targets []cgroup.Target) error {
	ids, err := cgroupIDs(targets)
	if err != nil {
		return err
	}
	if err := a.writeExcludedCgroups(targets, ids); err != nil {
		return err
	}
	flag := uint32(bpfobj.AccelConfigFlagsCONFIG_F_EXCL_CGROUPS)
	if len(targets) > 0 {
		return a.UpdateFlags(flag, 0)
	}
	return a.UpdateFlags(0, flag)
}

// writeExcludedCgroups makes the excluded-cgroup map hold exactly ids (of
// targets, in order); the caller writes the flag.
func (a *Datapath) writeExcludedCgroups(targets []cgroup.Target, ids []uint64) error {
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

// UpdateFlags sets and clears config flags, keeping the rest. Only the
// daemon writes the config map.
func (a *Datapath) UpdateFlags(set, clear uint32) error {
	a.cfgMu.Lock()
	defer a.cfgMu.Unlock()
	var cfg bpfobj.AccelAccelConfig
	if err := a.objs.SaConfig.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read config map: %w", err)
	}
	cfg.Flags = cfg.Flags&^clear | set
	if err := a.objs.SaConfig.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	return nil
}

// Conntrack is the tracker over the loaded maps (nil before Start).
func (a *Datapath) Conntrack() *conntrack.Tracker { return a.ct }

// Maps are the loaded maps.
func (a *Datapath) Maps() *bpfobj.AccelMaps { return &a.objs.AccelMaps }

// CgroupID is the target cgroup's id, resolved by Open.
func (a *Datapath) CgroupID() uint64 { return a.cgroupID }

// CloseLinks closes this process's handles on the links (their pins keep
// them until cleanup removes those): what a daemon cleaning up its own pins
// does first.
func (a *Datapath) CloseLinks() {
	for _, l := range a.links {
		l.Close()
	}
	a.links = nil
}

// Close releases this process's handles and the pin dir's lock. Pins keep
// everything running.
func (a *Datapath) Close() error {
	err := a.closeHandles()
	a.lock.Release()
	return err
}

func (a *Datapath) closeHandles() error {
	var errs []error
	for _, l := range a.links {
		// Closing a pinned link does not detach it.
		errs = append(errs, l.Close())
	}
	a.links = nil
	errs = append(errs, a.policy.Close(), a.objs.Close())
	return errors.Join(errs...)
}

// defaultTCPRmemMax is net.ipv4.tcp_rmem[2] on a host that never set it
// (6 MiB since Linux 4.20).
const defaultTCPRmemMax = 6 << 20

// tcpRmemMax is net.ipv4.tcp_rmem[2]: how far TCP autotuning may grow a
// receive buffer, and so how much TCP itself would let a peer queue.
func tcpRmemMax() (uint32, error) {
	const path = "/proc/sys/net/ipv4/tcp_rmem"
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		// /proc shows processes only (the unit's ProcSubset=pid). The
		// programs read each receiver's own namespace's value; this one
		// is their fallback, should that read ever fail, and the kernel's
		// default ceiling is as good a guess as any.
		return defaultTCPRmemMax, nil
	}
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

// replaceKeys makes set map m hold exactly keys: the new ones go in first
// and only then do the others go, so no moment lacks a key both sets have.
// what names a key in errors.
func replaceKeys[K comparable](m *ebpf.Map, keys []K, what func(K) string) error {
	want := make(map[K]bool, len(keys))
	for _, k := range keys {
		want[k] = true
		if err := m.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("put %s: %w", what(k), err)
		}
	}
	var (
		stale []K
		key   K
		val   uint8
	)
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
			return fmt.Errorf("delete %s: %w", what(k), err)
		}
	}
	return nil
}

func replacePorts(m *ebpf.Map, ports []uint16) error {
	return replaceKeys(m, ports, func(p uint16) string { return fmt.Sprintf("port %d", p) })
}

func cidrKey(p netip.Prefix) bpfobj.AccelCidrKey {
	p = p.Masked()
	k := bpfobj.AccelCidrKey{Prefixlen: uint32(p.Bits())}
	addr := p.Addr()
	if addr.Is4() {
		k.Prefixlen += 96
	}
	k.Addr = addr.As16() // As16 yields the IPv4-mapped form for IPv4
	return k
}

func replaceCIDRs(m *ebpf.Map, cidrs []netip.Prefix) error {
	keys := make([]bpfobj.AccelCidrKey, len(cidrs))
	for i, p := range cidrs {
		keys[i] = cidrKey(p)
	}
	return replaceKeys(m, keys, func(k bpfobj.AccelCidrKey) string {
		addr, bits := netip.AddrFrom16(k.Addr), int(k.Prefixlen)
		if addr.Is4In6() {
			addr, bits = addr.Unmap(), bits-96
		}
		return "cidr " + netip.PrefixFrom(addr, bits).String()
	})
}
