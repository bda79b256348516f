package main

// A state dump on SIGUSR1 for a front-end that seems stuck (kill -USR1 <pid>; in a pod, kubectl exec <pod> -- sh -c
// 'kill -USR1 1' reaches the engine process, which passes it on to its front-ends): one line of what this
// front-end holds (descriptors at the engine and their bound, requests waiting here and the oldest's wait,
// the engine's backlog as last seen, replies awaited, arena bytes in use and how many groups found no room
// for their copy) and every goroutine's stack.
// The process keeps serving. It is written in one write, so the dumps of several front-ends sharing the
// server's log stay apart: SIGQUIT's interleaved line by line and ended the processes, which is all a
// hang on the GPU host left to read (docs/server-measured.md, twenty-sixth session).

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// stateLine: what this front-end holds right now.
func (s *server) stateLine() string {
	b := &s.batcher
	b.mu.Lock()
	inFlight, queued, backlog := b.inFlight, len(b.queue), b.backlog
	bound := fmt.Sprint(b.limit)
	if b.limitSmall > 0 && b.smallBytes > 0 {
		bound += fmt.Sprintf(", small requests %d", b.limitSmall)
	} else if b.limitSmall > 0 {
		bound += fmt.Sprintf(", small requests %d: none for this model", b.limitSmall)
	}
	oldest := time.Duration(0)
	if queued > 0 {
		oldest = time.Since(b.queue[0].arrived)
	}
	b.mu.Unlock()
	s.mu.Lock()
	awaited, lost := len(s.waiting), len(s.late)
	s.mu.Unlock()
	inUse := 0
	if s.arena != nil {
		inUse = s.arena.bytesInUse()
	}
	threads := fmt.Sprintf("Go threads %d", runtime.GOMAXPROCS(0))
	if s.threads != nil {
		threads = s.threads.stateText(runtime.GOMAXPROCS(0))
	}
	return fmt.Sprintf("trtop-http %d: model %s; descriptors at the engine %d (bound %s); requests waiting here %d "+
		"(the oldest for %.3fs); the engine's backlog as last seen %d rows; replies awaited %d (lost %d); arena bytes in use %d "+
		"(groups split for want of room %d); draining %v; %s", os.Getpid(), s.model.Load().state, inFlight, bound, queued,
		oldest.Seconds(), backlog, awaited, lost, inUse, s.splits.Load(), s.draining.Load(), threads)
}

// dumpState writes the state line and every goroutine's stack to w in one write.
func (s *server) dumpState(w io.Writer) {
	stacks := make([]byte, 1<<20)
	for {
		n := runtime.Stack(stacks, true)
		if n < len(stacks) {
			stacks = stacks[:n]
			break
		}
		stacks = make([]byte, 2*len(stacks))
	}
	out := []byte("=== " + s.stateLine() + "\n")
	out = append(out, stacks...)
	out = append(out, fmt.Sprintf("=== end of trtop-http %d\n", os.Getpid())...)
	w.Write(out)
}

// dumpOnSignal dumps the state to stderr on every SIGUSR1, for the life of the process.
func (s *server) dumpOnSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	for range c {
		s.dumpState(os.Stderr)
	}
}

// dumpsAtMostEvery: dump, called at most once per interval (a server losing answers loses many).
func dumpsAtMostEvery(interval time.Duration, dump func()) func() {
	var mu sync.Mutex
	var last time.Time
	return func() {
		mu.Lock()
		due := time.Since(last) >= interval
		if due {
			last = time.Now()
		}
		mu.Unlock()
		if due {
			dump()
		}
	}
}
