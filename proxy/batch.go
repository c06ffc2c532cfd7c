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

// batchBuf is a pooled batch buffer with the writer that sends it.
type batchBuf struct {
	b []byte
	w *frames.RawWriter
}

var batchPool = sync.Pool{New: func() any {
	return &batchBuf{b: make([]byte, batchSize), w: frames.NewRawWriter()}
}}

// batch collects whole frames for one side while more input is already
// buffered. It borrows a pooled buffer only while frames are pending.
type batch struct {
	buf *batchBuf
	n   int
}

// Write appends p, which forward has checked fits.
func (b *batch) Write(p []byte) (int, error) {
	if b.buf == nil {
		b.buf = batchPool.Get().(*batchBuf)
	}
	b.n += copy(b.buf.b[b.n:], p)
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
//
// A socket is written directly (frames.RawWriter), as the Reader reads
// one: a write through net.Conn enters a scheduled system call, which
// wakes the runtime's monitor thread whenever the gate was idle, a
// context switch or more per message at low load.
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
	p := d.out.buf.b[:d.out.n]
	var err error
	if raw := pr.other(d).r.Raw(); raw != nil {
		err = d.out.buf.w.Write(raw, p)
	} else {
		_, err = d.dst.Write(p)
	}
	if err != nil {
		d.dst.broken = true
		return &frames.WriteError{Err: err}
	}
	return nil
}
