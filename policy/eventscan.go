package policy

import "unicode/utf8"

// eventScan follows a socket.io EVENT or BINARY_EVENT packet to its event's
// name, byte by byte, as SocketIOEvent reads it from a prefix: the packet
// type (with a BINARY_EVENT's attachment count up to its '-'), a namespace
// up to its ',', the ack id's characters (digits and JavaScript white
// space, which socket.io-parser takes into it), the '[' and JSON white
// space, then the name's string and the ',' or ']' after it. Past the name
// it reads nothing.
type eventScan struct {
	state   eventState
	esc     bool // the last byte of the name was an unpaired backslash
	pend    [utf8.UTFMax]byte
	pending int    // bytes of a multi-byte character in the ack id so far
	name    []byte // the name's raw bytes, up to max
	nameLen int    // the name's raw length, past max too
	max     int
}

type eventState uint8

const (
	evType        eventState = iota // the engine.io message's '4'
	evKind                          // the socket.io packet's type
	evAttachFirst                   // a BINARY_EVENT's attachment count, first byte
	evAttach                        // the rest of it, up to '-'
	evNamespace0                    // a '/' here opens a namespace
	evNamespace                     // up to its ','
	evAck                           // ack id characters
	evOpen                          // the '['
	evSpace                         // JSON white space before the name
	evName                          // in the name's string
	evAfter                         // JSON white space, then ',' or ']'
	evNamed                         // the name is known
	evNone                          // no event name: another packet, or not JSON
)

func (e *eventScan) start(max int) {
	*e = eventScan{name: e.name[:0], max: max}
}

// write follows the packet through b, the bytes after those written before.
func (e *eventScan) write(b []byte) {
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch e.state {
		case evType:
			e.state = evNone
			if c == '4' {
				e.state = evKind
			}
		case evKind:
			switch c {
			case '2':
				e.state = evNamespace0
			case '5':
				e.state = evAttachFirst
			default:
				e.state = evNone
			}
		case evAttachFirst:
			e.state = evAttach
			if c == '-' {
				e.state = evNone // socket.io-parser refuses an empty count
			}
		case evAttach:
			if c == '-' {
				e.state = evNamespace0
			}
		case evNamespace0:
			if c == '/' {
				e.state = evNamespace
				continue
			}
			e.state = evAck
			i-- // the byte is the ack id's, or the '['
		case evNamespace:
			if c == ',' {
				e.state = evAck
			}
		case evAck:
			if e.pending > 0 || c >= utf8.RuneSelf {
				e.pend[e.pending] = c
				e.pending++
				if utf8.FullRune(e.pend[:e.pending]) {
					r, _ := utf8.DecodeRune(e.pend[:e.pending])
					e.pending = 0
					if !jsSpace(r) {
						e.state = evNone
					}
				}
				continue
			}
			if '0' <= c && c <= '9' || c == ' ' || '\t' <= c && c <= '\r' {
				continue
			}
			e.state = evOpen
			i--
		case evOpen:
			e.state = evNone
			if c == '[' {
				e.state = evSpace
			}
		case evSpace:
			switch {
			case isJSONSpace(c):
			case c == '"':
				e.state = evName
			default:
				e.state = evNone
			}
		case evName:
			switch {
			case e.esc:
				e.esc = false
			case c == '\\':
				e.esc = true
			case c == '"':
				e.state = evAfter
				continue
			case c < 0x20:
				e.state = evNone // JSON has no raw control characters in strings
				continue
			}
			if len(e.name) < e.max {
				e.name = append(e.name, c)
			}
			e.nameLen++
		case evAfter:
			switch {
			case isJSONSpace(c):
			case c == ',' || c == ']':
				e.state = evNamed
			default:
				e.state = evNone
			}
		default:
			return
		}
	}
}

// named reports whether the packet's event is want, the name's JSON
// escapes decoded.
func (e *eventScan) named(want string) bool {
	return e.state == evNamed && e.nameLen <= e.max && decodedEquals(e.name, want)
}
