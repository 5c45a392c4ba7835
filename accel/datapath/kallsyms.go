//go:build linux

package datapath

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// setWokenWakeFunction tells the shutdown detector which wait-queue
// entries are a blocking recv or send asleep in sk_wait_event (their wake
// function is woken_wake_function), so that an epoll or poll waiter on a
// blocking socket does not count as a sleeper about to be woken into
// EAGAIN. Where /proc/kallsyms hides addresses (kptr_restrict, no
// CAP_SYSLOG: every address reads 0) or lacks the symbol, the variable
// stays 0 and any waiter other than the calling thread counts; a false
// positive only keeps that service on TCP.
func setWokenWakeFunction(spec *ebpf.CollectionSpec) error {
	v, ok := spec.Variables["woken_wake_fn"]
	if !ok {
		return fmt.Errorf("embedded BPF object lacks variable woken_wake_fn")
	}
	addr, err := kallsym("/proc/kallsyms", "woken_wake_function")
	if err != nil || addr == 0 {
		return nil
	}
	if err := v.Set(addr); err != nil {
		return fmt.Errorf("set woken_wake_fn: %w", err)
	}
	return nil
}

// kallsym returns the address of the text symbol name in a kallsyms file,
// 0 if it is absent or hidden.
func kallsym(path, name string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "ffffffff81123450 T woken_wake_function" (modules add "\t[mod]")
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 || fields[2] != name || (fields[1] != "T" && fields[1] != "t") {
			continue
		}
		return strconv.ParseUint(fields[0], 16, 64)
	}
	return 0, sc.Err()
}
