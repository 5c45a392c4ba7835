package main

import (
	"fmt"
	"os"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the root logger. Formats:
//   - journal: journald's native protocol through go-systemd, each zap field
//     its own indexed journal field (see journalCore); if journald's socket
//     is missing, a <N> priority prefix per line on stderr (so journalctl -p
//     still works), no timestamp (journald adds its own), then message and
//     fields.
//   - json: one JSON object per line, for log shippers.
//   - console: human-readable with timestamps.
//
// The default is journal when stderr is the journal (JOURNAL_STREAM names
// stderr's device and inode: a child that inherited the variable but not the
// stream gets console) and console otherwise.
func newLogger(format, level string) (*zap.Logger, error) {
	lvl, err := zap.ParseAtomicLevel(level)
	if err != nil {
		return nil, fmt.Errorf("invalid --log-level %q (want debug, info, warn or error)", level)
	}
	if format == "" {
		format = "console"
		if stderrIsJournal() {
			format = "journal"
		}
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	var encoder zapcore.Encoder
	switch format {
	case "json":
		encoder = zapcore.NewJSONEncoder(enc)
	case "console":
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	case "journal":
		if journal.Enabled() {
			return zap.New(newJournalCore(lvl)), nil
		}
		enc.TimeKey = zapcore.OmitKey
		enc.CallerKey = zapcore.OmitKey
		enc.EncodeLevel = syslogPriority
		enc.ConsoleSeparator = " "
		encoder = zapcore.NewConsoleEncoder(enc)
	default:
		return nil, fmt.Errorf("invalid --log-format %q (want console, json or journal)", format)
	}
	core := zapcore.NewCore(encoder, zapcore.Lock(os.Stderr), lvl)
	return zap.New(core), nil
}

func stderrIsJournal() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok
}

// syslogPriority writes the sd-daemon(3) level prefix journald parses.
func syslogPriority(l zapcore.Level, enc zapcore.PrimitiveArrayEncoder) {
	enc.AppendString(fmt.Sprintf("<%d>", priority(l)))
}
