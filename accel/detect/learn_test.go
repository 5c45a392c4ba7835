//go:build linux

package detect

import (
	"net"
	"os"
	"testing"
	"time"
)

func TestLearnLimiter(t *testing.T) {
	var l learnLimiter
	now := time.Unix(1000, 0)
	for i := range learnBurst {
		if !l.allow(now) {
			t.Fatalf("learning %d of a burst of %d refused", i+1, learnBurst)
		}
	}
	if l.allow(now) {
		t.Fatal("learning past the burst allowed")
	}
	if l.allow(now.Add(learnEvery / 2)) {
		t.Fatal("learning allowed before a token refilled")
	}
	if !l.allow(now.Add(learnEvery)) {
		t.Fatal("learning refused after a token refilled")
	}
	if l.allow(now.Add(learnEvery)) {
		t.Fatal("two learnings allowed for one refilled token")
	}
	if n := countAllowed(&l, now.Add(time.Hour)); n != learnBurst {
		t.Errorf("after an hour idle %d learnings allowed at once, want the burst of %d", n, learnBurst)
	}
}

func countAllowed(l *learnLimiter, at time.Time) int {
	n := 0
	for l.allow(at) {
		n++
	}
	return n
}

func TestListensOn(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		ln, err := net.Listen(network, "localhost:0")
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		c, err := net.Dial(network, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clientPort := uint16(c.LocalAddr().(*net.TCPAddr).Port)
		for _, tc := range []struct {
			port uint16
			want bool
		}{{port, true}, {clientPort, false}} {
			got, err := listensOn(uint32(os.Getpid()), tc.port)
			if err != nil || got != tc.want {
				t.Errorf("%s: listensOn(self, %d) = %v, %v; want %v", network, tc.port, got, err, tc.want)
			}
		}
		c.Close()
		ln.Close()
	}
}

func TestSeenUses(t *testing.T) {
	var s seenUses
	if !s.first(7, "fionread") || s.first(7, "fionread") {
		t.Fatal("a socket's repeated report was not recognised")
	}
	if !s.first(7, "oob") || !s.first(8, "fionread") {
		t.Fatal("another reason or socket was taken for a repeat")
	}
	for i := range uint64(seenUsesMax) {
		s.first(1000+i, "splice")
	}
	if len(s.m) > seenUsesMax {
		t.Errorf("%d remembered, want at most %d", len(s.m), seenUsesMax)
	}
}
