package proxy

import (
	"sync"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/frames"
)

// batchSize bounds the frames one batch holds.
const batchSize = frames.BufferSize

var batchPool = sync.Pool{New: func() any { b := make([]byte, batchSize); return &b }}

// batch collects whole frames for one side while more input is already
// buffered, so that a burst of small frames read with one read is written
// with one write. It borrows a pooled buffer only while frames are pending,
// and counts what it holds: messages are counted as relayed when the batch
// is written, never when it is dropped.
type batch struct {
	buf  *[]byte
	n    int32
	msgs int32 // messages started in the pending frames
	size int64 // their payload bytes
}

// Write appends p, which forward has checked fits.
func (b *batch) Write(p []byte) (int, error) {
	if b.buf == nil {
		b.buf = batchPool.Get().(*[]byte)
	}
	b.n += int32(copy((*b.buf)[b.n:], p))
	return len(p), nil
}

// add counts the frame with header h, just appended.
func (b *batch) add(h ws.Header) {
	if frames.StartsMessage(h) {
		b.msgs++
	}
	if !h.OpCode.IsControl() {
		b.size += h.Length
	}
}

func (b *batch) bytes() []byte { return (*b.buf)[:b.n] }

func (b *batch) release() {
	if b.buf != nil {
		batchPool.Put(b.buf)
	}
	*b = batch{}
}
