package main

import (
	"errors"
	"flag"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestSplitList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{",", nil},
		{" , ,", nil},
		{"a", []string{"a"}},
		{"a,b", []string{"a", "b"}},
		{" a , b ,", []string{"a", "b"}},
		{"a,,b", []string{"a", "b"}},
	} {
		if got := splitList(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitList(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []uint16
		wantErr string // substring; "" for success
	}{
		{in: "", want: nil},
		{in: "22", want: []uint16{22}},
		{in: "22,2379", want: []uint16{22, 2379}},
		{in: " 1 , 65535 ", want: []uint16{1, 65535}},
		// Repeats are kept: the map write makes them one entry.
		{in: "80,80", want: []uint16{80, 80}},
		{in: "0", wantErr: `invalid port "0" in --exclude-ports (want 1-65535)`},
		{in: "65536", wantErr: `invalid port "65536"`},
		{in: "-1", wantErr: `invalid port "-1"`},
		{in: "http", wantErr: `invalid port "http"`},
		{in: "22;23", wantErr: `invalid port "22;23"`},
		{in: "0x16", wantErr: `invalid port "0x16"`},
	} {
		got, err := parsePorts(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parsePorts(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parsePorts(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseCIDRs(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		in      string
		want    []netip.Prefix
		wantErr string
	}{
		{in: "", want: nil},
		{in: "10.0.0.0/8", want: []netip.Prefix{p("10.0.0.0/8")}},
		{in: "10.0.0.0/8,fd00::/8", want: []netip.Prefix{p("10.0.0.0/8"), p("fd00::/8")}},
		// A bare address is a host route, in its own family.
		{in: "192.0.2.1", want: []netip.Prefix{p("192.0.2.1/32")}},
		{in: "2001:db8::1", want: []netip.Prefix{p("2001:db8::1/128")}},
		// IPv4-mapped forms are the IPv4 prefix they mean: sockets key
		// IPv4 peers by their mapped address, the map by the prefix.
		{in: "::ffff:192.0.2.1", want: []netip.Prefix{p("192.0.2.1/32")}},
		{in: "::ffff:10.0.0.0/104", want: []netip.Prefix{p("10.0.0.0/8")}},
		// Host bits are kept here; the key builder masks them.
		{in: "10.1.2.3/8", want: []netip.Prefix{p("10.1.2.3/8")}},
		{in: "0.0.0.0/0", want: []netip.Prefix{p("0.0.0.0/0")}},
		{in: "10.0.0.0/33", wantErr: `invalid CIDR "10.0.0.0/33" in --exclude-cidrs`},
		{in: "10.0.0/8", wantErr: `invalid CIDR "10.0.0/8"`},
		{in: "example.com", wantErr: `invalid CIDR "example.com"`},
		{in: "10.0.0.0/8,nope", wantErr: `invalid CIDR "nope"`},
	} {
		got, err := parseCIDRs(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseCIDRs(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseCIDRs(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// TestParseFlagsUsageErrors checks what parseFlags makes of bad command
// lines: a usage error (exit 78), -h as flag.ErrHelp (exit 0).
func TestParseFlagsUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		wantErr  bool
		wantHelp bool
	}{
		{name: "none", args: nil},
		{name: "known", args: []string{"--json"}},
		{name: "single dash", args: []string{"-json"}},
		{name: "help", args: []string{"-h"}, wantErr: true, wantHelp: true},
		{name: "unknown flag", args: []string{"--nope"}, wantErr: true},
		{name: "positional", args: []string{"extra"}, wantErr: true},
		{name: "bad bool", args: []string{"--json=maybe"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFlagSet("test")
			fs.SetOutput(new(strings.Builder))
			fs.Bool("json", false, "")
			err := parseFlags(fs, tc.args)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseFlags(%q) = %v, want error %v", tc.args, err, tc.wantErr)
			}
			if err == nil {
				return
			}
			if got := errors.Is(err, flag.ErrHelp); got != tc.wantHelp {
				t.Errorf("parseFlags(%q) = %v: is flag.ErrHelp %v, want %v", tc.args, err, got, tc.wantHelp)
			}
			if !tc.wantHelp && exitCode(err) != exitConfig {
				t.Errorf("parseFlags(%q) = %v: exit %d, want %d (EX_CONFIG)", tc.args, err, exitCode(err), exitConfig)
			}
		})
	}
}
