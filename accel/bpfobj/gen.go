// Package bpfobj holds the bpf2go bindings of the BPF objects built from
// bpf/: the datapath (accel.c), the sockhash backlog reader (backlog.c), the
// conntrack policy program (policy.c) and the behaviour probes
// (behaviour.c), with the Go side of their key and value types. The
// generated names are exported so that every job under accel/ (datapath,
// conntrack, detect, teardown, stats) reads the same maps with the same
// types; nothing here has logic beyond decoding keys.
package bpfobj

//go:generate go tool bpf2go -tags linux -target bpfel -type sock_key -type sock_state -type accel_config -type accel_stats -type cidr_key -type config_flags -type sock_flags -type ct_side -type ct_entry -type gc_state -type use_mark -type use_gate -type use_reason -type use_event -type learned_end -type lonely_event Accel ../../bpf/accel.c -- -I../../bpf/include
//go:generate go tool bpf2go -tags linux -target bpfel Backlog ../../bpf/backlog.c -- -I../../bpf/include
//go:generate go tool bpf2go -tags linux -target bpfel -type policy_req -type policy_result Policy ../../bpf/policy.c -- -I../../bpf/include
//go:generate go tool bpf2go -tags linux -target bpfel Behaviour ../../bpf/behaviour.c -- -I../../bpf/include
