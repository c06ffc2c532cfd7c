package frames

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Close codes the gate sends on its own account, beside the RFC 6455 ones
// in package ws.
const (
	// StatusBadGateway is 1014 (IANA registry): the upstream dropped the
	// connection or broke the protocol.
	StatusBadGateway ws.StatusCode = 1014
	// StatusServiceRestart is 1012 (IANA registry): the gate is draining the
	// connection for a restart; the client should reconnect.
	StatusServiceRestart ws.StatusCode = 1012
	// StatusRateLimited is the application code for a refusal by a rate
	// limit.
	StatusRateLimited ws.StatusCode = 4008
)

// ValidCloseCode reports whether code may be sent in a close frame (RFC 6455
// section 7.4; 1012-1014 are registered by IANA and legitimately sent by
// servers, 1004-1006 and 1015 must never be on the wire).
func ValidCloseCode(code ws.StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003,
		code >= 1007 && code <= 1014,
		code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// WriteFrame writes one unfragmented frame holding payload to w with one
// write call. masked is true toward a server (RFC 6455 section 5.3: every
// frame from a client is masked with a fresh key). payload is not modified.
func WriteFrame(w io.Writer, op ws.OpCode, payload []byte, masked bool) error {
	return WriteHeaderFrame(w, ws.Header{Fin: true, OpCode: op}, payload, masked)
}

// WriteHeaderFrame writes one frame with h's FIN, RSV and opcode holding
// payload, with one write call when it fits in BufferSize.
func WriteHeaderFrame(w io.Writer, h ws.Header, payload []byte, masked bool) error {
	bp := getBuf()
	defer putBuf(bp)
	buf := *bp
	h.Length, h.Masked, h.Mask = int64(len(payload)), masked, [4]byte{}
	if masked {
		binary.LittleEndian.PutUint32(h.Mask[:], rand.Uint32())
	}
	n := putHeader(buf, h)
	if n+len(payload) > len(buf) {
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		if masked {
			p := append([]byte(nil), payload...)
			ws.Cipher(p, h.Mask, 0)
			payload = p
		}
		_, err := w.Write(payload)
		return err
	}
	p := buf[n : n+copy(buf[n:], payload)]
	if masked {
		ws.Cipher(p, h.Mask, 0)
	}
	_, err := w.Write(buf[:n+len(p)])
	return err
}

// WriteClose writes a close frame with code and reason, the reason cut to
// fit the 125 bytes of a control frame on a rune boundary: a cut reason
// stays UTF-8, as RFC 6455 requires of it.
func WriteClose(w io.Writer, code ws.StatusCode, reason string, masked bool) error {
	var p [ws.MaxControlFramePayloadSize]byte
	binary.BigEndian.PutUint16(p[:2], uint16(code))
	if max := len(p) - 2; len(reason) > max {
		i := max
		for i > 0 && !utf8.RuneStart(reason[i]) {
			i--
		}
		reason = reason[:i]
	}
	n := 2 + copy(p[2:], reason)
	return WriteFrame(w, ws.OpClose, p[:n], masked)
}

// putHeader encodes h at the start of buf and returns its length.
func putHeader(buf []byte, h ws.Header) int {
	buf[0] = h.Rsv<<4 | byte(h.OpCode)
	if h.Fin {
		buf[0] |= 0x80
	}
	var n int
	switch {
	case h.Length <= 125:
		buf[1] = byte(h.Length)
		n = 2
	case h.Length <= 0xFFFF:
		buf[1] = 126
		binary.BigEndian.PutUint16(buf[2:4], uint16(h.Length))
		n = 4
	default:
		buf[1] = 127
		binary.BigEndian.PutUint64(buf[2:10], uint64(h.Length))
		n = 10
	}
	if h.Masked {
		buf[1] |= 0x80
		n += copy(buf[n:], h.Mask[:])
	}
	return n
}
