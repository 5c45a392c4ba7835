//go:build linux

package testenv

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// DropPureACKs drops, on egress of ifName in ns, every pure ACK sent to TCP
// port (IPv4). It returns a function reporting how many were dropped.
func DropPureACKs(t testing.TB, ns *Netns, ifName string, port uint16) func() uint64 {
	t.Helper()
	spec, err := loadDropack()
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables["drop_port"].Set(port); err != nil {
		t.Fatal(err)
	}
	var objs dropackObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load drop_ack: %v", err)
	}
	t.Cleanup(func() { objs.Close() })
	var l link.Link
	ns.Do(t, func() {
		iface, ierr := net.InterfaceByName(ifName)
		if ierr != nil {
			err = ierr
			return
		}
		l, err = link.AttachTCX(link.TCXOptions{
			Interface: iface.Index,
			Program:   objs.DropPureAck,
			Attach:    ebpf.AttachTCXEgress,
		})
	})
	if err != nil {
		t.Fatalf("attach drop_ack to %s: %v", ifName, err)
	}
	t.Cleanup(func() { l.Close() })
	return func() uint64 {
		var n uint64
		if err := objs.Dropped.Get(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
}
