// Package bench holds sockaccel's netperf benchmark (run.sh, see README.md)
// and its smoke test. The benchmark itself is a shell script; this package
// exists so that `go test ./...` runs the smoke test, which executes the
// whole benchmark once in SMOKE mode and checks its outputs.
package bench
