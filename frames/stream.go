package frames

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Peer says which end of a WebSocket connection sends the frames of a
// Stream.
type Peer uint8

const (
	// Client frames must be masked (RFC 6455 section 5.1) and are sent on
	// masked with a fresh key.
	Client Peer = iota
	// Server frames must not be masked and are sent on unmasked.
	Server
)

// CloseError is a violation of the protocol by the sending peer: the
// connection ends and the peer gets a close frame with Code and Reason.
type CloseError struct {
	Code   ws.StatusCode
	Reason string
}

func (e *CloseError) Error() string { return "websocket: " + e.Reason }

// The violations, one value each so that the per-frame path never
// allocates an error.
var (
	ErrReservedOpcode   = &CloseError{ws.StatusProtocolError, "reserved opcode"}
	ErrReservedBits     = &CloseError{ws.StatusProtocolError, "reserved bits set"}
	ErrControlTooLong   = &CloseError{ws.StatusProtocolError, "control frame over 125 bytes"}
	ErrControlFragment  = &CloseError{ws.StatusProtocolError, "fragmented control frame"}
	ErrMaskRequired     = &CloseError{ws.StatusProtocolError, "unmasked client frame"}
	ErrMaskUnexpected   = &CloseError{ws.StatusProtocolError, "masked server frame"}
	ErrContinuation     = &CloseError{ws.StatusProtocolError, "continuation frame without a message"}
	ErrNoContinuation   = &CloseError{ws.StatusProtocolError, "new message inside a fragmented message"}
	ErrLength           = &CloseError{ws.StatusProtocolError, "invalid payload length"}
	ErrCloseBody        = &CloseError{ws.StatusProtocolError, "close frame with a 1-byte body"}
	ErrCloseCode        = &CloseError{ws.StatusProtocolError, "invalid close code"}
	ErrInvalidUTF8      = &CloseError{ws.StatusInvalidFramePayloadData, "invalid UTF-8 in text message"}
	ErrCloseReasonUTF8  = &CloseError{ws.StatusInvalidFramePayloadData, "invalid UTF-8 in close reason"}
	ErrMessageTooBig    = &CloseError{ws.StatusMessageTooBig, "message too big"}
	ErrBadDeflate       = &CloseError{ws.StatusInvalidFramePayloadData, "invalid compressed data"}
	errUnexpectedHeader = errors.New("frames: Forward without a header from Next")
)

// WriteError is a failure to write a forwarded frame to its destination:
// the destination's fault, not the source's.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "websocket: write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// Close is what a forwarded close frame said. Code is 1005 (no status) for
// a close frame without a body.
type Close struct {
	Code   ws.StatusCode
	Reason string
}

// Stream holds the protocol state of the frames one peer sends: whether a
// fragmented message is open, its size so far and, for text, its UTF-8
// state. Next reads and checks a header; Forward streams that frame's
// payload to the other peer.
//
// A Stream is used by one goroutine; its zero value reads client frames
// without a size limit.
type Stream struct {
	// From is the peer whose frames this Stream reads.
	From Peer
	// Compression allows RSV1 on the first frame of a data message
	// (permessage-deflate negotiated). Such a message is read with Payload,
	// not Forward.
	Compression bool

	// The small fields share the first words with From and Compression:
	// every proxied connection holds two Streams.
	fragmented bool // a data message is open (its last frame had FIN=0)
	compressed bool // the open (or last) message is compressed
	text       bool // the open message is text
	pending    bool // Next returned a header whose payload Forward has not read
	midFrame   bool // Forward failed after writing part of a frame
	utf8       utf8State
	hdr        [ws.MaxHeaderSize]byte

	// MaxMessageBytes bounds the sum of a data message's frame lengths,
	// checked on each header before its payload is read. Zero means no
	// limit.
	MaxMessageBytes int64

	size   int64          // payload bytes announced so far for the open message
	unread int64          // payload bytes of the last header not read yet; -1: unknown
	pay    *payloadReader // made by the first Payload (compressed messages only)
}

// StartsMessage reports whether h is the first frame of a data message:
// the unit that limits count.
func StartsMessage(h ws.Header) bool {
	return h.OpCode == ws.OpText || h.OpCode == ws.OpBinary
}

// Next reads the next frame header from r and checks it against RFC 6455
// section 5 and the stream's state. Violations are returned as
// *CloseError; anything else is the reader's error.
func (s *Stream) Next(r io.Reader) (ws.Header, error) {
	h, err := ws.ReadHeaderBuffer(r, s.hdr[:])
	if err != nil {
		s.unread = -1
		if errors.Is(err, ws.ErrHeaderLengthMSB) || errors.Is(err, ws.ErrHeaderLengthUnexpected) {
			return h, ErrLength
		}
		return h, err
	}
	s.unread = h.Length
	if err := s.check(h); err != nil {
		return h, err
	}
	s.pending = true
	return h, nil
}

func (s *Stream) check(h ws.Header) error {
	switch {
	case h.OpCode.IsReserved():
		return ErrReservedOpcode
	case h.Rsv != 0 && !(s.Compression && h.Rsv == rsv1 && StartsMessage(h)):
		// RSV1 marks a compressed message on its first frame when
		// permessage-deflate is negotiated (RFC 7692 section 6); any other
		// reserved bit has no meaning (RFC 6455 section 5.2).
		return ErrReservedBits
	case s.From == Client && !h.Masked:
		return ErrMaskRequired
	case s.From == Server && h.Masked:
		return ErrMaskUnexpected
	}
	if h.OpCode.IsControl() {
		switch {
		case h.Length > ws.MaxControlFramePayloadSize:
			return ErrControlTooLong
		case !h.Fin:
			return ErrControlFragment
		case h.OpCode == ws.OpClose && h.Length == 1:
			return ErrCloseBody
		}
		return nil
	}
	switch {
	case h.OpCode == ws.OpContinuation && !s.fragmented:
		return ErrContinuation
	case h.OpCode != ws.OpContinuation && s.fragmented:
		return ErrNoContinuation
	}
	if h.OpCode != ws.OpContinuation {
		s.size = 0
		s.compressed = h.Rsv == rsv1
		// A compressed message's payload is deflate data: its text is
		// checked after inflation.
		s.text = h.OpCode == ws.OpText && !s.compressed
		s.utf8 = utf8State{}
	}
	if max := s.MaxMessageBytes; max > 0 && (h.Length > max || s.size > max-h.Length) {
		return ErrMessageTooBig
	}
	s.size += h.Length
	s.fragmented = !h.Fin
	return nil
}

// MessageSize reports the payload bytes of the current data message's
// frames whose headers have been read.
func (s *Stream) MessageSize() int64 { return s.size }

// InMessage reports whether a fragmented data message is open: its first
// frames have passed, its final frame has not.
func (s *Stream) InMessage() bool { return s.fragmented }

// Unread reports how many payload bytes of the last frame header have not
// been read (-1 when a read failed partway): what a caller must skip before
// it can read the next header, for example to drain a connection after a
// violation found in a header.
func (s *Stream) Unread() int64 { return s.unread }

// Skip reads and drops the rest of the payload of the frame whose header
// Next last returned (Unread bytes), so that the next header can be read.
func (s *Stream) Skip(r io.Reader) error {
	if s.unread < 0 {
		return errUnknownRest
	}
	s.pending = false
	n, err := io.CopyN(io.Discard, r, s.unread)
	s.unread -= n
	if err != nil {
		s.unread = -1
	}
	return err
}

// errUnknownRest is Skip's error when a failed read left the rest of the
// frame unknown.
var errUnknownRest = errors.New("frames: the rest of the frame is unknown")

// Compressed reports whether the current data message is compressed (its
// first frame had RSV1).
func (s *Stream) Compressed() bool { return s.compressed }

// rsv1 is the value of Header.Rsv with only RSV1 set.
const rsv1 = 4

// Payload returns a reader of the payload of h, the header Next just
// returned: unmasked and, in an uncompressed text message, checked as UTF-8
// as it is read; a read whose bytes break the UTF-8 returns none of them,
// with ErrInvalidUTF8. It returns io.EOF at the end of the frame. The reader
// is part of s and valid until the next call of Next.
func (s *Stream) Payload(r io.Reader, h ws.Header) io.Reader {
	s.pending = false
	if s.pay == nil {
		s.pay = new(payloadReader)
	}
	*s.pay = payloadReader{s: s, r: r, h: h, remaining: h.Length}
	return s.pay
}

type payloadReader struct {
	s         *Stream
	r         io.Reader
	h         ws.Header
	off       int
	remaining int64
}

func (p *payloadReader) Read(b []byte) (int, error) {
	if p.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.remaining {
		b = b[:p.remaining]
	}
	n, err := p.r.Read(b)
	if n > 0 {
		b = b[:n]
		if p.h.Masked {
			ws.Cipher(b, p.h.Mask, p.off)
		}
		p.off += n
		p.remaining -= int64(n)
		p.s.unread = p.remaining
		if p.s.text && !p.h.OpCode.IsControl() {
			if !p.s.utf8.valid(b) || p.h.Fin && p.remaining == 0 && !p.s.utf8.complete() {
				// None of the chunk, as in Forward: a caller that writes
				// what a read returned before it looks at the error
				// (io.Copy) passes on nothing past the last valid chunk.
				return 0, ErrInvalidUTF8
			}
		}
	}
	if err == io.EOF && p.remaining > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		p.s.unread = -1
	}
	return n, err
}

// MidFrame reports whether the last Forward failed after it had written
// part of a frame: the destination then cannot take a close frame, only the
// end of the connection.
func (s *Stream) MidFrame() bool { return s.midFrame }

// Forward reads the payload of h, the header Next just returned, from r and
// writes the frame to w: masked with a fresh key when the stream reads a
// client, unmasked otherwise. Header and payload go out in one write call
// when they fit in BufferSize; a longer frame goes out in chunks, each
// checked before it is written, so no byte of an invalid text message or
// close frame reaches w. For a close frame it returns what the frame said.
func (s *Stream) Forward(w io.Writer, r io.Reader, h ws.Header) (Close, error) {
	if !s.pending {
		return Close{}, errUnexpectedHeader
	}
	s.pending = false
	s.midFrame = false

	out := h
	out.Masked = s.From == Client
	if out.Masked {
		binary.LittleEndian.PutUint32(out.Mask[:], rand.Uint32())
	} else {
		out.Mask = [4]byte{}
	}

	bp := getBuf()
	defer putBuf(bp)
	buf := *bp
	n := putHeader(buf, out)
	text := s.text && !h.OpCode.IsControl()
	var c Close
	for remaining, off := h.Length, 0; ; {
		chunk := int(min(remaining, int64(len(buf)-n)))
		p := buf[n : n+chunk]
		if _, err := io.ReadFull(r, p); err != nil {
			s.midFrame = off > 0
			s.unread = -1
			return c, err
		}
		if h.Masked {
			ws.Cipher(p, h.Mask, off)
		}
		remaining -= int64(chunk)
		s.unread = remaining
		switch {
		case text:
			if !s.utf8.valid(p) || h.Fin && remaining == 0 && !s.utf8.complete() {
				s.midFrame = off > 0
				return c, ErrInvalidUTF8
			}
		case h.OpCode == ws.OpClose:
			var err error
			if c, err = parseClose(p); err != nil {
				return c, err
			}
		}
		if out.Masked {
			ws.Cipher(p, out.Mask, off)
		}
		if _, err := w.Write(buf[:n+chunk]); err != nil {
			s.midFrame = true
			return c, &WriteError{err}
		}
		off += chunk
		n = 0
		if remaining == 0 {
			return c, nil
		}
	}
}

// ReadControl reads the payload of h, a control frame Next just returned,
// into p (which holds at least 125 bytes) and unmasks it, for a caller that
// answers the frame itself instead of forwarding it.
func (s *Stream) ReadControl(r io.Reader, h ws.Header, p []byte) ([]byte, error) {
	if !s.pending || !h.OpCode.IsControl() || int64(len(p)) < h.Length {
		return nil, errUnexpectedHeader
	}
	s.pending = false
	p = p[:h.Length]
	if _, err := io.ReadFull(r, p); err != nil {
		s.unread = -1
		return nil, err
	}
	s.unread = 0
	if h.Masked {
		ws.Cipher(p, h.Mask, 0)
	}
	return p, nil
}

// parseClose checks a close frame's body (RFC 6455 section 5.5.1).
func parseClose(p []byte) (Close, error) {
	if len(p) == 0 {
		return Close{Code: ws.StatusNoStatusRcvd}, nil
	}
	c := Close{Code: ws.StatusCode(binary.BigEndian.Uint16(p))}
	if !ValidCloseCode(c.Code) {
		return c, ErrCloseCode
	}
	if !utf8.Valid(p[2:]) {
		return c, ErrCloseReasonUTF8
	}
	c.Reason = string(p[2:])
	return c, nil
}
