//go:build linux

package stats

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"flag"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockaccel/sockaccel/accel/bpfobj"
	"github.com/sockaccel/sockaccel/accel/detect"
)

var update = flag.Bool("update", false, "rewrite testdata/status.{json,txt} from the code")

// fill gives every number in v a distinct value, so that a counter shown
// under another's name, or not at all, changes the output.
func fill(v reflect.Value, n *uint64) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), n)
			}
		}
	case reflect.Uint64, reflect.Uint32:
		*n++
		v.SetUint(*n)
	case reflect.Int:
		*n++
		v.SetInt(int64(*n))
	}
}

// sample is a Status with every field set. The golden files were first
// written by the code before the counter table (the hand-written JSON
// struct, sums and Fprintf lines), so they pin what users saw then.
func sample() Status {
	var s Status
	n := uint64(100)
	fill(reflect.ValueOf(&s).Elem(), &n)
	s.PinDir = "/sys/fs/bpf/sockaccel"
	s.Attached = true
	s.Cgroup = "/sys/fs/cgroup/unified"
	s.Conntrack.Enabled = true
	s.Conntrack.Load = 0.25
	s.LearnedExclusions = []detect.LearnedExclusion{
		{Port: 8080, End: "server", CgroupID: 0, Reasons: []string{"splice"}, Comm: "haproxy", PID: 42, LearnedAt: time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)},
		{Port: 6379, End: "client", CgroupID: 77, Cgroup: "/sys/fs/cgroup/unified/app", Reasons: []string{"oob", "fionread"}, Comm: "redis", PID: 43, LearnedAt: time.Date(2026, 12, 2, 14, 1, 0, 0, time.UTC)},
	}
	s.LearnedExclusionsCount = 2
	s.KernelProbes = []detect.KernelProbe{{Name: "fionread", Result: "counts redirected bytes", AsTCP: true, Detail: "FIONREAD 1234 with 1234 bytes queued", Policy: "none needed"}}
	s.KernelProbesKernel = "6.18.44"
	s.KernelProbesAt = "2026-12-02T14:00:00Z"
	return s
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (keys and lines are a contract: add, never rename; -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestStatusJSONGolden pins status --json: every key, its order and type.
func TestStatusJSONGolden(t *testing.T) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(sample()); err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/status.json", buf.Bytes())
	// What cmd/sockaccel decodes from the daemon's API socket is what it
	// would have read from the pins.
	var back Status
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if want := sample(); !reflect.DeepEqual(back, want) {
		t.Errorf("JSON round trip: got %+v, want %+v", back, want)
	}
}

// TestStatusTextGolden pins the text of `sockaccel status`.
func TestStatusTextGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteText(&buf, sample()); err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/status.txt", buf.Bytes())
}

func TestStatusTextWithoutProbesOrLearned(t *testing.T) {
	s := sample()
	s.KernelProbes, s.LearnedExclusions = nil, nil
	var buf bytes.Buffer
	if err := WriteText(&buf, s); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(out, "learned exclusion:") {
		t.Errorf("a learned exclusion line without any learned:\n%s", out)
	}
	if !strings.Contains(out, "kernel probes:") || !strings.HasSuffix(out, "none stored\n") {
		t.Errorf("want a last line 'kernel probes: none stored':\n%s", out)
	}
}

// TestLearnedCgroup checks how a learned exclusion's cgroup is shown.
func TestLearnedCgroup(t *testing.T) {
	for _, tc := range []struct {
		id   uint64
		path string
		want string
	}{
		{0, "", "any"},
		{0, "/ignored", "any"},
		{7, "/sys/fs/cgroup/unified/app", "/sys/fs/cgroup/unified/app"},
		{7, "", "id 7, gone"},
	} {
		if got := learnedCgroup(tc.id, tc.path); got != tc.want {
			t.Errorf("learnedCgroup(%d, %q) = %q, want %q", tc.id, tc.path, got, tc.want)
		}
	}
}

// TestCounterTable checks that the table covers every counter exactly
// once: each field of struct accel_stats, each key of Stats, each counter
// family and each name=value list of the text output.
func TestCounterTable(t *testing.T) {
	seenKey, seenBPF := map[string]bool{}, map[string]bool{}
	for _, c := range Counters {
		if seenKey[c.Key] {
			t.Errorf("key %s twice", c.Key)
		}
		seenKey[c.Key] = true
		if _, ok := counterFields[c.Key]; !ok {
			t.Errorf("counter %s: no uint64 field of Stats or Conntrack has that json key", c.Key)
		}
		if c.BPF != "" {
			if seenBPF[c.BPF] {
				t.Errorf("struct accel_stats field %s read twice", c.BPF)
			}
			seenBPF[c.BPF] = true
			if _, ok := reflect.TypeFor[bpfobj.AccelAccelStats]().FieldByName(c.BPF); !ok {
				t.Errorf("counter %s: struct accel_stats has no field %s", c.Key, c.BPF)
			}
		}
	}
	// Every counter of struct accel_stats reaches status --json.
	st := reflect.TypeFor[bpfobj.AccelAccelStats]()
	for i := range st.NumField() {
		if f := st.Field(i); f.IsExported() && !seenBPF[f.Name] {
			t.Errorf("struct accel_stats field %s is in no row of Counters", f.Name)
		}
	}
	// Every key of Stats is a counter.
	for i, stats := 0, reflect.TypeFor[Stats](); i < stats.NumField(); i++ {
		if key := jsonKey(stats.Field(i)); !seenKey[key] {
			t.Errorf("Stats key %s is in no row of Counters", key)
		}
	}
	// Families: each has samples, each sample its label.
	fams := map[string]family{}
	for _, f := range families {
		fams[f.name] = f
		members := familyCounters(f.name)
		if len(members) == 0 {
			t.Errorf("family %s has no counter", f.name)
		}
		if f.label == "" && (len(members) != 1 || members[0].Label != "") {
			t.Errorf("family %s has no label but %d counters (%+v)", f.name, len(members), members)
		}
		labels := map[string]bool{}
		for _, m := range members {
			if f.label != "" && (m.Label == "" || labels[m.Label]) {
				t.Errorf("family %s: counter %s has label value %q (empty or repeated)", f.name, m.Key, m.Label)
			}
			labels[m.Label] = true
		}
	}
	for _, c := range Counters {
		if _, ok := fams[c.Metric]; c.Metric != "" && !ok {
			t.Errorf("counter %s: no family %s", c.Key, c.Metric)
		}
	}
	// Text: each name=value list holds counters with a Text, each such
	// counter is in one list, and every key a line prints exists.
	listed := map[string]int{}
	for _, l := range textLines {
		for _, key := range l.list {
			listed[key]++
			if counterByKey[key].Text == "" {
				t.Errorf("line %q lists %s, which has no Text", l.label, key)
			}
		}
		for _, key := range l.keys {
			if _, ok := counterByKey[key]; !ok {
				t.Errorf("line %q prints %s, which is no counter", l.label, key)
			}
		}
	}
	for _, c := range Counters {
		if c.Text != "" && listed[c.Key] != 1 {
			t.Errorf("counter %s (text %q) is in %d name=value lines, want 1", c.Key, c.Text, listed[c.Key])
		}
	}
}

// jsonKeys lists the keys of status --json, embedded structs flattened.
func jsonKeys(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			out = append(out, jsonKeys(f.Type)...)
			continue
		}
		out = append(out, jsonKey(f))
	}
	return out
}

// TestREADMEKeyTable keeps README's table of status --json keys equal to
// KeyDocs, and every key in exactly one row.
func TestREADMEKeyTable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	want.WriteString("| key | meaning |\n| --- | --- |\n")
	for _, d := range KeyDocs {
		quoted := make([]string, len(d.Keys))
		for i, k := range d.Keys {
			quoted[i] = "`" + k + "`"
		}
		want.WriteString("| " + strings.Join(quoted, ", ") + " | " + d.Meaning + " |\n")
	}
	start := bytes.Index(readme, []byte("| key | meaning |\n"))
	if start < 0 {
		t.Fatal("README has no '| key | meaning |' table")
	}
	got := readme[start:]
	if end := bytes.Index(got, []byte("\n\n")); end >= 0 {
		got = got[:end+1]
	}
	if string(got) != want.String() {
		t.Errorf("README's key table is not KeyDocs; want:\n%s\ngot:\n%s", want.String(), got)
	}
	rows := map[string]int{}
	for _, d := range KeyDocs {
		for _, k := range slices.Concat(d.Keys, d.Also) {
			rows[k]++
		}
	}
	keys := jsonKeys(reflect.TypeFor[Status]())
	for _, k := range keys {
		if rows[k] != 1 {
			t.Errorf("status --json key %s is in %d rows of README's table, want 1", k, rows[k])
		}
	}
	for k := range rows {
		if !slices.Contains(keys, k) {
			t.Errorf("README's table names %s, which status --json does not have", k)
		}
	}
}

// TestReadStatsSumsCPUs reads a per-CPU array laid out as sa_stats: each
// counter of Stats is the sum over CPUs of its struct accel_stats field.
func TestReadStatsSumsCPUs(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to create a BPF map (CI=true forbids skipping)")
		}
		t.Skip("needs root to create a BPF map")
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Type: ebpf.PerCPUArray, KeySize: 4, MaxEntries: 1,
		ValueSize: uint32(binary.Size(bpfobj.AccelAccelStats{})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	perCPU := make([]bpfobj.AccelAccelStats, cpus)
	n := uint64(0)
	for i := range perCPU {
		fill(reflect.ValueOf(&perCPU[i]).Elem(), &n)
	}
	if err := m.Put(uint32(0), perCPU); err != nil {
		t.Fatal(err)
	}
	got, err := ReadStats(m)
	if err != nil {
		t.Fatal(err)
	}
	s := Status{Stats: got}
	for _, c := range Counters {
		if c.BPF == "" {
			continue
		}
		var want uint64
		for i := range perCPU {
			want += reflect.ValueOf(perCPU[i]).FieldByName(c.BPF).Uint()
		}
		if s.Value(c.Key) != want {
			t.Errorf("%s = %d, want %d (the sum of %s over %d CPUs)", c.Key, s.Value(c.Key), want, c.BPF, cpus)
		}
	}
}
