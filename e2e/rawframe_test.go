//go:build e2e

package e2e

// A test-only WebSocket frame encoder and decoder for the conformance suite. It writes and
// parses the header bytes itself (RFC 6455 section 5.2) instead of using gobwas/ws, so that a
// bug shared with the gate's own frame library cannot hide: any FIN/RSV/opcode, masked or not,
// any announced length in the 7-, 16- or 64-bit form, and payloads written in chops.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// Opcodes (RFC 6455 section 5.2).
const (
	cfOpCont   byte = 0x0
	cfOpText   byte = 0x1
	cfOpBinary byte = 0x2
	cfOpClose  byte = 0x8
	cfOpPing   byte = 0x9
	cfOpPong   byte = 0xA
)

// cfLenForm chooses how a header encodes the payload length.
type cfLenForm int

const (
	cfLenAuto cfLenForm = iota // the minimal form
	cfLen7                     // 7-bit field (0-125)
	cfLen16                    // 126 + 16-bit extended length
	cfLen64                    // 127 + 64-bit extended length
)

// cfOut is a frame for the encoder to write. Its zero value is an empty continuation frame
// with FIN=0, masked as a client frame must be.
type cfOut struct {
	fin     bool
	rsv     byte // RSV1-3 as a 3-bit number (4 = RSV1, 2 = RSV2, 1 = RSV3)
	op      byte // 4 bits
	noMask  bool // MASK=0 (a client frame must be masked; a server frame must not)
	payload []byte

	// announce, when set, is the length written in the header instead of len(payload): only
	// the bytes of payload follow, so a frame can announce 2^40 bytes and carry none.
	announce    uint64
	hasAnnounce bool
	form        cfLenForm
	key         []byte // the masking key when it has 4 bytes; else a random one with no zero byte
}

// cfMsg is a whole (FIN=1) masked client frame.
func cfMsg(op byte, payload string) cfOut { return cfOut{fin: true, op: op, payload: []byte(payload)} }

// cfFrag is one masked fragment.
func cfFrag(op byte, fin bool, payload string) cfOut {
	return cfOut{fin: fin, op: op, payload: []byte(payload)}
}

// cfCloseBody is the body of a close frame: a 2-byte code and a reason.
func cfCloseBody(code int, reason string) string {
	return string([]byte{byte(code >> 8), byte(code)}) + reason
}

// cfServer turns a client frame into an unmasked server frame.
func (o cfOut) cfServer() cfOut { o.noMask = true; return o }

// encode returns the frame's bytes: header, masking key and (masked) payload.
func (o cfOut) encode() []byte {
	n := uint64(len(o.payload))
	if o.hasAnnounce {
		n = o.announce
	}
	form := o.form
	if form == cfLenAuto {
		switch {
		case n <= 125:
			form = cfLen7
		case n <= 0xFFFF:
			form = cfLen16
		default:
			form = cfLen64
		}
	}
	b := make([]byte, 0, 14+len(o.payload))
	first := (o.rsv&7)<<4 | o.op&0x0F
	if o.fin {
		first |= 0x80
	}
	b = append(b, first)
	var maskBit byte
	if !o.noMask {
		maskBit = 0x80
	}
	switch form {
	case cfLen7:
		b = append(b, maskBit|byte(n&0x7F))
	case cfLen16:
		b = append(b, maskBit|126, byte(n>>8), byte(n))
	case cfLen64:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, n)
	}
	if o.noMask {
		return append(b, o.payload...)
	}
	// A key with no zero byte, so that a side that forgets to unmask changes every byte.
	var key [4]byte
	for i := range key {
		key[i] = byte(1 + mrand.IntN(255))
	}
	if len(o.key) == 4 {
		copy(key[:], o.key)
	}
	b = append(b, key[:]...)
	for i, c := range o.payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// cfFrame is one frame as the decoder read it, payload unmasked.
type cfFrame struct {
	fin     bool
	rsv     byte
	op      byte
	masked  bool
	length  uint64 // as announced
	payload []byte
	partial bool // the connection ended inside the payload: payload holds what arrived
}

func (f cfFrame) String() string {
	flags := ""
	if f.fin {
		flags += "FIN "
	}
	if f.rsv != 0 {
		flags += fmt.Sprintf("RSV=%d ", f.rsv)
	}
	if f.masked {
		flags += "MASK "
	}
	if f.partial {
		flags += "PARTIAL "
	}
	p := f.payload
	more := ""
	if len(p) > 24 {
		p, more = p[:24], "…"
	}
	return fmt.Sprintf("{%sop=%#x len=%d %q%s}", flags, f.op, f.length, p, more)
}

// closeCode returns the code of a close frame: 1005 when it has no body, -1 when the body is
// a single byte.
func (f cfFrame) closeCode() int {
	switch len(f.payload) {
	case 0:
		return 1005
	case 1:
		return -1
	}
	return int(binary.BigEndian.Uint16(f.payload))
}

// cfReadFrame reads one frame from r. A frame announcing more than maxLen bytes is returned
// with its header only and an error, so that a hostile length never becomes an allocation.
func cfReadFrame(r io.Reader, maxLen uint64) (cfFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return cfFrame{}, err
	}
	f := cfFrame{fin: h[0]&0x80 != 0, rsv: h[0] >> 4 & 7, op: h[0] & 0x0F, masked: h[1]&0x80 != 0}
	f.length = uint64(h[1] & 0x7F)
	switch f.length {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(r, ext[:]); err != nil {
			return f, err
		}
		f.length = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(r, ext[:]); err != nil {
			return f, err
		}
		f.length = binary.BigEndian.Uint64(ext[:])
	}
	var key [4]byte
	if f.masked {
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return f, err
		}
	}
	if f.length > maxLen {
		return f, fmt.Errorf("frame announces %d bytes, over the decoder's %d", f.length, maxLen)
	}
	f.payload = make([]byte, f.length)
	n, err := io.ReadFull(r, f.payload)
	if f.masked {
		for i := range f.payload[:n] {
			f.payload[i] ^= key[i%4]
		}
	}
	if err != nil {
		f.payload, f.partial = f.payload[:n], true
		return f, err
	}
	return f, nil
}

// cfValidCloseCode is RFC 6455 section 7.4 plus the IANA registry (1012-1014), written here
// independently of frames.ValidCloseCode.
func cfValidCloseCode(c int) bool {
	return c >= 1000 && c <= 1003 || c >= 1007 && c <= 1014 || c >= 3000 && c <= 4999
}

// cfValidUTF8Prefix reports whether b is valid UTF-8 or can become valid UTF-8 with more bytes.
func cfValidUTF8Prefix(b []byte) bool {
	if utf8.Valid(b) {
		return true
	}
	// Only a cut code point at the end can make a valid prefix invalid: try to complete it.
	for cut := 1; cut <= 3 && cut <= len(b); cut++ {
		head, tail := b[:len(b)-cut], b[len(b)-cut:]
		if !utf8.RuneStart(tail[0]) || !utf8.Valid(head) {
			continue
		}
		for x := 0x80; x <= 0xBF; x++ {
			t := append([]byte(nil), tail...)
			if len(t) == 1 {
				t = append(t, byte(x))
			}
			for len(t) < 4 && !utf8.FullRune(t) {
				t = append(t, 0x80)
			}
			if utf8.Valid(t) {
				return true
			}
		}
		return false
	}
	return false
}

// cfCheckStream checks frames, one peer's whole stream in order, against RFC 6455: masked as
// masked says, no RSV bits, no reserved opcode, control frames short and whole, close bodies
// well formed, fragments in sequence, text messages valid UTF-8 (a message cut by a close
// frame or a partial last frame must be a valid prefix), nothing after a close frame.
func cfCheckStream(frames []cfFrame, masked bool) error {
	open, text := false, false
	var pending []byte // the cut code point at the end of the open text message so far
	for i, f := range frames {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("frame %d %v: %s", i, f, fmt.Sprintf(format, args...))
		}
		if i > 0 && frames[i-1].op == cfOpClose && !frames[i-1].partial {
			return bad("a frame after the close frame")
		}
		switch {
		case f.rsv != 0:
			return bad("RSV bits set")
		case f.masked != masked:
			return bad("MASK=%v, want %v", f.masked, masked)
		case f.op >= 3 && f.op <= 7 || f.op >= 0xB:
			return bad("reserved opcode")
		}
		if f.op >= 8 {
			switch {
			case f.length > 125:
				return bad("control frame over 125 bytes")
			case !f.fin:
				return bad("fragmented control frame")
			case f.op == cfOpClose && !f.partial && len(f.payload) == 1:
				return bad("close frame with a 1-byte body")
			case f.op == cfOpClose && !f.partial && len(f.payload) >= 2 && !cfValidCloseCode(f.closeCode()):
				return bad("invalid close code %d", f.closeCode())
			case f.op == cfOpClose && len(f.payload) > 2 && !cfValidUTF8Prefix(f.payload[2:]):
				return bad("close reason is not UTF-8")
			case f.op == cfOpClose && !f.partial && len(f.payload) > 2 && !utf8.Valid(f.payload[2:]):
				return bad("close reason is not UTF-8")
			}
			continue
		}
		switch {
		case f.op == cfOpCont && !open:
			return bad("continuation without a message")
		case f.op != cfOpCont && open:
			return bad("new message inside a fragmented message")
		}
		if f.op != cfOpCont {
			text, pending = f.op == cfOpText, nil
		}
		if text {
			// Incremental: only the new bytes and a cut code point before them are checked.
			chunk := append(append([]byte(nil), pending...), f.payload...)
			if !cfValidUTF8Prefix(chunk) {
				return bad("invalid UTF-8 in text message")
			}
			pending = nil
			for cut := len(chunk) - 1; cut >= 0 && cut >= len(chunk)-3; cut-- {
				if utf8.RuneStart(chunk[cut]) {
					if !utf8.FullRune(chunk[cut:]) {
						pending = chunk[cut:]
					}
					break
				}
			}
			if f.fin && !f.partial && len(pending) > 0 {
				return bad("text message ends inside a code point")
			}
		}
		open = !f.fin
	}
	return nil
}

// cfMessage is one reassembled data message.
type cfMessage struct {
	op      byte
	payload []byte
}

func (m cfMessage) String() string {
	p, more := m.payload, ""
	if len(p) > 32 {
		p, more = p[:32], "…"
	}
	return fmt.Sprintf("op=%#x %d bytes %q%s", m.op, len(m.payload), p, more)
}

// cfMessages reassembles the complete data messages of frames.
func cfMessages(frames []cfFrame) []cfMessage {
	var out []cfMessage
	var cur *cfMessage
	for _, f := range frames {
		switch {
		case f.op == cfOpText || f.op == cfOpBinary:
			cur = &cfMessage{op: f.op, payload: append([]byte(nil), f.payload...)}
		case f.op == cfOpCont && cur != nil:
			cur.payload = append(cur.payload, f.payload...)
		default:
			continue
		}
		if f.fin && !f.partial {
			out = append(out, *cur)
			cur = nil
		}
	}
	return out
}

// cfDataPayloads returns the payloads of the data frames (text, binary, continuation).
func cfDataPayloads(frames []cfFrame) [][]byte {
	var out [][]byte
	for _, f := range frames {
		if f.op <= cfOpBinary {
			out = append(out, f.payload)
		}
	}
	return out
}

func cfSummary(frames []cfFrame) string {
	if len(frames) == 0 {
		return "(none)"
	}
	var b strings.Builder
	for i, f := range frames {
		if i == 12 && len(frames) > 16 {
			fmt.Fprintf(&b, "\n    … %d more …", len(frames)-16)
			frames, i = frames[len(frames)-4:], 0
			for _, f := range frames {
				fmt.Fprintf(&b, "\n    %v", f)
			}
			break
		}
		fmt.Fprintf(&b, "\n    %v", f)
	}
	return b.String()
}

// cfClient is a hand-written client connection to the gate. A goroutine reads every frame
// the gate sends into frames, so that a test can write a large message while its echo
// streams back without the two directions blocking each other.
type cfClient struct {
	t      testing.TB
	nc     net.Conn
	id     string
	frames chan cfFrame // closed when the connection ended

	mu      sync.Mutex
	sent    []string  // hex of what was written, for failure reports
	got     []cfFrame // every frame taken from frames
	readErr error     // why the reading goroutine stopped
	done    chan struct{}
}

// cfDial opens a WebSocket connection to hostport with path by hand, checks the 101 and its
// Sec-WebSocket-Accept, and starts reading frames. The connection is closed in t.Cleanup.
func cfDial(t testing.TB, hostport, path string) *cfClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", hostport, waitLimit)
	if err != nil {
		t.Fatalf("dial %s: %v", hostport, err)
	}
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	_ = nc.SetDeadline(time.Now().Add(waitLimit))
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		t.Fatalf("handshake: %v", err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		t.Fatalf("handshake response: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != cfAccept(key) {
		nc.Close()
		t.Fatalf("handshake %s: status %d, accept %q (want %q)", path, resp.StatusCode,
			resp.Header.Get("Sec-WebSocket-Accept"), cfAccept(key))
	}
	_ = nc.SetDeadline(time.Time{})
	c := &cfClient{t: t, nc: nc, id: path, frames: make(chan cfFrame, 1<<14), done: make(chan struct{})}
	go c.readLoop(br)
	t.Cleanup(func() {
		nc.Close()
		<-c.done
	})
	return c
}

func cfAccept(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

func (c *cfClient) readLoop(br *bufio.Reader) {
	defer close(c.done)
	defer close(c.frames)
	for {
		f, err := cfReadFrame(br, 64<<20)
		if err != nil {
			if f.partial {
				c.frames <- f
			}
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		c.frames <- f
	}
}

// send writes frames, each in pieces of chop bytes (0: each frame with one write).
func (c *cfClient) send(chop int, frames ...cfOut) error {
	for _, f := range frames {
		b := f.encode()
		c.mu.Lock()
		s := hex.EncodeToString(b[:min(len(b), 48)])
		if len(b) > 48 {
			s += fmt.Sprintf("…(%d bytes)", len(b))
		}
		c.sent = append(c.sent, s)
		c.mu.Unlock()
		if err := cfWriteChopped(c.nc, b, chop); err != nil {
			return err
		}
	}
	return nil
}

// cfWriteChopped writes b to w in pieces of chop bytes (all at once when chop is 0).
func cfWriteChopped(w net.Conn, b []byte, chop int) error {
	_ = w.SetWriteDeadline(time.Now().Add(waitLimit))
	if chop <= 0 {
		chop = len(b)
	}
	for len(b) > 0 {
		n := min(chop, len(b))
		if _, err := w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// next returns the next frame from the gate, or false when the connection ended or nothing
// came within d.
func (c *cfClient) next(d time.Duration) (cfFrame, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case f, ok := <-c.frames:
		if !ok {
			<-c.done // closed right after frames: callers may test it
			return f, false
		}
		c.mu.Lock()
		c.got = append(c.got, f)
		c.mu.Unlock()
		return f, true
	case <-t.C:
		return cfFrame{}, false
	}
}

// until reads frames until one satisfies stop (returned with true), the connection ends or d
// passes.
func (c *cfClient) until(d time.Duration, stop func(cfFrame) bool) (cfFrame, bool) {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return cfFrame{}, false
		}
		f, ok := c.next(left)
		if !ok {
			return cfFrame{}, false
		}
		if stop(f) {
			return f, true
		}
	}
}

// untilClose reads until the gate's close frame and returns its code: -1 when the connection
// ended without one, -2 when nothing ended it within d.
func (c *cfClient) untilClose(d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return -2
		}
		f, ok := c.next(left)
		if !ok {
			select {
			case <-c.done:
				return -1
			default:
				return -2
			}
		}
		if f.op == cfOpClose {
			return f.closeCode()
		}
	}
}

// finish answers the gate's close frame with code (as RFC 6455 section 5.5.1 asks) and reads
// until the gate ends the TCP connection; it reports whether it did within d.
func (c *cfClient) finish(code int, d time.Duration) bool {
	if code >= 1000 {
		_ = c.send(0, cfMsg(cfOpClose, cfCloseBody(code, "")))
	}
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		if _, ok := c.next(left); !ok {
			select {
			case <-c.done:
				return true
			default:
				return false
			}
		}
	}
}

// readMessages reads frames until n data messages are complete. Control frames other than
// close are kept in the log; a close frame or the end of the connection fails.
func (c *cfClient) readMessages(n int, d time.Duration) ([]cfMessage, error) {
	var out []cfMessage
	var cur *cfMessage
	deadline := time.Now().Add(d)
	for len(out) < n {
		left := time.Until(deadline)
		if left <= 0 {
			return out, fmt.Errorf("timed out after %v with %d of %d messages", d, len(out), n)
		}
		f, ok := c.next(left)
		if !ok {
			return out, fmt.Errorf("the connection ended after %d of %d messages (%v)", len(out), n, c.err())
		}
		switch {
		case f.op == cfOpClose:
			return out, fmt.Errorf("close %d after %d of %d messages", f.closeCode(), len(out), n)
		case f.op >= 8:
			continue
		case f.op == cfOpText || f.op == cfOpBinary:
			if cur != nil {
				return out, errors.New("a new message inside a fragmented one")
			}
			cur = &cfMessage{op: f.op, payload: append([]byte(nil), f.payload...)}
		case cur == nil:
			return out, errors.New("a continuation without a message")
		default:
			cur.payload = append(cur.payload, f.payload...)
		}
		if f.fin {
			out = append(out, *cur)
			cur = nil
		}
	}
	return out, nil
}

func (c *cfClient) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// log returns every frame read so far.
func (c *cfClient) log() []cfFrame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]cfFrame(nil), c.got...)
}

// report describes the exchange for a failure message: bytes sent and frames received.
func (c *cfClient) report() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "client %s sent:", c.id)
	for i, s := range c.sent {
		if i == 16 && len(c.sent) > 20 {
			fmt.Fprintf(&b, "\n    … %d more frames …", len(c.sent)-20)
			for _, s := range c.sent[len(c.sent)-4:] {
				fmt.Fprintf(&b, "\n    %s", s)
			}
			break
		}
		fmt.Fprintf(&b, "\n    %s", s)
	}
	fmt.Fprintf(&b, "\n  client received:%s", cfSummary(c.got))
	if c.readErr != nil {
		fmt.Fprintf(&b, "\n  client read ended: %v", c.readErr)
	}
	return b.String()
}

// TestConformanceCodec checks the suite's own encoder and stream checker against RFC 6455's
// examples (section 5.7) and known violations, so that a passing conformance case cannot come
// from a checker that sees nothing.
func TestConformanceCodec(t *testing.T) {
	key := []byte{0x37, 0xfa, 0x21, 0x3d}
	for _, v := range []struct {
		name string
		out  cfOut
		want string
	}{
		{"unmasked text", cfMsg(cfOpText, "Hello").cfServer(), "810548656c6c6f"},
		{"masked text", cfOut{fin: true, op: cfOpText, payload: []byte("Hello"), key: key}, "818537fa213d7f9f4d5158"},
		{"fragments", cfFrag(cfOpText, false, "Hel").cfServer(), "010348656c"},
		{"unmasked ping", cfMsg(cfOpPing, "Hello").cfServer(), "890548656c6c6f"},
		{"256-byte binary", cfOut{fin: true, op: cfOpBinary, payload: make([]byte, 256), noMask: true}, "827e0100" + strings.Repeat("00", 256)},
		{"64KiB announced", cfOut{fin: true, op: cfOpBinary, noMask: true, announce: 65536, hasAnnounce: true}, "827f0000000000010000"},
		{"rsv and opcode", cfOut{fin: false, rsv: 5, op: 0xB, noMask: true}, "5b00"},
		{"16-bit form of 5", cfOut{fin: true, op: cfOpBinary, noMask: true, payload: []byte("abcde"), form: cfLen16}, "827e00056162636465"},
	} {
		if got := hex.EncodeToString(v.out.encode()); got != v.want {
			t.Errorf("%s: encoded %s, want %s", v.name, got, v.want)
		}
	}
	// Round trips through the decoder, masked with random keys.
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		p := cfPattern(n, cfOpBinary)
		f, err := cfReadFrame(bytes.NewReader(cfOut{fin: true, op: cfOpBinary, payload: p}.encode()), 1<<20)
		if err != nil || !f.masked || !f.fin || f.op != cfOpBinary || !bytes.Equal(f.payload, p) {
			t.Errorf("round trip of %d bytes: %v, %v", n, f, err)
		}
	}
	if _, err := cfReadFrame(bytes.NewReader(cfOut{fin: true, op: cfOpBinary, announce: 1 << 40, hasAnnounce: true}.encode()), 1<<20); err == nil {
		t.Errorf("the decoder accepted a 2^40-byte frame")
	}

	fr := func(fin bool, op byte, masked bool, p string) cfFrame {
		return cfFrame{fin: fin, op: op, masked: masked, length: uint64(len(p)), payload: []byte(p)}
	}
	good := [][]cfFrame{
		{fr(true, cfOpText, true, "κόσμε"), fr(true, cfOpClose, true, "\x03\xe8")},
		{fr(false, cfOpText, true, "\xce"), fr(true, cfOpPing, true, ""), fr(true, cfOpCont, true, "\xba")},
		{fr(false, cfOpText, true, "ab\xf0\x9f"), fr(true, cfOpClose, true, "\x03\xe9")}, // cut by a close
		{fr(true, cfOpClose, true, "")},
	}
	for i, s := range good {
		if err := cfCheckStream(s, true); err != nil {
			t.Errorf("valid stream %d: %v", i, err)
		}
	}
	bad := [][]cfFrame{
		{fr(true, cfOpText, false, "unmasked")},
		{{fin: true, rsv: 1, op: cfOpText, masked: true}},
		{fr(true, 0x3, true, "")},
		{fr(true, cfOpPing, true, strings.Repeat("p", 126))},
		{fr(false, cfOpPing, true, "")},
		{fr(true, cfOpClose, true, "\x03")},
		{fr(true, cfOpClose, true, "\x03\xed")}, // 1005
		{fr(true, cfOpClose, true, "\x03\xe8\xff")},
		{fr(true, cfOpCont, true, "x")},
		{fr(false, cfOpText, true, "a"), fr(true, cfOpBinary, true, "b")},
		{fr(true, cfOpText, true, "\xed\xa0\x80")},
		{fr(false, cfOpText, true, "a\xe2"), fr(true, cfOpCont, true, "\x82")},
		{fr(false, cfOpText, true, "\xe0"), fr(true, cfOpCont, true, "\x80\x80")}, // overlong
		{fr(true, cfOpClose, true, "\x03\xe8"), fr(true, cfOpText, true, "after")},
	}
	for i, s := range bad {
		if err := cfCheckStream(s, true); err == nil {
			t.Errorf("invalid stream %d passed: %v", i, s)
		}
	}
}
