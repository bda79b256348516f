package main

// gRPC (inference.GRPCInferenceService) on the pod's gRPC port, over cleartext HTTP/2 (Go's own
// server). As for HTTP, this process answers the hot path itself: ModelInfer with raw tensors
// (raw_input_contents, what tritonclient and perf_analyzer send), read from the socket into the
// arena and described to the engine where they lie, plus ServerLive and ServerReady. Every other
// call, and every ModelInfer it would not take whole (typed contents, shared memory regions,
// compression, another model, anything it would refuse), goes unchanged to the pod's Python
// gRPC server on a unix socket, so every answer but the common one has one implementation.
// Python's grpc front-ends spent ~0.37 ms of a core per tiny request on the H200 host (HTTP's
// 0.14): the gRPC request ceiling was theirs.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"
)

const grpcService = "/inference.GRPCInferenceService/"

// gRPC status codes (google.rpc.Code)
const (
	grpcOK                = 0
	grpcInvalidArgument   = 3
	grpcDeadlineExceeded  = 4
	grpcNotFound          = 5
	grpcResourceExhausted = 8
	grpcInternal          = 13
	grpcUnavailable       = 14
)

// grpcCodes: the engine's error classes as status codes (serve/grpc/server.py STATUS).
var grpcCodes = map[string]int{
	"BadRequest": grpcInvalidArgument, "ModelNotFound": grpcNotFound, "PayloadTooLarge": grpcResourceExhausted,
	"NotReady": grpcUnavailable, "Overloaded": grpcUnavailable, "TimedOut": grpcDeadlineExceeded,
	"InferenceFailed": grpcInternal,
}

type grpcFront struct {
	s        *server
	proxy    *httputil.ReverseProxy
	maxAge   time.Duration // connections older than this (+- ageJitter) are asked to reconnect (GOAWAY); 0: never
	maxCalls int64         // calls in flight at most (as grpc's maximum_concurrent_rpcs); <= 0: no limit
	calls    atomic.Int64
}

func newGRPCFront(s *server, proxyPath string) *grpcFront {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true) // prior knowledge, as grpc clients speak
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialWhenUp(ctx, proxyPath, pythonStartS*time.Second)
		},
		Protocols:       &p,
		IdleConnTimeout: 30 * time.Second,
	}
	g := &grpcFront{s: s, maxAge: seconds(s.cfg.Settings.GRPCMaxConnectionAgeS),
		maxCalls: int64(s.cfg.Settings.MaxConnections)}
	g.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "python-frontend"
		},
		Transport: transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.Printf("gRPC %s: the Python front-end did not answer: %v", r.URL.Path, err)
			s.forwardFailed(r)
			grpcStatus(w, grpcUnavailable, "the server's API process is not reachable; retry shortly", 0)
		},
	}
	return g
}

// pythonStartS: how long a forwarded call waits for the Python gRPC server's socket. grpc binds it
// itself when its front-end has started, which can be after this process answers ready (its HTTP
// API socket, by contrast, is made by the engine process before any front-end starts), and again
// while a replaced Python front-end starts.
const pythonStartS = 10

// dialWhenUp connects to the unix socket at path, trying again while it is not there or refuses,
// until within is over or the call's context ends.
func dialWhenUp(ctx context.Context, path string, within time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(within)
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil || !(errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)) ||
			time.Now().After(deadline) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (g *grpcFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 || r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		http.Error(w, "this port speaks gRPC (HTTP/2, application/grpc); the HTTP API has its own port", http.StatusUnsupportedMediaType)
		return
	}
	if lc := connOf(r.Context()); g.maxAge > 0 && lc != nil && time.Since(lc.accepted) > connectionAge(g.maxAge, lc.ageDraw) {
		// Go's HTTP/2 server reads this as: GOAWAY, and close once the calls in flight are answered
		// (grpc's max_connection_age: clients spread over new replicas as they reconnect).
		w.Header().Set("Connection", "close")
	}
	n := g.calls.Add(1)
	if g.s.threads != nil { // more Go threads while calls overlap (threads.go)
		g.s.threads.note(n)
	}
	if g.maxCalls > 0 && n > g.maxCalls {
		g.calls.Add(-1)
		grpcStatus(w, grpcResourceExhausted, fmt.Sprintf("this server has %d calls in flight, its limit (--max-connections); retry shortly", g.maxCalls), 0)
		return
	}
	defer g.calls.Add(-1)
	switch strings.TrimPrefix(r.URL.Path, grpcService) {
	case "ModelInfer":
		if g.infer(w, r) {
			return
		}
	case "ServerLive":
		if drain(r) {
			grpcAnswer(w, appendBool(nil, 1, true))
			return
		}
	case "ServerReady":
		if drain(r) {
			grpcAnswer(w, appendBool(nil, 1, g.s.ready()))
			return
		}
	}
	if r.URL.Path == grpcService+"ModelInfer" || r.URL.Path == grpcService+"ModelStreamInfer" { // their own timeouts
		g.proxy.ServeHTTP(w, r)
		return
	}
	g.s.forwardBounded(w, r, g.proxy)
}

// drain reads a small request's message (ServerLive/ServerReady have no fields) and says it was small.
func drain(r *http.Request) bool {
	n, err := io.Copy(io.Discard, io.LimitReader(r.Body, 1<<10))
	return err == nil && n < 1<<10
}

// infer serves one ModelInfer on the fast path; false (nothing written, nothing read) hands it to the proxy.
func (g *grpcFront) infer(w http.ResponseWriter, r *http.Request) bool {
	s := g.s
	m := s.model.Load()
	if m.state != "ready" || s.draining.Load() || m.inputs == nil {
		return false
	}
	if enc := r.Header.Get("Grpc-Encoding"); enc != "" && enc != "identity" {
		return false
	}
	started := time.Now()
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(started.Add(seconds(s.cfg.Settings.BodyTimeoutS)))
	defer rc.SetReadDeadline(time.Time{})
	var prefix [5]byte
	if n, err := io.ReadFull(r.Body, prefix[:]); err != nil || prefix[0] != 0 {
		g.forward(w, r, prefix[:n], nil) // a broken or compressed message: Python's grpc says what it is
		return true
	}
	n := int(binary.BigEndian.Uint32(prefix[1:]))
	if int64(n) > s.maxBody {
		grpcStatus(w, grpcResourceExhausted, fmt.Sprintf("Received message larger than max (%d vs. %d)", n, s.maxBody), 0)
		return true
	}
	if n == 0 {
		g.forward(w, r, prefix[:], nil)
		return true
	}
	off := s.arena.allocBody(n+align, s.keep)
	if off < 0 {
		s.count(1, "", 0)
		g.refuse(w, started, s.overloaded())
		return true
	}
	msg, pad, err := readAligned(r.Body, s.arena.mem[off:off+n+align], n)
	if err != nil {
		s.arena.release(off)
		s.count(1, "", 0)
		g.refuse(w, started, refusal{http.StatusBadRequest, "BadRequest", "bad_request",
			fmt.Sprintf("the request message did not arrive whole within %gs: %v", s.cfg.Settings.BodyTimeoutS, err), 0})
		return true
	}
	req, parsed := parseInferRequest(msg)
	var p plan
	var key string
	ok := parsed && req.model == s.cfg.Settings.ModelName && (req.version == "" || req.version == "1")
	if ok {
		p, key, ok = m.admitGRPC(&req)
	}
	if !ok { // the Python front-end answers it, from a copy of the message
		copied := bytes.Clone(msg)
		s.arena.release(off)
		g.forward(w, r, prefix[:], copied)
		return true
	}
	if t, has := grpcTimeout(r.Header.Get("Grpc-Timeout")); has && (p.timeoutUS == 0 || t < p.timeoutUS) {
		p.timeoutUS = max(t, 1) // the client's deadline bounds the queue wait too
	}
	s.count(1, "", 0)
	mb := &member{p: &p, key: key, base: int64(off + pad), body: off, arrived: started, result: make(chan memberResult, 1)}
	s.submit(m, mb)
	res := <-mb.result
	if !mb.bodyFreed {
		defer s.arena.release(off)
	}
	defer res.done()
	if res.refusal != nil {
		g.refuse(w, started, *res.refusal)
		return true
	}
	outs, bad := s.outputsOf(m, &p, res)
	if bad != nil {
		g.refuse(w, started, *bad)
		return true
	}
	g.answer(w, req.id, outs)
	s.count(0, "success", time.Since(started).Seconds())
	return true
}

// forward hands a call to the Python front-end: the bytes already read, then the rest of the body.
func (g *grpcFront) forward(w http.ResponseWriter, r *http.Request, head, msg []byte) {
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(io.MultiReader(bytes.NewReader(head), bytes.NewReader(msg), r.Body))
	r2.ContentLength = -1
	g.proxy.ServeHTTP(w, r2)
}

// answer writes a ModelInferResponse: the fields before the tensors, then each output's bytes
// straight from where the engine put them (raw_output_contents, in the order asked).
func (g *grpcFront) answer(w http.ResponseWriter, id string, outs []answerTensor) {
	head := make([]byte, 5, 256)
	head = appendString(head, 1, g.s.cfg.Settings.ModelName)
	head = appendString(head, 2, "1")
	if id != "" {
		head = appendString(head, 3, id)
	}
	var tensor []byte
	for _, t := range outs {
		tensor = appendString(tensor[:0], 1, t.name)
		tensor = appendString(tensor, 2, t.v2)
		tensor = appendPackedInt64s(tensor, 3, t.shape)
		head = appendBytesHead(head, 5, len(tensor))
		head = append(head, tensor...)
	}
	total := len(head) - 5
	heads := make([][]byte, len(outs))
	for i, t := range outs {
		heads[i] = appendBytesHead(nil, 6, len(t.data))
		total += len(heads[i]) + len(t.data)
	}
	binary.BigEndian.PutUint32(head[1:5], uint32(total))
	h := w.Header()
	h["Content-Type"] = []string{"application/grpc"}
	w.WriteHeader(http.StatusOK)
	w.Write(head)
	for i, t := range outs {
		w.Write(heads[i])
		w.Write(t.data)
	}
	h[http.TrailerPrefix+"Grpc-Status"] = []string{"0"}
}

// refuse answers an error the engine gave or the fast path met, counted as for HTTP (refuse).
func (g *grpcFront) refuse(w http.ResponseWriter, started time.Time, e refusal) {
	code, known := grpcCodes[e.class]
	if !known {
		code = grpcInternal
	}
	grpcStatus(w, code, e.message, e.retry)
	g.s.refused(started, e)
}

// grpcAnswer writes a unary call's response message and status OK.
func grpcAnswer(w http.ResponseWriter, msg []byte) {
	h := w.Header()
	h["Content-Type"] = []string{"application/grpc"}
	w.WriteHeader(http.StatusOK)
	b := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	w.Write(append(b, msg...))
	h[http.TrailerPrefix+"Grpc-Status"] = []string{"0"}
}

// grpcStatus ends a call without a message ("trailers only"): its code, message, and for an
// overload the retry-after the Python server sends too.
func grpcStatus(w http.ResponseWriter, code int, message string, retry float64) {
	h := w.Header()
	h["Content-Type"] = []string{"application/grpc"}
	h["Grpc-Status"] = []string{strconv.Itoa(code)}
	h["Grpc-Message"] = []string{percentEncode(message)}
	if code == grpcUnavailable && retry > 0 {
		h["Retry-After"] = []string{strconv.Itoa(max(1, int(retry+0.5)))}
	}
	w.WriteHeader(http.StatusOK)
}

// percentEncode: grpc-message's encoding (bytes outside printable ASCII, and '%', as %XX).
func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// grpcTimeout reads a grpc-timeout header ("100m": 100 ms) in microseconds.
func grpcTimeout(v string) (int64, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	per := map[byte]float64{'H': 3600e6, 'M': 60e6, 'S': 1e6, 'm': 1e3, 'u': 1, 'n': 1e-3}[v[len(v)-1]]
	if per == 0 {
		return 0, false
	}
	return int64(float64(n) * per), true
}

// -- ModelInferRequest -----------------------------------------------------------------------

type grpcRequest struct {
	model, version, id string
	timeoutUS          int64 // parameters["timeout"].int64_param; 0: none
	badParameter       bool  // a "timeout" that is not a positive int64 (Python says so)
	inputs             []grpcInput
	outputs            []grpcOutput
	raws               []field // raw_input_contents, in order (data: the bytes, start: their offset)
}

type grpcInput struct {
	name, datatype string
	shape          []int64
	other          bool // parameters (a shared memory region) or typed contents: Python's to read
}

type grpcOutput struct {
	name  string
	other bool // parameters (classification, a shared memory region)
}

// parseInferRequest reads a ModelInferRequest's fields; false when the message is malformed.
func parseInferRequest(msg []byte) (req grpcRequest, ok bool) {
	ok = fields(msg, func(f field) bool {
		if f.typ != wireBytes {
			return true // no scalar fields here: unknown, skipped as protobuf does
		}
		switch f.num {
		case 1:
			req.model = string(f.data)
		case 2:
			req.version = string(f.data)
		case 3:
			req.id = string(f.data)
		case 4:
			key, value, ok := mapEntry(f.data)
			if !ok {
				return false
			}
			if key == "timeout" {
				req.timeoutUS, req.badParameter = 0, true
				fields(value, func(v field) bool {
					if v.num == 2 && v.typ == wireVarint && int64(v.value) > 0 {
						req.timeoutUS, req.badParameter = int64(v.value), false
					}
					return true
				})
			}
		case 5:
			var in grpcInput
			if !fields(f.data, func(t field) bool {
				switch {
				case t.num == 1 && t.typ == wireBytes:
					in.name = string(t.data)
				case t.num == 2 && t.typ == wireBytes:
					in.datatype = string(t.data)
				case t.num == 3:
					var ok bool
					in.shape, ok = int64s(t, in.shape)
					return ok
				case t.num == 4 || t.num == 5:
					in.other = true
				}
				return true
			}) {
				return false
			}
			req.inputs = append(req.inputs, in)
		case 6:
			var out grpcOutput
			if !fields(f.data, func(t field) bool {
				switch {
				case t.num == 1 && t.typ == wireBytes:
					out.name = string(t.data)
				case t.num == 2:
					out.other = true
				}
				return true
			}) {
				return false
			}
			req.outputs = append(req.outputs, out)
		case 7:
			req.raws = append(req.raws, f)
		}
		return true
	})
	return req, ok
}

// mapEntry reads a map<string, InferParameter> entry: its key and its value's message.
func mapEntry(b []byte) (key string, value []byte, ok bool) {
	ok = fields(b, func(f field) bool {
		if f.typ == wireBytes && f.num == 1 {
			key = string(f.data)
		} else if f.typ == wireBytes && f.num == 2 {
			value = f.data
		}
		return true
	})
	return key, value, ok
}

// admitGRPC: the checks of admit (HTTP) for a ModelInferRequest with raw tensors; the plan, the key of
// the requests it may be grouped with, and false for anything the Python front-end should answer.
func (m *model) admitGRPC(req *grpcRequest) (p plan, key string, ok bool) {
	if req.badParameter || len(req.inputs) == 0 || len(req.inputs) != len(m.inputs) || len(req.raws) != len(req.inputs) {
		return p, "", false
	}
	if !utf8.ValidString(req.id) { // Python's protobuf refuses a string field that is not UTF-8
		return p, "", false
	}
	p.timeoutUS = min(req.timeoutUS, maxTimeoutUS)
	p.rows = -1
	k := make([]byte, 0, 64)
	k = append(k, "grpc"...)
	for i, in := range req.inputs {
		spec := m.inputs[in.name]
		if spec == nil || in.other || spec.dtype.v2 != in.datatype || len(in.shape) != len(spec.Shape) || len(in.shape) == 0 {
			return p, "", false
		}
		for _, seen := range p.inputs {
			if seen.quoted == spec.quoted {
				return p, "", false
			}
		}
		size, fits := tensorBytes(in.shape, spec.Shape, int64(spec.dtype.size))
		if !fits || (p.rows >= 0 && in.shape[0] != p.rows) {
			return p, "", false
		}
		p.rows = in.shape[0]
		raw := req.raws[i]
		if int64(len(raw.data)) != size {
			return p, "", false
		}
		p.inputs = append(p.inputs, placedInput{spec.quoted, spec.dtype.str, in.shape, int64(raw.start), size})
		k = append(k, 0)
		k = append(k, in.name...)
		k = appendInts(k, in.shape[1:])
	}
	if p.rows < 1 || p.rows > m.info.MaxBatch {
		return p, "", false
	}
	if len(req.outputs) == 0 {
		for i := range m.outputs {
			p.outputs = append(p.outputs, i)
		}
	}
	for _, o := range req.outputs {
		i, known := m.byName[o.name]
		if !known || o.other {
			return p, "", false
		}
		p.outputs = append(p.outputs, i)
	}
	k = append(k, 1)
	for _, i := range p.outputs {
		k = strconv.AppendInt(append(k, ','), int64(i), 10)
	}
	return p, string(k), true
}

// readAligned reads a message of n bytes into room (n + align bytes from a region's start) so that its
// first raw_input_contents starts on a cache line (see padBefore): the message's first bytes are read,
// the fields before the tensors' bytes found there, and what was read moved to its place before the rest
// is read behind it. A message whose tensors do not start within the first bytes stays where it began.
// It returns the message and its offset in room.
func readAligned(body io.Reader, room []byte, n int) ([]byte, int, error) {
	head := min(n, alignPeek)
	if _, err := io.ReadFull(body, room[:head]); err != nil {
		return nil, 0, err
	}
	pad := 0
	if start, ok := firstRawStart(room[:head]); ok {
		pad = padBefore(int64(start))
		copy(room[pad:pad+head], room[:head])
	}
	msg := room[pad : pad+n]
	_, err := io.ReadFull(body, msg[head:])
	return msg, pad, err
}

// alignPeek: how much of a message is read before it is placed; its fields before the tensors (names,
// shapes, parameters) are far shorter.
const alignPeek = 4096

// firstRawStart: the offset of the first raw_input_contents' bytes (ModelInferRequest field 7) in a
// message that starts with head, when the fields before them lie whole within head (protobuf writes
// fields in number order, so the tensors come last).
func firstRawStart(head []byte) (int, bool) {
	for i := 0; i < len(head); {
		key, n := binary.Uvarint(head[i:])
		if n <= 0 {
			return 0, false
		}
		i += n
		switch key & 7 {
		case wireVarint:
			_, n := binary.Uvarint(head[i:])
			if n <= 0 {
				return 0, false
			}
			i += n
		case wireFixed64:
			i += 8
		case wireFixed32:
			i += 4
		case wireBytes:
			l, n := binary.Uvarint(head[i:])
			if n <= 0 {
				return 0, false
			}
			i += n
			if key>>3 == 7 {
				return i, true
			}
			if l > uint64(len(head)-i) {
				return 0, false
			}
			i += int(l)
		default:
			return 0, false
		}
	}
	return 0, false
}
