// Package frames reads, validates and forwards WebSocket frames (RFC 6455)
// between two connections without holding a whole message in memory.
//
// A Reader holds a pooled buffer only while bytes are buffered, so an idle
// connection holds no buffer at all; when its source is a socket it can
// read without waiting (ReadReady), so that its caller can give the
// connection to a poller instead of blocking a goroutine on it. A Stream
// keeps the per-direction protocol state (fragmentation, message size,
// UTF-8 of text messages) and forwards one frame at a time, writing its
// header and payload with one write call whenever the frame fits in a
// pooled buffer.
//
// docs/ARCHITECTURE.md places this package in the gate.
package frames

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
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
// buffered. Its source is read in two ways: ReadReady takes what a socket
// has ready without waiting (a non-blocking read into a pooled buffer, so a
// burst of frames costs one read call), and every other read blocks on the
// source, which is where a caller that cannot park its connection waits.
//
// A Reader is used by one goroutine at a time, except Received.
type Reader struct {
	src   io.Reader // blocking reads
	fd    int       // the same socket's descriptor, read without waiting; -1 when src is not one
	short bool      // the last read without waiting took less than there was room for
	small [smallSize]byte
	big   *[]byte
	data  []byte       // unread bytes, inside small, *big or a primed slice
	got   atomic.Int64 // bytes read from the source
}

// ErrWouldBlock is ReadReady's answer when the socket has nothing ready.
var ErrWouldBlock = errors.New("frames: nothing to read yet")

// ErrNotSocket is ReadReady's answer for a source that is not a socket
// read directly: only a blocking read can tell when it has bytes.
var ErrNotSocket = errors.New("frames: source is not a socket")

// NewReader returns a Reader of src.
func NewReader(src io.Reader) *Reader {
	r := &Reader{fd: -1}
	r.Reset(src)
	return r
}

// Reset makes r read from src, dropping anything buffered. When src is a
// socket (a syscall.Conn), ReadReady reads its descriptor without waiting,
// so src must stay open until r is reset again.
func (r *Reader) Reset(src io.Reader) {
	fd := -1
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			_ = rc.Control(func(f uintptr) { fd = int(f) })
		}
	}
	r.ResetSocket(src, fd)
}

// ResetSocket makes r read from src, dropping anything buffered: blocking
// reads go to src, ReadReady to the descriptor fd, which must be the same
// socket's and stay open until r is reset again (-1: no reads without
// waiting). It lets a caller put its own step in front of every blocking
// read.
func (r *Reader) ResetSocket(src io.Reader, fd int) {
	if r.big != nil {
		putBuf(r.big)
		r.big = nil
	}
	r.data = nil
	r.src = src
	r.fd = -1
	if RawIO {
		r.fd = fd
	}
}

// Prime makes p the first bytes r returns, before any read of src. It is for
// bytes a handshake reader buffered past the end of the handshake.
func (r *Reader) Prime(p []byte) {
	if len(p) == 0 {
		return
	}
	if len(p) > BufferSize {
		// Only a peer that ignores the handshake sends more than a buffer
		// before the 101 arrives. Keep every byte buffered (Buffered counts
		// them all), in a slice of their own.
		r.Release()
		r.data = append([]byte(nil), p...)
		return
	}
	r.borrow()
	r.data = (*r.big)[:copy(*r.big, p)]
}

// Wait blocks until at least one byte is buffered.
func (r *Reader) Wait() error {
	if len(r.data) > 0 {
		return nil
	}
	return r.fill(1)
}

// ReadMore blocks until at least one more byte is buffered.
func (r *Reader) ReadMore() error {
	if len(r.data) >= BufferSize {
		return errors.New("frames: buffer full")
	}
	return r.fill(len(r.data) + 1)
}

// ReadReady reads what the socket has ready, after the bytes buffered,
// without waiting. It returns nil when bytes arrived, ErrWouldBlock when
// none were ready, ErrNotSocket when the source is not a socket, and the
// read's error (io.EOF when the peer closed) otherwise. At most BufferSize
// bytes are buffered, so a caller reads only when what is buffered is less
// than a frame header.
func (r *Reader) ReadReady() error {
	if r.fd < 0 {
		return ErrNotSocket
	}
	return r.readReady()
}

// Emptied reports whether the last ReadReady that read bytes took less than
// there was room for: the socket had nothing more at that moment, so an
// edge-triggered poller reports any byte that arrives after it, and the
// caller may wait without another read that would find nothing.
func (r *Reader) Emptied() bool { return r.short }

// Buffered reports how many bytes can be read without touching the source.
func (r *Reader) Buffered() int { return len(r.data) }

// HeaderReady reports whether the next frame's header is buffered whole.
func (r *Reader) HeaderReady() bool { return headerLen(r.data) > 0 }

// Peek returns the buffered bytes without consuming them. They are valid
// until the next call of another method.
func (r *Reader) Peek() []byte { return r.data }

// Received reports how many bytes have been read from the source so far.
// Any goroutine may call it: a watcher learns from it that a connection is
// alive while one long frame streams in.
func (r *Reader) Received() int64 { return r.got.Load() }

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
// buffered: what a socket has ready first, then, when that is not enough,
// a blocking read of src. Without a pooled buffer and for at most a header
// it reads into the Reader's own array.
func (r *Reader) fill(n int) error {
	if r.fd >= 0 && len(r.data) < n {
		if err := r.readReady(); err != nil && err != ErrWouldBlock {
			return err
		}
		if len(r.data) >= n {
			return nil
		}
	}
	if r.big == nil && n <= smallSize {
		m := copy(r.small[:], r.data)
		k, err := io.ReadAtLeast(r.src, r.small[m:], n-m)
		r.data = r.small[:m+k]
		r.got.Add(int64(k))
		return err
	}
	r.compact()
	buf := *r.big
	m := len(r.data)
	k, err := io.ReadAtLeast(r.src, buf[m:], n-m)
	r.data = buf[:m+k]
	r.got.Add(int64(k))
	return err
}

// compact moves the buffered bytes to the start of a pooled buffer.
func (r *Reader) compact() {
	if r.big == nil {
		r.big = getBuf()
	}
	buf := *r.big
	if len(r.data) > 0 && &r.data[0] == &buf[0] {
		return
	}
	r.data = buf[:copy(buf, r.data)]
}

func (r *Reader) borrow() {
	if r.big == nil {
		r.big = getBuf()
		r.data = (*r.big)[:copy(*r.big, r.data)]
	}
}

// Release gives the pooled buffer back when at most a frame header is
// buffered in it, moving that remainder into the Reader's own array, so
// that an idle connection holds no pooled buffer. Callers release between
// frames.
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
