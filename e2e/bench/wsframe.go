package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/gobwas/ws"
)

// Opcodes of RFC 6455 section 5.2 that the load clients and the echo backend act on.
const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
	finBit  = 0x80
	maskBit = 0x80
)

// maxPayload bounds a frame the harness will read; its own messages are 64 B.
const maxPayload = 1 << 20

var errTooBig = errors.New("frame over 1 MiB")

// clientMask is the masking key of every client frame. RFC 6455 section 5.3 wants it
// unpredictable against cache poisoning by intermediaries; a fixed key is fine on loopback and
// lets the load clients send prebuilt frames.
var clientMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// clientFrame returns one masked frame with FIN set, as a client sends it (section 5.3).
func clientFrame(op byte, payload []byte) []byte {
	b := appendHeader(nil, finBit|op, len(payload), true)
	b = append(b, clientMask[:]...)
	start := len(b)
	b = append(b, payload...)
	ws.Cipher(b[start:], clientMask, 0)
	return b
}

// appendHeader appends the first bytes of a frame header (without a masking key).
func appendHeader(b []byte, b0 byte, n int, masked bool) []byte {
	var m byte
	if masked {
		m = maskBit
	}
	switch {
	case n < 126:
		return append(b, b0, m|byte(n))
	case n <= 0xffff:
		return append(b, b0, m|126, byte(n>>8), byte(n))
	default:
		b = append(b, b0, m|127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// frame is one frame read by readFrame; payload is valid until the next read.
type frame struct {
	b0      byte
	payload []byte
}

func (f frame) op() byte { return f.b0 & 0x0f }

// readFrame reads one frame from br into buf (grown as needed) and unmasks it.
func readFrame(br *bufio.Reader, buf *[]byte) (frame, error) {
	var h [8]byte
	if _, err := io.ReadFull(br, h[:2]); err != nil {
		return frame{}, err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		if _, err := io.ReadFull(br, h[:2]); err != nil {
			return frame{}, err
		}
		n = int(binary.BigEndian.Uint16(h[:2]))
	case 127:
		if _, err := io.ReadFull(br, h[:8]); err != nil {
			return frame{}, err
		}
		v := binary.BigEndian.Uint64(h[:8])
		if v > maxPayload {
			return frame{}, errTooBig
		}
		n = int(v)
	}
	if n > maxPayload {
		return frame{}, errTooBig
	}
	var mask [4]byte
	masked := h[1]&maskBit != 0
	if masked {
		if _, err := io.ReadFull(br, mask[:]); err != nil {
			return frame{}, err
		}
	}
	if cap(*buf) < n {
		*buf = make([]byte, n)
	}
	p := (*buf)[:n]
	if _, err := io.ReadFull(br, p); err != nil {
		return frame{}, err
	}
	if masked {
		ws.Cipher(p, mask, 0)
	}
	return frame{b0: h[0], payload: p}, nil
}

// frameBuffered reports whether br holds at least one whole frame, so that reading it will
// not block.
func frameBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < 2 {
		return false
	}
	h, _ := br.Peek(min(n, 14))
	need := 2
	l := int(h[1] & 0x7f)
	switch l {
	case 126:
		need += 2
		if len(h) < need {
			return false
		}
		l = int(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		need += 8
		if len(h) < need {
			return false
		}
		l = int(min(binary.BigEndian.Uint64(h[2:10]), maxPayload+1))
	}
	if h[1]&maskBit != 0 {
		need += 4
	}
	return n >= need+l
}

// readEchoes reads at least one frame and then every whole frame already buffered. It answers
// pings with pongs (the gate pings clients every --ping-interval) and returns the number of
// data frames read.
func readEchoes(conn net.Conn, br *bufio.Reader, buf *[]byte) (int, error) {
	k := 0
	for first := true; first || frameBuffered(br); first = false {
		f, err := readFrame(br, buf)
		if err != nil {
			return k, err
		}
		switch f.op() {
		case opPing:
			if _, err := conn.Write(clientFrame(opPong, f.payload)); err != nil {
				return k, err
			}
		case opPong:
		case opClose:
			return k, fmt.Errorf("closed by the proxy: % x", f.payload)
		default:
			k++
		}
	}
	return k, nil
}
