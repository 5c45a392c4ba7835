package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap/zapcore"
)

// journalSocket is where journald takes native-protocol datagrams.
const journalSocket = "/run/systemd/journal/socket"

// journalCore sends each entry to journald over its native protocol, every
// zap field as its own journal field (cgroup -> CGROUP), so that
// `journalctl CGROUP=/kubepods` or `journalctl -p warning` select entries
// without parsing text. MESSAGE also carries the fields, for humans.
type journalCore struct {
	zapcore.LevelEnabler
	conn   *net.UnixConn
	fields []zapcore.Field
}

func newJournalCore(enab zapcore.LevelEnabler, socket string) (*journalCore, error) {
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	return &journalCore{LevelEnabler: enab, conn: conn}, nil
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
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fields...) {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	msg := e.Message
	var buf bytes.Buffer
	for _, k := range keys {
		v := fieldValue(enc.Fields[k])
		if strings.ContainsAny(v, " \t\n\"") {
			msg += " " + k + "=" + strconv.Quote(v)
		} else {
			msg += " " + k + "=" + v
		}
		writeJournalField(&buf, journalKey(k), v)
	}
	writeJournalField(&buf, "MESSAGE", msg)
	writeJournalField(&buf, "PRIORITY", fmt.Sprint(priority(e.Level)))
	writeJournalField(&buf, "SYSLOG_IDENTIFIER", "sockaccel")
	if e.LoggerName != "" {
		writeJournalField(&buf, "LOGGER", e.LoggerName)
	}
	_, err := c.conn.Write(buf.Bytes())
	return err
}

func (c *journalCore) Sync() error { return nil }

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

// writeJournalField uses the plain KEY=value form, or the length-prefixed
// binary form when the value has a newline.
func writeJournalField(buf *bytes.Buffer, key, value string) {
	if !strings.Contains(value, "\n") {
		buf.WriteString(key + "=" + value + "\n")
		return
	}
	buf.WriteString(key + "\n")
	binary.Write(buf, binary.LittleEndian, uint64(len(value)))
	buf.WriteString(value + "\n")
}

func priority(l zapcore.Level) int {
	switch {
	case l >= zapcore.DPanicLevel:
		return 2
	case l == zapcore.ErrorLevel:
		return 3
	case l == zapcore.WarnLevel:
		return 4
	case l == zapcore.DebugLevel:
		return 7
	}
	return 6
}
