package main

//go:generate go tool bpf2go -tags linux -target bpfel proto proto.c -- -I../../bpf/include
