package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"go.uber.org/zap"

	"github.com/sockaccel/sockaccel/accel"
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
	fmt.Fprintf(w, "retired to plain TCP:\t%d\n", st.Retired)
	fmt.Fprintf(w, "lonely client ends to plain TCP:\t%d\n", st.Lonely)
	fmt.Fprintf(w, "not accelerated:\tmap_full=%d excluded_port=%d excluded_cidr=%d excluded_cgroup=%d excluded_learned=%d early_data=%d insert_errors=%d disabled=%d blocking=%d ulp=%d repair=%d no_peer=%d token_no_room=%d token_unconfirmed=%d\n",
		st.MapFull, st.ExcludedPort, st.ExcludedCIDR, st.ExcludedCgroup, st.ExcludedLearned, st.EarlyData, st.InsertErrors, st.Disabled, st.Blocking, st.ULP, st.Repair, st.NoPeer, st.TokenNoRoom, st.TokenUnconfirmed)
	fmt.Fprintf(w, "taken off the fast path:\tbacklog=%d setsockopt=%d splice=%d waitall=%d oob=%d fionread=%d (resumed %d)\n",
		st.OffBacklog, st.OffSetsockopt, st.OffSplice, st.OffWaitall, st.OffOOB, st.OffFIONREAD, st.Resumed)
	fmt.Fprintf(w, "splice stalled:\t%d\n", st.SpliceStalled)
	fmt.Fprintf(w, "urgent data misread:\t%d\n", st.OOBMisread)
	fmt.Fprintf(w, "FIONREAD under-reported:\t%d\n", st.FIONREADMisread)
	for _, l := range st.LearnedExclusions {
		fmt.Fprintf(w, "learned exclusion:\tport %d (%s end, cgroup %s) after %s by %s\n", l.Port, l.End, learnedCgroup(l), strings.Join(l.Reasons, ","), l.Comm)
	}
	fmt.Fprintf(w, "SO_RCVLOWAT lowered:\t%d\n", st.RcvlowatLowered)
	if len(st.KernelProbes) == 0 {
		fmt.Fprintf(w, "kernel probes:\tnone stored\n")
	} else {
		fmt.Fprintf(w, "kernel probes:\t%s, %s\n", st.KernelProbesKernel, st.KernelProbesAt)
	}
	for _, p := range st.KernelProbes {
		fmt.Fprintf(w, "  %s\n", p)
	}
	return w.Flush()
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

func runCleanup(args []string) error {
	fs := newFlagSet("cleanup")
	pinDir := fs.String("pin-dir", accel.DefaultPinDir, "bpffs directory sockaccel pins into")
	timeout := fs.Duration("timeout", accel.DefaultDrainTimeout, "how long to wait for accelerated connections to close (with --force: for redirected bytes to be read)")
	force := fs.Bool("force", false, "move open connections to TCP now instead of waiting for them to close, and remove sockets even if they hold unread redirected bytes (those bytes are lost; a blocking reader can see one EAGAIN)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger("", "info")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := accel.CleanupOptions{DrainTimeout: *timeout, Force: *force}
	if err := accel.CleanupWith(ctx, *pinDir, log.Named("cleanup"), opts); err != nil {
		if errors.Is(err, accel.ErrLocked) {
			return fmt.Errorf("%w: stop it first (or run it with --cleanup-on-exit); nothing was changed", err)
		}
		return err
	}
	log.Info("cleaned up", zap.String("pin_dir", *pinDir))
	return nil
}

func learnedCgroup(l accel.LearnedExclusion) string {
	switch {
	case l.CgroupID == 0:
		return "any"
	case l.Cgroup != "":
		return l.Cgroup
	}
	return fmt.Sprintf("id %d, gone", l.CgroupID)
}
