package proxy

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/limit"
)

// socket.io as the gate speaks it, for its own words only: engine.io
// protocol 4 (socket.io 3 and 4; github.com/socketio/engine.io-protocol)
// carries socket.io packets (github.com/socketio/socket.io-protocol).
//
// On the WebSocket transport each frame is one engine.io packet; on
// polling, a request or response body holds packets separated by 0x1e.
// An engine.io packet starts with its type: '0' open, '1' close, '2' ping,
// '3' pong, '4' message, '5' upgrade, '6' noop; a message ('4') holds one
// socket.io packet, which starts with its own type ('0' CONNECT, '2' EVENT,
// '4' CONNECT_ERROR, '5' BINARY_EVENT, ...), then "<n>-" for binary
// attachments, then "/nsp," for a namespace other than "/". Binary
// attachments travel as separate engine.io messages ('b' and base64 on
// polling, binary frames on WebSocket).
//
// The gate answers in that protocol when it refuses: a refused message
// becomes the event Config.SocketIOEvent in the namespace the message was
// for, then the transport closes; a refused handshake becomes a short
// engine.io session of the gate's own whose every CONNECT gets a
// CONNECT_ERROR, which socket.io-client hands to the app's connect_error
// handler with its data in err.data.

// Engine.io packet types.
const (
	eioOpen    = '0'
	eioClose   = '1'
	eioPing    = '2'
	eioPong    = '3'
	eioMessage = '4'
	eioUpgrade = '5'
	eioNoop    = '6'
	eioBinary  = 'b' // a binary message, base64, on polling
	eioSep     = 0x1e
)

// socket.io packet types, the byte after eioMessage.
const (
	sioTypeConnect      = '0'
	sioTypeConnectError = '4'
	sioTypeBinaryEvent  = '5'
	sioTypeBinaryAck    = '6'
)

const (
	// sioFreeControl engine.io control packets (pings, pongs, noops,
	// upgrades, probes) pass uncounted per sioFreeWindow and connection:
	// a client sends one pong per ping interval of its server (25 s by
	// default). Those past it count as messages, so that a flood of
	// pongs is not a way around the limits.
	sioFreeControl = 30
	sioFreeWindow  = 10 * time.Second
	// maxNamespace bounds a namespace the gate echoes back to a client.
	maxNamespace = 64
	// sioOpenTimings are the heartbeat timings the gate's own sessions
	// announce: socket.io's defaults. The sessions end long before.
	sioOpenTimings = `,"upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`
)

// eioRequest is what the gate reads of an engine.io request.
type eioRequest struct {
	sid       string // the session; "" for the request that opens one
	transport string // "polling" or "websocket"
}

// engineIO reports whether r is an engine.io 4 request under
// Config.SocketIOPath, and what it is.
func (p *Proxy) engineIO(r *http.Request) (eioRequest, bool) {
	if !p.underSocketIO(r.URL.Path) {
		return eioRequest{}, false
	}
	q := r.URL.Query()
	if q.Get("EIO") != "4" {
		return eioRequest{}, false
	}
	return eioRequest{sid: q.Get("sid"), transport: q.Get("transport")}, true
}

// ambiguousEIO reports whether r, a request under Config.SocketIOPath,
// names EIO, transport or sid more than once: the gate reads the first
// value and engine.io the last, so the two could disagree on what the
// request is (a session's open or one of its POSTs counted as a plain
// request, another session's key). Such a request gets 400.
func (p *Proxy) ambiguousEIO(r *http.Request) bool {
	if r.URL.RawQuery == "" || !p.underSocketIO(r.URL.Path) {
		return false
	}
	q := r.URL.Query()
	return len(q["EIO"]) > 1 || len(q["transport"]) > 1 || len(q["sid"]) > 1
}

// underSocketIO reports whether path is Config.SocketIOPath or under it.
func (p *Proxy) underSocketIO(path string) bool {
	base := p.web.sioBase
	return base != "" && (path == base || strings.HasPrefix(path, base+"/"))
}

// isControlPacket reports whether p, a whole engine.io packet, is a
// transport packet that carries nothing for the app: close, ping, pong,
// upgrade, noop, or a probe ("2probe", "3probe").
func isControlPacket(p []byte) bool {
	switch len(p) {
	case 1:
		switch p[0] {
		case eioClose, eioPing, eioPong, eioUpgrade, eioNoop:
			return true
		}
	case 6:
		return (p[0] == eioPing || p[0] == eioPong) && string(p[1:]) == "probe"
	}
	return false
}

// controlFrame reports whether the client frame with header h, whose
// payload (still masked) starts buf, is a whole engine.io control packet.
// It looks at the buffered bytes only and never allocates.
func controlFrame(h ws.Header, buf []byte) bool {
	if h.OpCode != ws.OpText || !h.Fin || h.Rsv1() || h.Length > 6 || int64(len(buf)) < h.Length {
		return false
	}
	var p [6]byte
	n := copy(p[:h.Length], buf)
	if h.Masked {
		ws.Cipher(p[:n], h.Mask, 0)
	}
	return isControlPacket(p[:n])
}

// freeControl reports whether the client message whose header is h and
// whose payload starts buf passes without counting: an engine.io control
// packet within the connection's allowance.
func (c *connInfo) freeControl(h ws.Header, buf []byte) bool {
	if !controlFrame(h, buf) {
		return false
	}
	now := time.Now().UnixNano()
	if time.Duration(now-c.freeStart) >= sioFreeWindow {
		c.freeStart, c.freeCount = now, 0
	}
	c.freeCount++
	return c.freeCount <= sioFreeControl
}

// countSocketIOMessages is frames.CountMessages for an engine.io
// connection: the frames in p (which starts at a frame header) that start
// a data message other than an engine.io control packet, up to limit. It
// stops at a close frame and at the first header p cuts short, and never
// allocates.
func countSocketIOMessages(p []byte, limit int) int {
	n := 0
	for n < limit && len(p) >= 2 {
		hl := 2
		length := uint64(p[1] & 0x7f)
		switch length {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		masked := p[1]&0x80 != 0
		if masked {
			hl += 4
		}
		if len(p) < hl {
			break
		}
		switch length {
		case 126:
			length = uint64(binary.BigEndian.Uint16(p[2:]))
		case 127:
			length = binary.BigEndian.Uint64(p[2:])
		}
		op := ws.OpCode(p[0] & 0x0f)
		if op == ws.OpClose {
			break
		}
		if op == ws.OpText || op == ws.OpBinary {
			h := ws.Header{Fin: p[0]&0x80 != 0, Rsv: (p[0] >> 4) & 0x7, OpCode: op, Masked: masked, Length: int64(min(length, 1<<62))}
			if masked {
				copy(h.Mask[:], p[hl-4:hl])
			}
			if !controlFrame(h, p[hl:]) {
				n++
			}
		}
		if length > uint64(len(p)-hl) {
			break
		}
		p = p[hl+int(length):]
	}
	return n
}

// withAttachments reports whether the client frame with header h, whose
// payload (still masked) starts buf, belongs to a socket.io packet with
// binary attachments: a binary frame (an attachment), a text frame that
// starts a BINARY_EVENT or BINARY_ACK, or a compressed frame, whose packet
// type the gate cannot see.
func withAttachments(h ws.Header, buf []byte) bool {
	if h.OpCode == ws.OpBinary || h.Rsv1() {
		return true
	}
	var p [2]byte
	n := copy(p[:min(h.Length, 2)], buf)
	if h.Masked {
		ws.Cipher(p[:n], h.Mask, 0)
	}
	return n == 2 && p[0] == eioMessage && (p[1] == sioTypeBinaryEvent || p[1] == sioTypeBinaryAck)
}

// pendingAttachments returns how many binary attachments the upstream owes
// after the first frame, h, of its message whose payload starts buf, given
// it owed n before: a binary message is one of them; a BINARY_EVENT or
// BINARY_ACK ("45<count>-..." or "46<count>-...") announces count more.
func pendingAttachments(h ws.Header, buf []byte, n int32) int32 {
	if h.OpCode == ws.OpBinary {
		return max(n-1, 0)
	}
	p := buf[:min(h.Length, int64(len(buf)), 12)]
	if h.Masked || h.Rsv1() || len(p) < 4 || p[0] != eioMessage || p[1] != sioTypeBinaryEvent && p[1] != sioTypeBinaryAck {
		return 0
	}
	count := int32(0)
	for _, c := range p[2:] {
		switch {
		case c >= '0' && c <= '9':
			count = count*10 + int32(c-'0')
		case c == '-':
			return count
		default:
			return 0
		}
	}
	return 0
}

// namespace returns the namespace of engine.io packet p (a message that
// holds a socket.io packet), "" for the main namespace "/" or when p names
// none the gate would echo: more than maxNamespace bytes, or bytes other
// than printable ASCII.
func namespace(p []byte) string {
	if len(p) < 2 || p[0] != eioMessage {
		return ""
	}
	p = p[1:]
	i := 1 // after the socket.io packet type
	if p[0] == sioTypeBinaryEvent || p[0] == sioTypeBinaryAck {
		j := i
		for j < len(p) && p[j] >= '0' && p[j] <= '9' {
			j++
		}
		if j > i && j < len(p) && p[j] == '-' {
			i = j + 1
		}
	}
	if i >= len(p) || p[i] != '/' {
		return ""
	}
	nsp := p[i:]
	if end := bytes.IndexByte(nsp, ','); end >= 0 {
		nsp = nsp[:end]
	}
	if len(nsp) < 2 || len(nsp) > maxNamespace {
		return ""
	}
	for _, c := range nsp {
		if c <= ' ' || c > '~' || c == '"' || c == '\\' {
			return ""
		}
	}
	return string(nsp)
}

// frameNamespace is namespace for the client frame with header h whose
// payload, still masked, starts buf (what of it is buffered).
func frameNamespace(h ws.Header, buf []byte) string {
	if h.OpCode != ws.OpText || h.Rsv1() {
		return ""
	}
	var p [maxNamespace + 8]byte
	n := copy(p[:min(int64(len(p)), h.Length)], buf)
	if h.Masked {
		ws.Cipher(p[:n], h.Mask, 0)
	}
	return namespace(p[:n])
}

// appendNamespace appends "/nsp," for a namespace other than "/".
func appendNamespace(b []byte, nsp string) []byte {
	if nsp == "" {
		return b
	}
	return append(append(b, nsp...), ',')
}

// sioEvent is the engine.io message that delivers a refusal to the app:
// 42[/nsp,]["wsgate:limited",{"code":429,...}].
func (p *Proxy) sioEvent(nsp string, d limit.Decision) []byte {
	b := make([]byte, 0, 128)
	b = append(b, eioMessage, '2')
	b = appendNamespace(b, nsp)
	b = append(b, p.web.sioEventHead...)
	b = append(b, limitBody(d)...)
	return append(b, ']')
}

// sioConnectError is the CONNECT_ERROR that refuses a namespace:
// 44[/nsp,]{"message":"Rate limit exceeded","data":{"code":429,...}}.
// socket.io-client gives the app an Error with that message and data.
func sioConnectError(nsp string, d limit.Decision) []byte {
	b := make([]byte, 0, 128)
	b = append(b, eioMessage, sioTypeConnectError)
	b = appendNamespace(b, nsp)
	b = append(b, `{"message":"Rate limit exceeded","data":`...)
	b = append(b, limitBody(d)...)
	return append(b, '}')
}

// sioOpen is the engine.io open packet of a session of the gate's own.
func sioOpen(sid string) []byte {
	return []byte(`0{"sid":` + strconv.Quote(sid) + sioOpenTimings)
}

// packets calls fn with each packet of a polling payload, in order, and
// with the offset where the next one starts (len(body) after the last).
// It stops when fn returns false.
func packets(body []byte, fn func(pkt []byte, end int) bool) {
	off := 0
	for off <= len(body) {
		rest := body[off:]
		n := bytes.IndexByte(rest, eioSep)
		next := off + n + 1
		if n < 0 {
			n, next = len(rest), len(body)+1
		}
		if !fn(rest[:n], min(next, len(body))) || next > len(body) {
			return
		}
		off = next
	}
}

// countPackets counts the packets of a polling payload that count as
// messages: every packet but the control packets.
func countPackets(body []byte) int {
	n := 0
	packets(body, func(pkt []byte, _ int) bool {
		if len(pkt) > 0 && !isControlPacket(pkt) {
			n++
		}
		return true
	})
	return n
}

// cutAfter returns the length of the prefix of a polling payload that
// holds its first k counted packets (and the control packets among them),
// and the packet that follows them.
func cutAfter(body []byte, k int) (prefix int, next []byte) {
	seen := 0
	start := 0
	packets(body, func(pkt []byte, end int) bool {
		if len(pkt) > 0 && !isControlPacket(pkt) {
			if seen == k {
				next = pkt
				return false
			}
			seen++
		}
		start = end
		return true
	})
	// Without its trailing separators: the caller appends one and a close,
	// and an empty packet before that close would be a parse error.
	prefix = start
	for prefix > 0 && body[prefix-1] == eioSep {
		prefix--
	}
	return prefix, next
}
