// goclient: a Go HTTPS client with its own transport, the kind that ignores proxy variables.
//
//	goclient -cacert FILE [-H 'Name: value']... [-n N] URL
//
// It dials the URL's host itself (Proxy: nil), trusts only -cacert, sends N GET requests on one
// keep-alive connection and prints one JSON line: the last status, body and the error, if any.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

type result struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error,omitempty"`
	Count  int    `json:"count"`
}

func main() {
	var hs headers
	caFile := flag.String("cacert", "", "PEM bundle of the CAs to trust (only these)")
	n := flag.Int("n", 1, "requests to send")
	flag.Var(&hs, "H", "request header 'Name: value' (repeatable)")
	flag.Parse()
	out := run(*caFile, hs, *n, flag.Arg(0))
	_ = json.NewEncoder(os.Stdout).Encode(out)
	if out.Error != "" {
		os.Exit(1)
	}
}

func run(caFile string, hs headers, n int, url string) result {
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(caFile)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		return result{Error: fmt.Sprintf("cannot load -cacert %q: %v", caFile, err)}
	}
	client := &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			Proxy:           nil, // never read HTTPS_PROXY and friends
			TLSClientConfig: &tls.Config{RootCAs: pool},
		},
	}
	var out result
	for i := 0; i < n; i++ {
		req, err := http.NewRequest("GET", url, nil)
		if err != nil {
			return result{Error: err.Error()}
		}
		for _, h := range hs {
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
	}
	return out
}
