// nodetest: the one static binary of the local node's test image (no base image, no shell).
//
//	nodetest hello              print a line and exit 0 (a pod that runs to completion)
//	nodetest serve PORT TEXT    answer every HTTP request with TEXT and the pod's hostname
//	nodetest get URL            print the body of GET URL (exit 1 on any error)
//	nodetest resolve NAME       print the addresses NAME resolves to via /etc/resolv.conf
//	nodetest sleep              block until killed
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: nodetest hello|serve PORT TEXT|get URL|resolve NAME|sleep")
	}
	switch os.Args[1] {
	case "hello":
		fmt.Println("hello from the local node")
	case "serve":
		host, _ := os.Hostname()
		text := os.Args[3]
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "%s from %s\n", text, host)
		})
		fmt.Println("serving on", os.Args[2])
		if err := http.ListenAndServe(":"+os.Args[2], nil); err != nil {
			fail("serve: %v", err)
		}
	case "get":
		client := http.Client{Timeout: 10 * time.Second}
		resp, err := client.Get(os.Args[2])
		if err != nil {
			fail("get: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Print(string(body))
	case "resolve":
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupHost(ctx, os.Args[2])
		if err != nil {
			fail("resolve: %v", err)
		}
		for _, a := range addrs {
			fmt.Println(a)
		}
	case "sleep":
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
	default:
		fail("unknown command %q", os.Args[1])
	}
}
