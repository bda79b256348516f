package main

// One write per answer. net/http writes an answer through a 4 KB buffer, so a ResNet-50 answer (a
// 4,000-byte tensor and its JSON header) left in two writes: two segments, two system calls, and a
// client that reads the first may go back to sleep before the second comes. While an answer is held
// (inOneWrite) its connection collects what net/http writes and sends it in one write.

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// maxHeld: an answer larger than this leaves in more than one write (holding costs a copy, and a large
// answer's writes take long next to a wake-up).
const maxHeld = 256 << 10

// limitedConn: an accepted connection; it gives its slot back (limitListener) when closed, and holds an
// answer's bytes while asked to.
type limitedConn struct {
	net.Conn
	free func()
	once sync.Once
	held []byte // non-nil while an answer is held (from heldBufs)
	// when it was accepted, and where in maxAge's spread it will be asked to reconnect (gRPC: grpcFront.maxAge)
	accepted time.Time
	ageDraw  float64
}

// ageJitter: a connection is asked to reconnect after maxAge +- this share of it, drawn once per connection,
// as grpc's own servers do (the Python front-ends' max_connection_age): connections a client opened together
// (perf_analyzer's, a rollout's clients) do not all reconnect in the same instant every maxAge.
const ageJitter = 0.1

// connectionAge is maxAge moved by the draw u in [0, 1) across +- ageJitter of it.
func connectionAge(maxAge time.Duration, u float64) time.Duration {
	return time.Duration(float64(maxAge) * (1 - ageJitter + 2*ageJitter*u))
}

// heldBufs: buffers of answers being held, shared by the connections (an idle keep-alive connection keeps none).
var heldBufs = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

func newLimitedConn(c net.Conn, free func()) *limitedConn {
	return &limitedConn{Conn: c, free: free, accepted: time.Now(), ageDraw: rand.Float64()}
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}

// hold: what is written from now on collects until release. Only from the goroutine serving the
// connection: net/http writes an answer from that goroutine alone.
func (c *limitedConn) hold() {
	c.held = (*heldBufs.Get().(*[]byte))[:0]
}

// release writes what was held, in one write, and stops holding.
func (c *limitedConn) release() error {
	held := c.held
	c.held = nil
	var err error
	if len(held) > 0 {
		_, err = c.Conn.Write(held)
	}
	held = held[:0]
	heldBufs.Put(&held)
	return err
}

func (c *limitedConn) Write(p []byte) (int, error) {
	if c.held == nil {
		return c.Conn.Write(p)
	}
	if len(c.held)+len(p) > maxHeld { // too much to hold: what was held, then this, as they come
		if err := c.release(); err != nil {
			return 0, err
		}
		c.hold()
		return c.Conn.Write(p)
	}
	c.held = append(c.held, p...)
	return len(p), nil
}

// inOneWrite runs write (an answer written to w) with lc holding, flushes what net/http would flush
// after the handler returns, and sends it all in one write (lc nil: as net/http does).
func inOneWrite(w http.ResponseWriter, lc *limitedConn, write func()) {
	if lc == nil {
		write()
		return
	}
	lc.hold()
	write()
	http.NewResponseController(w).Flush()
	lc.release()
}

type connKey struct{}

// connContext lets a handler find its connection (http.Server.ConnContext).
func connContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		return context.WithValue(ctx, connKey{}, lc)
	}
	return ctx
}

func connOf(ctx context.Context) *limitedConn {
	lc, _ := ctx.Value(connKey{}).(*limitedConn)
	return lc
}
