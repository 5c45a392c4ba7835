// Package systemd holds sockaccel's systemd unit; its test checks the unit
// with systemd-analyze verify.
package systemd
