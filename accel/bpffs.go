//go:build linux

package accel

import (
	"errors"
	"fmt"
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
