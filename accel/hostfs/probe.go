//go:build linux

package hostfs

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Probe checks every kernel feature sockaccel relies on and names the first
// one missing.
func Probe() error {
	checks := []struct {
		what  string
		since string
		probe func() error
	}{
		{"SOCKHASH maps", "4.18", func() error { return features.HaveMapType(ebpf.SockHash) }},
		{"socket-local storage maps", "5.2", func() error { return features.HaveMapType(ebpf.SkStorage) }},
		{"LPM trie maps", "4.11", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
		{"BPF ring buffers", "5.8", func() error { return features.HaveMapType(ebpf.RingBuf) }},
		{"kernel BTF (CONFIG_DEBUG_INFO_BTF)", "5.4", func() error {
			if _, err := btf.LoadKernelSpec(); err != nil {
				return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
			}
			return nil
		}},
		{"cgroup sockopt programs", "5.3", func() error { return features.HaveProgramType(ebpf.CGroupSockopt) }},
		{"sock_ops programs", "4.13", func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"sk_msg programs", "4.17", func() error { return features.HaveProgramType(ebpf.SkMsg) }},
		{"bpf_sock_hash_update in sock_ops", "4.18", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnSockHashUpdate)
		}},
		{"bpf_sk_storage_get in sock_ops", "5.3", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnSkStorageGet)
		}},
		{"TCP header options in sock_ops (bpf_load_hdr_opt)", "5.10", func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnLoadHdrOpt)
		}},
		{"bpf_sk_storage_get in sk_msg", "5.12", func() error {
			return features.HaveProgramHelper(ebpf.SkMsg, asm.FnSkStorageGet)
		}},
		{"bpf_msg_redirect_hash", "4.18", func() error {
			return features.HaveProgramHelper(ebpf.SkMsg, asm.FnMsgRedirectHash)
		}},
		{"bpf_skc_to_tcp_sock in sk_msg", "5.9", func() error {
			return features.HaveProgramHelper(ebpf.SkMsg, asm.FnSkcToTcpSock)
		}},
		{"bpf_probe_read_kernel in sk_msg", "5.8", func() error {
			return features.HaveProgramHelper(ebpf.SkMsg, asm.FnProbeReadKernel)
		}},
		{"BPF atomic fetch instructions", "5.12", haveAtomicFetch},
	}
	for _, c := range checks {
		err := c.probe()
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("kernel lacks %s (needs Linux %s or later)", c.what, c.since)
		}
		if err != nil {
			return fmt.Errorf("probe %s: %w", c.what, err)
		}
	}
	return nil
}

// haveAtomicFetch loads a program using an atomic fetch-and-add, which the
// programs are compiled with (-mcpu=v3) and kernels before 5.12 reject
// ("BPF_STX uses reserved fields").
func haveAtomicFetch() error {
	const (
		atomicDW = asm.OpCode(0xdb) // BPF_STX | BPF_DW | BPF_ATOMIC
		fetchAdd = 0x01             // BPF_ADD | BPF_FETCH
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SocketFilter,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, 0),
			asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R1, 1),
			{OpCode: atomicDW, Dst: asm.RFP, Src: asm.R1, Offset: -8, Constant: fetchAdd},
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "MIT",
	})
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	if err != nil {
		return err
	}
	return prog.Close()
}
