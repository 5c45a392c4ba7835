package main

import (
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sockaccel/sockaccel/accel"
)

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// probeSummary condenses the behaviour probes into one field of the
// start-up line: name=result, comma-separated ("status" lists the details).
func probeSummary(b accel.KernelBehaviour) string {
	parts := make([]string, 0, len(b.Probes))
	for _, p := range b.Probes {
		parts = append(parts, p.Name+"="+p.Result)
	}
	return strings.Join(parts, ", ")
}

func mapsOrigin(adopted bool) string {
	if adopted {
		return "adopted from pins"
	}
	return "created"
}
