package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel"
)

func runStatus(args []string) error {
	fs := newFlagSet("status")
	asJSON := fs.Bool("json", false, "print JSON (keys are stable for scripts)")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "bpffs directory sockaccel pins into")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	st, err := accel.ReadStatus(*pinDir)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "attached:\t%v\n", st.Attached)
	fmt.Fprintf(w, "cgroup:\t%s\n", st.Cgroup)
	fmt.Fprintf(w, "pin dir:\t%s\n", st.PinDir)
	fmt.Fprintf(w, "sockhash entries:\t%d / %d\n", st.SockhashEntries, 2*uint64(st.MaxConns))
	fmt.Fprintf(w, "redirected:\t%d msgs, %d bytes\n", st.RedirectedMsgs, st.RedirectedBytes)
	fmt.Fprintf(w, "passed to TCP:\t%d msgs, %d bytes\n", st.PassedMsgs, st.PassedBytes)
	fmt.Fprintf(w, "redirect errors:\t%d\n", st.RedirectErrors)
	fmt.Fprintf(w, "sockets established:\t%d (inserted %d)\n", st.Established, st.Inserted)
	fmt.Fprintf(w, "conntrack:\t%d / %d entries (%.1f%%), enabled=%v\n", st.Conntrack.Entries, st.Conntrack.Capacity, 100*st.Conntrack.Load, st.Conntrack.Enabled)
	fmt.Fprintf(w, "closed:\tdirect=%d gc=%d (gc runs %d)\n", st.ClosedDirect, st.ClosedGC, st.GCRuns)
	fmt.Fprintf(w, "not accelerated:\tmap_full=%d excluded_port=%d excluded_cidr=%d early_data=%d insert_errors=%d disabled=%d\n",
		st.MapFull, st.ExcludedPort, st.ExcludedCIDR, st.EarlyData, st.InsertErrors, st.Disabled)
	return w.Flush()
}

func runCleanup(args []string) error {
	fs := newFlagSet("cleanup")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "bpffs directory sockaccel pins into")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger("", "info")
	if err != nil {
		return err
	}
	if err := accel.Cleanup(*pinDir, log.Named("cleanup")); err != nil {
		return err
	}
	log.Info("cleaned up", zap.String("pin_dir", *pinDir))
	return nil
}
