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
)

// runConns lists tracked connections, like `conntrack -L`.
func runConns(args []string) error {
	fs := newFlagSet("conns")
	asJSON := fs.Bool("json", false, "print a JSON array (keys are stable for scripts)")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "bpffs directory sockaccel pins into")
	apiSocket := fs.String("api-socket", DefaultAPISocket, "the daemon's unix socket, asked when a daemon serves --pin-dir there; otherwise the pins are read")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	conns, err := readConns(*apiSocket, *pinDir)
	if err != nil {
		return err
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].Age > conns[j].Age })
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

// readConns asks the running daemon, or reads the pins when none serves
// pinDir on socket. The daemon streams the rows; this process holds them all
// to sort them.
func readConns(socket, pinDir string) ([]accel.Conn, error) {
	body, ok, err := apiGet(socket, "/conns", pinDir)
	if err != nil {
		return nil, err
	}
	if ok {
		defer body.Close()
		var conns []accel.Conn
		if err := json.NewDecoder(body).Decode(&conns); err != nil {
			return nil, fmt.Errorf("read connections from %s: %w", socket, err)
		}
		for i := range conns {
			conns[i].Age = time.Duration(conns[i].AgeSeconds * float64(time.Second))
		}
		return conns, nil
	}
	path := filepath.Join(pinDir, accel.ConntrackMapName)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no conntrack map at %s: is sockaccel running with --pin-dir %s?", path, pinDir)
	}
	if err != nil {
		return nil, fmt.Errorf("open conntrack map %s: %w", path, err)
	}
	defer m.Close()
	// The same listing the daemon streams: rows name their cgroups.
	return accel.ListConns(m)
}
