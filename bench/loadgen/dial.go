package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// headerList is a repeatable "-header 'Name: value'" flag.
type headerList []string

func (h *headerList) String() string { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error {
	if !strings.Contains(v, ":") {
		return fmt.Errorf("header %q: want 'Name: value'", v)
	}
	*h = append(*h, v)
	return nil
}

// target says where requests go and how TLS is verified.
type target struct {
	proxy   string // loopback host:port of the CONNECT proxy; empty for direct
	name    string // host:port the request is for (CONNECT target, SNI, Host)
	dial    string // loopback host:port to dial when direct
	caFile  string
	path    string
	headers headerList
	timeout time.Duration
	// identities: a file of "session_id:token SEALED_..." lines (the gateway target). Connection i
	// authenticates its CONNECT as identity i mod n and sends that identity's sealed token as x-api-key.
	identities string

	tlsConf   *tls.Config
	request   []byte
	proxyAuth string    // "Basic ..." for CONNECT, or empty
	variants  []*target // one per identity
}

func (t *target) register(fs *flag.FlagSet) {
	fs.StringVar(&t.proxy, "proxy", "", "CONNECT proxy host:port (loopback); empty = direct")
	fs.StringVar(&t.name, "target", "", "host:port the request is for (CONNECT target, SNI and Host)")
	fs.StringVar(&t.dial, "dial", "", "loopback host:port to dial in direct mode")
	fs.StringVar(&t.caFile, "ca", "", "PEM CA that must sign the certificate the client sees")
	fs.StringVar(&t.path, "path", "/", "request path")
	fs.Var(&t.headers, "header", "extra request header 'Name: value' (repeatable)")
	fs.DurationVar(&t.timeout, "timeout", 5*time.Second, "per-operation I/O timeout")
	fs.StringVar(&t.identities, "identities", "", "file of 'session_id:token SEALED_...' lines, one identity per connection (round robin)")
}

// forConn is the target as connection i sends it: itself, or its identity's variant.
func (t *target) forConn(i int) *target {
	if len(t.variants) == 0 {
		return t
	}
	return t.variants[i%len(t.variants)]
}

// buildRequest renders the request head; a non-empty sealed replaces the x-api-key value.
func (t *target) buildRequest(sealed string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: oshu-bench-loadgen\r\n", t.path, t.name)
	for _, h := range t.headers {
		name, value, _ := strings.Cut(h, ":")
		if sealed != "" && strings.EqualFold(strings.TrimSpace(name), "x-api-key") {
			value = sealed
		}
		fmt.Fprintf(&b, "%s: %s\r\n", strings.TrimSpace(name), strings.TrimSpace(value))
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

func (t *target) loadIdentities() error {
	data, err := os.ReadFile(t.identities)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		cred, sealed, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || !strings.Contains(cred, ":") {
			return fmt.Errorf("-identities: bad line %q", line)
		}
		v := *t
		v.variants = nil
		v.proxyAuth = "Basic " + base64.StdEncoding.EncodeToString([]byte(cred))
		v.request = t.buildRequest(strings.TrimSpace(sealed))
		t.variants = append(t.variants, &v)
	}
	if len(t.variants) == 0 {
		return errors.New("-identities: no identities")
	}
	// fresh and sse use the target itself: identity 0.
	t.proxyAuth, t.request = t.variants[0].proxyAuth, t.variants[0].request
	return nil
}

// prepare validates the flags and builds the TLS config and request bytes once.
func (t *target) prepare() error {
	if t.name == "" || t.caFile == "" {
		return errors.New("-target and -ca are required")
	}
	host, _, err := net.SplitHostPort(t.name)
	if err != nil {
		return fmt.Errorf("-target: %w", err)
	}
	via := t.proxy
	if via == "" {
		via = t.dial
	}
	if err := requireLoopback(via); err != nil {
		return err
	}
	pem, err := os.ReadFile(t.caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s: no certificates", t.caFile)
	}
	t.tlsConf = &tls.Config{
		ServerName: host,
		RootCAs:    pool,
		NextProtos: []string{"http/1.1"},
		// No ClientSessionCache: every new connection is a full handshake,
		// like a fresh client process.
	}
	t.request = t.buildRequest("")
	if t.identities != "" {
		return t.loadIdentities()
	}
	return nil
}

func requireLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("address %q: %w", hostport, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q is not a loopback IP; the benchmark only talks to loopback", hostport)
	}
	return nil
}

// phases records when each step of opening a connection finished.
type phases struct {
	tcp, connect, tls time.Duration
}

// conn is one client connection carrying HTTP/1.1 requests over TLS.
type conn struct {
	tls *tls.Conn
	br  *bufio.Reader
}

// open dials (through CONNECT when proxied) and completes the TLS handshake.
func (t *target) open() (*conn, phases, error) {
	var ph phases
	start := time.Now()
	addr := t.dial
	if t.proxy != "" {
		addr = t.proxy
	}
	raw, err := net.DialTimeout("tcp", addr, t.timeout)
	if err != nil {
		return nil, ph, err
	}
	ph.tcp = time.Since(start)
	_ = raw.SetDeadline(time.Now().Add(t.timeout))
	if t.proxy != "" {
		auth := ""
		if t.proxyAuth != "" {
			auth = "Proxy-Authorization: " + t.proxyAuth + "\r\n"
		}
		if _, err := fmt.Fprintf(raw, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", t.name, t.name, auth); err != nil {
			raw.Close()
			return nil, ph, err
		}
		// Read the CONNECT answer byte-exactly: nothing after its blank line
		// may be consumed, since the TLS handshake follows on the same socket.
		status, err := readConnectReply(raw)
		if err != nil {
			raw.Close()
			return nil, ph, fmt.Errorf("CONNECT: %w", err)
		}
		if status != 200 {
			raw.Close()
			return nil, ph, fmt.Errorf("CONNECT answered %d", status)
		}
	}
	ph.connect = time.Since(start)
	tc := tls.Client(raw, t.tlsConf)
	if err := tc.Handshake(); err != nil {
		raw.Close()
		return nil, ph, fmt.Errorf("TLS: %w", err)
	}
	ph.tls = time.Since(start)
	_ = tc.SetDeadline(time.Time{})
	return &conn{tls: tc, br: bufio.NewReaderSize(tc, 16<<10)}, ph, nil
}

// readConnectReply reads the proxy's answer to CONNECT one byte at a time.
func readConnectReply(c net.Conn) (int, error) {
	var buf []byte
	one := make([]byte, 1)
	for len(buf) < 8192 {
		if _, err := c.Read(one); err != nil {
			return 0, err
		}
		buf = append(buf, one[0])
		if len(buf) >= 4 && string(buf[len(buf)-4:]) == "\r\n\r\n" {
			line, _, _ := strings.Cut(string(buf), "\r\n")
			var proto string
			var status int
			if _, err := fmt.Sscanf(line, "%s %d", &proto, &status); err != nil {
				return 0, fmt.Errorf("bad status line %q", line)
			}
			return status, nil
		}
	}
	return 0, errors.New("CONNECT reply headers too long")
}

// roundTrip sends the prepared request and drains the response body.
// keep reports whether the connection may carry another request.
func (c *conn) roundTrip(t *target) (status int, n int64, keep bool, err error) {
	_ = c.tls.SetDeadline(time.Now().Add(t.timeout))
	if _, err = c.tls.Write(t.request); err != nil {
		return 0, 0, false, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, 0, false, err
	}
	n, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return resp.StatusCode, n, false, err
	}
	return resp.StatusCode, n, !resp.Close, nil
}

func (c *conn) close() { c.tls.Close() }
