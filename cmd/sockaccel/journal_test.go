package main

import (
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestJournalCoreSendsIndexedFields(t *testing.T) {
	type sent struct {
		msg  string
		pri  journal.Priority
		vars map[string]string
	}
	var got []sent
	core := newJournalCore(zapcore.InfoLevel)
	core.send = func(msg string, p journal.Priority, vars map[string]string) error {
		got = append(got, sent{msg, p, vars})
		return nil
	}
	log := zap.New(core).Named("accel").With(zap.String("pin_dir", "/sys/fs/bpf/x"))
	log.Debug("not sent")
	log.Warn("attached sock_ops", zap.String("cgroup", "/kube\npods"), zap.Uint32("prog_id", 7), zap.String("message", "x"))
	log.Error("failed")

	if len(got) != 2 {
		t.Fatalf("sent %d entries, want 2 (debug filtered): %+v", len(got), got)
	}
	if got[0].pri != journal.PriWarning || got[1].pri != journal.PriErr {
		t.Errorf("priorities %d, %d; want %d, %d", got[0].pri, got[1].pri, journal.PriWarning, journal.PriErr)
	}
	for k, want := range map[string]string{
		"SYSLOG_IDENTIFIER": "sockaccel", "LOGGER": "accel", "PIN_DIR": "/sys/fs/bpf/x",
		"PROG_ID": "7", "SOCKACCEL_MESSAGE": "x", "CGROUP": "/kube\npods",
	} {
		if v := got[0].vars[k]; v != want {
			t.Errorf("%s=%q, want %q (all: %q)", k, v, want, got[0].vars)
		}
	}
	if !strings.HasPrefix(got[0].msg, "attached sock_ops cgroup=\"/kube\\npods\" ") {
		t.Errorf("MESSAGE does not start with the constant message: %q", got[0].msg)
	}
}

func TestJournalKey(t *testing.T) {
	for in, want := range map[string]string{
		"cgroup": "CGROUP", "pin-dir": "PIN_DIR", "_x": "X", "9lives": "SOCKACCEL_9LIVES",
		"priority": "SOCKACCEL_PRIORITY", "": "SOCKACCEL_",
	} {
		if got := journalKey(in); got != want {
			t.Errorf("journalKey(%q) = %q, want %q", in, got, want)
		}
	}
}
