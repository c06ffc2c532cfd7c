// Package frames reads, validates and forwards WebSocket frames (RFC 6455)
// between two connections without holding a whole message in memory.
//
// A Reader waits for the next frame without a buffer (a socket's readiness
// first, then a read into a pooled buffer), or, when its source is not a
// socket, in a small array that belongs to the connection; it holds a
// pooled buffer only while bytes are buffered, so an idle connection holds
// no buffer at all. A Stream keeps the per-direction
// protocol state (fragmentation, message size, UTF-8 of text messages) and
// forwards one frame at a time, writing its header and payload with one write
// call whenever the frame fits in a pooled buffer.
package frames

import (
	"io"
	"sync"
	"syscall"
)

// BufferSize is the size of the pooled buffers that payloads pass through.
// A frame whose header and payload fit in one buffer is written with one
// write call.
const BufferSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// smallSize holds any frame header (at most 14 bytes) plus a little payload.
const smallSize = 16

// Reader is a buffered reader that owns no buffer while it has nothing
// buffered. When empty and its source is a socket (a syscall.Conn), it waits
// for the socket to be readable and only then borrows a pooled buffer for
// the read, so a small frame, or a burst of them, costs one read call;
// other sources are read into a 16-byte array of its own until bytes
// arrive. It gives the buffer back as soon as everything buffered has been
// consumed.
//
// A Reader is used by one goroutine at a time.
type Reader struct {
	src    io.Reader
	raw    syscall.RawConn    // src's, when it is a socket read directly
	rawFn  func(uintptr) bool // r.readFd, made once: a closure per read would allocate
	rawErr error              // readFd's result
	small  [smallSize]byte
	big    *[]byte
	data   []byte // unread bytes, inside small or *big
}

// NewReader returns a Reader of src.
func NewReader(src io.Reader) *Reader {
	r := &Reader{}
	r.Reset(src)
	return r
}

// Reset makes r read from src, dropping anything buffered.
func (r *Reader) Reset(src io.Reader) {
	r.Release()
	r.data = nil
	r.src = src
	r.raw = nil
	if sc, ok := src.(syscall.Conn); ok && rawReads {
		if rc, err := sc.SyscallConn(); err == nil {
			r.raw = rc
			if r.rawFn == nil {
				r.rawFn = r.readFd
			}
		}
	}
}

// Prime makes p the first bytes r returns, before any read of src. It is for
// bytes a handshake reader buffered past the end of the handshake.
func (r *Reader) Prime(p []byte) {
	if len(p) == 0 {
		return
	}
	r.borrow()
	n := copy(*r.big, p)
	r.data = (*r.big)[:n]
	if n < len(p) {
		// Only a peer that ignores the handshake sends more than a buffer
		// before the 101 arrives; keep the rest as the source's prefix,
		// which the socket's own reads would skip.
		r.src = io.MultiReader(&onceReader{p: p[n:]}, r.src)
		r.raw = nil
	}
}

type onceReader struct{ p []byte }

func (o *onceReader) Read(p []byte) (int, error) {
	if len(o.p) == 0 {
		return 0, io.EOF
	}
	n := copy(p, o.p)
	o.p = o.p[n:]
	return n, nil
}

// Wait blocks until at least one byte is buffered. A goroutine waiting for
// a connection's next frame borrows nothing: a socket is waited for
// without a buffer and read into a pooled one once readable; other sources
// are read into the Reader's own array.
func (r *Reader) Wait() error {
	if len(r.data) > 0 {
		return nil
	}
	return r.fill(1)
}

// Buffered reports how many bytes can be read without touching the source.
func (r *Reader) Buffered() int { return len(r.data) }

// Raw returns the socket r reads directly, or nil: the same connection can
// be written with a RawWriter.
func (r *Reader) Raw() syscall.RawConn { return r.raw }

// Peek returns the buffered bytes without consuming them. They are valid
// until the next call of another method.
func (r *Reader) Peek() []byte { return r.data }

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(r.data) == 0 {
		if len(p) > smallSize {
			// A payload read: read greedily into a pooled buffer, so the
			// frames that follow in the same segment cost no read call.
			r.borrow()
		}
		if err := r.fill(1); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// fill reads until at least n (> Buffered, <= BufferSize) bytes are
// buffered. An empty Reader of a socket waits for readiness, then reads
// into a pooled buffer (readRaw); otherwise, without a pooled buffer it
// reads into the Reader's own array, and with one as much as the source
// has ready.
func (r *Reader) fill(n int) error {
	if r.raw != nil && r.big == nil && len(r.data) == 0 {
		return r.readRaw()
	}
	if r.big == nil && n <= smallSize {
		m := copy(r.small[:], r.data)
		k, err := io.ReadAtLeast(r.src, r.small[m:], n-m)
		r.data = r.small[:m+k]
		return err
	}
	r.borrow()
	buf := *r.big
	m := copy(buf, r.data)
	k, err := io.ReadAtLeast(r.src, buf[m:], n-m)
	r.data = buf[:m+k]
	return err
}

func (r *Reader) borrow() {
	if r.big == nil {
		r.big = getBuf()
	}
}

// Release gives the pooled buffer back when nothing is buffered in it, and
// moves a short remainder (at most a frame header) into the Reader's own
// array so that an idle connection holds no pooled buffer. Callers release
// between frames.
func (r *Reader) Release() {
	if r.big == nil {
		return
	}
	if len(r.data) > smallSize {
		return
	}
	r.data = r.small[:copy(r.small[:], r.data)]
	putBuf(r.big)
	r.big = nil
}
