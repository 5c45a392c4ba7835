package accel

//go:generate go tool bpf2go -tags linux -target bpfel -type sock_key -type sock_state -type accel_config -type accel_stats -type cidr_key -type config_flags -type sock_flags -type ct_side -type ct_entry -type gc_state -type use_mark -type use_gate -type use_reason -type use_event -type learned_end -type lonely_event accel ../bpf/accel.c -- -I../bpf/include
//go:generate go tool bpf2go -tags linux -target bpfel backlog ../bpf/backlog.c -- -I../bpf/include
//go:generate go tool bpf2go -tags linux -target bpfel -type policy_req -type policy_result policy ../bpf/policy.c -- -I../bpf/include
//go:generate go tool bpf2go -tags linux -target bpfel behaviour ../bpf/behaviour.c -- -I../bpf/include
