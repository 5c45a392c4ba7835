//go:build linux

// Command proto attaches the bare sockmap prototype (proto.c) to a cgroup
// until SIGINT or SIGTERM, for the benchmark's PROTO=1 mode: sockaccel is
// measured against it in the same run. Nothing is pinned; everything it
// attached goes away when it exits.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func main() {
	cgroupPath := flag.String("cgroup", "", "cgroup v2 directory to attach sock_ops to")
	stats := flag.Bool("stats", false, "keep BPF run-time statistics (run_time_ns, run_cnt) on while running, through a BPF_ENABLE_STATS descriptor rather than the host-wide sysctl, so nobody else's setting is touched (bench/cost.sh)")
	flag.Parse()
	if err := run(*cgroupPath, *stats); err != nil {
		fmt.Fprintln(os.Stderr, "proto:", err)
		os.Exit(1)
	}
}

func run(cgroupPath string, stats bool) error {
	if cgroupPath == "" {
		return errors.New("-cgroup is required")
	}
	if stats {
		// The kernel counts holders: statistics stay on while this
		// descriptor or the sysctl says so, and go off with the last.
		c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			return fmt.Errorf("enable BPF run-time statistics: %w", err)
		}
		defer c.Close()
	}
	var objs protoObjects
	if err := loadProtoObjects(&objs, nil); err != nil {
		return fmt.Errorf("load prototype: %w", err)
	}
	defer objs.Close()
	// sk_msg on the map before sock_ops inserts anything.
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  objs.ProtoSockhash.FD(),
		Program: objs.ProtoRedirect,
		Attach:  ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fmt.Errorf("attach sk_msg: %w", err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: ebpf.AttachCGroupSockOps, Program: objs.ProtoSockops})
	if err != nil {
		return fmt.Errorf("attach sock_ops to %s: %w", cgroupPath, err)
	}
	defer l.Close()
	fmt.Println("attached")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	return nil
}
