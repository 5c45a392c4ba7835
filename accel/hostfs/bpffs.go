//go:build linux

// Package hostfs makes sure the host filesystems sockaccel needs are there
// (bpffs for the pins, tracefs for the syscall tracepoints) and probes the
// kernel for every BPF feature the datapath relies on.
package hostfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultBPFFS is where systemd mounts bpffs at boot.
const DefaultBPFFS = "/sys/fs/bpf"

// DefaultPinDir is where sockaccel pins its maps, program and link.
const DefaultPinDir = DefaultBPFFS + "/sockaccel"

// EnsureBPFFS makes sure pinDir can be created on bpffs. If pinDir lies under
// /sys/fs/bpf and nothing is mounted there, bpffs is mounted there, as systemd
// does at boot. A pin dir anywhere else must already be on bpffs.
func EnsureBPFFS(pinDir string) error {
	pinDir = filepath.Clean(pinDir)
	if pinDir == DefaultBPFFS || strings.HasPrefix(pinDir, DefaultBPFFS+"/") {
		onBPFFS, err := isBPFFS(DefaultBPFFS)
		if err != nil {
			return fmt.Errorf("check %s: %w", DefaultBPFFS, err)
		}
		if !onBPFFS {
			if err := checkMountVisible(DefaultBPFFS); err != nil {
				return err
			}
			if err := os.MkdirAll(DefaultBPFFS, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", DefaultBPFFS, err)
			}
			if err := unix.Mount("bpf", DefaultBPFFS, "bpf", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
				return fmt.Errorf("mount bpffs at %s: %w", DefaultBPFFS, err)
			}
		}
	}
	dir := existingAncestor(pinDir)
	onBPFFS, err := isBPFFS(dir)
	if err != nil {
		return fmt.Errorf("check pin dir %s: %w", pinDir, err)
	}
	if !onBPFFS {
		return fmt.Errorf("pin dir %s is not on a bpf filesystem (mount -t bpf bpf DIR, or use a dir under %s)", pinDir, DefaultBPFFS)
	}
	return nil
}

func isBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

func existingAncestor(path string) string {
	for {
		if _, err := os.Stat(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return path
		}
		parent := filepath.Dir(path)
		if parent == path {
			return path
		}
		path = parent
	}
}

// ErrPrivateBPFFS: bpffs would have to be mounted in a mount namespace the
// host does not see (a systemd service with ProtectSystem= or similar), so
// every pin would die with the service.
var ErrPrivateBPFFS = errors.New("bpffs would be private to this process's mount namespace")

// checkMountVisible refuses to mount at dir when a mount made there would
// not reach the host: dir lies on a slave mount, or below one ("master:N" in
// mountinfo), as in the private mount namespace systemd gives a service with
// ProtectSystem=, PrivateTmp= and the like (even a tmpfs mounted there
// afterwards sits below the slave root). In the host's own namespace mounts
// are shared (systemd) or private (no systemd), never slaves.
func checkMountVisible(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	slave, err := slaveMountAbove(f, dir)
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	if slave != "" {
		return fmt.Errorf("%w: nothing is mounted at %s on the host and this process runs in a mount namespace of its own (mount %s is a slave), so pins would die with it; mount bpffs at %s on the host (systemd: sys-fs-bpf.mount) and start again",
			ErrPrivateBPFFS, dir, slave, dir)
	}
	return nil
}

// slaveMountAbove returns the deepest mount point at or above dir whose
// mount is a slave, from mountinfo; "" if none is.
func slaveMountAbove(mountinfo io.Reader, dir string) (string, error) {
	slave := ""
	sc := bufio.NewScanner(mountinfo)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 {
			continue
		}
		mp := fields[4]
		if !(mp == "/" || dir == mp || strings.HasPrefix(dir, mp+"/")) || len(mp) < len(slave) {
			continue
		}
		for _, opt := range fields[6:] {
			if opt == "-" {
				break
			}
			if strings.HasPrefix(opt, "master:") {
				slave = mp
			}
		}
	}
	return slave, sc.Err()
}
