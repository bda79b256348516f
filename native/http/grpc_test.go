package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// inferRequest builds a ModelInferRequest by hand: model a, one input x of shape, its raw bytes, outputs asked.
func inferRequest(shape []int64, raw []byte, outputs ...string) []byte {
	var in []byte
	in = appendString(in, 1, "x")
	in = appendString(in, 2, "FP32")
	in = appendPackedInt64s(in, 3, shape)
	var b []byte
	b = appendString(b, 1, "a")
	b = appendString(b, 3, "id-1")
	b = appendBytesHead(b, 5, len(in))
	b = append(b, in...)
	for _, o := range outputs {
		out := appendString(nil, 1, o)
		b = appendBytesHead(b, 6, len(out))
		b = append(b, out...)
	}
	b = appendBytesHead(b, 7, len(raw))
	return append(b, raw...)
}

func TestAModelInferRequestIsReadWithItsTensorBytesWhereTheyLie(t *testing.T) {
	raw := make([]byte, 2*4*4)
	for i := range 8 {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(float32(i)))
	}
	msg := inferRequest([]int64{2, 4}, raw, "s")
	req, ok := parseInferRequest(msg)
	if !ok || req.model != "a" || req.id != "id-1" || len(req.inputs) != 1 || len(req.raws) != 1 {
		t.Fatalf("parsed %+v ok=%v", req, ok)
	}
	in := req.inputs[0]
	if in.name != "x" || in.datatype != "FP32" || len(in.shape) != 2 || in.shape[0] != 2 || in.shape[1] != 4 || in.other {
		t.Fatalf("input %+v", in)
	}
	if start := req.raws[0].start; string(msg[start:start+len(raw)]) != string(raw) {
		t.Fatalf("raw_input_contents start at %d, not where the bytes lie", start)
	}
	p, key, ok := affine().admitGRPC(&req)
	if !ok || p.rows != 2 || len(p.outputs) != 1 || p.outputs[0] != 1 || p.inputs[0].offset != int64(req.raws[0].start) {
		t.Fatalf("plan %+v ok=%v", p, ok)
	}
	// Another request of other rows but the same row shape and outputs may be grouped with it; other outputs may not.
	other, _ := parseInferRequest(inferRequest([]int64{1, 4}, raw[:16], "s"))
	if _, k2, ok := affine().admitGRPC(&other); !ok || k2 != key {
		t.Fatalf("same kind of request, key %q against %q", k2, key)
	}
	both, _ := parseInferRequest(inferRequest([]int64{1, 4}, raw[:16]))
	if p, k3, ok := affine().admitGRPC(&both); !ok || k3 == key || len(p.outputs) != 2 {
		t.Fatalf("all outputs: key %q, plan %+v", k3, p)
	}
}

func TestWhatTheFastPathDoesNotTakeWholeGoesToPython(t *testing.T) {
	m := affine()
	cases := map[string][]byte{
		"wrong row shape":   inferRequest([]int64{1, 3}, make([]byte, 12)),
		"size disagrees":    inferRequest([]int64{1, 4}, make([]byte, 12)),
		"too many rows":     inferRequest([]int64{9, 4}, make([]byte, 144)),
		"no rows":           inferRequest([]int64{0, 4}, nil),
		"unknown output":    inferRequest([]int64{1, 4}, make([]byte, 16), "w"),
		"typed contents":    typedContents(),
		"a timeout string":  append(inferRequest([]int64{1, 4}, make([]byte, 16)), timeoutParam(false)...),
		"two raw for one":   append(inferRequest([]int64{1, 4}, make([]byte, 16)), appendBytesHead(nil, 7, 0)...),
		"a truncated field": inferRequest([]int64{1, 4}, make([]byte, 16))[:20],
	}
	for what, msg := range cases {
		req, parsed := parseInferRequest(msg)
		if parsed {
			if _, _, ok := m.admitGRPC(&req); ok {
				t.Errorf("%s: taken by the fast path", what)
			}
		}
	}
	req, _ := parseInferRequest(append(inferRequest([]int64{1, 4}, make([]byte, 16)), timeoutParam(true)...))
	if p, _, ok := m.admitGRPC(&req); !ok || p.timeoutUS != 250 {
		t.Fatalf("a timeout of 250 us: %+v %v", p, ok)
	}
}

func typedContents() []byte {
	var contents []byte
	contents = appendTag(contents, 1, wireFixed32)
	contents = binary.LittleEndian.AppendUint32(contents, 0)
	var in []byte
	in = appendString(in, 1, "x")
	in = appendString(in, 2, "FP32")
	in = appendPackedInt64s(in, 3, []int64{1, 1})
	in = appendBytesHead(in, 5, len(contents))
	in = append(in, contents...)
	b := appendString(nil, 1, "a")
	b = appendBytesHead(b, 5, len(in))
	return append(b, in...)
}

// timeoutParam: parameters["timeout"] as int64 250 (good) or as a string.
func timeoutParam(good bool) []byte {
	var value []byte
	if good {
		value = append(appendTag(nil, 2, wireVarint), 250, 1) // 250 as a varint
	} else {
		value = appendString(nil, 3, "soon")
	}
	entry := appendString(nil, 1, "timeout")
	entry = appendBytesHead(entry, 2, len(value))
	entry = append(entry, value...)
	return append(appendBytesHead(nil, 4, len(entry)), entry...)
}

func TestGRPCTimeoutsAndMessagesAreReadAndWrittenAsTheProtocolSays(t *testing.T) {
	for v, want := range map[string]int64{"100m": 100_000, "2S": 2_000_000, "1H": 3_600_000_000, "5u": 5, "1000n": 1} {
		if got, ok := grpcTimeout(v); !ok || got != want {
			t.Errorf("grpc-timeout %q: %d %v, want %d", v, got, ok, want)
		}
	}
	for _, bad := range []string{"", "m", "10x", "-1S", "1234567890S"} {
		if _, ok := grpcTimeout(bad); ok {
			t.Errorf("grpc-timeout %q accepted", bad)
		}
	}
	if got := percentEncode("input 'x': 100% é\n"); got != "input 'x': 100%25 %C3%A9%0A" {
		t.Fatalf("grpc-message %q", got)
	}
}

func TestAForwardedCallWaitsForThePythonServersSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grpc.sock")
	go func() {
		time.Sleep(150 * time.Millisecond) // the Python gRPC server binds late
		l, err := net.Listen("unix", path)
		if err != nil {
			return
		}
		defer l.Close()
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := dialWhenUp(context.Background(), path, 5*time.Second)
	if err != nil {
		t.Fatalf("no connection once the socket is there: %v", err)
	}
	c.Close()
	if _, err := dialWhenUp(context.Background(), filepath.Join(t.TempDir(), "none.sock"), 100*time.Millisecond); err == nil {
		t.Fatal("a socket that never comes was reached")
	}
}

func TestAMessageIsPlacedSoThatItsTensorsStartOnACacheLine(t *testing.T) {
	raw := make([]byte, 3*4*4)
	for i := range raw {
		raw[i] = byte(i)
	}
	for outputs := range 6 { // each output asked moves the tensors' bytes further into the message
		names := make([]string, outputs)
		for i := range names {
			names[i] = strings.Repeat("o", i+1)
		}
		msg := inferRequest([]int64{3, 4}, raw, names...)
		room := make([]byte, len(msg)+align)
		got, pad, err := readAligned(bytes.NewReader(msg), room, len(msg))
		req, ok := parseInferRequest(got)
		if err != nil || !ok || !bytes.Equal(got, msg) || &got[0] != &room[pad] {
			t.Fatalf("%d outputs: read %v ok=%v, the message changed: %v", outputs, err, ok, !bytes.Equal(got, msg))
		}
		if (pad+req.raws[0].start)%align != 0 {
			t.Fatalf("%d outputs: the tensors start at %d in the room", outputs, pad+req.raws[0].start)
		}
	}
	// Fields before the tensors longer than what is read first: the message stays where it began, whole.
	long := append(appendString(nil, 3, strings.Repeat("i", alignPeek)), inferRequest([]int64{3, 4}, raw)...)
	got, pad, err := readAligned(bytes.NewReader(long), make([]byte, len(long)+align), len(long))
	if err != nil || pad != 0 || !bytes.Equal(got, long) {
		t.Fatalf("a long message: pad %d err %v, intact %v", pad, err, bytes.Equal(got, long))
	}
	// A message that ends early is an error, as io.ReadFull says.
	if _, _, err := readAligned(bytes.NewReader(long[:100]), make([]byte, len(long)+align), len(long)); err == nil {
		t.Fatal("a short message was read whole")
	}
}

func TestTheTensorsAfterAnHTTPHeaderStartOnACacheLine(t *testing.T) {
	for lead := int64(1); lead < 300; lead++ {
		if pad := padBefore(lead); pad < 0 || pad >= align || (int64(pad)+lead)%align != 0 {
			t.Fatalf("header of %d bytes: pad %d", lead, pad)
		}
	}
}
