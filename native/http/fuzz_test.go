package main

// Fuzz targets for what a client writes and this front-end reads itself: a ModelInferRequest's protobuf
// wire format (pb.go, grpc.go), an HTTP infer request's JSON header (model.go, rawjson.go) and gRPC's
// timeout header. Each must answer ok or not-ok, never panic: a panic in a handler drops the
// connection (net/http recovers it), one anywhere else takes the front-end down with every request in
// flight. `go test ./...` runs the seeds below; `go test -fuzz=FuzzParseInferRequest -fuzztime=60s` (and
// the others, one at a time) searches beyond them.

import (
	"encoding/binary"
	"math"
	"math/big"
	"strings"
	"testing"
)

func FuzzParseInferRequest(f *testing.F) {
	raw := make([]byte, 2*4*4)
	for i := range 8 {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(float32(i)))
	}
	good := inferRequest([]int64{2, 4}, raw, "s")
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(inferRequest([]int64{1 << 40, 4}, raw, "y", "s"))
	f.Add(inferRequest(nil, nil))
	f.Add([]byte{0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f}) // a length-delimited field longer than the message
	f.Add(inferRequest([]int64{1, 1 << 61}, nil, "y"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		req, ok := parseInferRequest(msg)
		if !ok {
			return
		}
		for _, m := range []*model{affine(), twoFree()} {
			p, _, ok := m.admitGRPC(&req)
			if !ok {
				continue
			}
			if p.rows < 0 || p.rows > m.info.MaxBatch {
				t.Fatalf("admitted %d rows (max batch %d)", p.rows, m.info.MaxBatch)
			}
			for _, in := range p.inputs {
				if in.size < 0 || in.offset < 0 || in.offset+in.size > int64(len(msg)) {
					t.Fatalf("input %s %v placed at %d (%d bytes) in a message of %d", in.quoted, in.shape, in.offset, in.size, len(msg))
				}
			}
		}
	})
}

func FuzzAdmitHeader(f *testing.F) {
	f.Add([]byte(`{"id":"r","inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}],`+
		`"outputs":[{"name":"s","parameters":{"binary_data":true}}],"parameters":{"timeout":5000}}`), int64(32))
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[2,4],"datatype":["FP32"],"parameters":{"binary_data_size":32}}]}`), int64(32))
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[9223372036854775807,4],"datatype":"FP32","parameters":{"binary_data_size":-1}}]}`), int64(-1))
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1e308]}]}`), int64(0))
	f.Add([]byte(`{"inputs":[`), int64(0))
	f.Add([]byte(`{"inputs":[{"name":"a","shape":[1,2305843009213693951],"datatype":"INT64","parameters":{"binary_data_size":-8}},`+
		`{"name":"b","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}`), int64(8))
	f.Fuzz(func(t *testing.T, header []byte, binaryLen int64) {
		for _, m := range []*model{affine(), twoFree()} { // models of their own: admit keeps plans by header
			p, ok := m.admit(header, binaryLen)
			if !ok {
				continue
			}
			if p.rows < 1 || p.rows > m.info.MaxBatch || p.binaryLen != binaryLen {
				t.Fatalf("admitted %+v for binary length %d (max batch %d)", p, binaryLen, m.info.MaxBatch)
			}
			for _, in := range p.inputs {
				// the size as an exact product: an int64 one that wrapped would differ
				want := new(big.Int).SetInt64(int64(dtypes[m.inputs[strings.Trim(in.quoted, `"`)].Dtype].size))
				for _, d := range in.shape {
					want.Mul(want, big.NewInt(d))
				}
				if in.offset < 0 || in.size < 0 || in.offset+in.size > binaryLen || want.Cmp(big.NewInt(in.size)) != 0 {
					t.Fatalf("input %s %v placed at %d (%d bytes, %v by its shape), outside the %d tensor bytes",
						in.quoted, in.shape, in.offset, in.size, want, binaryLen)
				}
			}
		}
	})
}

func FuzzGRPCTimeout(f *testing.F) {
	for _, v := range []string{"5S", "100m", "1u", "99999999H", "", "S", "-1S", "123456789n"} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if us, ok := grpcTimeout(v); ok && us < 0 {
			t.Fatalf("timeout %q read as %d us", v, us)
		}
	})
}

func FuzzSplitArray(f *testing.F) {
	for _, v := range []string{`[1,2,3]`, `[{"a":[1,2]},"x,y",[[]]]`, `[`, `]`, `["\"]`, `[1,,2]`, ` [ ] `} {
		f.Add([]byte(v))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		splitArray(b, nil)
	})
}
