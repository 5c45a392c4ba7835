//go:build linux

package testenv

import (
	"errors"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		// Before Linux 6.6 there is no tcx: a clsact qdisc and a
		// direct-action cls_bpf filter do the same.
		attachClsact(t, ns, ifName, objs.DropPureAck)
	case err != nil:
		t.Fatalf("attach drop_ack to %s: %v", ifName, err)
	default:
		t.Cleanup(func() { l.Close() })
	}
	return func() uint64 {
		var n uint64
		if err := objs.Dropped.Get(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
}

// attachClsact attaches prog on egress of ifName in ns the pre-tcx way; the
// qdisc and its filter go when the test ends (or with the namespace).
func attachClsact(t testing.TB, ns *Netns, ifName string, prog *ebpf.Program) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", ns.Name, err)
	}
	t.Cleanup(h.Close)
	l, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatalf("link %s in %s: %v", ifName, ns.Name, err)
	}
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := h.QdiscAdd(qdisc); err != nil {
		t.Fatalf("add clsact qdisc to %s: %v", ifName, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_EGRESS, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1},
		Fd:           prog.FD(),
		Name:         "drop_ack",
		DirectAction: true,
	}
	if err := h.FilterAdd(filter); err != nil {
		t.Fatalf("attach drop_ack to %s with cls_bpf: %v", ifName, err)
	}
	t.Cleanup(func() { h.QdiscDel(qdisc) })
}
