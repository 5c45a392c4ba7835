// Package systemd holds what a package ships beside the binary: the systemd
// unit, and in prometheus/ example alert rules (with promtool unit tests)
// and a Grafana dashboard. Its tests check the unit with systemd-analyze
// verify and the rules and dashboard with promtool.
package systemd
