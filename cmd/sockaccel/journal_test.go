package main

import (
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestJournalCoreSendsIndexedFields(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "journal.socket")
	srv, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	core, err := newJournalCore(zapcore.InfoLevel, sock)
	if err != nil {
		t.Fatal(err)
	}
	log := zap.New(core).Named("accel").With(zap.String("pin_dir", "/sys/fs/bpf/x"))
	log.Debug("not sent")
	log.Warn("attached sock_ops", zap.String("cgroup", "/kube\npods"), zap.Uint32("prog_id", 7), zap.String("message", "x"))

	buf := make([]byte, 64<<10)
	n, err := srv.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := buf[:n]
	for _, want := range []string{
		"PRIORITY=4\n", "SYSLOG_IDENTIFIER=sockaccel\n", "LOGGER=accel\n", "PIN_DIR=/sys/fs/bpf/x\n",
		"PROG_ID=7\n", "SOCKACCEL_MESSAGE=x\n",
	} {
		if !bytes.Contains(got, []byte(want)) {
			t.Errorf("datagram lacks %q:\n%q", want, got)
		}
	}
	// A value with a newline uses the length-prefixed form.
	if !bytes.Contains(got, []byte("CGROUP\n\x0a\x00\x00\x00\x00\x00\x00\x00/kube\npods\n")) {
		t.Errorf("multi-line value not length-prefixed:\n%q", got)
	}
	if !strings.Contains(string(got), "MESSAGE=attached sock_ops cgroup=\"/kube\\npods\" ") {
		t.Errorf("MESSAGE does not start with the constant message:\n%q", got)
	}
}
