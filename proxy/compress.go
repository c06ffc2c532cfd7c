package proxy

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"sync"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"

	"github.com/holo/wsgate/frames"
)

// permessage-deflate (RFC 7692) on the client leg only: the upstream leg is
// never compressed, so an unmodified backend sees plain messages. Both
// directions use no context takeover, so a message's (de)compressor state
// is borrowed from a pool for that message only; an idle connection holds
// none.

// deflateParams is what the gate accepts: no context takeover either way.
var deflateParams = wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}

var (
	inflaters = sync.Pool{New: func() any {
		return wsflate.NewReader(nil, func(r io.Reader) wsflate.Decompressor { return flate.NewReader(r) })
	}}
	deflaters = sync.Pool{New: func() any {
		return wsflate.NewWriter(nil, func(w io.Writer) wsflate.Compressor {
			fw, _ := flate.NewWriter(w, flate.BestSpeed)
			return fw
		})
	}}
	chunks = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}
	heads  = sync.Pool{New: func() any { h := new(headReader); h.fr = flate.NewReader(&h.src); return h }}
)

// headReader inflates the first bytes of a compressed message. It holds
// copies of them and of what they inflate to, so that its callers' buffers
// stay on their stacks.
type headReader struct {
	src bytes.Reader
	fr  io.ReadCloser
	in  [classifyBytes + len(deflateTail)]byte
	out [classifyBytes]byte
}

// deflateTail is what wsflate's reader appends to a message's deflate data
// (RFC 7692 section 7.2.2): the 4 bytes the sender removed, then an empty
// final block.
var deflateTail = [...]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff}

// inflateHead inflates into out what of a compressed message's deflate
// data in (its first bytes, up to classifyBytes of them) gives, up to
// classifyBytes, and returns how many bytes it wrote. The message's own
// state is untouched: the gate negotiates no context takeover, so its first
// bytes inflate on their own. Without the message's tail nothing is read
// past in: the bytes decoded up to where in ends are all there is. When in
// is all of the message's data (last), the tail the relay's inflater adds
// is added too, so that the bytes are the ones the relay will send, and
// whole reports whether they are all of them: the data ended, within out.
func inflateHead(in, out []byte, last bool) (n int, whole bool) {
	h := heads.Get().(*headReader)
	defer heads.Put(h)
	k := copy(h.in[:classifyBytes], in)
	if last {
		k += copy(h.in[k:], deflateTail[:])
	}
	h.src.Reset(h.in[:k])
	if err := h.fr.(flate.Resetter).Reset(&h.src, nil); err != nil {
		return 0, false
	}
	n, err := io.ReadFull(h.fr, h.out[:min(len(out), len(h.out))])
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		// out has room left: did the data end, or only the bytes given?
		_, err = h.fr.Read(h.out[:0])
		whole = last && err == io.EOF
	}
	return copy(out, h.out[:n]), whole
}

// errCloseInMessage stops a compressed message whose sender closed the
// connection before its last frame: the close frame has been forwarded.
var errCloseInMessage = errors.New("close frame inside a message")

// errRefusedMore stops a compressed message whose later frame a byte rule
// refused (limitedMore): the pair is ending with the refusal.
var errRefusedMore = errors.New("later frame refused by a byte rule")

// inflate relays a compressed client message that starts with h: its
// frames' payloads are inflated as they arrive and sent upstream as an
// uncompressed message. The inflated size counts against MaxMessageBytes
// chunk by chunk, so a deflate bomb gets 1009 without being inflated whole;
// a text message's inflated bytes are checked as UTF-8.
func (d *direction) inflate(h ws.Header) error {
	if err := d.flush(); err != nil {
		return err
	}
	mr := &messageReader{d: d, cur: d.s.Payload(&d.r, h), fin: h.Fin}
	fr := inflaters.Get().(*wsflate.Reader)
	defer inflaters.Put(fr)
	fr.Reset(mr)
	bp := chunks.Get().(*[]byte)
	defer chunks.Put(bp)
	buf := *bp

	text := h.OpCode == ws.OpText
	var utf frames.UTF8
	var total int64
	out := ws.Header{OpCode: h.OpCode}
	for {
		n, end, err := readChunk(fr, buf)
		if end && !mr.done && mr.err == nil {
			// The deflate data ended with a final block (BFINAL) before
			// the message's last frame, which RFC 7692 section 7.2.3.4
			// allows: what follows it (from a conforming sender, an empty
			// block's byte) is read and dropped, within the message size
			// checked on each header.
			_, err = io.Copy(io.Discard, mr)
		}
		if mr.err == errRefusedMore {
			// As for a plain message (onClientData): the pair ends with the
			// refusal, the rest of the refused frame is skipped and nothing
			// more of the message goes upstream.
			return d.skip()
		}
		if mr.err != nil {
			// The frames failed, not the inflation.
			return mr.err
		}
		if err != nil {
			// Corrupt deflate data, or frames that ended inside it: the
			// inflater read past the tail it was given.
			return frames.ErrBadDeflate
		}
		total += int64(n)
		if max := d.pr.p.cfg.MaxMessageBytes; max > 0 && total > max {
			return frames.ErrMessageTooBig
		}
		if text && (!utf.Valid(buf[:n]) || end && !utf.Complete()) {
			return frames.ErrInvalidUTF8
		}
		if cr := d.pr.info.rules; cr != nil && cr.scan != nil {
			// The class its first bytes could not settle, as in
			// forwardScanned.
			cr.scan.Write(buf[:n])
			if (cr.scan.Settled() || end) && d.reclassed() {
				return d.skip()
			}
		}
		out.Fin = end
		if err := d.writeFrame(out, buf[:n]); err != nil {
			return err
		}
		if end {
			d.count(true, ws.Header{Length: total})
			return nil
		}
		out.OpCode = ws.OpContinuation
	}
}

// readChunk reads from r into p until p is full or r ends, and reports
// whether r ended (io.EOF). Unlike io.ReadFull it keeps io.EOF apart from
// an io.ErrUnexpectedEOF of r's own: the inflater's for deflate data cut
// short, which must not pass for the end of a message.
func readChunk(r io.Reader, p []byte) (n int, ended bool, err error) {
	for n < len(p) {
		k, err := r.Read(p[n:])
		n += k
		if err == io.EOF {
			return n, true, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	return n, false, nil
}

// writeFrame writes one frame the gate made to d's destination.
func (d *direction) writeFrame(h ws.Header, p []byte) error {
	if d.dst().closeSent || d.dst().broken {
		return errDropped
	}
	if err := frames.WriteHeaderFrame((*sink)(d), h, p, d.dst().masked); err != nil {
		d.broke()
		return &frames.WriteError{Err: err}
	}
	return nil
}

// errDropped stops a message whose destination was closed meanwhile.
var errDropped = errors.New("destination closed")

// messageReader reads the payload of a message across its frames, handling
// the control frames between them as the relay loop would.
type messageReader struct {
	d    *direction
	cur  io.Reader
	fin  bool  // cur is the message's last frame
	done bool  // the last frame's payload has been read
	err  error // what stopped reading, for cause
}

func (m *messageReader) Read(p []byte) (int, error) {
	for {
		n, err := m.cur.Read(p)
		if err != nil && err != io.EOF {
			m.err = err
			return n, err
		}
		if err == nil {
			return n, nil
		}
		if m.fin {
			m.done = true
			return n, io.EOF
		}
		if n > 0 {
			return n, nil
		}
		if err := m.next(); err != nil {
			m.err = err
			return 0, err
		}
	}
}

// next reads headers up to the message's next data frame, which it charges
// to the byte rules as onClientData charges a plain message's later frames:
// a byte rule counts what the client sent, compressed, frame by frame.
func (m *messageReader) next() error {
	var h ws.Header
	if err := m.d.nextInMessage(func(next ws.Header) { h = next }); err != nil {
		return err
	}
	if m.d.pr.p.cfg.Limiter != nil && m.d.limitedMore(h) {
		return errRefusedMore
	}
	m.cur, m.fin = m.d.s.Payload(&m.d.r, h), h.Fin
	return nil
}

// nextInMessage reads the frames of an open message up to its next data
// frame, which it hands to data; control frames between them are handled
// as the relay loop would, and a close frame stops the message
// (errCloseInMessage).
func (d *direction) nextInMessage(data func(ws.Header)) error {
	for {
		h, err := d.s.Next(&d.r)
		if err != nil {
			if h.OpCode == ws.OpClose {
				d.closeRead()
			}
			return err
		}
		switch {
		case !h.OpCode.IsControl():
			data(h)
			return nil
		case h.OpCode == ws.OpClose:
			if err := d.onClose(h); err != nil {
				return err
			}
			return errCloseInMessage
		default:
			if err := d.onControl(h); err != nil {
				return err
			}
		}
	}
}

// deflate relays an upstream message that starts with h to a client that
// negotiated permessage-deflate: its payload is compressed as it arrives and
// sent in frames of up to one chunk, the first with RSV1.
func (d *direction) deflate(h ws.Header) error {
	if err := d.flush(); err != nil {
		return err
	}
	em := &emitter{d: d, op: h.OpCode}
	bp := chunks.Get().(*[]byte)
	defer chunks.Put(bp)
	em.buf = (*bp)[:0]
	fw := deflaters.Get().(*wsflate.Writer)
	defer deflaters.Put(fw)
	fw.Reset(em)
	cp := chunks.Get().(*[]byte)
	defer chunks.Put(cp)

	var total int64
	for {
		total += h.Length
		if _, err := io.CopyBuffer(fw, d.s.Payload(&d.r, h), *cp); err != nil {
			return err
		}
		if h.Fin {
			break
		}
		if err := d.nextInMessage(func(next ws.Header) { h = next }); err != nil {
			return err
		}
	}
	if err := fw.Flush(); err != nil {
		return err
	}
	if err := em.flush(true); err != nil {
		return err
	}
	d.count(true, ws.Header{Length: total})
	return nil
}

// emitter turns compressed bytes into client frames, one per chunk.
type emitter struct {
	d       *direction
	op      ws.OpCode
	started bool
	buf     []byte
}

func (e *emitter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := copy(e.buf[len(e.buf):cap(e.buf)], p)
		e.buf = e.buf[:len(e.buf)+k]
		p = p[k:]
		if len(e.buf) == cap(e.buf) {
			if err := e.flush(false); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (e *emitter) flush(fin bool) error {
	h := ws.Header{Fin: fin, OpCode: ws.OpContinuation}
	if !e.started {
		h.OpCode, h.Rsv = e.op, ws.Rsv(true, false, false)
		e.started = true
	}
	err := e.d.writeFrame(h, e.buf)
	e.buf = e.buf[:0]
	e.d.inDeflate = !fin
	return err
}
