//go:build linux

package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockaccel/sockaccel/accel/pins"
)

// ProgramState says whether one program is attached where the daemon put it.
type ProgramState struct {
	Name     string `json:"name"`
	Attached bool   `json:"attached"`
}

// Health is what /healthz reports: every program attached, every pin
// present and the very object the daemon holds.
type Health struct {
	Programs []ProgramState `json:"programs"`
	// One line per problem found; empty when healthy.
	Problems []string `json:"problems"`
	err      error    // the check itself could not run
}

// OK reports whether nothing is wrong.
func (h Health) OK() bool { return h.err == nil && len(h.Problems) == 0 }

// Err returns the error that kept the check from running, if any.
func (h Health) Err() error { return h.err }

// heldObjects records, once the programs are attached, the IDs of what the
// daemon holds, so that a health check can tell its own pins from pins
// replaced or removed behind its back.
type heldObjects struct {
	cgroupLinks map[string]link.Link // by pin path relative to the pin dir
	detectLinks map[string]link.Link
	maps        map[string]ebpf.MapID // pinned maps by name
	skMsg       ebpf.ProgramID
}

// recordHeld fills a.held after start; pinned names the maps the object pins
// by name.
func (a *Datapath) recordHeld(pinned []string) error {
	a.held.maps = map[string]ebpf.MapID{}
	v := reflect.ValueOf(&a.objs.AccelMaps).Elem()
	byName := map[string]*ebpf.Map{}
	for i := range v.NumField() {
		if m, ok := v.Field(i).Interface().(*ebpf.Map); ok && m != nil {
			byName[v.Type().Field(i).Tag.Get("ebpf")] = m
		}
	}
	for _, name := range pinned {
		m := byName[name]
		if m == nil {
			continue
		}
		info, err := m.Info()
		if err != nil {
			return fmt.Errorf("map %s info: %w", name, err)
		}
		id, _ := info.ID()
		a.held.maps[name] = id
	}
	info, err := a.objs.SaRedirect.Info()
	if err != nil {
		return fmt.Errorf("sk_msg program info: %w", err)
	}
	a.held.skMsg, _ = info.ID()
	return nil
}

// Health checks the programs and pins. It reads in-kernel state only (a few
// syscalls per pin), never the maps' contents or the cgroup tree.
func (a *Datapath) Health() Health {
	h := Health{Programs: []ProgramState{}, Problems: []string{}}
	problem := func(format string, args ...any) { h.Problems = append(h.Problems, fmt.Sprintf(format, args...)) }

	for _, c := range []struct{ name, pin string }{{"sock_ops", pins.SockOpsLink}, {"setsockopt", pins.SetsockoptLink}} {
		l := a.held.cgroupLinks[c.pin]
		if l == nil {
			h.err = fmt.Errorf("no %s link held", c.name)
			return h
		}
		info, err := l.Info()
		if err != nil {
			h.err = fmt.Errorf("%s link info: %w", c.name, err)
			return h
		}
		id := uint64(0)
		if cg := info.Cgroup(); cg != nil {
			id = cg.CgroupId
		}
		attached := id != 0 && id == a.cgroupID
		h.Programs = append(h.Programs, ProgramState{c.name, attached})
		if !attached {
			problem("%s program detached from cgroup %s", c.name, a.cfg.Cgroup.Path)
		}
		a.checkLinkPin(c.pin, info.ID, problem)
	}

	res, err := link.QueryPrograms(link.QueryOptions{Target: a.objs.SaSockhash.FD(), Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		h.err = fmt.Errorf("query sk_msg programs of the sockhash: %w", err)
		return h
	}
	attached := false
	for _, p := range res.Programs {
		attached = attached || p.ID == a.held.skMsg
	}
	h.Programs = append(h.Programs, ProgramState{"sk_msg", attached})
	if !attached {
		problem("sk_msg program detached from the sockhash")
	}
	if p, err := ebpf.LoadPinnedProgram(filepath.Join(a.cfg.PinDir, pins.SkMsgProg), nil); err != nil {
		problem("pin %s: %v", pins.SkMsgProg, pinError(err))
	} else {
		info, err := p.Info()
		p.Close()
		if id, _ := info.ID(); err == nil && id != a.held.skMsg {
			problem("pin %s is another program (id %d, the daemon's is %d)", pins.SkMsgProg, id, a.held.skMsg)
		}
	}

	names := make([]string, 0, len(a.held.detectLinks))
	for tp := range a.held.detectLinks {
		names = append(names, tp)
	}
	sort.Strings(names)
	for _, tp := range names {
		info, err := a.held.detectLinks[tp].Info()
		if err != nil {
			h.err = fmt.Errorf("%s link info: %w", tp, err)
			return h
		}
		a.checkLinkPin(filepath.Join(pins.LinkDir, pins.DetectLinkPrefix+tp), info.ID, problem)
	}

	names = names[:0]
	for name := range a.held.maps {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		m, err := ebpf.LoadPinnedMap(filepath.Join(a.cfg.PinDir, name), nil)
		if err != nil {
			problem("pin %s: %v", name, pinError(err))
			continue
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			h.err = fmt.Errorf("pinned map %s info: %w", name, err)
			return h
		}
		if id, _ := info.ID(); id != a.held.maps[name] {
			problem("pin %s is another map (id %d, the daemon's is %d)", name, id, a.held.maps[name])
		}
	}
	return h
}

func (a *Datapath) checkLinkPin(pin string, want link.ID, problem func(string, ...any)) {
	l, err := link.LoadPinnedLink(filepath.Join(a.cfg.PinDir, pin), nil)
	if err != nil {
		problem("pin %s: %v", pin, pinError(err))
		return
	}
	info, err := l.Info()
	l.Close()
	if err != nil {
		problem("pin %s: %v", pin, err)
		return
	}
	if info.ID != want {
		problem("pin %s is another link (id %d, the daemon's is %d)", pin, info.ID, want)
	}
}

func pinError(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("missing")
	}
	return err
}

// SockOpsCgroupID reads the cgroup the held sock_ops link is attached to
// (0 once detached).
func (a *Datapath) SockOpsCgroupID() (uint64, error) {
	l := a.held.cgroupLinks[pins.SockOpsLink]
	if l == nil {
		return 0, errors.New("no sock_ops link held")
	}
	return LinkCgroupID(l)
}
