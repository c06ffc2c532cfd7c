package frames

import (
	"encoding/binary"

	"github.com/gobwas/ws"
)

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
	for n < limit && len(p) >= 2 {
		op := ws.OpCode(p[0] & 0x0f)
		if op == ws.OpClose {
			break
		}
		size := int(p[1] & 0x7f)
		hl := 2
		switch size {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		if p[1]&0x80 != 0 {
			hl += 4 // mask key
		}
		if len(p) < hl {
			break
		}
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
