// goclient: a Go HTTPS client with its own transport, the kind that ignores proxy variables.
//
//	goclient -cacert FILE [-H 'Name: value']... [-n N] [-fresh] [-proxy URL] URL
//
// It dials the URL's host itself (never reading HTTPS_PROXY and friends; -proxy, for the benchmark's
// explicit-proxy case, is the only way to name one), trusts only -cacert, sends N GET requests (on one
// keep-alive connection, or each on a fresh one with -fresh) and prints one JSON line: the last status
// and body, the error if any, and the latency of the requests.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

type result struct {
	Status    int     `json:"status"`
	Body      string  `json:"body"`
	Error     string  `json:"error,omitempty"`
	Count     int     `json:"count"`
	ElapsedMs float64 `json:"elapsed_ms"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
}

type options struct {
	caFile, proxy string
	headers       headers
	n             int
	fresh         bool
}

func main() {
	var o options
	flag.StringVar(&o.caFile, "cacert", "", "PEM bundle of the CAs to trust (only these)")
	flag.StringVar(&o.proxy, "proxy", "", "explicit proxy URL (default: none; variables are never read)")
	flag.IntVar(&o.n, "n", 1, "requests to send")
	flag.BoolVar(&o.fresh, "fresh", false, "a new connection (TCP + TLS) for every request")
	flag.Var(&o.headers, "H", "request header 'Name: value' (repeatable)")
	flag.Parse()
	out := run(o, flag.Arg(0))
	_ = json.NewEncoder(os.Stdout).Encode(out)
	if out.Error != "" {
		os.Exit(1)
	}
}

func run(o options, target string) result {
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(o.caFile)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		return result{Error: fmt.Sprintf("cannot load -cacert %q: %v", o.caFile, err)}
	}
	transport := &http.Transport{
		Proxy:             nil, // never read HTTPS_PROXY and friends
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		DisableKeepAlives: o.fresh,
	}
	if o.proxy != "" {
		u, err := url.Parse(o.proxy)
		if err != nil {
			return result{Error: err.Error()}
		}
		transport.Proxy = http.ProxyURL(u)
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: transport}
	var out result
	lat := make([]float64, 0, o.n)
	start := time.Now()
	for i := 0; i < o.n; i++ {
		t0 := time.Now()
		req, err := http.NewRequest("GET", target, nil)
		if err != nil {
			out.Error = err.Error()
			return out
		}
		for _, h := range o.headers {
			name, value, _ := strings.Cut(h, ":")
			req.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		resp, err := client.Do(req)
		if err != nil {
			out.Error = err.Error()
			return out
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			out.Error = err.Error()
			return out
		}
		out.Status, out.Body, out.Count = resp.StatusCode, string(body), i+1
		lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
	}
	summarize(&out, lat, start)
	return out
}

func summarize(out *result, lat []float64, start time.Time) {
	out.ElapsedMs = float64(time.Since(start).Microseconds()) / 1000
	if len(lat) == 0 {
		return
	}
	sorted := append([]float64(nil), lat...)
	sort.Float64s(sorted)
	out.P50Ms = sorted[len(sorted)/2]
	out.P99Ms = sorted[(len(sorted)*99)/100]
}
