//go:build linux

package detect

import (
	"fmt"
	"reflect"
)

// RunBehaviourProbesForTest runs the behaviour probes, through the private
// sockhash's redirect or (redirect false) as plain TCP.
func RunBehaviourProbesForTest(redirect bool) []KernelProbe { return runBehaviourProbes(redirect) }

// CheckBehaviourEncoding round-trips b through the stored form.
func CheckBehaviourEncoding(b KernelBehaviour) error {
	buf, err := encodeBehaviour(b)
	if err != nil {
		return err
	}
	got, ok, err := decodeBehaviour(buf)
	if err != nil || !ok {
		return fmt.Errorf("decode: ok=%v err=%v", ok, err)
	}
	if !reflect.DeepEqual(got, b) {
		return fmt.Errorf("round trip: got %+v, want %+v", got, b)
	}
	if _, ok, err := decodeBehaviour(make([]byte, behaviourValueSize)); ok || err != nil {
		return fmt.Errorf("empty entry: ok=%v err=%v", ok, err)
	}
	return nil
}
