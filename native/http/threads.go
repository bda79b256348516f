package main

// Go threads that follow the load, for a front-end that serves gRPC. A gRPC client sends all
// its calls on one connection (perf_analyzer multiplexes 256 calls over a few), and a connection stays
// with the process that accepted it, so a one-thread process can hold more work than one core does
// while another holds none. Two threads let such a process use a second core, but cost a lone call
// ~0.1 ms: each goroutine made ready wakes the idle thread, which may take it to another core (tiny
// model, one call at a time: p50 0.34 against 0.24 ms on an H100 host; docs/server-measured.md,
// thirty-first session). So the process runs one thread while its calls come one at a time and
// `busy` threads from the first call that finds another in flight, back to one after `quiet`
// without such a call. Nothing ticks while it runs one thread.

import (
	"fmt"
	"sync/atomic"
	"time"
)

type goThreads struct {
	idle, busy int
	quiet      time.Duration // without a crowded call for this long: back to idle threads
	set        func(int) int // runtime.GOMAXPROCS
	busyNow    atomic.Bool
	seen       atomic.Bool   // a crowded call since the last look (while busy)
	wake       chan struct{} // the first crowded call while idle (buffer 1)
	raised     atomic.Int64  // how many times it went to busy threads (the state line)
}

// goThreadsQuiet: how long without a crowded call before a busy process goes back to one thread. Long
// against the gaps of a steady load; each change stops the process's goroutines for a moment.
const goThreadsQuiet = time.Second

// goThreadsLooks: how many looks make one quiet period (each look a timer wake-up while busy).
const goThreadsLooks = 10

func newGoThreads(idle, busy int, quiet time.Duration, set func(int) int) *goThreads {
	return &goThreads{idle: idle, busy: busy, quiet: quiet, set: set, wake: make(chan struct{}, 1)}
}

// note is told how many calls are in flight, this one included, as each starts.
func (t *goThreads) note(inFlight int64) {
	if inFlight < 2 {
		return
	}
	if !t.busyNow.Load() {
		select {
		case t.wake <- struct{}{}:
		default:
		}
		return
	}
	if !t.seen.Load() { // read first: most calls then only read the shared line
		t.seen.Store(true)
	}
}

// run follows the load until done is closed.
func (t *goThreads) run(done <-chan struct{}) {
	look := t.quiet / goThreadsLooks
	for {
		select {
		case <-t.wake:
		case <-done:
			return
		}
		t.seen.Store(false)
		t.busyNow.Store(true)
		t.set(t.busy)
		t.raised.Add(1)
		ticker := time.NewTicker(look)
		for quiet := 0; quiet < goThreadsLooks; {
			select {
			case <-done:
				ticker.Stop()
				return
			case <-ticker.C:
			}
			if t.seen.Swap(false) {
				quiet = 0
			} else {
				quiet++
			}
		}
		ticker.Stop()
		select { // a wake-up sent while busy is stale (drained before busyNow says idle: later ones are not)
		case <-t.wake:
		default:
		}
		t.busyNow.Store(false)
		t.set(t.idle)
	}
}

// stateText: for the state line.
func (t *goThreads) stateText(now int) string {
	return fmt.Sprintf("Go threads %d (%d while gRPC calls overlap, raised %d times)", now, t.busy, t.raised.Load())
}
