// Command loadgen is the compiled load client of the oshu-vault benchmark.
//
// A Python client saturates a core long before a good proxy does, so the
// numbers the benchmark reports come from this stdlib-only Go program. It
// reaches the upstream either directly or through an HTTP CONNECT proxy,
// always verifies TLS against the CA it is given (the proxy's CA when going
// through a proxy, the upstream's CA when direct), and prints one JSON object.
//
// Subcommands:
//
//	load        N keep-alive connections for a duration or a request count
//	fresh       sequential fresh CONNECT + TLS + first response timings
//	sse         per-event arrival delay of a Server-Sent Events stream
//	sse-server  the timed SSE upstream (nginx cannot emit events on a clock)
//
// Only loopback addresses are accepted anywhere.
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "load":
		err = runLoad(os.Args[2:])
	case "fresh":
		err = runFresh(os.Args[2:])
	case "sse":
		err = runSSE(os.Args[2:])
	case "sse-server":
		err = runSSEServer(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen load|fresh|sse|sse-server [flags] (-h for flags)")
	os.Exit(2)
}

// emit prints the result object as one JSON line on stdout.
func emit(v any) error {
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(v)
}
