package frames

import (
	"encoding/binary"

	"github.com/gobwas/ws"
)

// headerLen returns the length of the frame header at the start of p, or
// 0 when p holds less than a whole header.
func headerLen(p []byte) int {
	if len(p) < 2 {
		return 0
	}
	hl := 2
	switch p[1] & 0x7f {
	case 126:
		hl = 4
	case 127:
		hl = 10
	}
	if p[1]&0x80 != 0 {
		hl += 4 // mask key
	}
	if len(p) < hl {
		return 0
	}
	return hl
}

// CountMessages counts, up to limit, the frames in p that start a data
// message (text or binary), reading their headers only: a frame counts once
// its header is in p, whether or not its payload is. p must start at a
// frame header. It stops at a close frame, after which nothing is relayed,
// and at the first header p cuts short.
//
// It does not validate: a frame that breaks the protocol is found when it
// is read, and ends the connection then. The relay uses the count to ask
// the limiter about every message already buffered in one decision.
func CountMessages(p []byte, limit int) int {
	n := 0
	for n < limit {
		hl := headerLen(p)
		if hl == 0 {
			break
		}
		op := ws.OpCode(p[0] & 0x0f)
		if op == ws.OpClose {
			break
		}
		size := int(p[1] & 0x7f)
		if op == ws.OpText || op == ws.OpBinary {
			n++
		}
		length := uint64(size)
		switch size {
		case 126:
			length = uint64(binary.BigEndian.Uint16(p[2:]))
		case 127:
			length = binary.BigEndian.Uint64(p[2:])
		}
		if length > uint64(len(p)-hl) {
			break
		}
		p = p[hl+int(length):]
	}
	return n
}
