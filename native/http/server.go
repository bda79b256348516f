package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const headerLength = "Inference-Header-Content-Length"

type server struct {
	cfg      *setup
	arena    *arena
	ch       *channel
	model    atomic.Pointer[model]
	draining atomic.Bool
	pingedAt atomic.Int64 // unix nanoseconds of the engine's last ping; 0 before the first (engineSilent)
	proxy    *httputil.ReverseProxy
	maxBody  int64
	keep     int // arena bytes that only bodies no larger than them may take (keptForSmall)
	batcher  batcher

	ids     atomic.Uint64
	mu      sync.Mutex
	waiting map[uint64]chan []json.RawMessage // request id -> its "done" message (nil: the engine is gone)
	late    map[uint64][]int                  // lost descriptors (no answer in time) -> the arena regions they hold
	onLost  func()                            // called when a descriptor is lost (main: the engine dumps every state)
	splits  atomic.Int64                      // groups sent as halves: no arena room for their copy (executeHalves)
	threads *goThreads                        // nil: Go threads stay as started (the state line says them)

	countMu  sync.Mutex
	started  int
	finished [][2]any // (outcome, seconds) since the last report
}

func newServer(cfg *setup, a *arena, ch *channel) *server {
	s := &server{cfg: cfg, arena: a, ch: ch, waiting: map[uint64]chan []json.RawMessage{}, late: map[uint64][]int{},
		maxBody: int64(cfg.Settings.MaxBodyMB * 1024 * 1024)}
	s.keep = keptForSmall(len(a.mem), s.maxBody)
	s.batcher.limit = max(1, cfg.GroupLimit)
	s.batcher.limitSmall = cfg.SmallGroupLimit // smallBytes comes with the engine's state (onState)
	s.model.Store(newModel("loading", "", nil))
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", cfg.ProxyPath)
		},
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     30 * time.Second,
	}
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "python-frontend"
			r.Out.Host = r.In.Host
		},
		Transport: transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.Printf("%s %s: the Python front-end did not answer: %v", r.Method, r.URL.Path, err)
			s.forwardFailed(r)
			writeError(w, http.StatusServiceUnavailable, "NotReady", "the server's API process is not reachable; retry shortly", 0)
		},
	}
	return s
}

// engineSilentAfter: the engine pings every front-end every second (supervisor._check_frontends). Once one has
// come, this long without one means the engine's loop stopped (a call that never returns, SIGSTOP): the front-end
// says it is not ready, so that the pod leaves the endpoints instead of holding requests for their timeout
// (frontend.ENGINE_SILENT_S for Python front-ends).
const engineSilentAfter = 5 * time.Second

func (s *server) engineSilent() bool {
	at := s.pingedAt.Load()
	return at != 0 && time.Since(time.Unix(0, at)) > engineSilentAfter
}

// ready: the model is loaded, the front-end is not draining, and its engine answers (HTTP and gRPC readiness).
func (s *server) ready() bool {
	return s.model.Load().state == "ready" && !s.draining.Load() && !s.engineSilent()
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v2/health/live":
		if r.Method == http.MethodGet {
			writeJSON(w, http.StatusOK, `{"live":true}`)
			return
		}
	case "/v2/health/ready":
		if r.Method == http.MethodGet {
			m := s.model.Load()
			if s.ready() {
				writeJSON(w, http.StatusOK, `{"ready":true}`)
			} else {
				state := m.state
				if s.draining.Load() {
					state = "draining"
				} else if s.engineSilent() {
					state = fmt.Sprintf("waiting for its engine (no ping for %v)", engineSilentAfter)
				}
				q, _ := json.Marshal(fmt.Sprintf("model '%s' is %s", s.cfg.Settings.ModelName, state))
				writeJSON(w, http.StatusServiceUnavailable, `{"ready":false,"error":`+string(q)+`}`)
			}
			return
		}
	default:
		if r.Method == http.MethodPost && s.isOurInfer(r.URL.Path) && s.infer(w, r) {
			return
		}
	}
	if strings.HasSuffix(r.URL.Path, "/infer") { // bounded by the request's own timeout, which may be longer
		s.proxy.ServeHTTP(w, r)
		return
	}
	s.forwardBounded(w, r, s.proxy)
}

// forwardBounded hands a call that is not an inference (statistics, metadata, metrics, shared memory) to the
// Python front-end and gives up on its answer after the server's timeout and answerGrace: the call is then
// refused (503, or gRPC UNAVAILABLE), logged, and every process's state dumped (onLost). Such a call is answered
// at once when all is well; a client like perf_analyzer asks for statistics with no timeout of its own, and
// one that never came back would hold it forever while its inferences went on.
func (s *server) forwardBounded(w http.ResponseWriter, r *http.Request, proxy *httputil.ReverseProxy) {
	ctx, cancel := context.WithTimeoutCause(r.Context(), seconds(s.cfg.Settings.TimeoutS)+answerGrace, errForwardTimedOut)
	defer cancel()
	proxy.ServeHTTP(w, r.WithContext(ctx))
}

// errForwardTimedOut: the cause of a forwarded call's context when the Python front-end did not answer in time.
var errForwardTimedOut = errors.New("no answer within the server's timeout and the grace")

// forwardFailed: what the proxies' error handlers do first: a call the Python front-end did not answer in time
// asks for every process's state.
func (s *server) forwardFailed(r *http.Request) {
	if context.Cause(r.Context()) == errForwardTimedOut && s.onLost != nil {
		s.onLost()
	}
}

// isOurInfer: /v2/models/{model}[/versions/{version}]/infer for the served model, version 1 or none.
func (s *server) isOurInfer(path string) bool {
	rest, ok := strings.CutPrefix(path, "/v2/models/")
	if !ok {
		return false
	}
	rest, ok = strings.CutSuffix(rest, "/infer")
	if !ok {
		return false
	}
	name, version, versioned := strings.Cut(rest, "/versions/")
	return name == s.cfg.Settings.ModelName && (!versioned || version == "1")
}

// infer serves one request on the fast path; false (nothing written, body unread) hands it to the proxy.
func (s *server) infer(w http.ResponseWriter, r *http.Request) bool {
	m := s.model.Load()
	hl, err := strconv.ParseInt(r.Header.Get(headerLength), 10, 64)
	n := r.ContentLength
	if err != nil || hl <= 0 || n <= 0 || hl > n || n > s.maxBody || m.state != "ready" || s.draining.Load() ||
		(r.Header.Get("Content-Encoding") != "" && r.Header.Get("Content-Encoding") != "identity") {
		return false
	}
	started := time.Now()
	stamp("g_head")
	pad := padBefore(hl) // the tensors' bytes, after the JSON header, start on a cache line
	off := s.arena.allocBody(int(n)+pad, s.keep)
	if off < 0 {
		s.count(1, "", 0)
		s.refuse(w, started, s.overloaded())
		return true
	}
	body := s.arena.mem[off+pad : off+pad+int(n)]
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(seconds(s.cfg.Settings.BodyTimeoutS)))
	_, err = io.ReadFull(r.Body, body)
	rc.SetReadDeadline(time.Time{})
	stamp("g_body")
	if err != nil {
		s.arena.release(off)
		s.count(1, "", 0)
		s.refuse(w, started, refusal{http.StatusBadRequest, "BadRequest", "bad_request",
			fmt.Sprintf("the request body did not arrive whole within %gs: %v", s.cfg.Settings.BodyTimeoutS, err), 0})
		return true
	}
	p, ok := m.admit(body[:hl], n-hl)
	if !ok { // the Python front-end answers it, from a copy of the body
		copied := bytes.Clone(body)
		s.arena.release(off)
		r2 := r.Clone(r.Context())
		r2.Body, r2.ContentLength = io.NopCloser(bytes.NewReader(copied)), int64(len(copied))
		s.proxy.ServeHTTP(w, r2)
		return true
	}
	s.count(1, "", 0)
	mb := &member{p: &p, key: string(body[:hl]), base: int64(off+pad) + hl, body: off, arrived: started,
		result: make(chan memberResult, 1)}
	s.submit(m, mb)
	res := <-mb.result
	stamp("g_wake")
	if !mb.bodyFreed { // after the answer is written: a group of one is sent where its body lies
		defer s.arena.release(off)
	}
	defer res.done()
	if res.refusal != nil {
		s.refuse(w, started, *res.refusal)
		return true
	}
	inOneWrite(w, connOf(r.Context()), func() { s.answer(w, m, &p, res, started) })
	stamp("g_answered")
	return true
}

// describe builds the engine's descriptor of `rows` rows whose inputs lie at `offsets` (as
// RemoteModel.infer_started sends one, with the count of client requests in it last) and the rooms for
// fixed-size outputs; nil when the arena has no room for them.
func (s *server) describe(m *model, p *plan, rows int64, offsets []int64, timeout float64, requests int, regions *[]int) *describedRequest {
	rid := s.ids.Add(1)
	b := make([]byte, 0, 256)
	b = append(b, `["infer",`...)
	b = strconv.AppendUint(b, rid, 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, rows, 10)
	b = append(b, ",["...)
	for i, in := range p.inputs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '[')
		b = append(b, in.quoted...)
		b = append(b, `,"`...)
		b = append(b, in.dtype...)
		b = append(b, `",[`...)
		b = strconv.AppendInt(b, rows, 10)
		for _, d := range in.shape[1:] {
			b = append(b, ',')
			b = strconv.AppendInt(b, d, 10)
		}
		b = append(b, "],"...)
		b = strconv.AppendInt(b, offsets[i], 10)
		b = append(b, ",null]"...)
	}
	b = append(b, "],["...)
	for i, oi := range p.outputs {
		o := &m.outputs[oi]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '[')
		b = append(b, o.quoted...)
		if o.rowBytes < 0 {
			b = append(b, ",null]"...)
			continue
		}
		off := s.arena.alloc(int(rows * o.rowBytes))
		if off < 0 {
			return nil
		}
		*regions = append(*regions, off)
		b = append(b, ",["...)
		b = strconv.AppendInt(b, int64(off), 10)
		b = append(b, ",["...)
		b = strconv.AppendInt(b, rows, 10)
		for _, d := range o.rowShape {
			b = append(b, ',')
			b = strconv.AppendInt(b, d, 10)
		}
		b = append(b, "]]]"...)
	}
	b = append(b, "],"...)
	b = strconv.AppendFloat(b, timeout, 'g', -1, 64)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(requests), 10)
	b = append(b, ']')
	return &describedRequest{rid, b}
}

type describedRequest struct {
	rid uint64
	msg []byte
}

// answerGrace: how long past a descriptor's own timeout this front-end waits for the engine's answer.
// The engine answers every descriptor, at the latest with TimedOut at its deadline, so one that has
// not answered by then and this grace is lost (a bug somewhere). Its clients would wait forever, and
// with them every request this front-end holds back until an answer comes (group.go); an HTTP run after
// a gRPC run hung that way on the GPU host (docs/server-measured.md, twenty-sixth session).
var answerGrace = 10 * time.Second

// ask sends one descriptor and waits for the engine's reply (nil: the engine is gone), at most wait:
// answered is false when it did not come by then (the descriptor is then lost: see lost).
func (s *server) ask(d *describedRequest, wait time.Duration) (reply []json.RawMessage, answered bool) {
	done := make(chan []json.RawMessage, 1)
	s.mu.Lock()
	if s.waiting == nil {
		s.mu.Unlock()
		return nil, true
	}
	s.waiting[d.rid] = done
	s.mu.Unlock()
	stamp("g_send")
	if !s.ch.send(d.msg) {
		s.mu.Lock()
		delete(s.waiting, d.rid)
		s.mu.Unlock()
		return nil, true
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case reply := <-done:
		return reply, true
	case <-timer.C:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, waits := s.waiting[d.rid]; !waits { // answered meanwhile, or the engine has gone (failAll)
		return <-done, true
	}
	delete(s.waiting, d.rid)
	return nil, false
}

// lost keeps a descriptor's arena regions, and the bodies of its members that are not yet freed, from
// reuse until the engine answers it after all (it may still read the inputs and write the outputs
// there); the members' answers then free nothing.
func (s *server) lost(rid uint64, group []*member, regions *[]int) {
	keep := append([]int(nil), *regions...)
	*regions = nil
	for _, mb := range group {
		if !mb.bodyFreed {
			keep = append(keep, mb.body)
			mb.bodyFreed = true
		}
	}
	s.mu.Lock()
	s.late[rid] = keep
	s.mu.Unlock()
}

// answerTensor: one output of a member's answer, its bytes in the arena (or in the reply).
type answerTensor struct {
	quoted string // the name as a JSON string
	name   string
	v2     string
	shape  []int64
	data   []byte
}

var unreadable = refusal{http.StatusInternalServerError, "InferenceFailed", "error", "the engine's answer could not be read", 0}

// outputsOf reads the engine's reply for one member: its rows of every output asked for, or the
// refusal the reply says (an engine error, or an answer this front-end cannot read).
func (s *server) outputsOf(m *model, p *plan, res memberResult) ([]answerTensor, *refusal) {
	reply := res.reply
	if len(reply) < 4 {
		return nil, &unreadable
	}
	if string(reply[2]) != "null" {
		var e []json.RawMessage
		var cls, text string
		var retry float64
		if json.Unmarshal(reply[2], &e) != nil || len(e) < 3 || json.Unmarshal(e[0], &cls) != nil ||
			json.Unmarshal(e[1], &text) != nil || json.Unmarshal(e[2], &retry) != nil {
			cls, text = "InferenceFailed", "the engine's answer could not be read"
		}
		status, outcome := statusOf(cls)
		return nil, &refusal{status, cls, outcome, text, retry}
	}
	places, ok := splitArray(reply[3], make([]json.RawMessage, 0, len(p.outputs)))
	if !ok || len(places) != len(p.outputs) {
		return nil, &unreadable
	}
	out := make([]answerTensor, len(places))
	var fieldsOf [5]json.RawMessage
	for i, raw := range places {
		pl, ok := splitArray(raw, fieldsOf[:0])
		if !ok || len(pl) < 5 {
			return nil, &unreadable
		}
		dtype, ok1 := rawString(pl[1])
		shape, ok2 := rawInts(pl[2])
		offset, ok3 := rawInt(pl[3])
		var inline []byte // base64 in JSON: only small outputs of unknown size come inline
		ok4 := string(pl[4]) == "null" || json.Unmarshal(pl[4], &inline) == nil
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return nil, &unreadable
		}
		d, known := byStr[dtype]
		item := int64(d.size)
		if len(shape) == 0 || shape[0] != res.total {
			return nil, &unreadable
		}
		count := int64(1)
		for _, d := range shape[1:] {
			count *= d
		}
		rowBytes := count * item
		nbytes := rowBytes * p.rows // this request's rows of the group's output
		first := rowBytes * res.start
		o := &m.outputs[p.outputs[i]]
		t := answerTensor{quoted: o.quoted, name: o.name, v2: d.v2, shape: append([]int64{p.rows}, shape[1:]...)}
		switch {
		case !known || item == 0:
			return nil, &refusal{http.StatusInternalServerError, "InferenceFailed", "error", "the engine answered a datatype " + dtype + " this front-end cannot send", 0}
		case inline != nil:
			if int64(len(inline)) != rowBytes*res.total {
				return nil, &unreadable
			}
			t.data = inline[first : first+nbytes]
		default:
			if offset < 0 || offset+rowBytes*res.total > int64(len(s.arena.mem)) {
				return nil, &unreadable
			}
			t.data = s.arena.mem[offset+first : offset+first+nbytes]
		}
		out[i] = t
	}
	return out, nil
}

// answer writes the engine's reply: the binary v2 answer (outputs straight from the arena), or its error.
func (s *server) answer(w http.ResponseWriter, m *model, p *plan, res memberResult, started time.Time) {
	outs, bad := s.outputsOf(m, p, res)
	if bad != nil {
		s.refuse(w, started, *bad)
		return
	}
	var head bytes.Buffer
	head.WriteString(`{"model_name":`)
	q, _ := json.Marshal(s.cfg.Settings.ModelName)
	head.Write(q)
	head.WriteString(`,"model_version":"1","outputs":[`)
	total := 0
	for i, t := range outs {
		if i > 0 {
			head.WriteByte(',')
		}
		fmt.Fprintf(&head, `{"name":%s,"datatype":"%s","shape":%s,"parameters":{"binary_data_size":%d}}`,
			t.quoted, t.v2, ints(t.shape), len(t.data))
		total += len(t.data)
	}
	head.WriteString("]")
	if p.id != "" {
		head.WriteString(`,"id":`)
		head.WriteString(p.id)
	}
	head.WriteString("}")
	total += head.Len()
	h := w.Header()
	h["Content-Type"] = []string{"application/octet-stream"}
	h[headerLength] = []string{strconv.Itoa(head.Len())}
	h["Content-Length"] = []string{strconv.Itoa(total)}
	w.WriteHeader(http.StatusOK)
	w.Write(head.Bytes())
	for _, t := range outs {
		w.Write(t.data)
	}
	s.count(0, "success", time.Since(started).Seconds())
}

type refusal struct {
	status  int
	class   string
	outcome string
	message string
	retry   float64
}

func (s *server) overloaded() refusal {
	return refusal{http.StatusServiceUnavailable, "Overloaded", "overloaded", fmt.Sprintf(
		"this server holds %d bytes of tensors in flight, its limit (--max-inflight-mb); retry shortly or add replicas",
		s.arena.bytesInUse()), 1}
}

// refuse answers an error the engine gave or the fast path met, counted as its outcome; one
// refused before it reached the engine is also a failure in the engine's statistics.
func (s *server) refuse(w http.ResponseWriter, started time.Time, e refusal) {
	writeError(w, e.status, e.class, e.message, e.retry)
	s.refused(started, e)
}

// refused counts a refusal as its outcome (HTTP and gRPC alike).
func (s *server) refused(started time.Time, e refusal) {
	elapsed := time.Since(started)
	if e.class == "Overloaded" || e.class == "BadRequest" {
		s.failed(elapsed)
	}
	s.count(0, e.outcome, elapsed.Seconds())
}

// failed tells the engine's statistics of a request that never reached it.
func (s *server) failed(after time.Duration) {
	s.ch.send([]byte(fmt.Sprintf(`["failed",%d]`, after.Nanoseconds())))
}

// errorKinds: the engine's error classes, their HTTP status and metrics outcome (infer_http.STATUS, errors.py).
var errorKinds = map[string]struct {
	status  int
	outcome string
}{
	"BadRequest": {http.StatusBadRequest, "bad_request"}, "ModelNotFound": {http.StatusNotFound, "not_found"},
	"PayloadTooLarge": {http.StatusRequestEntityTooLarge, "too_large"},
	"NotReady":        {http.StatusServiceUnavailable, "not_ready"}, "Overloaded": {http.StatusServiceUnavailable, "overloaded"},
	"TimedOut": {http.StatusGatewayTimeout, "timeout"}, "InferenceFailed": {http.StatusInternalServerError, "error"},
}

func statusOf(class string) (int, string) {
	if k, ok := errorKinds[class]; ok {
		return k.status, k.outcome
	}
	return http.StatusInternalServerError, "error"
}

func writeError(w http.ResponseWriter, status int, class, message string, retry float64) {
	if class == "Overloaded" {
		r := int(retry + 0.5)
		if r < 1 {
			r = 1
		}
		w.Header().Set("Retry-After", strconv.Itoa(r))
	}
	q, _ := json.Marshal(message)
	writeJSON(w, status, `{"error":`+string(q)+`}`)
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func ints(v []int64) string {
	return string(appendInts(make([]byte, 0, 8*len(v)+2), v))
}

func appendInts(b []byte, v []int64) []byte {
	b = append(b, '[')
	for i, d := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, d, 10)
	}
	return append(b, ']')
}

// -- the engine's messages ------------------------------------------------------------------

func (s *server) readChannel() error {
	return s.ch.read(func(kind string, msg []json.RawMessage) {
		switch kind {
		case "done":
			if len(msg) < 4 {
				return
			}
			id, ok := rawInt(msg[1])
			if !ok {
				return
			}
			rid := uint64(id)
			stamp("g_reply")
			s.mu.Lock()
			done := s.waiting[rid]
			delete(s.waiting, rid)
			late, wasLost := s.late[rid]
			delete(s.late, rid)
			s.mu.Unlock()
			if done != nil {
				done <- msg
			} else if wasLost {
				for _, off := range late {
					s.arena.release(off)
				}
				log.Printf("descriptor %d was answered after its clients were told it timed out: its arena regions are free again", rid)
			}
		case "ping": // the engine checks that this process still answers (supervisor._check_frontends)
			s.pingedAt.Store(time.Now().UnixNano())
			if len(msg) > 1 {
				pong := append(append([]byte(`["pong",`), msg[1]...), ']')
				go s.ch.send(pong) // not from the reader: a write may wait for the engine to read
			}
		case "state":
			s.onState(msg)
		case "room": // a batch the engine took left room while this front-end held requests (Dispatcher.room)
			if len(msg) > 1 {
				if backlog, ok := rawInt(msg[1]); ok {
					s.roomed(backlog)
				}
			}
		}
	})
}

// onState takes the engine's ("state", state, error, info, merge_max, small_request_bytes): the model, and what
// makes a request small for the small requests' bound (the engine decides once it has timed the model: 0, none
// is, for a model whose batch-1 run is not short; settings.small_request_bytes).
func (s *server) onState(msg []json.RawMessage) {
	var state, errText string
	var info *modelInfo
	if len(msg) < 4 || json.Unmarshal(msg[1], &state) != nil {
		return
	}
	json.Unmarshal(msg[2], &errText)
	if json.Unmarshal(msg[3], &info) != nil {
		info = nil
	}
	m := newModel(state, errText, info)
	if len(msg) > 4 {
		json.Unmarshal(msg[4], &m.mergeMax)
	}
	if len(msg) > 5 {
		var small int64
		if json.Unmarshal(msg[5], &small) == nil {
			s.batcher.mu.Lock()
			s.batcher.smallBytes = small
			s.batcher.mu.Unlock()
		}
	}
	s.model.Store(m)
}

// failAll answers every waiting request "engine gone" and refuses new ones.
func (s *server) failAll() {
	s.mu.Lock()
	waiting := s.waiting
	s.waiting = nil
	s.mu.Unlock()
	for _, done := range waiting {
		done <- nil
	}
}

// -- request counts for the engine's metrics ---------------------------------------------------

const reportInterval = 20 * time.Millisecond // as frontend.REPORT_INTERVAL_S

func (s *server) count(started int, outcome string, seconds float64) {
	s.countMu.Lock()
	s.started += started
	if outcome != "" {
		s.finished = append(s.finished, [2]any{outcome, seconds})
	}
	s.countMu.Unlock()
}

func (s *server) reportLoop() {
	for range time.Tick(reportInterval) {
		s.report()
	}
}

func (s *server) report() {
	s.countMu.Lock()
	started, finished := s.started, s.finished
	s.started, s.finished = 0, nil
	s.countMu.Unlock()
	if started == 0 && len(finished) == 0 {
		return
	}
	if finished == nil {
		finished = [][2]any{}
	}
	b, _ := json.Marshal([]any{"requests", started, finished})
	s.ch.send(b)
}
