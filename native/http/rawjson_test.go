package main

import (
	"encoding/json"
	"testing"
)

func TestArraysSplitAsEncodingJSONReadsThem(t *testing.T) {
	for _, doc := range []string{
		`[]`, `[1]`, ` [ "done" , 17, null, [["y", "<f4", [3, 4], 4096, null], ["s","<f4",[3,1],8192,"AAAA"]], -1 ] `,
		`["state", "ready", "", {"name": "a", "inputs": [{"shape": [-1, 4]}]}, 8]`,
		`["a,b", "q\"]", {"k": "[,"}, [[[]]], 1.5e3]`,
	} {
		var want []json.RawMessage
		if err := json.Unmarshal([]byte(doc), &want); err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		got, ok := splitArray([]byte(doc), nil)
		if !ok || len(got) != len(want) {
			t.Fatalf("%s: %d elements (ok %v), want %d", doc, len(got), ok, len(want))
		}
		for i := range want {
			if string(got[i]) != string(want[i]) {
				t.Errorf("%s: element %d is %s, want %s", doc, i, got[i], want[i])
			}
		}
	}
	for _, bad := range []string{``, `[`, `[1,]`, `[1]]`, `["a]`, `{"a": 1}`, `[1, [2]`, `[,]`} {
		if _, ok := splitArray([]byte(bad), nil); ok {
			t.Errorf("%q split as an array", bad)
		}
	}
}

func TestScalarsAreReadDirectlyOrByEncodingJSON(t *testing.T) {
	if s, ok := rawString(json.RawMessage(`"<f4"`)); !ok || s != "<f4" {
		t.Fatalf("plain string: %q %v", s, ok)
	}
	if s, ok := rawString(json.RawMessage(`"a\"b\u00e9"`)); !ok || s != "a\"bé" {
		t.Fatalf("escaped string: %q %v", s, ok)
	}
	if _, ok := rawString(json.RawMessage(`12`)); ok {
		t.Fatal("a number read as a string")
	}
	if v, ok := rawInt(json.RawMessage(`-42`)); !ok || v != -42 {
		t.Fatalf("int: %d %v", v, ok)
	}
	if _, ok := rawInt(json.RawMessage(`"7"`)); ok {
		t.Fatal("a string read as an int")
	}
	if v, ok := rawInts(json.RawMessage(`[3, 224,224]`)); !ok || len(v) != 3 || v[0] != 3 || v[2] != 224 {
		t.Fatalf("ints: %v %v", v, ok)
	}
	if _, ok := rawInts(json.RawMessage(`[3, "x"]`)); ok {
		t.Fatal("a string inside ints accepted")
	}
}
