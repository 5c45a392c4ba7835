//go:build linux

package cgroup_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sockaccel/sockaccel/accel/testenv"
	"github.com/sockaccel/sockaccel/cgroup"
)

func TestResolve(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	rel := strings.TrimPrefix(cg.Path, cg.Root+"/")

	for _, spelling := range []string{cg.Path, rel, "/" + rel} {
		got, err := cgroup.Resolve(spelling)
		if err != nil {
			t.Errorf("Resolve(%q): %v", spelling, err)
			continue
		}
		if got.Path != cg.Path || got.Rel() != "/"+rel {
			t.Errorf("Resolve(%q) = %+v (rel %s), want %s", spelling, got, got.Rel(), cg.Path)
		}
	}
	root, err := cgroup.Resolve("")
	if err != nil || root.Path != cg.Root || root.Rel() != "/" {
		t.Errorf("Resolve(\"\") = %+v, %v; want the v2 root %s", root, err, cg.Root)
	}

	bad := []struct{ path, want string }{
		{"no/such/group", "does not exist"},
		{testenv.TempCgroupV1(t), "cgroup v1"},
		{filepath.Join(cg.Path, "cgroup.procs"), "not a directory"},
		{t.TempDir(), "not on a cgroup v2 filesystem"},
	}
	for _, b := range bad {
		if _, err := cgroup.Resolve(b.path); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("Resolve(%q) = %v, want an error containing %q", b.path, err, b.want)
		}
	}
}

func TestPathByID(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.TempCgroup(t)
	id, err := cgroup.Inode(cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := cgroup.PathByID(cg.Root, id)
	if err != nil || got != cg.Path {
		t.Errorf("PathByID(%d) = %q, %v; want %s", id, got, err, cg.Path)
	}
	if _, err := cgroup.PathByID(cg.Root, 1<<62); err == nil {
		t.Error("PathByID found a cgroup for a bogus id")
	}
}
