//go:build linux

package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// testRunFlags mirrors run's flags that checkRunFlags reads; that they
// match the real ones is TestConfigEveryRunFlagHasAKey's job.
func testRunFlags() *flag.FlagSet {
	fs := newFlagSet("run")
	fs.String("cgroup", "", "")
	fs.String("pin-dir", "/sys/fs/bpf/sockaccel", "")
	fs.Uint("max-conns", 65536, "")
	fs.String("exclude-ports", "", "")
	fs.String("exclude-cidrs", "", "")
	fs.String("exclude-cgroups", "", "")
	fs.String("log-level", "info", "")
	fs.String("log-format", "", "")
	fs.Bool("conntrack", true, "")
	fs.Duration("gc-interval", 30*time.Second, "")
	fs.Uint("backlog-bytes", 0, "")
	fs.Int("http-max-requests", 8, "")
	fs.String("config", "", "")
	fs.Bool("check-config", false, "")
	return fs
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Strict decoding: anything the file says that run would not understand is
// one error line naming the file, and the key where there is one.
func TestConfigFileStrict(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       string // substring of the error; "" means valid
	}{
		{"empty", "", ""},
		{"comments only", "# nothing\n", ""},
		{"every kind of value", "exclude-ports: [22, 2379]\nexclude-cidrs: 10.0.0.0/8,fd00::/8\nconntrack: false\ngc-interval: 5s\nmax-conns: 128\nlog-level: debug\n", ""},
		{"unknown key", "exclude-port: [22]\n", `:1: unknown key "exclude-port"`},
		{"unknown key after good ones", "log-level: info\nfrobnicate: 1\n", `:2: unknown key "frobnicate"`},
		{"config names no other file", "config: /etc/other.yaml\n", `unknown key "config"`},
		{"check-config is not a setting", "check-config: true\n", `unknown key "check-config"`},
		{"repeated key", "log-level: info\nlog-level: debug\n", `log-level`},
		{"nested value", "exclude-ports:\n  a: 1\n", `exclude-ports: want a value or a list of values`},
		{"list of lists", "exclude-ports: [[22]]\n", `exclude-ports: want a list of plain values`},
		{"not a mapping", "- 22\n", `want a mapping`},
		{"wrong type", "max-conns: lots\n", `max-conns`},
		{"bad bool", "conntrack: maybe\n", `conntrack`},
		{"bad duration", "gc-interval: soon\n", `gc-interval`},
		{"invalid port", "exclude-ports: [70000]\n", `invalid port "70000"`},
		{"invalid level", "log-level: loud\n", `invalid --log-level "loud"`},
		{"invalid format", "log-format: xml\n", `invalid --log-format "xml"`},
		{"bad yaml", "exclude-ports: [22\n", `config `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.body)
			fs := testRunFlags()
			err := applyConfigFile(fs, path)
			if err == nil {
				_, err = checkRunFlags(fs)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid file refused: %v", err)
			case tc.want == "":
				return
			case err == nil:
				t.Fatalf("accepted, want an error with %q", tc.want)
			}
			msg := oneLine(err.Error())
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q, want it to contain %q", msg, tc.want)
			}
			if strings.Contains(tc.name, "key") && !strings.Contains(msg, path) {
				t.Errorf("error %q does not name the file %s", msg, path)
			}
		})
	}
	if err := applyConfigFile(testRunFlags(), filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("a missing --config file was accepted")
	}
}

// Precedence: defaults, then the file, then the flags given on the command
// line (whatever the file says about them).
func TestConfigPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		args       []string
		want       map[string]string
	}{
		{"defaults without a file", "", nil,
			map[string]string{"exclude-ports": "", "log-level": "info", "gc-interval": "30s", "conntrack": "true", "max-conns": "65536"}},
		{"file over defaults", "exclude-ports: [22, 80]\nlog-level: debug\ngc-interval: 5s\nconntrack: false\n", nil,
			map[string]string{"exclude-ports": "22,80", "log-level": "debug", "gc-interval": "5s", "conntrack": "false", "max-conns": "65536"}},
		{"flags over file", "exclude-ports: [22, 80]\nlog-level: debug\nconntrack: false\n",
			[]string{"--exclude-ports", "443", "--conntrack=true"},
			map[string]string{"exclude-ports": "443", "log-level": "debug", "conntrack": "true"}},
		{"a flag set to its default still wins", "log-level: debug\nmax-conns: 128\n",
			[]string{"--log-level", "info"},
			map[string]string{"log-level": "info", "max-conns": "128"}},
		{"an empty flag clears the file's list", "exclude-ports: [22]\n",
			[]string{"--exclude-ports="},
			map[string]string{"exclude-ports": ""}},
		{"a flag overrides an invalid file value", "max-conns: 0\n",
			[]string{"--max-conns", "64"},
			map[string]string{"max-conns": "64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := testRunFlags()
			args := tc.args
			if tc.body != "" {
				args = append(args, "--config", writeConfig(t, tc.body))
			}
			if err := parseFlags(fs, args); err != nil {
				t.Fatal(err)
			}
			if err := applyConfigFile(fs, fs.Lookup("config").Value.String()); err != nil {
				t.Fatal(err)
			}
			if _, err := checkRunFlags(fs); err != nil {
				t.Fatal(err)
			}
			for k, want := range tc.want {
				if got := fs.Lookup(k).Value.String(); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

// A reload parses the same command line and file again from the defaults:
// a key removed from the file returns to its default, flags still win.
func TestReloadLoadsLikeStart(t *testing.T) {
	path := writeConfig(t, "exclude-ports: [22]\nlog-level: debug\n")
	fs := testRunFlags()
	args := []string{"--config", path, "--gc-interval", "7s"}
	if err := parseFlags(fs, args); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(fs, path); err != nil {
		t.Fatal(err)
	}
	r := &reloader{flags: fs, args: args, path: path}
	if err := os.WriteFile(path, []byte("exclude-ports: [22, 8080]\ngc-interval: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, s, err := r.load()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.ports, []uint16{22, 8080}) || s.gcInterval != 7*time.Second || s.level.String() != "info" {
		t.Errorf("reloaded ports %v, gc interval %s, level %s; want [22 8080], 7s (the flag), info (the key is gone)", s.ports, s.gcInterval, s.level)
	}
	if got.Lookup("config").Value.String() != path {
		t.Errorf("reload lost --config")
	}
	if err := os.WriteFile(path, []byte("exclude-ports: [22, 8080]\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.load(); err == nil || !strings.Contains(err.Error(), `unknown key "bogus"`) {
		t.Errorf("reload of a file with an unknown key: %v", err)
	}
}

// The shipped config names every run flag (but --config and
// --check-config) exactly once, and run accepts it with every line
// uncommented: its defaults are the built-in ones.
func TestConfigEveryRunFlagHasAKey(t *testing.T) {
	help := sockaccel(t, "run", "-h")
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(help.stdout, -1) {
		if !notInFile[m[1]] {
			flags = append(flags, m[1])
		}
	}
	shipped, err := os.ReadFile("../../systemd/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	keyLine := regexp.MustCompile(`(?m)^# ([a-z-]+): (.*)$`)
	var keys []string
	var uncommented strings.Builder
	for _, m := range keyLine.FindAllStringSubmatch(string(shipped), -1) {
		keys = append(keys, m[1])
		uncommented.WriteString(m[1] + ": " + m[2] + "\n")
	}
	slices.Sort(flags)
	slices.Sort(keys)
	if !slices.Equal(flags, keys) {
		t.Errorf("run's flags %v, keys in systemd/config.yaml %v", flags, keys)
	}
	path := writeConfig(t, uncommented.String())
	if r := sockaccel(t, "run", "--check-config", "--config", path); r.code != 0 || r.stdout != "config ok\n" {
		t.Errorf("check-config of the shipped config uncommented: exit %d, stdout %q, stderr %q\n%s", r.code, r.stdout, r.stderr, uncommented.String())
	}
	if r := sockaccel(t, "run", "--check-config", "--config", "../../systemd/config.yaml"); r.code != 0 {
		t.Errorf("check-config of the shipped config: exit %d, stderr %q", r.code, r.stderr)
	}
}

// --check-config through the binary: 0 and one line, or non-zero and one
// line naming the problem; a flag given overrides the file.
func TestCheckConfig(t *testing.T) {
	bad := writeConfig(t, "log-level: info\nexclude-port: [22]\n")
	for _, tc := range []struct {
		name string
		args []string
		ok   bool
		want string
	}{
		{"no file", nil, true, "config ok"},
		{"missing file", []string{"--config", "/nonexistent/sockaccel.yaml"}, false, "/nonexistent/sockaccel.yaml"},
		{"unknown key", []string{"--config", bad}, false, `config ` + bad + `:2: unknown key "exclude-port"`},
		{"invalid value", []string{"--config", writeConfig(t, "max-conns: 0\n")}, false, "invalid --max-conns 0"},
		{"flag overrides invalid value", []string{"--config", writeConfig(t, "max-conns: 0\n"), "--max-conns", "64"}, true, "config ok"},
		{"missing excluded cgroup", []string{"--config", writeConfig(t, "exclude-cgroups: [/no/such/cgroup]\n")}, false, "--exclude-cgroups /no/such/cgroup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := sockaccel(t, append([]string{"run", "--check-config", "--pin-dir", filepath.Join(t.TempDir(), "pins")}, tc.args...)...)
			out := r.stdout + r.stderr
			if (r.code == 0) != tc.ok || strings.Count(out, "\n") != 1 || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, output %q; want ok=%v, one line containing %q", r.code, out, tc.ok, tc.want)
			}
		})
	}
}
