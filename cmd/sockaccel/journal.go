package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap/zapcore"
)

// journalCore sends each entry to journald through go-systemd's
// journal.Send, every zap field as its own journal field (cgroup -> CGROUP),
// so that `journalctl CGROUP=/kubepods` or `journalctl -p warning` select
// entries without parsing text. MESSAGE also carries the fields, for humans.
// go-systemd takes care of the native protocol: multi-line values and
// entries too large for one datagram (passed as a sealed memfd).
type journalCore struct {
	zapcore.LevelEnabler
	fields []zapcore.Field
	send   func(msg string, p journal.Priority, vars map[string]string) error
}

func newJournalCore(enab zapcore.LevelEnabler) *journalCore {
	return &journalCore{LevelEnabler: enab, send: journal.Send}
}

func (c *journalCore) With(fields []zapcore.Field) zapcore.Core {
	clone := *c
	clone.fields = append(append([]zapcore.Field(nil), c.fields...), fields...)
	return &clone
}

func (c *journalCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *journalCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	msg, vars := journalEntry(e, append(append([]zapcore.Field(nil), c.fields...), fields...))
	return c.send(msg, priority(e.Level), vars)
}

func (c *journalCore) Sync() error { return nil }

// journalEntry returns the MESSAGE (the constant message, then key=value for
// humans) and the journal fields of one entry.
func journalEntry(e zapcore.Entry, fields []zapcore.Field) (string, map[string]string) {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	vars := map[string]string{"SYSLOG_IDENTIFIER": "sockaccel"}
	if e.LoggerName != "" {
		vars["LOGGER"] = e.LoggerName
	}
	var msg strings.Builder
	msg.WriteString(e.Message)
	for _, k := range keys {
		v := fieldValue(enc.Fields[k])
		if strings.ContainsAny(v, " \t\n\"") {
			msg.WriteString(" " + k + "=" + strconv.Quote(v))
		} else {
			msg.WriteString(" " + k + "=" + v)
		}
		vars[journalKey(k)] = v
	}
	return msg.String(), vars
}

func fieldValue(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case fmt.Stringer:
		return v.String()
	case []any, map[string]any:
		b, err := json.Marshal(v)
		if err == nil {
			return string(b)
		}
	}
	return fmt.Sprint(v)
}

// journalKey maps a zap key to a journal field name: upper case letters,
// digits and underscores, not starting with an underscore (those are
// journald's trusted fields), not one of the fields we set ourselves.
func journalKey(k string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(k) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	key := strings.TrimLeft(b.String(), "_")
	switch {
	case key == "", key[0] >= '0' && key[0] <= '9',
		key == "MESSAGE", key == "PRIORITY", key == "SYSLOG_IDENTIFIER", key == "LOGGER":
		key = "SOCKACCEL_" + key
	}
	if len(key) > 64 {
		key = key[:64]
	}
	return key
}

// priority maps a zap level to syslog's: what journalctl -p filters on.
func priority(l zapcore.Level) journal.Priority {
	switch {
	case l >= zapcore.DPanicLevel:
		return journal.PriCrit
	case l == zapcore.ErrorLevel:
		return journal.PriErr
	case l == zapcore.WarnLevel:
		return journal.PriWarning
	case l == zapcore.DebugLevel:
		return journal.PriDebug
	}
	return journal.PriInfo
}
