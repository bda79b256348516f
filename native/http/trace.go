package main

// Stage stamps of fast-path requests: a development aid, off unless TRTOP_HTTP_TRACE names a folder
// (each front-end process writes go-<pid>.txt there).
// bench/trace_lone.py merges them with the engine process's and its client's stamps (all on
// CLOCK_MONOTONIC) to show where a lone request's time goes between processes.

import (
	"os"
	"path/filepath"
	"strconv"
	"sync"
	_ "unsafe" // go:linkname: the runtime's monotonic clock, as a number comparable across processes
)

//go:linkname nanotime runtime.nanotime
func nanotime() int64 // CLOCK_MONOTONIC nanoseconds (vDSO), what Python's time.monotonic_ns reads

type tracer struct {
	mu  sync.Mutex
	f   *os.File
	buf []byte
}

var stages *tracer // nil: off (one pointer test per stamp)

func openTrace() {
	if dir := os.Getenv("TRTOP_HTTP_TRACE"); dir != "" {
		if f, err := os.Create(filepath.Join(dir, "go-"+strconv.Itoa(os.Getpid())+".txt")); err == nil {
			stages = &tracer{f: f}
		}
	}
}

// stamp records that a request reached the stage `name` now.
func stamp(name string) {
	t := stages
	if t == nil {
		return
	}
	now := nanotime()
	t.mu.Lock()
	t.buf = append(t.buf, name...)
	t.buf = append(t.buf, ' ')
	t.buf = strconv.AppendInt(t.buf, now, 10)
	t.buf = append(t.buf, '\n')
	if len(t.buf) >= 4096 {
		t.f.Write(t.buf)
		t.buf = t.buf[:0]
	}
	t.mu.Unlock()
}

func closeTrace() {
	if t := stages; t != nil {
		t.mu.Lock()
		t.f.Write(t.buf)
		t.f.Close()
		t.mu.Unlock()
	}
}
