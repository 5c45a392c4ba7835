//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/testenv"
)

// A daemon killed with SIGKILL at any point of a fresh start leaves either
// nothing attached or a complete attachment, never part of one: links stay
// held by the process alone (the kernel detaches them when it dies) until
// everything is attached, and are pinned together at the end, sock_ops
// last. Each round kills at the first sign of one start-up stage.
func TestKillDuringStartLeavesNothingHalfAttached(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	pin := testenv.TempPinDir(t)
	stages := []string{"", `"kernel behaviour"`, `"attached sk_msg"`, `CGroupSetsockopt`, `"attached use detection"`, `CGroupSockOps`, `"accelerating"`}
	complete := 0
	for _, stage := range stages {
		cmd := exec.Command(sockaccelBin, "run", "--log-format", "json", "--log-level", "debug", "--metrics-addr", "127.0.0.1:0", "--api-socket", "", "--cgroup", cg.Path, "--pin-dir", pin)
		log := &syncBuffer{}
		cmd.Stderr = log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(log.String(), stage); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("stage %s never logged:\n%s", stage, log.String())
			}
		}
		cmd.Process.Kill()
		cmd.Wait()

		sockops := testenv.SockOpsPrograms(t, cg.Path)
		setsockopt := testenv.CgroupPrograms(t, cg.Path, ebpf.AttachCGroupSetsockopt)
		detect := 0
		if _, err := os.Stat(filepath.Join(pin, "sa_use_gate")); err == nil {
			detect = testenv.DetectLinks(t, pin)
		}
		t.Logf("killed at %-26s sock_ops %d, setsockopt %d, detector links %d", stage, sockops, setsockopt, detect)
		switch {
		case sockops == 0 && setsockopt == 0 && detect == 0:
		case sockops == 1 && setsockopt == 1 && detect >= 8:
			complete++
			if st := status(t, pin); st["attached"] != true {
				t.Errorf("killed at %s: complete attachment but status says %v", stage, st["attached"])
			}
		default:
			t.Errorf("killed at %s: half attached", stage)
		}
		if r := sockaccel(t, "cleanup", "--pin-dir", pin); r.code != 0 {
			t.Fatalf("cleanup after the kill at %s: %d %s", stage, r.code, r.stderr)
		}
	}
	t.Logf("%d of %d kills came after the start had completed", complete, len(stages))
}
