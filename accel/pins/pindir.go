//go:build linux

package pins

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel/hostfs"
)

// ErrLocked is returned when another sockaccel (a daemon, or a cleanup)
// holds the pin dir.
var ErrLocked = errors.New("another sockaccel is running")

// checkPinChain verifies what lies on the way to pinDir, with Lstat so that
// nothing is followed: every existing component from / down to pinDir must
// be a directory owned by root, not a symlink, and not writable by group or
// others, unless it is a parent with the sticky bit set (bpffs mounted 1777
// at /sys/fs/bpf, Cilium's default: others may create entries there but
// not rename or remove ours). The pin dir itself gets no such exception.
// Components that do not exist yet are fine: sockaccel creates them 0700.
//
// It reports whether pinDir exists.
func checkPinChain(pinDir string) (bool, error) {
	pinDir, err := filepath.Abs(pinDir)
	if err != nil {
		return false, fmt.Errorf("check pin dir: %w", err)
	}
	path := "/"
	parts := strings.Split(strings.TrimPrefix(pinDir, "/"), "/")
	if pinDir == "/" {
		parts = nil
	}
	for i := -1; i < len(parts); i++ {
		if i >= 0 {
			path = filepath.Join(path, parts[i])
		}
		last := i == len(parts)-1
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return false, nil
			}
			return false, fmt.Errorf("check pin dir %s: lstat %s: %w", pinDir, path, err)
		}
		if err := checkComponent(pinDir, path, &st, !last); err != nil {
			return false, err
		}
	}
	return true, nil
}

// checkComponent applies the pin-dir rules to one directory on the way to
// pinDir (or pinDir itself, or a directory sockaccel owns below it when
// parent is false).
func checkComponent(pinDir, path string, st *unix.Stat_t, parent bool) error {
	what := "pin dir " + pinDir
	if path != pinDir {
		what = fmt.Sprintf("pin dir %s: %s", pinDir, path)
	}
	fix := "remove it or choose another --pin-dir"
	if parent {
		fix = "fix it or choose another --pin-dir"
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("%s is a symlink: %s", what, fix)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s is not a directory: %s", what, fix)
	case st.Uid != 0:
		return fmt.Errorf("%s is owned by uid %d, not root: %s", what, st.Uid, fix)
	case st.Mode&0o022 != 0 && !(parent && st.Mode&unix.S_ISVTX != 0):
		return fmt.Errorf("%s is writable by group or others (mode %04o): %s", what, st.Mode&0o7777, fix)
	}
	return nil
}

// checkPinTree verifies the directories sockaccel creates below the pin dir
// (links/, progs/) by the same rules as the pin dir itself.
func checkPinTree(pinDir string) error {
	for _, d := range []string{LinkDir, ProgDir} {
		path := filepath.Join(pinDir, d)
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("check pin dir %s: lstat %s: %w", pinDir, path, err)
		}
		if err := checkComponent(pinDir, path, &st, false); err != nil {
			return err
		}
	}
	return nil
}

// pinLock is an exclusive flock on the pin dir itself, held by a running
// daemon for its whole life and by cleanup while it works. The lock is on
// the directory because bpffs holds no regular files, so a lock file would
// have to live elsewhere and could name a different dir than the pins; and
// it goes away with the process, so a killed daemon never leaves a stale
// lock.
type PinLock struct {
	f       *os.File
	dir     string
	created bool // the dir did not exist: Release removes it if still empty
}

// LockPinDir makes sure pinDir can live on bpffs (EnsureBPFFS), checks the
// pin-dir chain, creates the pin dir (0700) if missing and takes its lock.
// A daemon holds the lock for its whole life: pass it in Config.Lock.
// Another holder gives ErrLocked at once.
func LockPinDir(pinDir string) (*PinLock, error) {
	if err := hostfs.EnsureBPFFS(pinDir); err != nil {
		return nil, err
	}
	return lockPinDir(pinDir, true)
}

// lockPinDir checks the pin-dir chain and takes the lock. With create it
// creates the pin dir (0700) if missing; without, a missing pin dir gives
// (nil, nil). Another holder gives ErrLocked at once, never a wait.
func lockPinDir(pinDir string, create bool) (*PinLock, error) {
	pinDir, err := filepath.Abs(pinDir)
	if err != nil {
		return nil, fmt.Errorf("lock pin dir: %w", err)
	}
	// A cleanup that held the lock may remove the dir between our open and
	// our flock: then the lock is on a dead inode, and we try again.
	for range 3 {
		exists, err := checkPinChain(pinDir)
		if err != nil {
			return nil, err
		}
		if !exists {
			if !create {
				return nil, nil
			}
			if err := os.MkdirAll(pinDir, 0o700); err != nil {
				return nil, fmt.Errorf("create pin dir %s: %w", pinDir, err)
			}
		}
		fd, err := unix.Open(pinDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("open pin dir %s: %w", pinDir, err)
		}
		f := os.NewFile(uintptr(fd), pinDir)
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w with pin dir %s", ErrLocked, pinDir)
			}
			return nil, fmt.Errorf("lock pin dir %s: %w", pinDir, err)
		}
		// Check again under the lock: the path must still lead, through
		// root-only directories, to the inode we locked.
		if _, err := checkPinChain(pinDir); err != nil {
			f.Close()
			return nil, err
		}
		var locked, now unix.Stat_t
		if err := unix.Fstat(fd, &locked); err != nil {
			f.Close()
			return nil, fmt.Errorf("stat pin dir %s: %w", pinDir, err)
		}
		if err := unix.Lstat(pinDir, &now); err != nil || now.Dev != locked.Dev || now.Ino != locked.Ino {
			f.Close()
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("stat pin dir %s: %w", pinDir, err)
			}
			continue
		}
		if err := checkPinTree(pinDir); err != nil {
			f.Close()
			return nil, err
		}
		return &PinLock{f: f, dir: pinDir, created: !exists}, nil
	}
	return nil, fmt.Errorf("lock pin dir %s: it keeps being removed and created under us", pinDir)
}

// Release drops the lock, first removing the pin dir if this lock created
// it and nothing was pinned since (so that a refused start leaves no
// trace). Nil-safe and idempotent.
func (l *PinLock) Release() {
	if l == nil || l.f == nil {
		return
	}
	if l.created {
		os.Remove(l.dir) // fails, as it should, unless empty
	}
	l.f.Close()
	l.f = nil
}

// CheckOwned verifies that each pin sockaccel creates in pinDir, where
// one exists, is a pinned object (not a symlink or anything else) owned by
// root and not writable by group or others.
func CheckOwned(pinDir string) error {
	maps, err := Maps()
	if err != nil {
		return fmt.Errorf("load embedded BPF object: %w", err)
	}
	paths := []string{filepath.Join(pinDir, SkMsgProg)}
	for _, m := range maps {
		paths = append(paths, filepath.Join(pinDir, m))
	}
	for _, l := range Links() {
		paths = append(paths, filepath.Join(pinDir, LinkDir, l))
	}
	for _, path := range paths {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("check pin %s: %w", path, err)
		}
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			return fmt.Errorf("pin %s is a symlink: remove it or choose another --pin-dir", path)
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			return fmt.Errorf("pin %s is not a pinned BPF object: remove it or choose another --pin-dir", path)
		case st.Uid != 0:
			return fmt.Errorf("pin %s is owned by uid %d, not root: remove it or choose another --pin-dir", path, st.Uid)
		case st.Mode&0o022 != 0:
			return fmt.Errorf("pin %s is writable by group or others (mode %04o): remove it or choose another --pin-dir", path, st.Mode&0o7777)
		}
	}
	return nil
}

// LockIfExists takes the lock of an existing pin dir, after the same checks
// as LockPinDir, without creating or mounting anything: (nil, nil) when
// there is no pin dir. Cleanup uses it.
func LockIfExists(pinDir string) (*PinLock, error) { return lockPinDir(pinDir, false) }

// Dir is the absolute pin dir the lock is on.
func (l *PinLock) Dir() string { return l.dir }
