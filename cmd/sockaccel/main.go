// Command sockaccel accelerates TCP between sockets on the same host by
// redirecting each send straight into the peer socket with eBPF.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// Pins are created 0600 and directories 0700 whatever the caller's
	// umask: only root may open sockaccel's maps, links and programs.
	unix.Umask(0o077)
	os.Exit(run(os.Args[1:]))
}

const usage = `usage: sockaccel <command> [flags]

commands:
  run       attach to a cgroup and accelerate until SIGINT/SIGTERM
  status    show what is attached and the counters (--json for scripts)
  conns     list tracked connections (--json for scripts)
  cleanup   detach and unpin everything sockaccel owns
  reload    make the running daemon re-read its config (SIGHUP)
  version   print the version
Run 'sockaccel <command> -h' for the flags of a command.`

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, usage)
		return exitConfig
	}
	var err error
	switch args[0] {
	case "run":
		err = runDaemon(args[1:])
	case "status":
		err = runStatus(args[1:])
	case "cleanup":
		err = runCleanup(args[1:])
	case "conns":
		err = runConns(args[1:])
	case "reload":
		err = runReload(args[1:])
	case "version", "--version", "-version":
		fmt.Println("sockaccel", version)
	case "help", "-h", "--help":
		fmt.Println(usage)
	default:
		err = usageError{fmt.Errorf("unknown command %q (want run, status, conns, cleanup, reload or version)", args[0])}
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		// One line, naming the problem: scripts and journald read it.
		printFatal(args[0], err)
		return exitCode(err)
	}
}

func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\n' || c == '\r' {
			b[i] = ' '
		}
	}
	return string(b)
}
