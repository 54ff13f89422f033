package main

import (
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

type loadResult struct {
	Mode        string    `json:"mode"`
	Conns       int       `json:"conns"`
	Requests    int64     `json:"requests"` // answered with the expected status
	Errors      *errorLog `json:"errors"`
	Reconnects  int64     `json:"reconnects"`
	ElapsedS    float64   `json:"elapsed_s"`
	RPS         float64   `json:"rps"`
	Latency     *summary  `json:"latency"`
	BytesRead   int64     `json:"bytes_read"`
	SetupS      float64   `json:"setup_s"`
	FirstStatus int       `json:"first_status"`
}

// runLoad drives N keep-alive connections, each sending requests back to
// back, until the duration elapses or the request budget is spent. The clock
// starts once every connection is open, so set-up cost is not in requests/s.
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	var t target
	t.register(fs)
	conns := fs.Int("conns", 1, "keep-alive connections")
	duration := fs.Duration("duration", 5*time.Second, "how long to send (at most 120s)")
	maxReq := fs.Int64("max-requests", 5_000_000, "stop after this many requests in total")
	expect := fs.Int("expect-status", 200, "status that counts as success")
	_ = fs.Parse(args)
	if err := t.prepare(); err != nil {
		return err
	}
	if *conns < 1 || *conns > 512 {
		return errors.New("-conns must be in 1..512")
	}
	if *duration <= 0 || *duration > 120*time.Second {
		return errors.New("-duration must be in (0, 120s]")
	}

	setupStart := time.Now()
	open := make([]*conn, *conns)
	for i := range open {
		c, _, err := t.forConn(i).open()
		if err != nil {
			for _, o := range open[:i] {
				o.close()
			}
			return fmt.Errorf("opening connection %d: %w", i, err)
		}
		open[i] = c
	}
	setup := time.Since(setupStart)

	var issued, reconnects, bytesRead atomic.Int64
	var firstStatus atomic.Int64
	lat := make([][]time.Duration, *conns)
	errs := make([]*errorLog, *conns)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(*duration)
	for i := range open {
		errs[i] = newErrorLog()
		lat[i] = make([]time.Duration, 0, 4096)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := open[i]
			ti := t.forConn(i)
			defer func() {
				if c != nil {
					c.close()
				}
			}()
			for time.Now().Before(deadline) && issued.Add(1) <= *maxReq {
				if c == nil {
					nc, _, err := ti.open()
					if err != nil {
						errs[i].add("connect", err.Error())
						time.Sleep(10 * time.Millisecond)
						continue
					}
					reconnects.Add(1)
					c = nc
				}
				t0 := time.Now()
				status, n, keep, err := c.roundTrip(ti)
				d := time.Since(t0)
				bytesRead.Add(n)
				firstStatus.CompareAndSwap(0, int64(status))
				switch {
				case err != nil:
					errs[i].add("io", err.Error())
				case status != *expect:
					errs[i].add(fmt.Sprintf("status_%d", status), fmt.Sprintf("status %d", status))
				default:
					lat[i] = append(lat[i], d)
				}
				if err != nil || !keep {
					c.close()
					c = nil
				}
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)

	all := make([]time.Duration, 0)
	errTotal := newErrorLog()
	for i := range lat {
		all = append(all, lat[i]...)
		errTotal.merge(errs[i])
	}
	return emit(loadResult{
		Mode:        "load",
		Conns:       *conns,
		Requests:    int64(len(all)),
		Errors:      errTotal,
		Reconnects:  reconnects.Load(),
		ElapsedS:    elapsed.Seconds(),
		RPS:         float64(len(all)) / elapsed.Seconds(),
		Latency:     summarize(all),
		BytesRead:   bytesRead.Load(),
		SetupS:      setup.Seconds(),
		FirstStatus: int(firstStatus.Load()),
	})
}
