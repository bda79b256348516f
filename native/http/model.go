package main

// What the served model accepts (the engine's "state" message) and the fast path's admission:
// the same checks as model.admit. A request the fast path does not take whole (JSON tensor
// data, non-binary outputs, compression, anything it would refuse) goes to the Python
// front-end unchanged, so every refusal and every rare form is answered by one implementation.

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

const (
	// maxShapeBytes: a tensor's dimensions other than zero multiply to less than this many bytes
	// (protocol.MAX_SHAPE_BYTES); past it Python refuses "beyond any tensor". Checked before any product
	// is formed: a [1, 2**61-1] shape of INT64 once wrapped to a negative size that matched a negative
	// binary_data_size, and the group's copy then panicked and took the front-end down.
	maxShapeBytes = int64(1) << 62
	maxTimeoutUS  = int64(86_400) * 1_000_000 // protocol.MAX_TIMEOUT_US: a longer "timeout" is taken as this
	shmRegion     = "shared_memory_region"    // a tensor in a client's region: Python's to place
)

// tensorBytes: the bytes of a tensor of `shape` with items of `itemSize`, checked against the model's
// `spec` (-1: any size); false where a dimension is negative or differs from the spec, or the shape is
// beyond any tensor (maxShapeBytes).
func tensorBytes(shape, spec []int64, itemSize int64) (int64, bool) {
	nonZero, zero := itemSize, false
	for i, d := range shape {
		if d < 0 || (spec[i] >= 0 && spec[i] != d) {
			return 0, false
		}
		if d == 0 {
			zero = true
		} else if nonZero >= maxShapeBytes/d {
			return 0, false
		} else {
			nonZero *= d
		}
	}
	if nonZero >= maxShapeBytes {
		return 0, false
	}
	if zero {
		return 0, true
	}
	return nonZero, true
}

// fieldNames: the keys of requestDoc, requestInput and requestOutput. encoding/json gives a key to a field
// whatever its case ("Name", "SHAPE", the last of them winning), where Python reads only the exact key.
var fieldNames = [...]string{"id", "inputs", "outputs", "parameters", "name", "shape", "datatype", "data"}

// plainHeader: false for a header that encoding/json would read otherwise than Python's json: bytes that
// are not UTF-8 (Python refuses them; Go would pass them on raw in an echoed id) or an object key that is
// one of fieldNames in another case. Such a header goes to the Python front-end, which answers it as it does.
func plainHeader(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var objects []bool // the open containers: true for an object
	key := false       // the next string is a key
	for {
		tok, err := dec.Token()
		if err != nil {
			return err == io.EOF
		}
		switch t := tok.(type) {
		case json.Delim:
			if t == '{' || t == '[' {
				objects = append(objects, t == '{')
				key = t == '{'
				continue
			}
			objects = objects[:len(objects)-1]
		case string:
			if key {
				for _, f := range fieldNames {
					if t != f && strings.EqualFold(t, f) {
						return false
					}
				}
				key = false
				continue
			}
		}
		key = len(objects) > 0 && objects[len(objects)-1] // a value ended: in an object a key comes next
	}
}

// numpy dtype name -> v2 datatype, item size, numpy dtype string (what the dispatcher's views take)
type dtypeInfo struct {
	v2   string
	size int
	str  string
}

var dtypes = map[string]dtypeInfo{
	"bool": {"BOOL", 1, "|b1"}, "uint8": {"UINT8", 1, "|u1"}, "uint16": {"UINT16", 2, "<u2"},
	"uint32": {"UINT32", 4, "<u4"}, "uint64": {"UINT64", 8, "<u8"}, "int8": {"INT8", 1, "|i1"},
	"int16": {"INT16", 2, "<i2"}, "int32": {"INT32", 4, "<i4"}, "int64": {"INT64", 8, "<i8"},
	"float16": {"FP16", 2, "<f2"}, "float32": {"FP32", 4, "<f4"}, "float64": {"FP64", 8, "<f8"},
}

// the same table by numpy dtype string ("<f4"): what the engine's answers name
var byStr = func() map[string]dtypeInfo {
	m := map[string]dtypeInfo{}
	for _, d := range dtypes {
		m[d.str] = d
	}
	return m
}()

type tensorSpec struct {
	Name  string  `json:"name"`
	Dtype string  `json:"dtype"`
	Shape []int64 `json:"shape"`
}

type modelInfo struct {
	Name     string       `json:"name"`
	Inputs   []tensorSpec `json:"inputs"`
	Outputs  []tensorSpec `json:"outputs"`
	MaxBatch int64        `json:"max_batch"`
}

type inputSpec struct {
	tensorSpec
	dtype  dtypeInfo
	quoted string // its JSON string, written into every descriptor
}

type outputSpec struct {
	name     string
	quoted   string // its JSON string, written into every answer
	rowShape []int64
	rowBytes int64 // -1: known only after the run (the engine sends it inline)
}

// model: the engine's state, replaced whole on every "state" message (read without locks).
type model struct {
	mergeMax int64 // rows a merged batch may reach in the engine (0: the max batch): a group stops there
	state    string
	err      string
	info     *modelInfo
	inputs   map[string]*inputSpec
	outputs  []outputSpec
	byName   map[string]int

	// Admitted plans by their header's bytes: clients send the same header again and again (only the
	// tensor bytes change), so most requests skip the JSON parse. Bounded; plans are read-only.
	mu    sync.Mutex
	plans map[string]plan
}

const maxPlans = 256

func newModel(state, errText string, info *modelInfo) *model {
	m := &model{state: state, err: errText, info: info, plans: map[string]plan{}}
	if info == nil {
		return m
	}
	m.inputs = map[string]*inputSpec{}
	for _, s := range info.Inputs {
		d, ok := dtypes[s.Dtype]
		if !ok {
			m.inputs = nil // an input this path cannot describe: every request goes to the Python front-end
			break
		}
		q, _ := json.Marshal(s.Name)
		m.inputs[s.Name] = &inputSpec{s, d, string(q)}
	}
	m.byName = map[string]int{}
	for i, s := range info.Outputs {
		q, _ := json.Marshal(s.Name)
		o := outputSpec{name: s.Name, quoted: string(q), rowBytes: -1}
		if d, ok := dtypes[s.Dtype]; ok && len(s.Shape) > 0 {
			o.rowShape, o.rowBytes = s.Shape[1:], int64(d.size)
			for _, dim := range o.rowShape {
				if dim < 0 {
					o.rowBytes = -1
					break
				}
				o.rowBytes *= dim
			}
		}
		m.outputs = append(m.outputs, o)
		m.byName[s.Name] = i
	}
	return m
}

// The v2 request header as the fast path reads it; RawMessage where Python accepts more forms
// than this path takes (those requests go to the Python front-end).
type requestDoc struct {
	ID         json.RawMessage            `json:"id"`
	Inputs     []requestInput             `json:"inputs"`
	Outputs    []requestOutput            `json:"outputs"`
	Parameters map[string]json.RawMessage `json:"parameters"`
}

type requestInput struct {
	Name       string                     `json:"name"`
	Shape      []int64                    `json:"shape"`
	Datatype   string                     `json:"datatype"`
	Parameters map[string]json.RawMessage `json:"parameters"`
	Data       json.RawMessage            `json:"data"`
}

type requestOutput struct {
	Name       string                     `json:"name"`
	Parameters map[string]json.RawMessage `json:"parameters"`
}

type placedInput struct {
	quoted string // the name as a JSON string
	dtype  string
	shape  []int64
	offset int64 // from the start of the binary data
	size   int64 // its bytes (shape[0] rows of equal size)
}

// plan: an admitted request, ready to be described to the engine.
type plan struct {
	id        string // JSON-quoted, or "" for none
	rows      int64
	inputs    []placedInput
	outputs   []int // indices into model.outputs, in the order asked
	timeoutUS int64 // 0: the server's default
	binaryLen int64 // the tensor bytes after the header
}

// tensorBytes: the request's input tensors' bytes (what makes it small or large to the batcher).
func (p *plan) tensorBytes() int64 {
	var n int64
	for _, in := range p.inputs {
		n += in.size
	}
	return n
}

// admit parses and checks a request header the way protocol.parse_infer_request and
// model.admit do; ok=false means "let the Python front-end answer it" (a refusal or a form this
// path does not take), never a different answer.
func (m *model) admit(header []byte, binaryLen int64) (plan, bool) {
	m.mu.Lock()
	p, hit := m.plans[string(header)]
	m.mu.Unlock()
	if hit {
		return p, p.binaryLen == binaryLen
	}
	p, ok := m.parse(header, binaryLen)
	if ok {
		m.mu.Lock()
		if len(m.plans) >= maxPlans {
			clear(m.plans)
		}
		m.plans[string(header)] = p
		m.mu.Unlock()
	}
	return p, ok
}

func (m *model) parse(header []byte, binaryLen int64) (p plan, ok bool) {
	p.binaryLen = binaryLen
	if m.inputs == nil {
		return p, false
	}
	var doc requestDoc
	if json.Unmarshal(header, &doc) != nil || len(doc.Inputs) != len(m.inputs) || !plainHeader(header) {
		return p, false
	}
	binaryOut := false
	for k, v := range doc.Parameters {
		switch k {
		case "binary_data_output":
			if !jsonBool(v, &binaryOut) {
				return p, false
			}
		case "timeout":
			t, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil || t <= 0 {
				return p, false
			}
			p.timeoutUS = min(t, maxTimeoutUS)
		}
	}
	if len(doc.ID) > 0 && string(doc.ID) != "null" {
		var s string
		if json.Unmarshal(doc.ID, &s) != nil {
			return p, false // a number or object: Python's str() of it
		}
		p.id = string(doc.ID)
	}
	var offset int64
	p.rows = -1
	seen := map[string]bool{}
	for _, in := range doc.Inputs {
		spec := m.inputs[in.Name]
		if spec == nil || seen[in.Name] || in.Data != nil || spec.dtype.v2 != in.Datatype {
			return p, false
		}
		seen[in.Name] = true
		if _, has := in.Parameters[shmRegion]; has || len(in.Shape) != len(spec.Shape) || len(in.Shape) == 0 {
			return p, false
		}
		want, fits := tensorBytes(in.Shape, spec.Shape, int64(spec.dtype.size))
		if !fits || (p.rows >= 0 && in.Shape[0] != p.rows) {
			return p, false
		}
		p.rows = in.Shape[0]
		size, err := strconv.ParseInt(string(in.Parameters["binary_data_size"]), 10, 64)
		if err != nil || size != want || size > binaryLen-offset {
			return p, false
		}
		p.inputs = append(p.inputs, placedInput{spec.quoted, spec.dtype.str, in.Shape, offset, size})
		offset += size
	}
	if offset != binaryLen || p.rows < 1 || p.rows > m.info.MaxBatch {
		return p, false
	}
	if doc.Outputs == nil {
		if !binaryOut {
			return p, false
		}
		for i := range m.outputs {
			p.outputs = append(p.outputs, i)
		}
		return p, true
	}
	for _, o := range doc.Outputs {
		i, known := m.byName[o.Name]
		binary := binaryOut
		if _, has := o.Parameters[shmRegion]; has || !known || !jsonBool(o.Parameters["binary_data"], &binary) || !binary {
			return p, false
		}
		if c, has := o.Parameters["classification"]; has && string(c) != "null" && string(c) != "0" && string(c) != "false" {
			return p, false
		}
		p.outputs = append(p.outputs, i)
	}
	return p, len(p.outputs) > 0 // none asked: a JSON answer, which the Python front-end writes
}

// jsonBool reads a JSON true/false into *b (absent: unchanged); false for any other value.
func jsonBool(raw json.RawMessage, b *bool) bool {
	switch string(raw) {
	case "":
		return true
	case "true":
		*b = true
		return true
	case "false":
		*b = false
		return true
	}
	return false
}
