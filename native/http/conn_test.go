package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener counts the writes made to the connections it accepts.
type countingListener struct {
	net.Listener
	writes *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: c, writes: l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int32
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// serveOne starts net/http over limitListener with handler and returns its address.
func serveOne(t *testing.T, writes *atomic.Int32, handler http.HandlerFunc) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ConnContext: connContext}
	go srv.Serve(limitListener(countingListener{l, writes}, 4))
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// An answer a little over net/http's 4 KB buffer (ResNet-50's: 4,000 bytes of logits and a header)
// leaves in one write when held, in two otherwise; the client reads the same bytes either way.
func TestAHeldAnswerLeavesInOneWrite(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 430)
	for _, held := range []bool{true, false} {
		var writes atomic.Int32
		addr := serveOne(t, &writes, func(w http.ResponseWriter, r *http.Request) {
			lc := connOf(r.Context())
			if lc == nil {
				t.Error("the handler does not find its connection")
			}
			if !held {
				lc = nil
			}
			inOneWrite(w, lc, func() {
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				w.WriteHeader(http.StatusOK)
				w.Write(body[:200])
				w.Write(body[200:])
			})
		})
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		for i := 0; i < 2; i++ { // two requests on one connection: holding ends with each answer
			writes.Store(0)
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Equal(got, body) {
				t.Fatalf("held=%v: the answer's body differs (%d bytes)", held, len(got))
			}
			time.Sleep(20 * time.Millisecond) // net/http's writes after the handler, if any
			want := int32(1)
			if !held {
				want = 2
			}
			if n := writes.Load(); n != want {
				t.Errorf("held=%v: the answer left in %d writes, want %d", held, n, want)
			}
		}
		c.Close()
	}
}

// More than maxHeld leaves as it comes: what was held first, then the rest, all of it in order.
func TestALargeAnswerIsNotHeldWhole(t *testing.T) {
	body := bytes.Repeat([]byte("abcdefgh"), (maxHeld+4096)/8)
	var writes atomic.Int32
	addr := serveOne(t, &writes, func(w http.ResponseWriter, r *http.Request) {
		inOneWrite(w, connOf(r.Context()), func() {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			for i := 0; i < len(body); i += 1000 {
				w.Write(body[i:min(i+1000, len(body))])
			}
		})
	})
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, body) {
		t.Fatalf("the large answer differs: %d bytes of %d", len(got), len(body))
	}
	if writes.Load() < 2 {
		t.Errorf("%d bytes left in %d write(s): held whole", len(body), writes.Load())
	}
}

// Connections opened together are asked to reconnect spread over maxAge +- 10%, not all in one instant.
func TestConnectionsAgeOutSpreadAroundTheMaximum(t *testing.T) {
	maxAge := 30 * time.Second
	for _, c := range []struct {
		u    float64
		want time.Duration
	}{{0, 27 * time.Second}, {0.5, 30 * time.Second}, {0.999999, 33 * time.Second}} {
		if got := connectionAge(maxAge, c.u).Round(time.Millisecond); got != c.want {
			t.Errorf("connectionAge(30s, %v) = %v, want %v", c.u, got, c.want)
		}
	}
	ages := map[time.Duration]bool{}
	for i := 0; i < 100; i++ {
		lc := newLimitedConn(nil, func() {})
		age := connectionAge(maxAge, lc.ageDraw)
		if age < 27*time.Second || age >= 33*time.Second {
			t.Fatalf("a connection's age %v is outside 30 s +- 10%%", age)
		}
		ages[age.Round(100*time.Millisecond)] = true
	}
	if len(ages) < 10 { // 100 draws over 60 steps of 0.1 s: all alike would mean no spread at all
		t.Fatalf("100 connections drew only %d distinct ages", len(ages))
	}
}
