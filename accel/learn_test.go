//go:build linux

package accel

import (
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
