package main

import (
	"sort"
	"time"
)

// summary is the latency distribution of a sample, in microseconds.
type summary struct {
	N      int     `json:"n"`
	MeanUs float64 `json:"mean_us"`
	MinUs  float64 `json:"min_us"`
	P50Us  float64 `json:"p50_us"`
	P90Us  float64 `json:"p90_us"`
	P99Us  float64 `json:"p99_us"`
	MaxUs  float64 `json:"max_us"`
}

func summarize(d []time.Duration) *summary {
	if len(d) == 0 {
		return nil
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	var total time.Duration
	for _, v := range d {
		total += v
	}
	us := func(v time.Duration) float64 { return float64(v.Nanoseconds()) / 1e3 }
	pct := func(p float64) float64 {
		i := int(p*float64(len(d)-1) + 0.5)
		return us(d[i])
	}
	return &summary{
		N:      len(d),
		MeanUs: us(total) / float64(len(d)),
		MinUs:  us(d[0]),
		P50Us:  pct(0.50),
		P90Us:  pct(0.90),
		P99Us:  pct(0.99),
		MaxUs:  us(d[len(d)-1]),
	}
}

// errorLog counts failures by kind and keeps a few messages to show.
type errorLog struct {
	Count   int            `json:"count"`
	ByKind  map[string]int `json:"by_kind"`
	Samples []string       `json:"samples"`
}

func newErrorLog() *errorLog { return &errorLog{ByKind: map[string]int{}} }

func (e *errorLog) add(kind, msg string) {
	e.Count++
	e.ByKind[kind]++
	if len(e.Samples) < 5 {
		e.Samples = append(e.Samples, msg)
	}
}

func (e *errorLog) merge(o *errorLog) {
	e.Count += o.Count
	for k, v := range o.ByKind {
		e.ByKind[k] += v
	}
	for _, s := range o.Samples {
		if len(e.Samples) < 5 {
			e.Samples = append(e.Samples, s)
		}
	}
}
