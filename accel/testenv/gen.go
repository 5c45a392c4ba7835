package testenv

//go:generate go tool bpf2go -tags linux -target bpfel dropack ../../bpf/testdata/drop_ack.c -- -I../../bpf/include
