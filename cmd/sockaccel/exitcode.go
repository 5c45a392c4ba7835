package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/sockaccel/sockaccel/accel"
)

// exitConfig is the exit code for a configuration error: a bad flag or
// value, a cgroup that does not exist, a pin dir refused. A restart cannot
// fix any of them, so the unit lists it in RestartPreventExitStatus=. 78 is
// EX_CONFIG (sysexits.h), which systemctl shows as "status=78/CONFIG". Not
// 2: the Go runtime exits 2 on a panic, which a restart may well fix.
const exitConfig = 78

// configError marks an error as the operator's to fix (exit 78).
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// asConfig marks err, if any, as a configuration error.
func asConfig(err error) error {
	if err == nil {
		return nil
	}
	return configError{err}
}

// exitCode maps the error a command returned to the process's exit code.
func exitCode(err error) int {
	if errors.As(err, new(usageError)) || errors.As(err, new(configError)) ||
		errors.Is(err, accel.ErrPrivateBPFFS) {
		return exitConfig
	}
	return 1
}

// printFatal writes the one line naming the problem. When stderr is the
// journal, it carries the sd-daemon(3) prefix for error priority, so that
// `journalctl -p warning` shows the reason (without it journald records
// stderr at the unit's default, info).
func printFatal(cmd string, err error) {
	prefix := ""
	if stderrIsJournal() {
		prefix = "<3>"
	}
	fmt.Fprintf(os.Stderr, "%ssockaccel %s: %s\n", prefix, cmd, oneLine(err.Error()))
}
