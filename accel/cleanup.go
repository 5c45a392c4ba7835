//go:build linux

package accel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
)

// pinnedMaps lists every map the BPF object pins by name.
func pinnedMaps() ([]string, error) {
	spec, err := loadAccel()
	if err != nil {
		return nil, err
	}
	var names []string
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	return names, nil
}

// Cleanup stops acceleration and removes everything sockaccel pinned in
// pinDir: new connections stop being tracked, sends stop being redirected,
// sock_ops is detached from its cgroup, sk_msg from the SOCKHASH, and the pins
// are removed. It is idempotent: a missing pin dir is not an error.
func Cleanup(pinDir string, log *zap.Logger) error {
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error

	// Stop new entries and redirects first, so nothing new is queued while
	// the rest is taken apart.
	if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, accelMapSaConfig), nil); err == nil {
		if err := m.Put(uint32(0), accelAccelConfig{Flags: uint32(accelConfigFlagsCONFIG_F_NO_NEW | accelConfigFlagsCONFIG_F_NO_REDIRECT)}); err != nil {
			errs = append(errs, fmt.Errorf("disable redirects: %w", err))
		}
		m.Close()
	}

	linkPath := filepath.Join(pinDir, sockOpsLink)
	if l, err := link.LoadPinnedLink(linkPath, nil); err == nil {
		// Detach even if a running daemon still holds the link open.
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach sock_ops: %w", err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin sock_ops link: %w", err))
		}
		l.Close()
		log.Info("detached sock_ops", zap.String("pin", linkPath))
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("load pinned sock_ops link %s: %w", linkPath, err))
	}

	progPath := filepath.Join(pinDir, skMsgProgName)
	if prog, err := ebpf.LoadPinnedProgram(progPath, nil); err == nil {
		if hash, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, accelMapSaSockhash), nil); err == nil {
			err := link.RawDetachProgram(link.RawDetachProgramOptions{
				Target:  hash.FD(),
				Program: prog,
				Attach:  ebpf.AttachSkMsgVerdict,
			})
			// ENOENT: a newer program replaced it; the map goes away below.
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("detach sk_msg: %w", err))
			}
			hash.Close()
		}
		prog.Close()
		log.Info("detached sk_msg", zap.String("pin", progPath))
	}

	names, err := pinnedMaps()
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", name, err))
		}
	}
	for _, p := range []string{progPath, filepath.Join(pinDir, progDir), filepath.Join(pinDir, linkDir), pinDir} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
