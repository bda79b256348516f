package main

// The channel to the engine process (the dispatcher's end speaks the same framing as
// channel.py with the JSON codec): frames of a 4-byte little-endian length and a JSON list of
// messages, each message a list whose first item is its kind. Messages queued while the
// writer is busy leave together in one frame and one write, so under load the cost per
// request is a fraction of a system call.

import (
	"bufio"
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
	conn   net.Conn
	out    chan []byte
	mu     sync.Mutex
	closed bool
	done   chan struct{}
}

func newChannel(conn net.Conn) *channel {
	c := &channel{conn: conn, out: make(chan []byte, 4096), done: make(chan struct{})}
	go c.writer()
	return c
}

// send queues one encoded message (a JSON list); false once the channel is closed.
func (c *channel) send(msg []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.out <- msg
	return true
}

func (c *channel) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.out)
	}
}

func (c *channel) writer() {
	defer close(c.done)
	frame := make([]byte, 0, 64<<10)
	for msg := range c.out {
		frame = append(frame[:0], 0, 0, 0, 0, '[')
		frame = append(frame, msg...)
		n := 1
	more:
		for n < frameMessages {
			select {
			case m, ok := <-c.out:
				if !ok {
					break more
				}
				frame = append(append(frame, ','), m...)
				n++
			default:
				break more
			}
		}
		frame = append(frame, ']')
		binary.LittleEndian.PutUint32(frame, uint32(len(frame)-4))
		if _, err := c.conn.Write(frame); err != nil {
			return
		}
	}
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
		var messages [][]json.RawMessage
		if err := json.Unmarshal(buf, &messages); err != nil {
			return fmt.Errorf("a frame from the engine process is not JSON: %w", err)
		}
		for _, m := range messages {
			var kind string
			if len(m) == 0 || json.Unmarshal(m[0], &kind) != nil {
				continue
			}
			handle(kind, m)
		}
	}
}
