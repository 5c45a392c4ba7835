package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"

	"github.com/sockaccel/sockaccel/cgroup"
)

// The config file (--config) holds run's flags as keys, named exactly as
// the flags are (exclude-ports, log-level, ...), so that every flag has a
// key and nothing needs two names. Precedence: defaults, then the file,
// then flags given on the command line. Lists (exclude-ports,
// exclude-cidrs, exclude-cgroups) are YAML sequences or the flag's
// comma-separated string.

// notInFile are run flags that make no sense in the file itself.
var notInFile = map[string]bool{"config": true, "check-config": true}

// readConfigFile decodes path strictly: an unknown or repeated key, or a
// value that is neither a scalar nor a list of scalars, is an error naming
// the file, line and key. It returns each key's value in flag syntax.
func readConfigFile(fs *flag.FlagSet, path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return map[string]string{}, nil // empty file: defaults
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return map[string]string{}, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return map[string]string{}, nil // only comments
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config %s:%d: want a mapping of run flags to values", path, root.Line)
	}
	out := make(map[string]string, len(root.Content)/2)
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		name := k.Value
		if fs.Lookup(name) == nil || notInFile[name] {
			return nil, fmt.Errorf("config %s:%d: unknown key %q (keys are run's flag names, e.g. exclude-ports)", path, k.Line, name)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("config %s:%d: key %q given twice", path, k.Line, name)
		}
		val, err := flagValue(v)
		if err != nil {
			return nil, fmt.Errorf("config %s:%d: %s: %w", path, v.Line, name, err)
		}
		out[name] = val
	}
	return out, nil
}

// flagValue turns a YAML value into flag syntax.
func flagValue(v *yaml.Node) (string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return "", nil
		}
		return v.Value, nil
	case yaml.SequenceNode:
		items := make([]string, 0, len(v.Content))
		for _, it := range v.Content {
			if it.Kind != yaml.ScalarNode {
				return "", errors.New("want a list of plain values")
			}
			items = append(items, it.Value)
		}
		return strings.Join(items, ","), nil
	}
	return "", errors.New("want a value or a list of values")
}

// applyConfigFile sets every flag the file at path names and the command
// line did not; empty path: no file.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	vals, err := readConfigFile(fs, path)
	if err != nil {
		return err
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	for name, val := range vals {
		if explicit[name] {
			continue
		}
		if err := fs.Set(name, val); err != nil {
			return fmt.Errorf("config %s: %s: %w", path, name, err)
		}
	}
	return nil
}

// runSettings are run's flags parsed and validated, everything a start
// could refuse before touching the kernel.
type runSettings struct {
	ports           []uint16
	cidrs           []netip.Prefix
	target          cgroup.Target
	excludedCgroups []cgroup.Target
	level           zapcore.Level
	gcInterval      time.Duration
}

// checkRunFlags validates run's flags (after applyConfigFile).
func checkRunFlags(fs *flag.FlagSet) (runSettings, error) {
	var (
		s   runSettings
		err error
	)
	get := func(name string) any { return fs.Lookup(name).Value.(flag.Getter).Get() }
	if s.level, err = zapcore.ParseLevel(fs.Lookup("log-level").Value.String()); err != nil {
		return s, fmt.Errorf("invalid --log-level %q (want debug, info, warn or error)", fs.Lookup("log-level").Value)
	}
	switch f := get("log-format").(string); f {
	case "", "console", "json", "journal":
	default:
		return s, fmt.Errorf("invalid --log-format %q (want console, json or journal)", f)
	}
	if s.ports, err = parsePorts(get("exclude-ports").(string)); err != nil {
		return s, err
	}
	if s.cidrs, err = parseCIDRs(get("exclude-cidrs").(string)); err != nil {
		return s, err
	}
	if n := get("max-conns").(uint); n == 0 || n > 1<<24 {
		return s, fmt.Errorf("invalid --max-conns %d (want 1-16777216)", n)
	}
	if n := get("backlog-bytes").(uint); n > 1<<31 {
		return s, fmt.Errorf("invalid --backlog-bytes %d (want 0-2147483648)", n)
	}
	if n := get("http-max-requests").(int); n < 1 {
		return s, fmt.Errorf("invalid --http-max-requests %d (want at least 1)", n)
	}
	if s.gcInterval = get("gc-interval").(time.Duration); s.gcInterval <= 0 {
		return s, fmt.Errorf("invalid --gc-interval %s (want a positive duration)", s.gcInterval)
	}
	if s.target, err = cgroup.Resolve(get("cgroup").(string)); err != nil {
		return s, err
	}
	if s.excludedCgroups, err = parseCgroups(get("exclude-cgroups").(string)); err != nil {
		return s, err
	}
	return s, nil
}

// newLiveLogger is newLogger with a level that a reload can change: the
// logger is built at debug and filtered by the returned level.
func newLiveLogger(format string, level zapcore.Level) (*zap.Logger, zap.AtomicLevel, error) {
	lvl := zap.NewAtomicLevelAt(level)
	log, err := newLogger(format, "debug")
	if err != nil {
		return nil, lvl, err
	}
	return log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return levelCore{c, lvl} })), lvl, nil
}

// levelCore filters a core by a level that can change while it runs.
type levelCore struct {
	zapcore.Core
	level zap.AtomicLevel
}

func (c levelCore) Enabled(l zapcore.Level) bool { return c.level.Enabled(l) && c.Core.Enabled(l) }

func (c levelCore) With(fields []zapcore.Field) zapcore.Core {
	return levelCore{c.Core.With(fields), c.level}
}

func (c levelCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if !c.level.Enabled(e.Level) {
		return ce
	}
	return c.Core.Check(e, ce)
}
