//go:build linux

package conntrack

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
)

// TestCtState checks the state names conns shows for the close bits the
// close callback sets: bit 0 the client's (active) end, bit 1 the server's.
func TestCtState(t *testing.T) {
	for _, tc := range []struct {
		closed uint32
		want   string
	}{
		{0, "established"},
		{1, "client-closed"},
		{2, "server-closed"},
		{3, "closed"},
		// Only bits 0 and 1 name an end; another bit alone reads as
		// closed, never as established, and leaves the ends' bits as
		// they are.
		{4, "closed"},
		{5, "client-closed"},
		{7, "closed"},
	} {
		if got := ctState(bpfobj.AccelCtEntry{Closed: tc.closed}); got != tc.want {
			t.Errorf("ctState(closed=%#b) = %q, want %q", tc.closed, got, tc.want)
		}
	}
}

// TestConnJSON pins the keys and the address format of conns --json: the
// keys are a contract with scripts, addresses are ip:port with IPv6 in
// brackets, and the Go-side age is not a key.
func TestConnJSON(t *testing.T) {
	for _, tc := range []struct {
		name           string
		client, server string
		want           string
	}{
		{"ipv4", "10.0.0.1:40000", "10.0.0.2:80",
			`{"client":"10.0.0.1:40000","server":"10.0.0.2:80","age_seconds":1.5,"bytes_client_to_server":3,"bytes_server_to_client":4,"msgs_client_to_server":1,"msgs_server_to_client":2,"client_local":true,"server_local":false,"cgroup_ids":[7],"cgroups":["a/b"],"state":"client-closed","cookies":[9,0]}`},
		{"ipv6", "[fd00::1]:40000", "[fd00::2]:443",
			`{"client":"[fd00::1]:40000","server":"[fd00::2]:443","age_seconds":1.5,"bytes_client_to_server":3,"bytes_server_to_client":4,"msgs_client_to_server":1,"msgs_server_to_client":2,"client_local":true,"server_local":false,"cgroup_ids":[7],"cgroups":["a/b"],"state":"client-closed","cookies":[9,0]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Conn{
				Client: netip.MustParseAddrPort(tc.client), Server: netip.MustParseAddrPort(tc.server),
				Age: 1500e6, AgeSeconds: 1.5, BytesC2S: 3, BytesS2C: 4, MsgsC2S: 1, MsgsS2C: 2,
				ClientLocal: true, CgroupIDs: []uint64{7}, Cgroups: []string{"a/b"}, State: "client-closed", Cookies: [2]uint64{9, 0},
			}
			b, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("got  %s\nwant %s", b, tc.want)
			}
			var back Conn
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if back.Client != c.Client || back.Server != c.Server {
				t.Errorf("round trip: %s -> %s, want %s -> %s", back.Client, back.Server, c.Client, c.Server)
			}
		})
	}
}

// TestCgroupNamesEmpty: a row always names its cgroups as a list, never
// null (the listing used to differ between the pins and the API).
func TestCgroupNamesEmpty(t *testing.T) {
	names := cgroupNames()
	if got := names(nil); got == nil || len(got) != 0 {
		t.Errorf("names(nil) = %#v, want an empty list", got)
	}
	b, _ := json.Marshal(names(nil))
	if string(b) != "[]" {
		t.Errorf("names(nil) marshals as %s, want []", b)
	}
}
