//go:build linux

package accel

// WaitRetiringForTest waits until every connection that exclusions took off
// the fast path was retired or closed.
func (a *Accelerator) WaitRetiringForTest() { a.retiring.Wait() }
