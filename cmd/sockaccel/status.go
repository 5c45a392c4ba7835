package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/sockaccel/sockaccel/accel"
	"github.com/sockaccel/sockaccel/accel/stats"
)

func runStatus(args []string) error {
	fs := newFlagSet("status")
	asJSON := fs.Bool("json", false, "print JSON (keys are stable for scripts)")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "bpffs directory sockaccel pins into")
	apiSocket := fs.String("api-socket", DefaultAPISocket, "the daemon's unix socket, asked when a daemon serves --pin-dir there; otherwise the pins are read")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	st, err := readStatus(*apiSocket, *pinDir)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	// Lines and counters come from the one table in accel/stats.
	return stats.WriteText(os.Stdout, st)
}

// readStatus asks the running daemon, or reads the pins when none serves
// pinDir on socket.
func readStatus(socket, pinDir string) (accel.Status, error) {
	body, ok, err := apiGet(socket, "/status", pinDir)
	if err != nil || !ok {
		if err != nil {
			return accel.Status{}, err
		}
		return accel.ReadStatus(pinDir)
	}
	defer body.Close()
	var st accel.Status
	if err := json.NewDecoder(body).Decode(&st); err != nil {
		return st, fmt.Errorf("read status from %s: %w", socket, err)
	}
	return st, nil
}
