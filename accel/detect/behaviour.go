//go:build linux

package detect

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/datapath"
	"github.com/sockaccel/sockaccel/accel/pins"
)

// Behaviour probe names: the name keys of status --json kernel_probes.
const (
	ProbeFIONREAD      = "fionread"
	ProbeRcvbufCharged = "rcvbuf_charged"
	ProbeSplice        = "splice"
	ProbeWaitall       = "waitall"
	ProbeRcvlowat      = "rcvlowat"
)

// KernelProbe is what one behaviour probe found: how a socket holding
// redirected bytes behaves against how TCP behaves, and what the daemon does
// about it. JSON keys are a contract with scripts: add, never rename.
type KernelProbe struct {
	Name string `json:"name"`
	// Result is a short phrase ("counts redirected bytes", "never returns
	// redirected bytes", ...), "not probed", or "error: ..." when the
	// probe itself failed.
	Result string `json:"result"`
	// AsTCP is true where the redirect path behaves as TCP does; false
	// also for an error, so a failed probe gets the cautious policy.
	AsTCP  bool   `json:"as_tcp"`
	Detail string `json:"detail,omitempty"`
	Policy string `json:"policy,omitempty"`
}

// String is the probe in one line, as logs and `sockaccel status` show it.
func (p KernelProbe) String() string {
	s := p.Name + ": " + p.Result
	if p.Detail != "" {
		s += " (" + p.Detail + ")"
	}
	if p.Policy != "" {
		s += "; policy: " + p.Policy
	}
	return s
}

// KernelBehaviour is what the behaviour probes found on this kernel. The
// daemon probes on a fresh start and stores the result in its pin dir (pins
// die with a reboot, and the kernel cannot change without one); a restart
// that adopts the pins reads it back instead of probing again.
type KernelBehaviour struct {
	// Kernel is the release probed (uname -r); ProbedAt when. Both zero
	// when nothing was probed.
	Kernel   string        `json:"kernel"`
	ProbedAt time.Time     `json:"probed_at"`
	Probes   []KernelProbe `json:"probes"`
}

func (b KernelBehaviour) asTCP(name string) bool {
	for _, p := range b.Probes {
		if p.Name == name {
			return p.AsTCP
		}
	}
	return false
}

// FIONREADCountsRedirected: ioctl(FIONREAD) (SIOCINQ) on a socket counts the
// redirected bytes queued for it (wrong, 0, on Debian 12's 6.1).
func (b KernelBehaviour) FIONREADCountsRedirected() bool { return b.asTCP(ProbeFIONREAD) }

// RcvbufCharged: redirected bytes are charged to the receiver's receive
// buffer (sk_rmem_alloc), so the kernel bounds them itself (since 6.12.8).
func (b KernelBehaviour) RcvbufCharged() bool { return b.asTCP(ProbeRcvbufCharged) }

// SpliceReturnsRedirected: splice() from a socket returns the redirected
// bytes queued for it (no kernel so far does).
func (b KernelBehaviour) SpliceReturnsRedirected() bool { return b.asTCP(ProbeSplice) }

// WaitallWaits: recv(MSG_WAITALL) with redirected bytes queued waits for the
// whole length, as TCP does, instead of returning short.
func (b KernelBehaviour) WaitallWaits() bool { return b.asTCP(ProbeWaitall) }

// RcvlowatHonoured: poll honours SO_RCVLOWAT for redirected bytes.
func (b KernelBehaviour) RcvlowatHonoured() bool { return b.asTCP(ProbeRcvlowat) }

// behaviourProbe is one self-test on a fresh loopback socket pair.
type behaviourProbe struct {
	name string
	// Results where the redirect path behaves as TCP, and where not.
	asTCP, differs string
	// run measures on p and says whether that is what TCP does.
	run func(p *probePair) (asTCP bool, detail string, err error)
	// policy is what the daemon does about the result under cfg.
	policy func(asTCP bool, cfg datapath.Config) string
}

// probeBytes is what each probe redirects: one message, as in issue 11's
// FIONREAD finding (TCP says 1234, the redirect path 0).
const probeBytes = 1234

var behaviourProbes = []behaviourProbe{
	{
		name: ProbeFIONREAD, asTCP: "counts redirected bytes", differs: "misses redirected bytes",
		run: func(p *probePair) (bool, string, error) {
			if err := p.sendArrived(probeBytes); err != nil {
				return false, "", err
			}
			n, err := unix.IoctlGetInt(p.receiver, unix.SIOCINQ)
			if err != nil {
				return false, "", fmt.Errorf("ioctl(FIONREAD): %w", err)
			}
			return n == probeBytes, fmt.Sprintf("FIONREAD %d with %d bytes queued", n, probeBytes), nil
		},
		policy: func(asTCP bool, cfg datapath.Config) string {
			if asTCP {
				return "none needed"
			}
			return "ioctl(FIONREAD) users are taken off the fast path and their service learned"
		},
	},
	{
		name: ProbeRcvbufCharged, asTCP: "charged", differs: "not charged",
		run: func(p *probePair) (bool, string, error) {
			before, err := rmemAlloc(p.receiver)
			if err != nil {
				return false, "", err
			}
			if err := p.sendArrived(probeBytes); err != nil {
				return false, "", err
			}
			after, err := rmemAlloc(p.receiver)
			if err != nil {
				return false, "", err
			}
			grew := int64(after) - int64(before)
			return grew >= probeBytes, fmt.Sprintf("sk_rmem_alloc (SO_MEMINFO) grew by %d for %d bytes queued", grew, probeBytes), nil
		},
		policy: func(asTCP bool, cfg datapath.Config) string {
			switch {
			case cfg.DisableConntrack && asTCP:
				return "none needed: the receive buffer bounds redirected bytes (--conntrack=false: no backlog bound of its own)"
			case cfg.DisableConntrack:
				return "nothing bounds redirected bytes: --conntrack=false turns the backlog bound off"
			case asTCP:
				return "none needed: the receive buffer bounds redirected bytes, and the backlog bound applies as well"
			}
			return "backlog bound counts redirected bytes itself"
		},
	},
	{
		name: ProbeSplice, asTCP: "returns redirected bytes", differs: "never returns redirected bytes",
		run: func(p *probePair) (bool, string, error) {
			if err := p.sendArrived(probeBytes); err != nil {
				return false, "", err
			}
			var pfd [2]int
			if err := unix.Pipe2(pfd[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
				return false, "", fmt.Errorf("pipe: %w", err)
			}
			defer unix.Close(pfd[0])
			defer unix.Close(pfd[1])
			// SPLICE_F_NONBLOCK covers the pipe only; the socket itself
			// must be non-blocking too, or a kernel that never returns
			// the bytes would hang here.
			if err := unix.SetNonblock(p.receiver, true); err != nil {
				return false, "", fmt.Errorf("set non-blocking: %w", err)
			}
			n, err := unix.Splice(p.receiver, nil, pfd[1], nil, probeBytes, unix.SPLICE_F_NONBLOCK)
			switch {
			case errors.Is(err, unix.EAGAIN):
				return false, fmt.Sprintf("EAGAIN with %d bytes queued", probeBytes), nil
			case err != nil:
				return false, "", fmt.Errorf("splice: %w", err)
			}
			return n == probeBytes, fmt.Sprintf("returned %d of %d bytes queued", n, probeBytes), nil
		},
		policy: func(asTCP bool, cfg datapath.Config) string {
			switch {
			case asTCP:
				return "none needed"
			case cfg.DisableDetect:
				return "not watched (--detect=false): keep splice users on TCP with --exclude-ports or --exclude-cgroups"
			case cfg.DisableSpliceLearning:
				return "splice users detected and taken off the fast path (--detect); a stalled splice is reset"
			}
			return "splice users detected and taken off the fast path (--detect); a stalled splice is reset and its service learned (--learn-splice)"
		},
	},
	{
		// A receiver holding redirected bytes and, behind them, bytes that
		// came through TCP: TCP would return both to one MSG_WAITALL read.
		name: ProbeWaitall, asTCP: "waits for all", differs: "returns short",
		run: func(p *probePair) (bool, string, error) {
			if err := p.send(probeBytes); err != nil {
				return false, "", err
			}
			if err := p.sendOverTCP(probeBytes); err != nil {
				return false, "", err
			}
			if err := p.waitReadable(); err != nil {
				return false, "", err
			}
			// Only a guard: a kernel that waits has every byte queued.
			tv := unix.Timeval{Sec: 2}
			if err := unix.SetsockoptTimeval(p.receiver, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return false, "", fmt.Errorf("set SO_RCVTIMEO: %w", err)
			}
			buf := make([]byte, 2*probeBytes)
			n, _, err := unix.Recvfrom(p.receiver, buf, unix.MSG_WAITALL)
			if err != nil {
				return false, "", fmt.Errorf("recv(MSG_WAITALL): %w", err)
			}
			return n == len(buf), fmt.Sprintf("recv(MSG_WAITALL) of %d returned %d, %d bytes queued (half of them through TCP)", len(buf), n, len(buf)), nil
		},
		policy: func(asTCP bool, cfg datapath.Config) string {
			switch {
			case asTCP:
				return "none needed"
			case cfg.DisableDetect:
				return "not watched (--detect=false): recv(MSG_WAITALL) can return short"
			}
			return "recv(MSG_WAITALL) users detected and taken off the fast path (--detect); a first call with redirected bytes unread can still return short"
		},
	},
	{
		name: ProbeRcvlowat, asTCP: "honoured", differs: "ignored",
		run: func(p *probePair) (bool, string, error) {
			if err := p.sendArrived(probeBytes); err != nil {
				return false, "", err
			}
			if err := unix.SetsockoptInt(p.receiver, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 2*probeBytes); err != nil {
				return false, "", fmt.Errorf("set SO_RCVLOWAT: %w", err)
			}
			fds := []unix.PollFd{{Fd: int32(p.receiver), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, 0); err != nil {
				return false, "", fmt.Errorf("poll: %w", err)
			}
			readable := fds[0].Revents&unix.POLLIN != 0
			return !readable, fmt.Sprintf("poll readable=%v with %d bytes queued, SO_RCVLOWAT %d", readable, probeBytes, 2*probeBytes), nil
		},
		policy: func(asTCP bool, cfg datapath.Config) string {
			if asTCP {
				return "none needed"
			}
			return "a socket given SO_RCVLOWAT gets no redirected bytes (setsockopt hook); set after bytes were redirected, it is applied as 1"
		},
	},
}

// ProbeBehaviour runs every behaviour probe, each on its own loopback TCP
// socket pair in a private SOCKHASH whose sk_msg program redirects the
// sender's sends into the receiver's ingress queue, as the datapath does.
// Nothing is pinned or attached to a cgroup and no other socket is touched;
// it takes milliseconds. A probe that fails is reported as its result
// ("error: ..."), never as an error.
//
// The sockets must not be in another sockhash already: the daemon probes on
// a fresh start only, before its sock_ops program is attached (its own
// sockets may be in the cgroup it accelerates).
func ProbeBehaviour() KernelBehaviour {
	return KernelBehaviour{Kernel: kernelRelease(), ProbedAt: time.Now().UTC(), Probes: runBehaviourProbes(true)}
}

// runBehaviourProbes runs the probes with the redirect, or as plain TCP
// (the tests' control: every probe must then say "as TCP").
func runBehaviourProbes(redirect bool) []KernelProbe {
	var objs *bpfobj.BehaviourObjects
	var loadErr error
	if redirect {
		objs, loadErr = loadBehaviourProbe()
		if objs != nil {
			defer objs.Close()
		}
	}
	out := make([]KernelProbe, 0, len(behaviourProbes))
	for _, bp := range behaviourProbes {
		r := KernelProbe{Name: bp.name}
		err := loadErr
		if err == nil {
			r.AsTCP, r.Detail, err = runProbe(bp, objs)
		}
		switch {
		case err != nil:
			r.Result, r.AsTCP = "error: "+err.Error(), false
		case r.AsTCP:
			r.Result = bp.asTCP
		default:
			r.Result = bp.differs
		}
		out = append(out, r)
	}
	return out
}

func runProbe(bp behaviourProbe, objs *bpfobj.BehaviourObjects) (bool, string, error) {
	p, err := newProbePair(objs)
	if err != nil {
		return false, "", err
	}
	defer p.close()
	return bp.run(p)
}

func loadBehaviourProbe() (*bpfobj.BehaviourObjects, error) {
	var objs bpfobj.BehaviourObjects
	if err := bpfobj.LoadBehaviourObjects(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load probe programs: %-20v", ve)
		}
		return nil, fmt.Errorf("load probe programs: %w", err)
	}
	// Attached to the private map only; it goes with the map.
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  objs.KpSockhash.FD(),
		Program: objs.KpRedirect,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		objs.Close()
		return nil, fmt.Errorf("attach probe sk_msg: %w", err)
	}
	return &objs, nil
}

// probePair is a loopback TCP connection: sender writes, receiver reads. With
// objs both are in the probe's sockhash and send's writes are redirected.
type probePair struct {
	sender, receiver int
	objs             *bpfobj.BehaviourObjects
}

// Slots in kp_sockhash (KP_SENDER, KP_RECEIVER in bpf/behaviour.c).
const (
	kpSender   = uint32(0)
	kpReceiver = uint32(1)
)

func newProbePair(objs *bpfobj.BehaviourObjects) (*probePair, error) {
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(ln)
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return nil, fmt.Errorf("bind 127.0.0.1: %w", err)
	}
	if err := unix.Listen(ln, 1); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	addr, err := unix.Getsockname(ln)
	if err != nil {
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	p := &probePair{sender: -1, receiver: -1, objs: objs}
	if p.sender, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(p.sender, addr); err != nil {
		p.close()
		return nil, fmt.Errorf("connect over loopback: %w", err)
	}
	if p.receiver, _, err = unix.Accept4(ln, unix.SOCK_CLOEXEC); err != nil {
		p.receiver = -1
		p.close()
		return nil, fmt.Errorf("accept: %w", err)
	}
	if objs == nil {
		return p, nil
	}
	for _, s := range []struct {
		slot uint32
		fd   int
	}{{kpSender, p.sender}, {kpReceiver, p.receiver}} {
		if err := objs.KpSockhash.Update(s.slot, uint32(s.fd), ebpf.UpdateAny); err != nil {
			p.close()
			return nil, fmt.Errorf("insert probe socket into private sockhash: %w", err)
		}
	}
	return p, nil
}

// close resets both ends, so no TIME_WAIT is left behind; closing also
// unlinks them from the sockhash.
func (p *probePair) close() {
	for _, fd := range []int{p.sender, p.receiver} {
		if fd >= 0 {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
		}
	}
}

// send writes n bytes in one sendmsg and, under the redirect, checks that
// they were redirected.
func (p *probePair) send(n int) error {
	var before uint64
	if p.objs != nil {
		if err := p.objs.KpRedirectedBytes.Get(&before); err != nil {
			return fmt.Errorf("read probe counter: %w", err)
		}
	}
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(i)
	}
	w, err := unix.Write(p.sender, buf)
	if err != nil {
		return fmt.Errorf("send %d bytes: %w", n, err)
	}
	if w != n {
		return fmt.Errorf("send %d bytes: wrote %d", n, w)
	}
	if p.objs == nil {
		return nil
	}
	var after uint64
	if err := p.objs.KpRedirectedBytes.Get(&after); err != nil {
		return fmt.Errorf("read probe counter: %w", err)
	}
	if after-before != uint64(n) {
		return fmt.Errorf("%d of %d bytes sent were redirected", after-before, n)
	}
	return nil
}

// sendOverTCP writes n bytes through TCP: the sender leaves the sockhash
// first (the receiver stays, with whatever was redirected to it).
func (p *probePair) sendOverTCP(n int) error {
	if p.objs != nil {
		if err := p.objs.KpSockhash.Delete(kpSender); err != nil {
			return fmt.Errorf("remove sender from private sockhash: %w", err)
		}
		p.objs = nil
	}
	return p.send(n)
}

// sendArrived sends n bytes and waits until the receiver has them.
func (p *probePair) sendArrived(n int) error {
	if err := p.send(n); err != nil {
		return err
	}
	return p.waitReadable()
}

// waitReadable waits for the receiver to poll readable. Redirected bytes are
// queued before sendmsg returns; over TCP loopback delivery is normally as
// quick, and the timeout only keeps a broken kernel from hanging the start.
func (p *probePair) waitReadable() error {
	fds := []unix.PollFd{{Fd: int32(p.receiver), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 1000)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			return errors.New("bytes sent never reached the receiver")
		}
		return nil
	}
}

// rmemAlloc is the socket's sk_rmem_alloc, from SO_MEMINFO.
func rmemAlloc(fd int) (uint32, error) {
	var info [unix.SK_MEMINFO_VARS]uint32
	// x/sys/unix has no getter for an array option.
	l := uint32(len(info) * 4)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return 0, fmt.Errorf("getsockopt(SO_MEMINFO): %w", errno)
	}
	return info[unix.SK_MEMINFO_RMEM_ALLOC], nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// applyPolicy fills in what the daemon does about each result under cfg.
func (b *KernelBehaviour) applyPolicy(cfg datapath.Config) {
	for i := range b.Probes {
		p := &b.Probes[i]
		for _, bp := range behaviourProbes {
			if bp.name == p.Name {
				p.Policy = bp.policy(p.AsTCP, cfg)
			}
		}
	}
}

// notProbed is what an adopting start reports when the pins hold no
// results: probing then could put the daemon's own sockets in two maps.
func notProbed(why string) KernelBehaviour {
	var b KernelBehaviour
	for _, bp := range behaviourProbes {
		b.Probes = append(b.Probes, KernelProbe{Name: bp.name, Result: "not probed", Detail: why})
	}
	return b
}

// The stored results: one pinned array entry holding their JSON, behind a
// length. JSON, so that a newer daemon adopting the pins reads what an older
// one stored.
const behaviourValueSize = 8192

func behaviourMapSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       pins.BehaviourMap,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  behaviourValueSize,
		MaxEntries: 1,
		Pinning:    ebpf.PinByName,
	}
}

func encodeBehaviour(b KernelBehaviour) ([]byte, error) {
	js, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	if len(js) > behaviourValueSize-4 {
		return nil, fmt.Errorf("kernel probe results take %d bytes, more than the %d stored", len(js), behaviourValueSize-4)
	}
	buf := make([]byte, behaviourValueSize)
	binary.LittleEndian.PutUint32(buf, uint32(len(js)))
	copy(buf[4:], js)
	return buf, nil
}

// decodeBehaviour reads a stored entry; ok is false for an empty one.
func decodeBehaviour(buf []byte) (b KernelBehaviour, ok bool, err error) {
	if len(buf) < 4 {
		return b, false, fmt.Errorf("stored kernel probe results: %d bytes", len(buf))
	}
	n := binary.LittleEndian.Uint32(buf)
	if n == 0 {
		return b, false, nil
	}
	if int(n) > len(buf)-4 {
		return b, false, fmt.Errorf("stored kernel probe results: length %d of %d", n, len(buf)-4)
	}
	if err := json.Unmarshal(buf[4:4+n], &b); err != nil {
		return b, false, fmt.Errorf("stored kernel probe results: %w", err)
	}
	return b, true, nil
}

func storeBehaviour(pinDir string, b KernelBehaviour) error {
	buf, err := encodeBehaviour(b)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return fmt.Errorf("create pin dir %s: %w", pinDir, err)
	}
	m, err := ebpf.NewMapWithOptions(behaviourMapSpec(), ebpf.MapOptions{PinPath: pinDir})
	if err != nil {
		return fmt.Errorf("pin kernel probe results: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), buf); err != nil {
		return fmt.Errorf("store kernel probe results: %w", err)
	}
	return nil
}

// ReadBehaviour reads the results stored in pinDir; ok is false when there
// are none.
func ReadBehaviour(pinDir string) (KernelBehaviour, bool, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, pins.BehaviourMap), nil)
	if errors.Is(err, os.ErrNotExist) {
		return KernelBehaviour{}, false, nil
	}
	if err != nil {
		return KernelBehaviour{}, false, fmt.Errorf("load pinned kernel probe results: %w", err)
	}
	defer m.Close()
	if m.ValueSize() < 4 {
		return KernelBehaviour{}, false, fmt.Errorf("pinned kernel probe results: value size %d", m.ValueSize())
	}
	buf := make([]byte, m.ValueSize())
	if err := m.Lookup(uint32(0), &buf); err != nil {
		return KernelBehaviour{}, false, fmt.Errorf("read kernel probe results: %w", err)
	}
	return decodeBehaviour(buf)
}

// Behaviour probes on a fresh start and reads the stored results when
// adopting, applies cfg's policy, stores the results with it and logs each
// probe once. It never fails the start. It runs before anything is attached:
// the daemon's own sockets may be in the cgroup it accelerates, and once
// sock_ops runs there the probe's sockets would land in the real sockhash
// too.
func Behaviour(cfg datapath.Config, adopted bool, log *zap.Logger) KernelBehaviour {
	var b KernelBehaviour
	if adopted {
		stored, ok, err := ReadBehaviour(cfg.PinDir)
		switch {
		case err != nil:
			b = notProbed(err.Error())
		case !ok:
			b = notProbed("adopted pins hold no results; 'sockaccel cleanup' and a fresh start probe")
		default:
			b = stored
		}
	} else {
		b = ProbeBehaviour()
	}
	b.applyPolicy(cfg)
	if !b.ProbedAt.IsZero() {
		// Stored again on adoption: the policy follows this run's flags.
		if err := storeBehaviour(cfg.PinDir, b); err != nil {
			log.Warn("kernel probe results not stored; the next adopting start will not know them", zap.Error(err))
		}
	}
	for _, p := range b.Probes {
		log.Info("kernel behaviour",
			zap.String("probe", p.Name),
			zap.String("result", p.Result),
			zap.Bool("as_tcp", p.AsTCP),
			zap.String("detail", p.Detail),
			zap.String("policy", p.Policy),
			zap.String("kernel", b.Kernel),
			zap.Bool("stored", adopted))
	}
	return b
}
