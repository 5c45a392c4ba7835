//go:build linux

// Package pins owns the pin dir: its layout (which names below it are
// sockaccel's), its lock (one sockaccel per pin dir) and the ownership
// checks every start and cleanup make before touching anything there.
package pins

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// Pin layout below the pin dir. Maps are pinned by name at the top level.
const (
	LinkDir        = "links"
	ProgDir        = "progs"
	SockOpsLink    = LinkDir + "/sockops"
	SetsockoptLink = LinkDir + "/setsockopt"
	// One pinned link per watched syscall tracepoint.
	DetectLinkPrefix = "detect-"
	SkMsgProg        = ProgDir + "/sk_msg"
)

// LegacyLearnedPorts is the pinned map in which versions before learned
// services kept learned ports, keyed by port alone.
const LegacyLearnedPorts = "sa_learned_ports"

// BehaviourMap holds the stored kernel probe results, pinned from user
// space (not part of the BPF object).
const BehaviourMap = "sa_behaviour"

// DetectTracepoints are the syscall tracepoints the use detector watches;
// each has a pinned link links/detect-<name>.
var DetectTracepoints = []string{
	"sys_enter_splice", "sys_enter_sendfile64",
	"sys_enter_recvfrom", "sys_enter_recvmmsg", "sys_enter_recvmsg",
	"sys_enter_sendto", "sys_enter_sendmmsg", "sys_enter_sendmsg",
	"sys_enter_ioctl", // only with Config.DetectFIONREAD
	"sys_enter_shutdown",
}

// Maps lists every map sockaccel pins by name: what the BPF object pins,
// the legacy learned ports and the stored probe results.
func Maps() ([]string, error) {
	spec, err := bpfobj.LoadAccel()
	if err != nil {
		return nil, err
	}
	names := []string{LegacyLearnedPorts}
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	// Pinned from user space, not part of the object.
	names = append(names, BehaviourMap)
	return names, nil
}

// Links are the link pins sockaccel creates, relative to links/.
func Links() []string {
	names := []string{filepath.Base(SockOpsLink), filepath.Base(SetsockoptLink)}
	for _, tp := range DetectTracepoints {
		// -new: the temporary name attachDetect pins under before the
		// rename, left behind if the daemon died in between.
		names = append(names, DetectLinkPrefix+tp, DetectLinkPrefix+tp+"-new")
	}
	return names
}

// CgroupLinks are the links that put sockets in the sockhash; cleanup
// detaches them first.
var CgroupLinks = []string{filepath.Base(SockOpsLink), filepath.Base(SetsockoptLink)}

// Owned reports whether path is a pin cleanup may load and remove: a
// pinned object (bpffs shows those as regular files), not a symlink or
// anything else, which is left in place and logged. Missing: false.
func Owned(path string, log *zap.Logger) bool {
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false
	case err != nil:
		log.Warn("left in place: cannot stat", zap.String("path", path), zap.Error(err))
		return false
	case !st.Mode().IsRegular():
		log.Warn("left in place: not a pin sockaccel created", zap.String("path", path), zap.Stringer("mode", st.Mode()))
		return false
	}
	return true
}
