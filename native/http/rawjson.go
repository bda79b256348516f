package main

// The engine's messages read without reflection. Every answer the engine sends is a JSON array of
// arrays ("done", its id, error, places, backlog); encoding/json's Unmarshal into []json.RawMessage and
// then into each field's type was ~17% of a native front-end's CPU per gRPC request (pprof, tiny
// model). These split an array into its elements' raw bytes and read the common scalars directly;
// anything unusual (escapes in a string, floats where integers are expected) goes to encoding/json.

import (
	"encoding/json"
	"strconv"
)

// splitArray returns the raw bytes of each element of the JSON array b (surrounding whitespace
// trimmed); false when b is not one well-formed array at the top level (strings and nesting are
// followed; the elements themselves are checked by whoever reads them).
func splitArray(b []byte, into []json.RawMessage) ([]json.RawMessage, bool) {
	b = trimSpace(b)
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return into, false
	}
	inner := trimSpace(b[1 : len(b)-1])
	if len(inner) == 0 {
		return into, true
	}
	depth, start, inString := 0, 0, false
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		if inString {
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '[', '{':
			depth++
		case ']', '}':
			depth--
			if depth < 0 {
				return into, false
			}
		case ',':
			if depth == 0 {
				into = append(into, json.RawMessage(trimSpace(inner[start:i])))
				start = i + 1
			}
		}
	}
	if depth != 0 || inString {
		return into, false
	}
	last := trimSpace(inner[start:])
	if len(last) == 0 {
		return into, false
	}
	return append(into, json.RawMessage(last)), true
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\n' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// rawString reads a JSON string; without escapes it is the bytes between the quotes.
func rawString(b json.RawMessage) (string, bool) {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		plain := true
		for _, c := range b[1 : len(b)-1] {
			if c == '\\' || c == '"' || c < 0x20 {
				plain = false
				break
			}
		}
		if plain {
			return string(b[1 : len(b)-1]), true
		}
	}
	var s string
	return s, json.Unmarshal(b, &s) == nil
}

// rawInt reads a JSON integer (a number with a fraction or exponent: encoding/json, into int64).
func rawInt(b json.RawMessage) (int64, bool) {
	if v, err := strconv.ParseInt(string(b), 10, 64); err == nil {
		return v, true
	}
	var v int64
	return v, json.Unmarshal(b, &v) == nil
}

// rawInts reads a JSON array of integers.
func rawInts(b json.RawMessage) ([]int64, bool) {
	var parts [8]json.RawMessage
	elems, ok := splitArray(b, parts[:0])
	if !ok {
		return nil, false
	}
	out := make([]int64, len(elems))
	for i, e := range elems {
		if out[i], ok = rawInt(e); !ok {
			return nil, false
		}
	}
	return out, true
}
