package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func testArena(t *testing.T, size int) *arena {
	f, err := os.CreateTemp(t.TempDir(), "arena")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	a, err := openArena(int(f.Fd()), size)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestArenaAllocatesAlignedRegionsAndMergesWhatIsFreed(t *testing.T) {
	a := testArena(t, 4096)
	x, y, z := a.alloc(1), a.alloc(100), a.alloc(64)
	if x != 0 || y != 64 || z != 192 {
		t.Fatalf("offsets %d %d %d, want 0 64 192 (64-byte aligned, first fit)", x, y, z)
	}
	if a.bytesInUse() != 256 {
		t.Fatalf("in use %d, want 256", a.bytesInUse())
	}
	if big := a.alloc(4096); big != -1 {
		t.Fatalf("a region larger than what is free was given: %d", big)
	}
	a.release(y)
	if again := a.alloc(128); again != 64 {
		t.Fatalf("freed room not reused: %d", again)
	}
	a.release(x)
	a.release(64)
	a.release(z)
	if a.bytesInUse() != 0 || len(a.free) != 1 || a.free[0] != (span{0, 4096}) {
		t.Fatalf("after freeing everything: in use %d, free %v (want one span of 4096)", a.bytesInUse(), a.free)
	}
	if whole := a.alloc(4096); whole != 0 {
		t.Fatalf("the whole arena is not one region again: %d", whole)
	}
}

func affine() *model {
	return newModel("ready", "", &modelInfo{
		Name:     "a",
		Inputs:   []tensorSpec{{"x", "float32", []int64{-1, 4}}},
		Outputs:  []tensorSpec{{"y", "float32", []int64{-1, 4}}, {"s", "float32", []int64{-1, -1}}},
		MaxBatch: 8,
	})
}

func TestAdmitTakesWhatTheModelAcceptsAndLeavesEverythingElseToPython(t *testing.T) {
	m := affine()
	p, ok := m.admit([]byte(`{"id":"r","inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],
		"outputs":[{"name":"s","parameters":{"binary_data":true}}],"parameters":{"timeout":5000}}`), 32)
	if !ok || p.rows != 2 || p.id != `"r"` || p.timeoutUS != 5000 || len(p.outputs) != 1 || p.outputs[0] != 1 {
		t.Fatalf("a valid request was not taken as asked: ok=%v %+v", ok, p)
	}
	if m.outputs[0].rowBytes != 16 || m.outputs[1].rowBytes != -1 {
		t.Fatalf("output rooms: %+v (y has 16 bytes a row, s a size known only after the run)", m.outputs)
	}
	good := `{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}`
	if _, ok := m.admit([]byte(good), 32); !ok {
		t.Fatal("every output, binary by the request's parameter: not taken")
	}
	for name, c := range map[string]struct {
		header string
		binary int64
	}{
		"not JSON":             {`{"inputs":`, 32},
		"unknown input":        {`{"inputs":[{"name":"z","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}`, 32},
		"wrong datatype":       {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP16","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}`, 16},
		"wrong shape":          {`{"inputs":[{"name":"x","shape":[2,5],"datatype":"FP32","parameters":{"binary_data_size":40}}],"parameters":{"binary_data_output":true}}`, 40},
		"too many rows":        {`{"inputs":[{"name":"x","shape":[9,4],"datatype":"FP32","parameters":{"binary_data_size":144}}],"parameters":{"binary_data_output":true}}`, 144},
		"no rows":              {`{"inputs":[{"name":"x","shape":[0,4],"datatype":"FP32","parameters":{"binary_data_size":0}}],"parameters":{"binary_data_output":true}}`, 0},
		"size disagrees":       {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":31}}],"parameters":{"binary_data_output":true}}`, 31},
		"trailing bytes":       {good, 40},
		"JSON data":            {`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"parameters":{"binary_data_output":true}}`, 0},
		"JSON outputs":         {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}]}`, 32},
		"a JSON output asked":  {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"outputs":[{"name":"y"}]}`, 32},
		"unknown output":       {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"outputs":[{"name":"q","parameters":{"binary_data":true}}]}`, 32},
		"classification":       {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"outputs":[{"name":"y","parameters":{"binary_data":true,"classification":2}}]}`, 32},
		"no outputs":           {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"outputs":[]}`, 32},
		"numeric id":           {`{"id":7,"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}`, 32},
		"timeout not positive": {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true,"timeout":0}}`, 32},
		"binary flag not bool": {`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":1}}`, 32},
		"input given twice":    {`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}},{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}`, 32},
	} {
		if _, ok := m.admit([]byte(c.header), c.binary); ok {
			t.Errorf("%s: taken by the fast path, should go to the Python front-end", name)
		}
	}
}

// twoFree: a model with a free non-batch dimension, where a shape's product is the client's to choose.
func twoFree() *model {
	return newModel("ready", "", &modelInfo{
		Name:     "two",
		Inputs:   []tensorSpec{{"a", "int64", []int64{-1, -1}}, {"b", "float32", []int64{-1, 4}}},
		Outputs:  []tensorSpec{{"y", "float32", []int64{-1, 4}}},
		MaxBatch: 8,
	})
}

func TestAShapeBeyondAnyTensorGoesToPythonAndNeverWrapsToANegativeSize(t *testing.T) {
	m := twoFree()
	// 8 x (2**61 - 1) wraps to -8 in int64: once admitted with a size of -8, b placed at -8, and a group of two
	// such requests panicked on its copy and took the front-end (and every request in it) down.
	wrapped := `{"inputs":[{"name":"a","shape":[1,2305843009213693951],"datatype":"INT64","parameters":{"binary_data_size":-8}},` +
		`{"name":"b","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}`
	beyond := `{"inputs":[{"name":"a","shape":[1,2305843009213693952],"datatype":"INT64","parameters":{"binary_data_size":0}},` +
		`{"name":"b","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}`
	zeroBeyond := `{"inputs":[{"name":"a","shape":[1,0],"datatype":"INT64","parameters":{"binary_data_size":0}},` +
		`{"name":"b","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}`
	for name, c := range map[string]struct {
		header string
		binary int64
	}{"wraps to -8": {wrapped, 8}, "2**64 bytes": {beyond, 16}} {
		if p, ok := m.admit([]byte(c.header), c.binary); ok {
			t.Errorf("%s: admitted %+v; Python refuses it (beyond any tensor)", name, p)
		}
	}
	if p, ok := m.admit([]byte(zeroBeyond), 16); !ok || p.inputs[0].size != 0 || p.inputs[1].offset != 0 {
		t.Errorf("an empty tensor beside a full one: ok=%v %+v", ok, p)
	}
	for _, c := range []struct {
		shape []int64
		bytes int64
		ok    bool
	}{
		{[]int64{2, 3}, 48, true}, {[]int64{0, 1 << 61}, 0, false}, {[]int64{1 << 30, 1 << 29}, 0, false},
		{[]int64{1 << 29, 1 << 30}, 0, false}, {[]int64{1 << 29, 1 << 29}, 1 << 61, true}, {[]int64{3, -1}, 0, false},
	} {
		if n, ok := tensorBytes(c.shape, []int64{-1, -1}, 8); n != c.bytes || ok != c.ok {
			t.Errorf("tensorBytes(%v, 8) = %d, %v; want %d, %v", c.shape, n, ok, c.bytes, c.ok)
		}
	}
}

func TestAHeaderThatEncodingJSONReadsOtherwiseThanPythonGoesToPython(t *testing.T) {
	m := affine()
	good := `{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}`
	if _, ok := m.admit([]byte(good), 32); !ok {
		t.Fatal("the plain header is not taken")
	}
	for name, header := range map[string]string{
		// Go gives "Name" and "SHAPE" to the fields (the last one winning); Python reads only "name" and "shape"
		"a key in capitals": `{"inputs":[{"Name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}`,
		"two shapes":        `{"inputs":[{"name":"x","shape":[1,4],"SHAPE":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}`,
		"Inputs":            `{"Inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}`,
		"a long s":          "{\"inputs\":[{\"name\":\"x\",\"\u017fhape\":[2,4],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":32}}],\"parameters\":{\"binary_data_output\":true}}",
		"an id not UTF-8":   "{\"id\":\"\xff\xfe\",\"inputs\":[{\"name\":\"x\",\"shape\":[2,4],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":32}}],\"parameters\":{\"binary_data_output\":true}}",
		// a tensor in a client's shared memory region: Python places it (or refuses it beside binary data)
		"an input region": `{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32,"shared_memory_region":"r","shared_memory_byte_size":32}}],"parameters":{"binary_data_output":true}}`,
		"an output region": `{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],` +
			`"outputs":[{"name":"y","parameters":{"shared_memory_region":"r","shared_memory_byte_size":32}}],"parameters":{"binary_data_output":true}}`,
	} {
		if p, ok := m.admit([]byte(header), 32); ok {
			t.Errorf("%s: taken by the fast path (%+v), should go to the Python front-end", name, p)
		}
	}
	// a key of another name in capitals is nothing to either parser; values that spell a field name are values
	odd := `{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32,"Priority":"Shape"}}],"parameters":{"binary_data_output":true,"Other":["DATA",{"k":"Name"}]}}`
	if _, ok := m.admit([]byte(odd), 32); !ok {
		t.Error("a header whose only capitals are in other keys and in values: not taken")
	}
	long := `{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true,"timeout":9223372036854775807}}`
	if p, ok := m.admit([]byte(long), 32); !ok || p.timeoutUS != maxTimeoutUS {
		t.Errorf("a timeout past a day: ok=%v, %d us (want %d)", ok, p.timeoutUS, maxTimeoutUS)
	}
}

func TestOnlyTheServedModelsInferRoutesTakeTheFastPath(t *testing.T) {
	s := &server{cfg: &setup{}}
	s.cfg.Settings.ModelName = "a"
	for path, want := range map[string]bool{
		"/v2/models/a/infer": true, "/v2/models/a/versions/1/infer": true, "/v2/models/a/versions/2/infer": false,
		"/v2/models/b/infer": false, "/v2/models/a": false, "/v2/models/a/infer/x": false, "/v2/models//infer": false,
	} {
		if got := s.isOurInfer(path); got != want {
			t.Errorf("%s: %v, want %v", path, got, want)
		}
	}
}

func TestMessagesSentTogetherLeaveInOneFrameAndFramesAreReadBack(t *testing.T) {
	ours, theirs := net.Pipe()
	c := newChannel(ours)
	go func() {
		for _, m := range []string{`["failed",1]`, `["failed",2]`, `["requests",1,[]]`} {
			c.send([]byte(m))
		}
		c.close()
	}()
	var got []json.RawMessage
	for len(got) < 3 {
		var head [4]byte
		if _, err := theirs.Read(head[:]); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, binary.LittleEndian.Uint32(head[:]))
		for n := 0; n < len(body); {
			k, err := theirs.Read(body[n:])
			if err != nil {
				t.Fatal(err)
			}
			n += k
		}
		var frame []json.RawMessage
		if err := json.Unmarshal(body, &frame); err != nil {
			t.Fatalf("a frame is not a JSON list: %q", body)
		}
		got = append(got, frame...)
	}
	if string(got[0]) != `["failed",1]` || string(got[2]) != `["requests",1,[]]` {
		t.Fatalf("messages out of order: %s", got)
	}
	// The reading side: a frame of two messages calls the handler twice, in order.
	r1, w1 := net.Pipe()
	go func() {
		payload := []byte(`[["state","ready","",null],["done",3,null,[]]]`)
		var head [4]byte
		binary.LittleEndian.PutUint32(head[:], uint32(len(payload)))
		w1.Write(append(head[:], payload...))
		w1.Close()
	}()
	var kinds []string
	(&channel{conn: r1}).read(func(kind string, _ []json.RawMessage) { kinds = append(kinds, kind) })
	if !bytes.Equal([]byte(kinds[0]+kinds[1]), []byte("statedone")) {
		t.Fatalf("handled %v", kinds)
	}
}

func TestARepeatedHeaderIsAdmittedFromItsPlanButOnlyForTheSameTensorBytes(t *testing.T) {
	m := affine()
	header := []byte(`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}`)
	first, ok1 := m.admit(header, 32)
	again, ok2 := m.admit(header, 32)
	if !ok1 || !ok2 || len(m.plans) != 1 || again.rows != first.rows || len(again.inputs) != 1 {
		t.Fatalf("the second admission did not reuse the plan: %v %v %d", ok1, ok2, len(m.plans))
	}
	if _, ok := m.admit(header, 40); ok {
		t.Fatal("a known header with more tensor bytes than it declares was taken")
	}
	if _, ok := m.admit([]byte(`{"inputs":[]}`), 0); ok || len(m.plans) != 1 {
		t.Fatal("a refused header was remembered")
	}
}

func TestRequestsLeaveAtOnceWhileTheEnginesNextBatchesHaveRoom(t *testing.T) {
	b := &batcher{limit: 64}
	p := &plan{rows: 1}
	queue := func(n int) {
		for i := 0; i < n; i++ {
			b.queue = append(b.queue, &member{p: p, key: "k"})
		}
	}
	b.backlog = 100
	if !b.mayLeaveLocked() {
		t.Fatal("nothing in flight: a request must leave at once (no answer would come to release it)")
	}
	b.inFlight, b.backlog = 1, -4
	if !b.mayLeaveLocked() {
		t.Fatal("the engine's next batches have room: a request must leave at once")
	}
	queue(3)
	if g := b.takeLocked(8); len(g) != 3 || b.backlog != -1 {
		t.Fatalf("group of %d, backlog %d; want 3 and -1 (what left takes its room)", len(g), b.backlog)
	}
	b.inFlight = 2
	queue(1)
	b.takeLocked(8)
	if b.mayLeaveLocked() {
		t.Fatal("no room left in the engine's next batches: a request must wait here to leave grouped")
	}
	b.answered([]json.RawMessage{json.RawMessage(`"done"`), json.RawMessage(`1`), json.RawMessage(`null`),
		json.RawMessage(`[]`), json.RawMessage(`-6`)})
	if b.backlog != -6 || !b.mayLeaveLocked() {
		t.Fatalf("backlog %d after an answer reporting room for 6 rows: requests must leave again", b.backlog)
	}
	queue(20)
	if g := b.takeLocked(8); len(g) != 8 || len(b.queue) != 12 {
		t.Fatalf("group of %d with %d left; a group stops at the engine's batch", len(g), len(b.queue))
	}
	b.backlog, b.inFlight = -100, b.limit
	if b.mayLeaveLocked() {
		t.Fatal("at the bound nothing more leaves")
	}
	b.answered([]json.RawMessage{json.RawMessage(`"done"`), json.RawMessage(`1`), json.RawMessage(`null`), json.RawMessage(`[]`)})
	if b.backlog >= 0 {
		t.Fatal("an answer without a backlog (an older engine) must read as room")
	}
}

func TestSmallRequestsTakeTheSmallBoundAndLargeOnesTheBacklogAlone(t *testing.T) {
	small := &plan{rows: 1, inputs: []placedInput{{size: 64}}}
	large := &plan{rows: 1, inputs: []placedInput{{size: 3 * 224 * 224 * 4}}}
	b := &batcher{limit: 64, limitSmall: 3, smallBytes: 64 * 1024, inFlight: 3, backlog: -10}
	b.queue = []*member{{p: small}}
	if b.mayLeaveLocked() {
		t.Fatal("three descriptors out: a small request must wait to leave grouped")
	}
	b.queue = []*member{{p: large}, {p: small}}
	if !b.mayLeaveLocked() {
		t.Fatal("a large request first: the backlog alone decides (the engine has room)")
	}
	b.queue, b.inFlight = []*member{{p: small}}, 2
	if !b.mayLeaveLocked() {
		t.Fatal("under the small bound with room at the engine: a small request must leave at once")
	}
	b.limitSmall, b.inFlight = 0, 3
	if !b.mayLeaveLocked() {
		t.Fatal("no small bound set: small requests take the bound of all (64)")
	}
	s := &server{cfg: &setup{}, batcher: batcher{limit: 64, limitSmall: 3, smallBytes: 64 * 1024}}
	s.model.Store(newModel("ready", "", nil))
	if line := s.stateLine(); !strings.Contains(line, "(bound 64, small requests 3)") {
		t.Fatalf("the state line must give both bounds: %s", line)
	}
}

// What is small comes with the engine's state: 0 (a model whose batch-1 run is not short) makes no request small.
func TestTheEnginesStateSaysWhichRequestsAreSmall(t *testing.T) {
	raw := func(text string) []json.RawMessage {
		var msg []json.RawMessage
		if err := json.Unmarshal([]byte(text), &msg); err != nil {
			t.Fatal(err)
		}
		return msg
	}
	small := &plan{rows: 1, inputs: []placedInput{{size: 64}}}
	s := &server{cfg: &setup{}, batcher: batcher{limit: 64, limitSmall: 3, inFlight: 3, backlog: -10}}
	s.batcher.queue = []*member{{p: small}}
	s.onState(raw(`["state", "loading", "", null, 0, 0]`))
	if !s.batcher.mayLeaveLocked() || !strings.Contains(s.stateLine(), "small requests 3: none for this model") {
		t.Fatalf("while no request is small the backlog alone decides: %s", s.stateLine())
	}
	s.onState(raw(`["state", "ready", "", null, 0, 65536]`))
	if s.batcher.smallBytes != 65536 || s.batcher.mayLeaveLocked() {
		t.Fatal("a short model's small request must wait under the small bound")
	}
	s.onState(raw(`["state", "ready", "", null, 0]`)) // an engine that says nothing of it: as it was
	if s.batcher.smallBytes != 65536 || s.model.Load().state != "ready" {
		t.Fatal("a state without the small bytes must leave them as they were")
	}
}

func TestStampsGoToTheTraceFolderOnlyWhenOneIsNamed(t *testing.T) {
	stamp("g_head") // off: nothing happens
	dir := t.TempDir()
	t.Setenv("TRTOP_HTTP_TRACE", dir)
	openTrace()
	defer func() { stages = nil }()
	stamp("g_head")
	stamp("g_body")
	closeTrace()
	files, _ := filepath.Glob(filepath.Join(dir, "go-*.txt"))
	if len(files) != 1 {
		t.Fatalf("trace files: %v", files)
	}
	text, _ := os.ReadFile(files[0])
	lines := strings.Split(strings.TrimSpace(string(text)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "g_head ") || !strings.HasPrefix(lines[1], "g_body ") {
		t.Fatalf("stamps: %q", text)
	}
	a, _ := strconv.ParseInt(strings.Fields(lines[0])[1], 10, 64)
	b, _ := strconv.ParseInt(strings.Fields(lines[1])[1], 10, 64)
	if a <= 0 || b < a {
		t.Fatalf("times not monotonic: %d %d", a, b)
	}
}

func TestAStateDumpSaysWhatTheFrontEndHoldsAndWhereEveryGoroutineIs(t *testing.T) {
	s := &server{cfg: &setup{}, waiting: map[uint64]chan []json.RawMessage{7: nil, 8: nil}}
	s.model.Store(newModel("ready", "", nil))
	s.batcher = batcher{limit: 3, inFlight: 2, backlog: 5,
		queue: []*member{{p: &plan{rows: 1}, arrived: time.Now().Add(-1500 * time.Millisecond)}}}
	var out bytes.Buffer
	s.dumpState(&out)
	text := out.String()
	for _, want := range []string{"model ready", "descriptors at the engine 2 (bound 3)", "requests waiting here 1 (the oldest for 1.5",
		"backlog as last seen 5 rows", "replies awaited 2", "TestAStateDumpSaysWhatTheFrontEndHoldsAndWhereEveryGoroutineIs",
		"=== end of trtop-http"} {
		if !strings.Contains(text, want) {
			t.Errorf("the dump lacks %q:\n%.600s", want, text)
		}
	}
}

func TestADescriptorTheEngineNeverAnswersTimesOutItsClientsAndHoldsItsRegionsUntilALateAnswer(t *testing.T) {
	defer func(g time.Duration) { answerGrace = g }(answerGrace)
	answerGrace = 20 * time.Millisecond
	ours, engine := net.Pipe()
	sent := make(chan []byte, 4)
	go func() { // an engine that reads descriptors and answers none
		buf := make([]byte, 64<<10)
		for {
			n, err := engine.Read(buf)
			if err != nil {
				return
			}
			sent <- bytes.Clone(buf[:n])
		}
	}()
	a := testArena(t, 1<<16)
	s := &server{cfg: &setup{}, arena: a, ch: newChannel(ours), waiting: map[uint64]chan []json.RawMessage{},
		late: map[uint64][]int{}}
	s.cfg.Settings.TimeoutS = 0.05
	s.batcher.limit = 4
	lost := 0
	s.onLost = func() { lost++ }
	m := affine()
	p, ok := m.admit([]byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}`), 16)
	if !ok {
		t.Fatal("the request was not admitted")
	}
	body := a.alloc(64)
	mb := &member{p: &p, key: "k", base: int64(body), body: body, arrived: time.Now(), result: make(chan memberResult, 1)}
	started := time.Now()
	s.submit(m, mb)
	res := <-mb.result
	if res.refusal == nil || res.refusal.class != "TimedOut" || !strings.Contains(res.refusal.message, "did not answer within 0.05s") {
		t.Fatalf("a descriptor with no answer must time its clients out; got %+v", res.refusal)
	}
	if waited := time.Since(started); waited > time.Second {
		t.Fatalf("the clients heard after %v: the wait is the timeout and the grace", waited)
	}
	res.done()
	if s.batcher.inFlight != 0 || lost != 1 || len(s.late) != 1 || !mb.bodyFreed {
		t.Fatalf("in flight %d, lost %d, late %d, body freed %v: the front-end must go on, the regions wait",
			s.batcher.inFlight, lost, len(s.late), mb.bodyFreed)
	}
	if a.bytesInUse() == 0 {
		t.Fatal("the engine may still write the outputs and read the inputs: their regions must stay taken")
	}
	msg := <-sent
	var frame [][]any // the descriptor: ["infer", id, ...]
	if err := json.Unmarshal(msg[4:], &frame); err != nil || len(frame) != 1 || frame[0][0] != "infer" {
		t.Fatalf("the engine got %q, not one descriptor (%v)", msg, err)
	}
	rid := int(frame[0][1].(float64))
	go func() { // the answer comes after all
		reply := fmt.Appendf(nil, `[["done",%d,null,[],-1]]`, rid)
		frame := binary.LittleEndian.AppendUint32(nil, uint32(len(reply)))
		engine.Write(append(frame, reply...))
	}()
	go s.readChannel()
	deadline := time.Now().Add(2 * time.Second)
	for a.bytesInUse() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if a.bytesInUse() != 0 || len(s.late) != 0 {
		t.Fatalf("after the late answer %d bytes still in use, %d lost: they must be free", a.bytesInUse(), len(s.late))
	}
}

func TestACallForwardedToPythonIsRefusedWhenItsAnswerDoesNotComeButAnInferenceWaitsForItsOwn(t *testing.T) {
	defer func(g time.Duration) { answerGrace = g }(answerGrace)
	answerGrace = 20 * time.Millisecond
	path := filepath.Join(t.TempDir(), "python.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	python := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/stats") {
			<-release // a Python front-end that never answers
			return
		}
		time.Sleep(200 * time.Millisecond) // an inference longer than the bound of other calls
		w.Write([]byte(`{"outputs":[]}`))
	})}
	go python.Serve(l)
	defer python.Close()
	ours, _ := net.Pipe()
	cfg := &setup{ProxyPath: path}
	cfg.Settings.TimeoutS = 0.05
	s := newServer(cfg, testArena(t, 1<<16), newChannel(ours))
	lost := 0
	s.onLost = func() { lost++ }

	started := time.Now()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v2/models/a/stats", nil))
	if waited := time.Since(started); rec.Code != http.StatusServiceUnavailable || waited > time.Second || lost != 1 {
		t.Fatalf("statistics the Python front-end never answers: %d after %v, lost %d (want 503 after the timeout and the grace, one dump)",
			rec.Code, waited, lost)
	}
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v2/models/a/infer", strings.NewReader(`{"inputs":[]}`)))
	if rec.Code != http.StatusOK || lost != 1 {
		t.Fatalf("a forwarded inference is bounded by its own timeout, not this one: %d, lost %d", rec.Code, lost)
	}
}

func TestBodiesStillToArriveLeaveRoomForSmallOnes(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		arena   int
		maxBody int64
		keep    int
	}{{128 * mib, 64 * mib, 32 * mib}, {68 * mib, 64 * mib, 4*mib - 2*align}, {1 << 16, 0, 0}, {64 * mib, 64 * mib, 0}} {
		if got := keptForSmall(c.arena, c.maxBody); got != c.keep {
			t.Errorf("keptForSmall(%d, %d) = %d, want %d", c.arena, c.maxBody, got, c.keep)
		}
	}
	a := testArena(t, 1<<20)
	keep := 256 << 10
	big := a.allocBody(600<<10, keep)
	if big < 0 {
		t.Fatal("a large body in an empty arena: no room")
	}
	if off := a.allocBody(300<<10, keep); off >= 0 {
		t.Fatalf("a second large body took the room kept for small ones (at %d)", off)
	}
	small := make([]int, 0, 4)
	for range 4 { // 4 x 64 KiB: what was kept
		off := a.allocBody(64<<10, keep)
		if off < 0 {
			t.Fatal("a small body beside a large one that is still arriving: no room")
		}
		small = append(small, off)
	}
	for _, off := range small {
		a.release(off)
	}
	a.release(big)
	if off := a.allocBody(1<<20-keep, keep); off < 0 {
		t.Fatal("the largest body the kept room allows, in an empty arena: no room")
	}
}

func TestAFrontEndWhoseEngineStopsPingingSaysItIsNotReady(t *testing.T) {
	ours, _ := net.Pipe()
	s := newServer(&setup{}, testArena(t, 1<<16), newChannel(ours))
	s.model.Store(affine())
	ready := func() int {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v2/health/ready", nil))
		return rec.Code
	}
	if code := ready(); code != http.StatusOK {
		t.Fatalf("before the engine's first ping: %d, want 200 (a front-end starts ready with its model)", code)
	}
	s.pingedAt.Store(time.Now().Add(-engineSilentAfter - time.Second).UnixNano())
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v2/health/ready", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "no ping") {
		t.Fatalf("an engine silent past %v: %d %s, want 503 that says why", engineSilentAfter, rec.Code, rec.Body)
	}
	s.pingedAt.Store(time.Now().UnixNano())
	if code := ready(); code != http.StatusOK {
		t.Fatalf("pings back: %d, want 200", code)
	}
}
