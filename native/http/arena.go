package main

// The shared arena: the engine process made it (a memfd) and handed its descriptor to this
// process. This side owns the allocation, as the Python front-end does (arena.py): a request's
// body is read straight into a region, its outputs get regions of their own, and all of them
// are freed only after the engine's reply, so the engine never writes into memory given to
// another request.

import (
	"fmt"
	"sort"
	"sync"
	"syscall"
)

const align = 64 // every region starts on a cache line (as arena.ALIGN)

// padBefore: the bytes to leave at a region's start so that what follows `lead` bytes of a body (the
// tensors after an HTTP request's JSON header, after a gRPC message's fields) starts on a cache line.
// ONNX Runtime's CPU provider runs a float tensor at an address that is not a multiple of 4 far slower:
// a lone 602 KB input right after a 166-byte JSON header took 230 us against 40 us aligned (the "fat"
// model, development machine); the engine copies a misaligned tensor aligned before it runs, which costs
// a copy this avoids.
func padBefore(lead int64) int {
	return int((align - lead%align) % align)
}

type arena struct {
	mem   []byte
	mu    sync.Mutex
	free  []span // sorted by start, merged with neighbours
	used  map[int]int
	inUse int
}

type span struct{ start, size int }

func openArena(fd, size int) (*arena, error) {
	mem, err := syscall.Mmap(fd, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping the arena (%d bytes): %w", size, err)
	}
	size -= size % align
	return &arena{mem: mem[:size], free: []span{{0, size}}, used: map[int]int{}}, nil
}

// alloc returns the offset of a region of at least n bytes, or -1 when none is free (first fit).
func (a *arena) alloc(n int) int {
	need := (n + align - 1) / align * align
	if need < align {
		need = align
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, s := range a.free {
		if s.size < need {
			continue
		}
		if s.size == need {
			a.free = append(a.free[:i], a.free[i+1:]...)
		} else {
			a.free[i] = span{s.start + need, s.size - need}
		}
		a.used[s.start] = need
		a.inUse += need
		return s.start
	}
	return -1
}

// keptForSmall: the bytes of an arena that a body larger than them may not take (allocBody): a body is
// given its region from its declared length before it arrives and holds it up to the body timeout, so
// without this two connections that declare the largest body and send nothing held a 128 MiB arena
// and every request meanwhile was refused as overloaded. A quarter of the arena, at most half the
// largest body, and never so much that one largest body cannot fit in an empty arena.
func keptForSmall(arenaBytes int, maxBody int64) int {
	return max(0, min(arenaBytes/4, int(maxBody/2), arenaBytes-int(maxBody)-2*align))
}

// allocBody: alloc for a body of n bytes, which may take the last `keep` free bytes only if it is no
// larger than them; -1 when it may not or there is no room.
func (a *arena) allocBody(n, keep int) int {
	if n > keep {
		a.mu.Lock()
		short := len(a.mem)-a.inUse-n < keep
		a.mu.Unlock()
		if short {
			return -1
		}
	}
	return a.alloc(n)
}

func (a *arena) release(off int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	size, ok := a.used[off]
	if !ok {
		return
	}
	delete(a.used, off)
	a.inUse -= size
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].start > off })
	s := span{off, size}
	if i < len(a.free) && s.start+s.size == a.free[i].start { // merge with the next
		s.size += a.free[i].size
		a.free = append(a.free[:i], a.free[i+1:]...)
	}
	if i > 0 && a.free[i-1].start+a.free[i-1].size == s.start { // merge with the previous
		a.free[i-1].size += s.size
		return
	}
	a.free = append(a.free, span{})
	copy(a.free[i+1:], a.free[i:])
	a.free[i] = s
}

func (a *arena) bytesInUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse
}
