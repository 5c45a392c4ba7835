package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/cgroup"
)

// runConns lists tracked connections, like `conntrack -L`.
func runConns(args []string) error {
	fs := newFlagSet("conns")
	asJSON := fs.Bool("json", false, "print a JSON array (keys are stable for scripts)")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "bpffs directory sockaccel pins into")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	path := filepath.Join(*pinDir, accel.ConntrackMapName)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no conntrack map at %s: is sockaccel running with --pin-dir %s?", path, *pinDir)
	}
	if err != nil {
		return fmt.Errorf("open conntrack map %s: %w", path, err)
	}
	defer m.Close()
	conns, err := accel.ListConns(m)
	if err != nil {
		return err
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].Age > conns[j].Age })
	root, _ := cgroup.V2Root()
	names := map[uint64]string{}
	for i := range conns {
		conns[i].Cgroups = make([]string, 0, len(conns[i].CgroupIDs))
		for _, id := range conns[i].CgroupIDs {
			name, ok := names[id]
			if !ok && root != "" {
				if p, err := cgroup.PathByID(root, id); err == nil {
					name = cgroup.Target{Path: p, Root: root}.Rel()
				}
				names[id] = name
			}
			conns[i].Cgroups = append(conns[i].Cgroups, name)
		}
	}
	if *asJSON {
		if conns == nil {
			conns = []accel.Conn{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(conns)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CLIENT\tSERVER\tSTATE\tAGE\tBYTES C->S\tBYTES S->C\tCGROUP")
	for _, c := range conns {
		cg := ""
		if len(c.Cgroups) > 0 {
			cg = c.Cgroups[0]
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", c.Client, c.Server, c.State,
			c.Age.Truncate(time.Second), c.BytesC2S, c.BytesS2C, cg)
	}
	fmt.Fprintf(w, "%d connections\n", len(conns))
	return w.Flush()
}
