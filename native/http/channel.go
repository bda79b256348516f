package main

// The channel to the engine process (the dispatcher's end speaks the same framing as
// channel.py with the JSON codec): frames of a 4-byte little-endian length and a JSON list of
// messages, each message a list whose first item is its kind. Messages queued while the
// writer is busy leave together in one frame and one write, so under load the cost per
// request is a fraction of a system call.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
)

const (
	maxFrame      = 64 << 20 // as channel.MAX_MESSAGE
	frameMessages = 64       // as channel.FRAME_MESSAGES
)

type channel struct {
	conn    net.Conn
	mu      sync.Mutex
	pending [][]byte // messages queued while another goroutine writes
	writing bool
	closed  bool
	done    chan struct{}
	once    sync.Once
	frame   []byte
}

func newChannel(conn net.Conn) *channel {
	return &channel{conn: conn, done: make(chan struct{}), frame: make([]byte, 0, 64<<10)}
}

// send writes one encoded message (a JSON list) from the caller's goroutine when no write is under
// way (no hand-over to a writer goroutine: a lone request's descriptor leaves at once); otherwise it
// is queued, and the goroutine that is writing sends it with the others in its next frame. false
// once the channel is closed or broken.
func (c *channel) send(msg []byte) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.pending = append(c.pending, msg)
	if c.writing {
		c.mu.Unlock()
		return true
	}
	c.writing = true
	for len(c.pending) > 0 && !c.closed {
		frame := c.frames()
		c.mu.Unlock()
		_, err := c.conn.Write(frame)
		c.mu.Lock()
		if err != nil {
			c.closed = true
		}
	}
	c.writing = false
	ok := !c.closed
	c.mu.Unlock()
	return ok
}

// frames encodes what is pending as frames of at most frameMessages messages (called locked).
func (c *channel) frames() []byte {
	out := c.frame[:0]
	for len(c.pending) > 0 {
		n := min(len(c.pending), frameMessages)
		start := len(out)
		out = append(out, 0, 0, 0, 0, '[')
		for i, m := range c.pending[:n] {
			if i > 0 {
				out = append(out, ',')
			}
			out = append(out, m...)
		}
		out = append(out, ']')
		binary.LittleEndian.PutUint32(out[start:], uint32(len(out)-start-4))
		clear(c.pending[:n])
		c.pending = c.pending[n:]
	}
	c.pending = c.pending[:0:0]
	c.frame = out[:0]
	return out
}

// close stops sending (what was sent before is written: sends write before they return).
func (c *channel) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.once.Do(func() { close(c.done) })
}

// read calls handle for every message until the engine goes away (EOF or a broken frame).
func (c *channel) read(handle func(kind string, msg []json.RawMessage)) error {
	r := bufio.NewReaderSize(c.conn, 256<<10)
	var head [4]byte
	buf := make([]byte, 0, 64<<10)
	for {
		if _, err := io.ReadFull(r, head[:]); err != nil {
			return err
		}
		stamp("g_read") // a frame's first bytes are here (trace.go; before it is decoded)
		n := binary.LittleEndian.Uint32(head[:])
		if n > maxFrame {
			return fmt.Errorf("a frame of %d bytes from the engine process", n)
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return err
		}
		// The messages outlive the frame (a reply is read by the request's goroutine): one copy of it.
		frame := bytes.Clone(buf)
		messages, ok := splitArray(frame, nil)
		if !ok || !json.Valid(frame) {
			return fmt.Errorf("a frame from the engine process is not JSON (%d bytes)", len(frame))
		}
		for _, raw := range messages {
			m, ok := splitArray(raw, make([]json.RawMessage, 0, 5))
			if !ok || len(m) == 0 {
				continue
			}
			if kind, ok := rawString(m[0]); ok {
				handle(kind, m)
			}
		}
	}
}
