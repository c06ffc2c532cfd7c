package proxy

import (
	"sync"
	"time"

	"github.com/holo/wsgate/frames"
)

// writeDeadline bounds a write to a client that does not read: it holds
// this direction (the upstream is not read meanwhile) for at most
// WriteTimeout. Called with d.dst's lock held.
func (pr *pair) writeDeadline(d *direction) {
	if t := pr.p.cfg.WriteTimeout; t > 0 && !d.client {
		_ = d.dst.SetWriteDeadline(time.Now().Add(t))
	}
}

// batchSize bounds the frames one batch holds.
const batchSize = frames.BufferSize

var batchPool = sync.Pool{New: func() any { b := make([]byte, batchSize); return &b }}

// batch collects whole frames for one side while more input is already
// buffered. It borrows a pooled buffer only while frames are pending.
type batch struct {
	buf *[]byte
	n   int
}

// Write appends p, which forward has checked fits.
func (b *batch) Write(p []byte) (int, error) {
	if b.buf == nil {
		b.buf = batchPool.Get().(*[]byte)
	}
	b.n += copy((*b.buf)[b.n:], p)
	return len(p), nil
}

func (b *batch) release() {
	if b.buf != nil {
		batchPool.Put(b.buf)
		b.buf, b.n = nil, 0
	}
}

// flush writes d's pending frames, if any, with one write call. Frames for
// a side the gate has closed meanwhile are dropped.
func (pr *pair) flush(d *direction) error {
	if d.out.n == 0 {
		return nil
	}
	defer d.out.release()
	d.dst.acquire(time.Time{})
	defer d.dst.release()
	if d.dst.closeSent || d.dst.broken {
		return nil
	}
	pr.writeDeadline(d)
	if _, err := d.dst.Write((*d.out.buf)[:d.out.n]); err != nil {
		d.dst.broken = true
		return &frames.WriteError{Err: err}
	}
	return nil
}
