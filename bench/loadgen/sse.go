package main

import (
	"bufio"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

type sseResult struct {
	Mode     string    `json:"mode"`
	Status   int       `json:"status"`
	Expected int       `json:"expected"`
	Events   int       `json:"events"`
	Errors   *errorLog `json:"errors"`
	Delay    *summary  `json:"delay"` // arrival time minus the upstream's send time
}

// runSSE opens one stream and, for each event, subtracts the send time the
// upstream wrote into it (wall clock, same machine) from the arrival time.
func runSSE(args []string) error {
	fs := flag.NewFlagSet("sse", flag.ExitOnError)
	var t target
	t.register(fs)
	events := fs.Int("events", 20, "events to expect (at most 1000)")
	intervalMs := fs.Int("interval-ms", 25, "upstream pause between events")
	streams := fs.Int("streams", 1, "streams one after another on fresh connections (at most 20)")
	_ = fs.Parse(args)
	if *events < 1 || *events > 1000 || *intervalMs < 1 || *intervalMs > 1000 || *streams < 1 || *streams > 20 {
		return errors.New("-events 1..1000, -interval-ms 1..1000, -streams 1..20")
	}
	t.path = fmt.Sprintf("/sse?n=%d&interval_ms=%d", *events, *intervalMs)
	if err := t.prepare(); err != nil {
		return err
	}
	errs := newErrorLog()
	var delays []time.Duration
	res := sseResult{Mode: "sse", Expected: *events * *streams, Errors: errs}
	for s := 0; s < *streams; s++ {
		c, _, err := t.open()
		if err != nil {
			errs.add("connect", err.Error())
			continue
		}
		got, status, err := readStream(c, &t, time.Duration(*events**intervalMs)*time.Millisecond+5*time.Second)
		c.close()
		res.Status = status
		delays = append(delays, got...)
		if err != nil {
			errs.add("io", err.Error())
		}
	}
	res.Events = len(delays)
	res.Delay = summarize(delays)
	if res.Events != res.Expected {
		errs.add("missing_events", fmt.Sprintf("got %d of %d events", res.Events, res.Expected))
	}
	return emit(res)
}

func readStream(c *conn, t *target, limit time.Duration) ([]time.Duration, int, error) {
	_ = c.tls.SetDeadline(time.Now().Add(limit))
	if _, err := c.tls.Write(t.request); err != nil {
		return nil, 0, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, resp.StatusCode, fmt.Errorf("status %d", resp.StatusCode)
	}
	var delays []time.Duration
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		now := time.Now()
		sent, err := strconv.ParseInt(strings.TrimPrefix(line, "data: "), 10, 64)
		if err != nil {
			return delays, resp.StatusCode, fmt.Errorf("bad event %q", line)
		}
		delays = append(delays, now.Sub(time.Unix(0, sent)))
	}
	return delays, resp.StatusCode, sc.Err()
}

// runSSEServer serves the timed event stream on a loopback TLS listener.
// Like the nginx upstream, it answers 403 unless the real key arrived, so a
// proxy that does not substitute shows up as an error.
func runSSEServer(args []string) error {
	fs := flag.NewFlagSet("sse-server", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "loopback host:port")
	certFile := fs.String("cert", "", "server certificate PEM")
	keyFile := fs.String("key", "", "server key PEM")
	apiKey := fs.String("api-key", "", "x-api-key value required")
	_ = fs.Parse(args)
	if err := requireLoopback(*listen); err != nil {
		return err
	}
	if *apiKey == "" {
		return errors.New("-api-key is required")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != *apiKey {
			http.Error(w, `{"error":"wrong or missing x-api-key"}`, http.StatusForbidden)
			return
		}
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		interval, _ := strconv.Atoi(r.URL.Query().Get("interval_ms"))
		if n < 1 || n > 1000 || interval < 1 || interval > 1000 {
			http.Error(w, "n 1..1000, interval_ms 1..1000", http.StatusBadRequest)
			return
		}
		fl, ok := w.(http.Flusher)
		if !ok {
			http.Error(w, "no flusher", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		fl.Flush()
		start := time.Now()
		for i := 0; i < n; i++ {
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Duration(interval) * time.Millisecond)))
			if _, err := fmt.Fprintf(w, "id: %d\ndata: %d\n\n", i, time.Now().UnixNano()); err != nil {
				return
			}
			fl.Flush()
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != *apiKey {
			http.Error(w, `{"error":"wrong or missing x-api-key"}`, http.StatusForbidden)
			return
		}
		w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/1.1 only, like the nginx upstream.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
	}
	fmt.Printf("listening %s\n", ln.Addr())
	return srv.ServeTLS(ln, "", "")
}
