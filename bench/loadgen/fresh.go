package main

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

type freshResult struct {
	Mode   string    `json:"mode"`
	Warmup int       `json:"warmup"`
	Errors *errorLog `json:"errors"`
	// Cumulative time from dial start until each step finished.
	TCP      *summary `json:"tcp"`
	Connect  *summary `json:"connect"` // CONNECT answered (equals tcp when direct)
	TLS      *summary `json:"tls"`
	Response *summary `json:"response"` // first response fully read: the headline number
}

// runFresh opens one connection at a time: dial, CONNECT, full TLS handshake
// (no session resumption), one request, close. The first -warmup rounds are
// dropped so the proxy's leaf certificate for the name is already cached.
func runFresh(args []string) error {
	fs := flag.NewFlagSet("fresh", flag.ExitOnError)
	var t target
	t.register(fs)
	n := fs.Int("n", 50, "measured connections (at most 5000)")
	warmup := fs.Int("warmup", 2, "unmeasured connections first")
	expect := fs.Int("expect-status", 200, "status that counts as success")
	pause := fs.Duration("pause", 2*time.Millisecond, "pause between connections")
	_ = fs.Parse(args)
	if err := t.prepare(); err != nil {
		return err
	}
	if *n < 1 || *n > 5000 {
		return errors.New("-n must be in 1..5000")
	}
	var tcp, connect, handshake, response []time.Duration
	errs := newErrorLog()
	for i := 0; i < *warmup+*n; i++ {
		time.Sleep(*pause)
		start := time.Now()
		c, ph, err := t.open()
		if err != nil {
			errs.add("connect", err.Error())
			continue
		}
		status, _, _, err := c.roundTrip(&t)
		total := time.Since(start)
		c.close()
		if err != nil {
			errs.add("io", err.Error())
			continue
		}
		if status != *expect {
			errs.add(fmt.Sprintf("status_%d", status), fmt.Sprintf("status %d", status))
			continue
		}
		if i < *warmup {
			continue
		}
		tcp = append(tcp, ph.tcp)
		connect = append(connect, ph.connect)
		handshake = append(handshake, ph.tls)
		response = append(response, total)
	}
	return emit(freshResult{
		Mode:     "fresh",
		Warmup:   *warmup,
		Errors:   errs,
		TCP:      summarize(tcp),
		Connect:  summarize(connect),
		TLS:      summarize(handshake),
		Response: summarize(response),
	})
}
