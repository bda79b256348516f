package main

// Requests grouped before they reach the engine. The engine process's per-request work is Python
// (a descriptor decoded, a future, a reply), and under load it, not HTTP, became the limit: with
// this front-end in Go the engine's event loop was the busiest core. So a request goes to the
// engine at once while the engine's next batches have room for it, and waits here only while the
// engine already holds more than every instance's next batch takes (its backlog, reported with every
// answer, plus what this front-end sent since): it would not run in that round anyway, and the
// requests that wait leave together, as one descriptor of all their rows, when an answer says there
// is room again, or the engine does as soon as a batch it takes leaves some ("room": roomed). The engine then
// handles one descriptor per group instead of one per request. A fixed number of descriptors in
// flight (the first design) held requests back even while the engine had room: each answer let the
// first arrivals go alone and made the rest wait, and on the H200 host ResNet-50's batches at 64
// clients shrank from 15 rows to 10 (0.73 against 0.90 x the engine's best). Rows of a group are
// copied next to each other in the arena (a request alone is sent where its body lies); the
// engine's answer is split back by rows.

import (
	"encoding/json"
	"fmt"
	"log"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// member: one admitted request waiting for its group's answer.
type member struct {
	p    *plan
	key  string // its header: members of a group share one (the same inputs' shapes beyond the batch)
	base int64  // arena offset of its tensor bytes
	body int    // its body's region; given back by the group once copied (bodyFreed), else by its handler
	// set (before its result is sent) when the group copied its rows and gave its body's room back
	bodyFreed bool
	arrived   time.Time
	result    chan memberResult
}

// memberResult: the group's answer and this member's rows in it; done is called once the member's
// answer is written (the group's regions are freed after the last one).
type memberResult struct {
	reply   []json.RawMessage
	refusal *refusal
	start   int64
	total   int64
	done    func()
}

type batcher struct {
	mu       sync.Mutex
	inFlight int   // descriptors sent and not answered
	limit    int   // at most this many (a bound; the backlog decides)
	backlog  int64 // the engine's rows beyond its instances' next batches (< 0: room): as last reported, plus rows sent since
	queue    []*member
	// limitSmall (> 0) instead of limit while the first request waiting has at most smallBytes of tensors
	// (the engine's state says how many: 0, none, for a model whose batch-1 run is not short)
	limitSmall int
	smallBytes int64
	// heldSaid: the engine was told this front-end holds requests (["held"]) since a group last left; it then
	// says as soon as a batch it takes leaves room (["room", backlog]: roomed)
	heldSaid bool
}

// heldMessage tells the engine that requests wait here for room (Dispatcher.room). Said only while some are
// held, once until a group leaves: told of room whenever its view said full instead, a lone request's
// front-end was sent a message, and woke, while the engine computed its request.
var heldMessage = []byte(`["held"]`)

// groupRows: the most rows a group may have: the engine's max batch, or less where merging stops
// paying (on a CPU, bigger batches can be slower per row; the engine measured where, `merge_max`).
func groupRows(m *model) int64 {
	if m.mergeMax > 0 && m.mergeMax < m.info.MaxBatch {
		return m.mergeMax
	}
	return m.info.MaxBatch
}

// mayLeaveLocked: whether the queue's first requests may go to the engine now. Nothing of this
// front-end in flight: always (no answer would come to release them). Else while the engine's next
// batches have room, and under the bound (the small requests' bound when the first one is small).
func (b *batcher) mayLeaveLocked() bool {
	return b.inFlight == 0 || (b.inFlight < b.boundLocked() && b.backlog < 0)
}

// boundLocked: the descriptors in flight allowed for the queue's first request.
func (b *batcher) boundLocked() int {
	if b.limitSmall > 0 && b.smallBytes > 0 && len(b.queue) > 0 && b.queue[0].p.tensorBytes() <= b.smallBytes {
		return b.limitSmall
	}
	return b.limit
}

// submit queues a member; when it may leave the caller runs the first group itself (no hand-over
// to another goroutine for a request that finds the engine idle) and, if more may go, leaves a lane
// running them.
func (s *server) submit(m *model, mb *member) {
	b := &s.batcher
	rows := groupRows(m)
	b.mu.Lock()
	b.queue = append(b.queue, mb)
	if !b.mayLeaveLocked() {
		s.unlockHolding()
		return
	}
	b.inFlight++
	group := b.takeLocked(rows)
	b.mu.Unlock()
	s.execute(m, group)
	if next := s.takeNext(m); next != nil { // more wait: a lane runs them
		go s.lane(m, next)
	}
}

// takeLocked removes the first queued member and those after it with the same header, up to maxRows,
// and counts their rows into the backlog.
func (b *batcher) takeLocked(maxRows int64) []*member {
	first := b.queue[0]
	group, rest := []*member{first}, b.queue[:0]
	rows := first.p.rows
	for _, mb := range b.queue[1:] {
		if mb.key == first.key && rows+mb.p.rows <= maxRows {
			group = append(group, mb)
			rows += mb.p.rows
		} else {
			rest = append(rest, mb)
		}
	}
	clear(b.queue[len(rest):])
	b.queue = rest
	b.backlog += rows
	b.heldSaid = false
	return group
}

// holdLocked: whether to tell the engine now that requests wait here: some do, they may not leave, and it
// was not told since a group last left.
func (b *batcher) holdLocked() bool {
	if len(b.queue) == 0 || b.heldSaid || b.mayLeaveLocked() {
		return false
	}
	b.heldSaid = true
	return true
}

// unlockHolding unlocks the batcher and tells the engine if requests are now held here (holdLocked), from the
// caller's goroutine: a request's handler or a lane, never the channel's reader (the write may wait for the
// engine to read).
func (s *server) unlockHolding() {
	say := s.batcher.holdLocked()
	s.batcher.mu.Unlock()
	if say {
		s.ch.send(heldMessage)
	}
}

// takeNext: the next group for a lane whose group was answered, or nil (the lane is then freed; the
// lanes still in flight take what waits when their answers come).
func (s *server) takeNext(m *model) []*member {
	b := &s.batcher
	rows := groupRows(m)
	b.mu.Lock()
	b.inFlight--
	if len(b.queue) == 0 || !b.mayLeaveLocked() {
		s.unlockHolding()
		return nil
	}
	b.inFlight++
	group := b.takeLocked(rows)
	b.mu.Unlock()
	return group
}

// answered records the engine's backlog from an answer (its fifth element; absent: unknown, taken as room).
func (b *batcher) answered(reply []json.RawMessage) {
	backlog := int64(-1)
	if len(reply) > 4 {
		if b, ok := rawInt(reply[4]); ok {
			backlog = b
		}
	}
	b.mu.Lock()
	b.backlog = backlog
	b.mu.Unlock()
}

// roomed takes the engine's word that a batch it took left room in its instances' next batches, sent
// because this front-end said it held requests: what waits leaves now, in groups on lanes of their own, as far
// as the room goes, instead of when this front-end's next answer comes. With one instance and four
// front-ends, all four held while the engine's queue ran out (docs/server-measured.md, thirty-sixth session).
func (s *server) roomed(backlog int64) {
	m := s.model.Load()
	if m == nil {
		return
	}
	b := &s.batcher
	rows := groupRows(m)
	b.mu.Lock()
	b.backlog = backlog
	var groups [][]*member
	for len(b.queue) > 0 && b.mayLeaveLocked() {
		b.inFlight++
		groups = append(groups, b.takeLocked(rows))
	}
	say := b.holdLocked()
	b.mu.Unlock()
	for _, group := range groups {
		go s.lane(m, group) // not on the channel's reader: a lane waits for its answer
	}
	if say {
		go s.ch.send(heldMessage) // nor a write from the reader: it may wait for the engine to read
	}
}

// lane runs groups one after another until nothing waits.
func (s *server) lane(m *model, group []*member) {
	for ; group != nil; group = s.takeNext(m) {
		s.execute(m, group)
	}
}

// execute sends one group to the engine and hands every member its part of the answer.
func (s *server) execute(m *model, group []*member) {
	var regions []int
	refs := int32(len(group))
	done := func() {
		if atomic.AddInt32(&refs, -1) == 0 {
			for _, o := range regions {
				s.arena.release(o)
			}
		}
	}
	fail := func(r refusal) {
		for _, mb := range group {
			mb.result <- memberResult{refusal: &r, done: done}
		}
	}
	if group = s.dropExpired(group); len(group) == 0 {
		return
	}
	p := group[0].p
	total := int64(0)
	for _, mb := range group {
		total += mb.p.rows
	}
	offsets := make([]int64, len(p.inputs))
	for i, in := range p.inputs {
		if len(group) == 1 {
			offsets[i] = group[0].base + in.offset // where its body lies: no copy
			continue
		}
		perRow := in.size / p.rows
		off := s.arena.alloc(int(total * perRow))
		if off < 0 { // no room for the group's copy: it goes as two smaller groups, side by side
			for _, o := range regions {
				s.arena.release(o)
			}
			s.splits.Add(1) // the state line says how often: the arena is short for this load
			s.executeHalves(m, group)
			return
		}
		regions = append(regions, off)
		offsets[i] = int64(off)
		dst := int64(off)
		for _, mb := range group { // each member's rows after the previous member's
			src := mb.base + mb.p.inputs[i].offset
			n := mb.p.inputs[i].size
			copy(s.arena.mem[dst:dst+n], s.arena.mem[src:src+n])
			dst += n
		}
	}
	if len(group) > 1 { // the rows are in the group's regions now: the bodies' room goes back at once
		for _, mb := range group {
			s.arena.release(mb.body)
			mb.bodyFreed = true
		}
	}
	timeout := s.cfg.Settings.TimeoutS
	now := time.Now()
	for _, mb := range group { // the group's deadline is its most pressed member's (time spent here counts)
		t := s.timeoutOf(mb)
		// whole milliseconds: the engine's TimedOut message names the timeout, and a request sent at once
		// should read as the client's own (0.1s, not 0.0999601s)
		if left := math.Round((t-now.Sub(mb.arrived).Seconds())*1000) / 1000; left < timeout {
			timeout = max(left, 0.001)
		}
	}
	if len(group) > 1 && s.cfg.Settings.LogLevel == "debug" {
		log.Printf("a group of %d requests, %d rows", len(group), total)
	}
	d := s.describe(m, p, total, offsets, timeout, len(group), &regions)
	if d == nil {
		fail(s.overloaded())
		return
	}
	reply, answered := s.ask(d, seconds(timeout)+answerGrace)
	if !answered {
		s.lost(d.rid, group, &regions)
		log.Printf("descriptor %d (%d requests, %d rows) had no answer from the engine within %gs and %v: its clients "+
			"get TimedOut; its arena regions stay the engine's until it answers", d.rid, len(group), total, timeout, answerGrace)
		if s.onLost != nil {
			s.onLost()
		}
		fail(refusal{http.StatusGatewayTimeout, "TimedOut", "timeout", fmt.Sprintf(
			"the engine did not answer within %gs; the server is overloaded or unwell (its log says more)", timeout), 0})
		return
	}
	s.batcher.answered(reply)
	if reply == nil {
		fail(refusal{http.StatusServiceUnavailable, "NotReady", "not_ready", "the engine process has stopped", 0})
		return
	}
	start := int64(0)
	for _, mb := range group {
		mb.result <- memberResult{reply: reply, start: start, total: total, done: done}
		start += mb.p.rows
	}
}

// executeHalves sends a group whose rows found no room to be copied together as two halves at once, each
// copied where it fits (down to members alone, sent where their bodies lie), and returns when both are
// answered. Sent one by one, each member waited for the engine's answer to the one before: a group of 32
// then took 32 of the engine's batches, and with one instance at 128 ResNet-50 clients on an H100 the p99 was
// 8 x the p50 (212 against 26 ms; docs/server-measured.md, thirty-sixth session).
func (s *server) executeHalves(m *model, group []*member) {
	half := len(group) / 2
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.execute(m, group[:half:half])
	}()
	s.execute(m, group[half:])
	wg.Wait()
}

// dropExpired answers the members whose deadline passed while they waited here (TimedOut, in the
// engine's words, counted as a failure in its statistics: the engine never saw them) and returns the others.
func (s *server) dropExpired(group []*member) []*member {
	now := time.Now()
	kept := group[:0]
	for _, mb := range group {
		t := s.timeoutOf(mb)
		waited := now.Sub(mb.arrived)
		if waited.Seconds() < t {
			kept = append(kept, mb)
			continue
		}
		s.failed(waited)
		mb.result <- memberResult{refusal: &refusal{http.StatusGatewayTimeout, "TimedOut", "timeout", fmt.Sprintf(
			"the request waited %gs in the queue without running; the server is overloaded (add replicas) or the timeout is too short", t), 0},
			done: func() {}}
	}
	return kept
}

// timeoutOf: a member's timeout in seconds (its request's, else the server's).
func (s *server) timeoutOf(mb *member) float64 {
	if mb.p.timeoutUS > 0 {
		return float64(mb.p.timeoutUS) / 1e6
	}
	return s.cfg.Settings.TimeoutS
}
