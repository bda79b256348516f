package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// An engine on the other end of a pipe that answers nothing until descriptors of `rows` rows in all have
// come (one batch of everything), then answers each; it returns the rows of each descriptor it answered.
func batchingEngine(t *testing.T, conn net.Conn, rows int) <-chan []int {
	got := make(chan []int, 1)
	go func() {
		var ids, sizes []int
		for total := 0; total < rows; {
			var head [4]byte
			if _, err := io.ReadFull(conn, head[:]); err != nil {
				got <- sizes
				return
			}
			frame := make([]byte, binary.LittleEndian.Uint32(head[:]))
			if _, err := io.ReadFull(conn, frame); err != nil {
				got <- sizes
				return
			}
			var messages [][]any // ["infer", id, rows, inputs, outputs, ...]
			if err := json.Unmarshal(frame, &messages); err != nil {
				t.Errorf("a frame the engine cannot read: %q (%v)", frame, err)
				got <- sizes
				return
			}
			for _, msg := range messages {
				if msg[0] != "infer" {
					continue
				}
				ids = append(ids, int(msg[1].(float64)))
				sizes = append(sizes, int(msg[2].(float64)))
				total += sizes[len(sizes)-1]
			}
		}
		reply := []byte("[")
		for i, id := range ids {
			if i > 0 {
				reply = append(reply, ',')
			}
			reply = fmt.Appendf(reply, `["done",%d,null,[],-1]`, id)
		}
		reply = append(reply, ']')
		conn.Write(append(binary.LittleEndian.AppendUint32(nil, uint32(len(reply))), reply...))
		got <- sizes
	}()
	return got
}

// groupServer: a front-end whose channel's other end (returned) plays the engine, serving a model of one row
// of 64 float32 (256 bytes) in, one out, and an admitted request's plan for one row.
func groupServer(t *testing.T, arenaSize int) (*server, *model, plan, net.Conn) {
	ours, engine := net.Pipe()
	t.Cleanup(func() { ours.Close() })
	s := &server{cfg: &setup{}, arena: testArena(t, arenaSize), ch: newChannel(ours),
		waiting: map[uint64]chan []json.RawMessage{}, late: map[uint64][]int{}}
	s.cfg.Settings.TimeoutS = 2
	s.batcher.limit = 64
	go s.readChannel()
	m := newModel("ready", "", &modelInfo{
		Name:     "wide",
		Inputs:   []tensorSpec{{"x", "float32", []int64{-1, 64}}},
		Outputs:  []tensorSpec{{"y", "float32", []int64{-1, 1}}},
		MaxBatch: 32,
	})
	s.model.Store(m)
	p, ok := m.admit([]byte(`{"inputs":[{"name":"x","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}],"parameters":{"binary_data_output":true}}`), 256)
	if !ok {
		t.Fatal("the request was not admitted")
	}
	return s, m, p, engine
}

// engineSays writes one frame of the engine's messages to a front-end.
func engineSays(t *testing.T, engine net.Conn, messages string) {
	if _, err := engine.Write(append(binary.LittleEndian.AppendUint32(nil, uint32(len(messages))), messages...)); err != nil {
		t.Fatalf("the front-end did not read the engine's frame: %v", err)
	}
}

// An engine on the other end of a pipe that answers every descriptor at once (with room: backlog -1); every
// message it reads goes to the channel returned, in order, as "kind" or "kind rows" for a descriptor.
func answeringEngine(t *testing.T, conn net.Conn) <-chan string {
	got := make(chan string, 64)
	go func() {
		for {
			var head [4]byte
			if _, err := io.ReadFull(conn, head[:]); err != nil {
				return
			}
			frame := make([]byte, binary.LittleEndian.Uint32(head[:]))
			if _, err := io.ReadFull(conn, frame); err != nil {
				return
			}
			var messages [][]any
			if err := json.Unmarshal(frame, &messages); err != nil {
				t.Errorf("a frame the engine cannot read: %q (%v)", frame, err)
				return
			}
			for _, msg := range messages {
				if msg[0] != "infer" {
					got <- fmt.Sprint(msg[0])
					continue
				}
				got <- fmt.Sprintf("infer %d", int(msg[2].(float64)))
				reply := fmt.Appendf(nil, `[["done",%d,null,[],-1]]`, int(msg[1].(float64)))
				if _, err := conn.Write(append(binary.LittleEndian.AppendUint32(nil, uint32(len(reply))), reply...)); err != nil {
					return // not t.Fatal: this is not the test's goroutine
				}
			}
		}
	}()
	return got
}

// Requests held while the engine, by what this front-end was told and has sent since, is full leave as one
// group as soon as the engine says a batch it took left room, not when this front-end's own answer comes (here
// none comes: the descriptor it has out is never answered). The engine hears once that requests are held (it
// tells only a front-end that said so), and never of a lone request.
func TestHeldRequestsLeaveWhenTheEngineSaysThereIsRoom(t *testing.T) {
	s, m, p, engine := groupServer(t, 1<<16)
	heard := answeringEngine(t, engine)
	newMember := func() *member {
		off := s.arena.alloc(256)
		return &member{p: &p, key: "k", base: int64(off), body: off, arrived: time.Now(), result: make(chan memberResult, 1)}
	}
	lone := newMember()
	s.submit(m, lone) // nothing in flight: it goes at once, and is answered
	if res := <-lone.result; res.refusal != nil {
		t.Fatalf("a lone request was refused: %s", res.refusal.message)
	} else {
		res.done()
	}
	s.batcher.inFlight, s.batcher.backlog = 1, 5 // one descriptor out; told the engine holds 5 rows too many
	var held []*member
	for range 3 {
		held = append(held, newMember())
		s.submit(m, held[len(held)-1])
	}
	if n := len(s.batcher.queue); n != 3 {
		t.Fatalf("%d requests held, want 3: the engine is full", n)
	}
	engineSays(t, engine, `[["room",2]]`) // no room: nothing leaves
	var queued int
	var backlog int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.batcher.mu.Lock() // the reader takes the message after the write returns
		queued, backlog = len(s.batcher.queue), s.batcher.backlog
		s.batcher.mu.Unlock()
		if backlog == 2 {
			break
		}
	}
	if queued != 3 || backlog != 2 {
		t.Fatalf("%d held and backlog %d after the engine said it holds 2 rows too many, want 3 and 2", queued, backlog)
	}
	engineSays(t, engine, `[["room",-10]]`)
	for _, mb := range held {
		select {
		case res := <-mb.result:
			if res.refusal != nil {
				t.Fatalf("a held request was refused: %s", res.refusal.message)
			}
			res.done()
		case <-time.After(5 * time.Second):
			t.Fatal("held requests did not leave when the engine said there was room")
		}
	}
	var seen []string
	for range 3 {
		select {
		case kind := <-heard:
			seen = append(seen, kind)
		case <-time.After(5 * time.Second):
			t.Fatalf("the engine read only %q", seen)
		}
	}
	if want := []string{"infer 1", "held", "infer 3"}; !slices.Equal(seen, want) {
		t.Fatalf("the engine read %q, want %q: a lone request, the word that requests are held (once), then "+
			"the held ones as one group", seen, want)
	}
	s.batcher.mu.Lock()
	defer s.batcher.mu.Unlock()
	if s.batcher.inFlight != 1 || len(s.batcher.queue) != 0 {
		t.Fatalf("in flight %d, queued %d once the group was answered, want 1 (the unanswered one) and 0",
			s.batcher.inFlight, len(s.batcher.queue))
	}
}

// A group whose rows find no room to be copied together still reaches the engine whole, at once: as smaller
// groups side by side (each copied where it fits, down to members alone, sent where their bodies lie), never
// one member after another's answer (the engine here runs nothing until it has every row: one by one, the
// first member would wait for it until its timeout).
func TestAGroupWithNoRoomForItsCopyGoesAsHalvesAtOnceNotOneByOne(t *testing.T) {
	const rowBytes = 256 // 64 float32
	defer func(g time.Duration) { answerGrace = g }(answerGrace)
	answerGrace = 50 * time.Millisecond // one by one, the first member fails after its timeout and this grace
	half := 2*rowBytes + align          // a half's copy and its output region
	for _, c := range []struct {
		name   string
		size   int
		layout []int // regions taken in order: a body (rowBytes) or a hole, freed once all are taken
		sizes  []int // the descriptors' rows the engine should get
		bodies int   // bodies still taken once answered: members sent alone (their handlers free them)
		splits int64 // groups split for want of room: the state line counts them
	}{
		// two holes apart, each the room of a half's copy: the whole copy fits in neither
		{"room for each half's copy", 4*rowBytes + 2*half, []int{half, rowBytes, rowBytes, half, rowBytes, rowBytes},
			[]int{2, 2}, 0, 1},
		// room for the outputs alone
		{"room for no copy", 4*rowBytes + 4*align, []int{rowBytes, rowBytes, rowBytes, rowBytes}, []int{1, 1, 1, 1}, 4, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, m, p, engine := groupServer(t, c.size)
			a := s.arena
			var group []*member
			var holes []int
			for _, n := range c.layout {
				off := a.alloc(n)
				if off < 0 {
					t.Fatalf("the layout does not fit the arena at a region of %d bytes", n)
				}
				if n != rowBytes {
					holes = append(holes, off)
					continue
				}
				group = append(group, &member{p: &p, key: "k", base: int64(off), body: off, arrived: time.Now(),
					result: make(chan memberResult, 1)})
			}
			for _, off := range holes {
				a.release(off)
			}
			answered := batchingEngine(t, engine, len(group))
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.execute(m, append([]*member(nil), group...)) // its own slice: execute drops expired members in place
			}()
			for _, mb := range group {
				res := <-mb.result
				if res.refusal != nil {
					t.Fatalf("a member was refused (%s: %s): the group's members must reach the engine together",
						res.refusal.class, res.refusal.message)
				}
				res.done()
			}
			wg.Wait()
			sizes := <-answered
			slices.Sort(sizes)
			if !slices.Equal(sizes, c.sizes) {
				t.Fatalf("descriptors of %v rows, want %v", sizes, c.sizes)
			}
			if got := s.splits.Load(); got != c.splits || !strings.Contains(s.stateLine(),
				fmt.Sprintf("(groups split for want of room %d)", c.splits)) {
				t.Fatalf("%d groups split, want %d, and the state line must say so: %s", got, c.splits, s.stateLine())
			}
			if used := a.bytesInUse(); used != c.bodies*rowBytes {
				t.Fatalf("%d bytes in use after every answer, want %d (the bodies of members sent alone)", used,
					c.bodies*rowBytes)
			}
		})
	}
}
