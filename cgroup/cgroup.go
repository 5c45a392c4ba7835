// Package cgroup resolves and validates the cgroup v2 directory that
// sockaccel attaches its sock_ops program to.
//
// Only sockets created by processes in that cgroup, or below it, are ever
// considered for acceleration.
package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

// Target is a validated cgroup v2 directory.
type Target struct {
	// Path is the absolute filesystem path of the cgroup directory.
	Path string
	// Root is the mount point of the cgroup v2 hierarchy holding Path.
	Root string
}

// Rel returns the cgroup path relative to the v2 root, as /proc/PID/cgroup
// shows it ("/" for the root itself).
func (t Target) Rel() string {
	rel, err := filepath.Rel(t.Root, t.Path)
	if err != nil || rel == "." {
		return "/"
	}
	return "/" + rel
}

// V2Root returns the mount point of the host's cgroup v2 hierarchy: the
// cgroup root in unified mode, its "unified" child in hybrid mode.
func V2Root() (string, error) {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return "/sys/fs/cgroup", nil
	case cgroups.Hybrid:
		return "/sys/fs/cgroup/unified", nil
	case cgroups.Legacy:
		return "", errors.New("no cgroup v2 hierarchy mounted (host runs cgroup v1 only); sockaccel needs cgroup v2")
	default:
		return "", errors.New("no cgroup filesystem mounted at /sys/fs/cgroup")
	}
}

// Resolve validates path and returns its Target. path may be empty (the v2
// root), an absolute filesystem path inside the v2 hierarchy, or a path
// relative to the v2 root ("kubepods/pod1" or "/kubepods/pod1" as
// /proc/PID/cgroup spells it).
func Resolve(path string) (Target, error) {
	root, err := V2Root()
	if err != nil {
		return Target{}, err
	}
	return ResolveIn(root, path)
}

// ResolveIn is Resolve against an explicit v2 mount point.
func ResolveIn(root, path string) (Target, error) {
	if err := requireCgroup2(root); err != nil {
		return Target{}, fmt.Errorf("cgroup v2 root %s: %w", root, err)
	}
	full := candidate(root, path)
	info, err := os.Stat(full)
	if errors.Is(err, fs.ErrNotExist) {
		return Target{}, fmt.Errorf("cgroup %s does not exist", path)
	}
	if err != nil {
		return Target{}, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if !info.IsDir() {
		return Target{}, fmt.Errorf("cgroup %s is not a directory", path)
	}
	if err := requireCgroup2(full); err != nil {
		return Target{}, fmt.Errorf("cgroup %s: %w", path, err)
	}
	resolved, err := filepath.EvalSymlinks(full)
	if err != nil {
		return Target{}, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if resolved != root && !strings.HasPrefix(resolved, root+"/") {
		return Target{}, fmt.Errorf("cgroup %s is outside the cgroup v2 hierarchy at %s", path, root)
	}
	return Target{Path: resolved, Root: root}, nil
}

// candidate maps the accepted spellings of a cgroup onto a filesystem path.
func candidate(root, path string) string {
	switch {
	case path == "" || path == "/":
		return root
	case filepath.IsAbs(path):
		// A real filesystem path wins; otherwise read it as a cgroup path
		// relative to the v2 root, as /proc/PID/cgroup prints it.
		if _, err := os.Lstat(path); err == nil {
			return filepath.Clean(path)
		}
		return filepath.Join(root, path)
	default:
		return filepath.Join(root, path)
	}
}

func requireCgroup2(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	switch st.Type {
	case unix.CGROUP2_SUPER_MAGIC:
		return nil
	case unix.CGROUP_SUPER_MAGIC:
		return errors.New("is a cgroup v1 hierarchy; sockaccel needs a cgroup v2 path")
	default:
		return errors.New("is not on a cgroup v2 filesystem")
	}
}

// Inode returns the cgroup id the kernel reports for a cgroup directory
// (the inode number of the directory on cgroupfs).
func Inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// PathByID finds the cgroup directory with the given id below root. It
// returns an error wrapping fs.ErrNotExist when no such cgroup exists.
func PathByID(root string, id uint64) (string, error) {
	var found string
	errFound := errors.New("found")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// A cgroup removed while we walk is not an error for us.
			if errors.Is(err, fs.ErrNotExist) {
				return fs.SkipDir
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if ino, ierr := Inode(p); ierr == nil && ino == id {
			found = p
			return errFound
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return found, nil
	}
	if err != nil {
		return "", fmt.Errorf("walk %s: %w", root, err)
	}
	return "", fmt.Errorf("cgroup id %d under %s: %w", id, root, fs.ErrNotExist)
}
