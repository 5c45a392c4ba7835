//go:build linux

package hostfs

import (
	"strings"
	"testing"
)

func TestSlaveMountAbove(t *testing.T) {
	// Lines as seen on this host (no systemd), under systemd on a host, and
	// inside a service with ProtectSystem= plus TemporaryFileSystem=/sys/fs/bpf.
	const (
		private = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n" +
			"23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n"
		shared = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n" +
			"23 27 0:22 / /sys rw,relatime shared:6 - sysfs sysfs rw\n"
		service = "195 190 254:0 / / ro,relatime shared:69 master:1 - ext4 /dev/vda rw\n" +
			"197 195 0:22 / /sys ro,relatime shared:70 master:6 - sysfs sysfs rw\n" +
			"230 197 0:61 / /sys/fs/bpf rw,relatime shared:90 - tmpfs tmpfs rw\n" +
			"231 195 0:62 / /sys-other rw,relatime master:7 - tmpfs tmpfs rw\n"
	)
	for _, c := range []struct {
		name, mountinfo, want string
	}{
		{"private host", private, ""},
		{"shared host", shared, ""},
		{"service namespace", service, "/sys"},
	} {
		got, err := slaveMountAbove(strings.NewReader(c.mountinfo), "/sys/fs/bpf")
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}
