package main

// The few protocol buffer messages of inference.GRPCInferenceService this front-end reads and
// writes itself (ModelInferRequest in, ModelInferResponse out), by their wire format: the
// program stays without dependencies, and a request is read where it lies in the arena, its
// tensors' bytes left in place (grpc_service.proto is vendored in operator/trtop/serve/grpc/proto).

import (
	"encoding/binary"
	"math"
)

const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

// field: one field of a message as read; data is the payload of a length-delimited field (a slice
// of the message) and start its offset in the message.
type field struct {
	num   int
	typ   int
	value uint64
	data  []byte
	start int
}

// fields calls visit for each field of msg in order; false when msg is not a well-formed message
// (or visit said stop).
func fields(msg []byte, visit func(f field) bool) bool {
	for i := 0; i < len(msg); {
		key, n := binary.Uvarint(msg[i:])
		if n <= 0 || key>>3 == 0 || key>>3 > math.MaxInt32 {
			return false
		}
		i += n
		f := field{num: int(key >> 3), typ: int(key & 7)}
		switch f.typ {
		case wireVarint:
			v, n := binary.Uvarint(msg[i:])
			if n <= 0 {
				return false
			}
			f.value, i = v, i+n
		case wireFixed64:
			if len(msg)-i < 8 {
				return false
			}
			f.value, i = binary.LittleEndian.Uint64(msg[i:]), i+8
		case wireFixed32:
			if len(msg)-i < 4 {
				return false
			}
			f.value, i = uint64(binary.LittleEndian.Uint32(msg[i:])), i+4
		case wireBytes:
			l, n := binary.Uvarint(msg[i:])
			if n <= 0 || l > uint64(len(msg)-i-n) {
				return false
			}
			i += n
			f.data, f.start, i = msg[i:i+int(l)], i, i+int(l)
		default: // groups (deprecated) and unknown wire types
			return false
		}
		if !visit(f) {
			return false
		}
	}
	return true
}

// int64s reads a repeated int64 field's entry: packed (one length-delimited run) or one varint.
func int64s(f field, into []int64) ([]int64, bool) {
	switch f.typ {
	case wireVarint:
		return append(into, int64(f.value)), true
	case wireBytes:
		for b := f.data; len(b) > 0; {
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return into, false
			}
			into, b = append(into, int64(v)), b[n:]
		}
		return into, true
	}
	return into, false
}

// -- writing --------------------------------------------------------------------------------

func appendTag(b []byte, num, typ int) []byte {
	return binary.AppendUvarint(b, uint64(num)<<3|uint64(typ))
}

func appendString(b []byte, num int, s string) []byte {
	b = appendTag(b, num, wireBytes)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendBytesHead writes a length-delimited field's tag and length; its n bytes follow.
func appendBytesHead(b []byte, num int, n int) []byte {
	b = appendTag(b, num, wireBytes)
	return binary.AppendUvarint(b, uint64(n))
}

func appendBool(b []byte, num int, v bool) []byte {
	if !v {
		return b // proto3: the default is not written
	}
	return append(appendTag(b, num, wireVarint), 1)
}

func appendPackedInt64s(b []byte, num int, v []int64) []byte {
	if len(v) == 0 {
		return b
	}
	var run []byte
	for _, d := range v {
		run = binary.AppendUvarint(run, uint64(d))
	}
	b = appendBytesHead(b, num, len(run))
	return append(b, run...)
}
