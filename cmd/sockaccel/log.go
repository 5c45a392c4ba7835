package main

import (
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the root logger. Formats:
//   - journal: journald's native protocol, each zap field its own indexed
//     journal field (see journalCore); if the journal socket is missing, a
//     <N> priority prefix per line on stderr (so journalctl -p still works),
//     no timestamp (journald adds its own), then message and fields.
//   - json: one JSON object per line, for log shippers.
//   - console: human-readable with timestamps.
//
// The default is journal when started by systemd (JOURNAL_STREAM set) and
// console otherwise.
func newLogger(format, level string) (*zap.Logger, error) {
	lvl, err := zap.ParseAtomicLevel(level)
	if err != nil {
		return nil, fmt.Errorf("invalid --log-level %q (want debug, info, warn or error)", level)
	}
	if format == "" {
		format = "console"
		if os.Getenv("JOURNAL_STREAM") != "" {
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
		if core, err := newJournalCore(lvl, journalSocket); err == nil {
			return zap.New(core), nil
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

// syslogPriority writes the sd-daemon(3) level prefix journald parses.
func syslogPriority(l zapcore.Level, enc zapcore.PrimitiveArrayEncoder) {
	enc.AppendString(fmt.Sprintf("<%d>", priority(l)))
}
