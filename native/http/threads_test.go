package main

import (
	"sync"
	"testing"
	"time"
)

// threadsSeen records what a goThreads set, as runtime.GOMAXPROCS would be told.
type threadsSeen struct {
	mu  sync.Mutex
	set []int
}

func (r *threadsSeen) record(n int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.set = append(r.set, n)
	return 0
}

func (r *threadsSeen) now() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.set...)
}

func waitFor(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(within); !ok(); {
		if time.Now().After(end) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestGoThreadsRiseWhenCallsOverlapAndFallBackWhenTheyStop(t *testing.T) {
	seen := &threadsSeen{}
	g := newGoThreads(1, 3, 50*time.Millisecond, seen.record)
	stop := make(chan struct{})
	defer close(stop)
	go g.run(stop)

	for range 20 { // calls one at a time: never more than one thread
		g.note(1)
	}
	time.Sleep(20 * time.Millisecond)
	if got := seen.now(); len(got) != 0 {
		t.Fatalf("lone calls changed the threads: %v", got)
	}

	g.note(2) // a call found another in flight
	waitFor(t, "three threads", time.Second, func() bool { return len(seen.now()) == 1 })
	// overlapping calls keep coming for longer than the quiet period: it stays busy
	for end := time.Now().Add(150 * time.Millisecond); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		g.note(5)
	}
	if got := seen.now(); len(got) != 1 || got[0] != 3 {
		t.Fatalf("busy for 150 ms: threads set %v, want [3]", got)
	}
	waitFor(t, "back to one thread", time.Second, func() bool { return len(seen.now()) == 2 })
	if got := seen.now(); got[1] != 1 {
		t.Fatalf("after the quiet period: threads set %v, want [3 1]", got)
	}

	g.note(2) // and up again
	waitFor(t, "three threads again", time.Second, func() bool { return len(seen.now()) == 3 })
	if got := seen.now(); got[2] != 3 {
		t.Fatalf("threads set %v, want [3 1 3]", got)
	}
	if got := g.stateText(3); got != "Go threads 3 (3 while gRPC calls overlap, raised 2 times)" {
		t.Fatalf("state: %q", got)
	}
}
