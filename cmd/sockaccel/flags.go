package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/sockaccel/sockaccel/cgroup"
)

// newFlagSet returns a flag set that reports errors through our one-line
// error path instead of printing usage to stderr; -h still prints usage.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	// The flag package calls Usage on every parse error; we print it only
	// for -h (below), errors get one line.
	fs.Usage = func() {}
	return fs
}

func printUsage(fs *flag.FlagSet) {
	fmt.Fprintf(os.Stdout, "usage: sockaccel %s [flags]\n", fs.Name())
	fs.SetOutput(os.Stdout)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// usageError is a command-line mistake: a configuration error (exitConfig).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs)
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// parsePorts parses "22,2379" into ports; empty means none.
func parsePorts(s string) ([]uint16, error) {
	var ports []uint16
	for _, f := range splitList(s) {
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("invalid port %q in --exclude-ports (want 1-65535)", f)
		}
		ports = append(ports, uint16(n))
	}
	return ports, nil
}

// parseCIDRs parses "10.0.0.0/8,fd00::/8"; a bare address means a host route.
func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		if !strings.Contains(f, "/") {
			addr, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("invalid CIDR %q in --exclude-cidrs", f)
			}
			out = append(out, netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("invalid CIDR %q in --exclude-cidrs", f)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseCgroups resolves a comma-separated list of cgroup v2 paths (absolute,
// or relative to the v2 root); each must exist.
func parseCgroups(s string) ([]cgroup.Target, error) {
	var out []cgroup.Target
	for _, f := range splitList(s) {
		t, err := cgroup.Resolve(f)
		if err != nil {
			return nil, fmt.Errorf("--exclude-cgroups %s: %w", f, err)
		}
		out = append(out, t)
	}
	return out, nil
}
