package frames

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// raw encodes a frame byte by byte, independently of gobwas/ws, so that a
// bug shared with the library cannot hide.
type raw struct {
	fin     bool
	rsv     byte
	op      byte
	masked  bool
	payload []byte
	length  int64 // announced length when >= 0 and != len(payload); -1 = len(payload)
	len64   bool  // force the 64-bit length form
}

func (f raw) bytes() []byte {
	b := []byte{f.rsv<<4 | f.op}
	if f.fin {
		b[0] |= 0x80
	}
	n := int64(len(f.payload))
	if f.length > 0 {
		n = f.length
	}
	var mbit byte
	if f.masked {
		mbit = 0x80
	}
	switch {
	case f.len64:
		b = append(b, mbit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	case n <= 125:
		b = append(b, mbit|byte(n))
	case n <= 0xFFFF:
		b = append(b, mbit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, mbit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	p := append([]byte(nil), f.payload...)
	if f.masked {
		mask := [4]byte{0x12, 0x34, 0x56, 0x78}
		b = append(b, mask[:]...)
		for i := range p {
			p[i] ^= mask[i%4]
		}
	}
	return append(b, p...)
}

func closeBody(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// relayAll runs frames through a Stream as the proxy does and returns what
// reached the other side and the first error.
func relayAll(s *Stream, in []byte) ([]byte, error) {
	var out bytes.Buffer
	r := NewReader(bytes.NewReader(in))
	for {
		h, err := s.Next(r)
		if err != nil {
			return out.Bytes(), err
		}
		if _, err := s.Forward(&out, r, h); err != nil {
			return out.Bytes(), err
		}
		r.Release()
	}
}

// decode reads back the frames written to the other side, unmasking them.
func decode(t *testing.T, b []byte, wantMasked bool) []ws.Frame {
	t.Helper()
	var fs []ws.Frame
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		//lint:ignore SA1019 the test's input is bounded; a whole-frame reader is the reference
		f, err := ws.ReadFrame(r)
		if err != nil {
			t.Fatalf("decode forwarded frames: %v", err)
		}
		if f.Header.Masked != wantMasked {
			t.Fatalf("forwarded frame masked=%v, want %v", f.Header.Masked, wantMasked)
		}
		if f.Header.Masked {
			f = ws.UnmaskFrameInPlace(f)
		}
		fs = append(fs, f)
	}
	return fs
}

func TestStreamViolations(t *testing.T) {
	t.Parallel()
	bigText := strings.Repeat("a", 200)
	tests := []struct {
		name     string
		from     Peer
		max      int64
		frames   []raw
		want     *CloseError
		wantSent int // frames that reach the other side before the error
	}{
		{
			name:   "unmasked client frame",
			frames: []raw{{fin: true, op: 1, payload: []byte("hi")}},
			want:   ErrMaskRequired,
		},
		{
			name:   "masked server frame",
			from:   Server,
			frames: []raw{{fin: true, op: 1, masked: true, payload: []byte("hi")}},
			want:   ErrMaskUnexpected,
		},
		{name: "rsv1 on text", frames: []raw{{fin: true, rsv: 4, op: 1, masked: true}}, want: ErrReservedBits},
		{name: "rsv2 on binary", frames: []raw{{fin: true, rsv: 2, op: 2, masked: true}}, want: ErrReservedBits},
		{name: "rsv3 on ping", frames: []raw{{fin: true, rsv: 1, op: 9, masked: true}}, want: ErrReservedBits},
		{name: "rsv7 on close", frames: []raw{{fin: true, rsv: 7, op: 8, masked: true}}, want: ErrReservedBits},
		{name: "opcode 3", frames: []raw{{fin: true, op: 3, masked: true}}, want: ErrReservedOpcode},
		{name: "opcode 7", frames: []raw{{fin: true, op: 7, masked: true}}, want: ErrReservedOpcode},
		{name: "opcode 0xB", frames: []raw{{fin: true, op: 0xB, masked: true}}, want: ErrReservedOpcode},
		{name: "opcode 0xF", frames: []raw{{fin: true, op: 0xF, masked: true}}, want: ErrReservedOpcode},
		{
			name:   "126-byte ping",
			frames: []raw{{fin: true, op: 9, masked: true, payload: make([]byte, 126)}},
			want:   ErrControlTooLong,
		},
		{name: "fragmented ping", frames: []raw{{op: 9, masked: true, payload: []byte("p")}}, want: ErrControlFragment},
		{name: "1-byte close body", frames: []raw{{fin: true, op: 8, masked: true, payload: []byte{3}}}, want: ErrCloseBody},
		{
			name:   "124-byte close reason",
			frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1000, strings.Repeat("r", 124))}},
			want:   ErrControlTooLong,
		},
		{name: "close code 0", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(0, "")}}, want: ErrCloseCode},
		{name: "close code 999", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(999, "")}}, want: ErrCloseCode},
		{name: "close code 1004", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1004, "")}}, want: ErrCloseCode},
		{name: "close code 1005", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1005, "")}}, want: ErrCloseCode},
		{name: "close code 1006", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1006, "")}}, want: ErrCloseCode},
		{name: "close code 1015", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1015, "")}}, want: ErrCloseCode},
		{name: "close code 1016", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1016, "")}}, want: ErrCloseCode},
		{name: "close code 1100", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1100, "")}}, want: ErrCloseCode},
		{name: "close code 2000", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(2000, "")}}, want: ErrCloseCode},
		{name: "close code 2999", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(2999, "")}}, want: ErrCloseCode},
		{name: "close code 5000", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(5000, "")}}, want: ErrCloseCode},
		{
			name:   "close reason invalid UTF-8",
			frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1000, "\xff")}},
			want:   ErrCloseReasonUTF8,
		},
		{name: "continuation without start", frames: []raw{{fin: true, op: 0, masked: true, payload: []byte("x")}}, want: ErrContinuation},
		{
			name: "new text inside fragmented message",
			frames: []raw{
				{op: 1, masked: true, payload: []byte("a")},
				{fin: true, op: 1, masked: true, payload: []byte("b")},
			},
			want:     ErrNoContinuation,
			wantSent: 1,
		},
		{
			name:   "invalid UTF-8 unfragmented",
			frames: []raw{{fin: true, op: 1, masked: true, payload: []byte("ok \xc3\x28")}},
			want:   ErrInvalidUTF8,
		},
		{
			name: "invalid UTF-8 in a middle fragment",
			frames: []raw{
				{op: 1, masked: true, payload: []byte("fine")},
				{op: 0, masked: true, payload: []byte("\xed\xa0\x80")}, // a surrogate
				{fin: true, op: 0, masked: true, payload: []byte("end")},
			},
			want:     ErrInvalidUTF8,
			wantSent: 1,
		},
		{
			name:   "text ends inside a code point",
			frames: []raw{{fin: true, op: 1, masked: true, payload: []byte("\xe2\x82")}},
			want:   ErrInvalidUTF8,
		},
		{
			name:   "one frame over the limit",
			max:    100,
			frames: []raw{{fin: true, op: 1, masked: true, payload: []byte(bigText)}},
			want:   ErrMessageTooBig,
		},
		{
			name: "fragments over the limit",
			max:  100,
			frames: []raw{
				{op: 2, masked: true, payload: make([]byte, 60)},
				{op: 0, masked: true, payload: make([]byte, 60)},
			},
			want:     ErrMessageTooBig,
			wantSent: 1,
		},
		{
			name:   "announced 2^40 bytes",
			max:    1 << 20,
			frames: []raw{{fin: true, op: 2, masked: true, length: 1 << 40}},
			want:   ErrMessageTooBig,
		},
		{
			name:   "server sends 2^62 bytes",
			from:   Server,
			max:    1 << 20,
			frames: []raw{{fin: true, op: 2, length: 1 << 62}},
			want:   ErrMessageTooBig,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var in []byte
			for _, f := range tt.frames {
				in = append(in, f.bytes()...)
			}
			s := &Stream{From: tt.from, MaxMessageBytes: tt.max}
			out, err := relayAll(s, in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("error = %v, want %v", err, tt.want)
			}
			if got := len(decode(t, out, tt.from == Client)); got != tt.wantSent {
				t.Fatalf("%d frames reached the other side, want %d", got, tt.wantSent)
			}
		})
	}
}

func TestLengthTopBit(t *testing.T) {
	t.Parallel()
	in := []byte{0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}
	_, err := relayAll(&Stream{}, in)
	if !errors.Is(err, ErrLength) {
		t.Fatalf("error = %v, want %v", err, ErrLength)
	}
}

func TestStreamRelaysValid(t *testing.T) {
	t.Parallel()
	euro := []byte("€")                                    // 3 bytes, split across fragments below
	long := bytes.Repeat([]byte("0123456789abcdef"), 5000) // over BufferSize: chunked
	tests := []struct {
		name   string
		frames []raw
	}{
		{name: "empty text", frames: []raw{{fin: true, op: 1, masked: true}}},
		{name: "empty binary", frames: []raw{{fin: true, op: 2, masked: true}}},
		{name: "125 bytes", frames: []raw{{fin: true, op: 2, masked: true, payload: make([]byte, 125)}}},
		{name: "126 bytes", frames: []raw{{fin: true, op: 2, masked: true, payload: make([]byte, 126)}}},
		{name: "65535 bytes", frames: []raw{{fin: true, op: 2, masked: true, payload: make([]byte, 65535)}}},
		{name: "65536 bytes", frames: []raw{{fin: true, op: 2, masked: true, payload: make([]byte, 65536)}}},
		{name: "long text chunked", frames: []raw{{fin: true, op: 1, masked: true, payload: long}}},
		{name: "small in 64-bit form", frames: []raw{{fin: true, op: 1, masked: true, payload: []byte("x"), len64: true}}},
		{
			name: "code point split across fragments",
			frames: []raw{
				{op: 1, masked: true, payload: append([]byte("a"), euro[:1]...)},
				{op: 0, masked: true, payload: euro[1:2]},
				{fin: true, op: 0, masked: true, payload: append(euro[2:], 'b')},
			},
		},
		{
			name: "ping between fragments",
			frames: []raw{
				{op: 1, masked: true, payload: []byte("he")},
				{fin: true, op: 9, masked: true, payload: []byte("ping")},
				{fin: true, op: 0, masked: true, payload: []byte("llo")},
			},
		},
		{name: "pong", frames: []raw{{fin: true, op: 10, masked: true, payload: []byte("p")}}},
		{name: "close without body", frames: []raw{{fin: true, op: 8, masked: true}}},
		{name: "close 1000", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1000, "bye")}}},
		{name: "close 1014", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1014, "")}}},
		{name: "close 3000", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(3000, "")}}},
		{name: "close 4999", frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(4999, "é")}}},
		{
			name:   "close reason of 123 bytes",
			frames: []raw{{fin: true, op: 8, masked: true, payload: closeBody(1000, strings.Repeat("r", 123))}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, from := range []Peer{Client, Server} {
				var in []byte
				for _, f := range tt.frames {
					f.masked = from == Client
					in = append(in, f.bytes()...)
				}
				s := &Stream{From: from, MaxMessageBytes: 1 << 20}
				out, err := relayAll(s, in)
				if !errors.Is(err, io.EOF) {
					t.Fatalf("from %v: error = %v, want io.EOF at the end", from, err)
				}
				got := decode(t, out, from == Client)
				if len(got) != len(tt.frames) {
					t.Fatalf("from %v: %d frames forwarded, want %d", from, len(got), len(tt.frames))
				}
				for i, f := range got {
					want := tt.frames[i]
					if f.Header.Fin != want.fin || byte(f.Header.OpCode) != want.op || !bytes.Equal(f.Payload, want.payload) {
						t.Fatalf("from %v: frame %d = fin %v op %d %d bytes, want fin %v op %d %d bytes",
							from, i, f.Header.Fin, f.Header.OpCode, len(f.Payload), want.fin, want.op, len(want.payload))
					}
				}
			}
		})
	}
}

func TestForwardReturnsClose(t *testing.T) {
	t.Parallel()
	in := raw{fin: true, op: 8, masked: true, payload: closeBody(4001, "bye")}.bytes()
	s := &Stream{}
	r := NewReader(bytes.NewReader(in))
	h, err := s.Next(r)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Forward(io.Discard, r, h)
	if err != nil || c.Code != 4001 || c.Reason != "bye" {
		t.Fatalf("Forward = %+v, %v; want 4001 bye", c, err)
	}
}

// TestSkipAfterFailedWrite skips the rest of a frame whose forwarding
// failed partway: the next header read is the next frame's, and a frame
// whose rest is unknown is not skipped.
func TestSkipAfterFailedWrite(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte{0xff}, 3*BufferSize)
	in := append(raw{fin: true, op: 2, masked: true, payload: big}.bytes(),
		raw{fin: true, op: 8, masked: true, payload: closeBody(1000, "")}.bytes()...)
	s := &Stream{From: Client}
	r := NewReader(bytes.NewReader(in))
	h, err := s.Next(r)
	if err != nil {
		t.Fatal(err)
	}
	var we *WriteError
	if _, err := s.Forward(&failAfter{1}, r, h); !errors.As(err, &we) || s.Unread() <= 0 {
		t.Fatalf("Forward = %v, Unread %d; want a WriteError partway", err, s.Unread())
	}
	if err := s.Skip(r); err != nil || s.Unread() != 0 {
		t.Fatalf("Skip = %v, Unread %d", err, s.Unread())
	}
	if h, err := s.Next(r); err != nil || h.OpCode != ws.OpClose {
		t.Fatalf("next frame %+v, %v; want the close frame", h, err)
	}

	s = &Stream{From: Client}
	r = NewReader(io.LimitReader(bytes.NewReader(in), 100))
	if h, err = s.Next(r); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Forward(io.Discard, r, h); err == nil || s.Unread() != -1 {
		t.Fatalf("Forward of a cut frame = %v, Unread %d", err, s.Unread())
	}
	if err := s.Skip(r); err == nil {
		t.Fatal("Skip of a frame whose rest is unknown succeeded")
	}
}

// failAfter takes n writes, then fails every write.
type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("broken")
	}
	f.n--
	return len(p), nil
}

// chopReader returns at most n bytes per Read, as a trickling peer would.
type chopReader struct {
	r io.Reader
	n int
}

func (c chopReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

func TestReaderChops(t *testing.T) {
	t.Parallel()
	var in []byte
	var want [][]byte
	for i, n := range []int{0, 1, 5, 125, 126, 997, 40000, 3} {
		p := bytes.Repeat([]byte{byte('a' + i)}, n)
		want = append(want, p)
		in = append(in, raw{fin: true, op: 2, masked: true, payload: p}.bytes()...)
	}
	for _, chop := range []int{1, 2, 13, 997, 1 << 20} {
		var out bytes.Buffer
		s := &Stream{}
		r := NewReader(chopReader{bytes.NewReader(in), chop})
		for {
			h, err := s.Next(r)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("chop %d: %v", chop, err)
			}
			if _, err := s.Forward(&out, r, h); err != nil {
				t.Fatalf("chop %d: %v", chop, err)
			}
			r.Release()
			if r.big != nil && r.Buffered() <= smallSize {
				t.Fatalf("chop %d: reader kept a pooled buffer for %d bytes", chop, r.Buffered())
			}
		}
		got := decode(t, out.Bytes(), true)
		if len(got) != len(want) {
			t.Fatalf("chop %d: %d frames, want %d", chop, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i].Payload, want[i]) {
				t.Fatalf("chop %d: frame %d differs", chop, i)
			}
		}
	}
}

func TestReaderPrime(t *testing.T) {
	t.Parallel()
	first := raw{fin: true, op: 1, payload: []byte("early")}.bytes()
	rest := raw{fin: true, op: 1, payload: []byte("later")}.bytes()
	r := NewReader(bytes.NewReader(rest))
	r.Prime(first)
	s := &Stream{From: Server}
	var out bytes.Buffer
	for range 2 {
		h, err := s.Next(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Forward(&out, r, h); err != nil {
			t.Fatal(err)
		}
		r.Release()
	}
	got := decode(t, out.Bytes(), false)
	if string(got[0].Payload) != "early" || string(got[1].Payload) != "later" {
		t.Fatalf("got %q, %q", got[0].Payload, got[1].Payload)
	}
}

// countWriter counts write calls.
type countWriter struct {
	bytes.Buffer
	calls int
}

func (w *countWriter) Write(p []byte) (int, error) { w.calls++; return w.Buffer.Write(p) }

func TestOneWritePerFrame(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 128, 16 << 10, BufferSize - ws.MaxHeaderSize} {
		in := raw{fin: true, op: 2, masked: true, payload: make([]byte, n)}.bytes()
		var w countWriter
		if _, err := relayAll(&Stream{}, in); !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		s := &Stream{}
		r := NewReader(bytes.NewReader(in))
		h, _ := s.Next(r)
		if _, err := s.Forward(&w, r, h); err != nil {
			t.Fatal(err)
		}
		if w.calls != 1 {
			t.Fatalf("%d-byte frame took %d write calls, want 1", n, w.calls)
		}
	}
}

// loopReader serves the same bytes forever.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], l.b[l.off:])
		n += c
		l.off = (l.off + c) % len(l.b)
	}
	return n, nil
}

// relayFrame relays r's next frame through s to io.Discard, as the relay
// loop does.
func relayFrame(t *testing.T, s *Stream, r *Reader) {
	t.Helper()
	h, err := s.Next(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Forward(io.Discard, r, h); err != nil {
		t.Fatal(err)
	}
	r.Release()
}

func TestRelayDoesNotAllocate(t *testing.T) {
	in := raw{fin: true, op: 1, masked: true, payload: bytes.Repeat([]byte("x"), 128)}.bytes()
	s := &Stream{MaxMessageBytes: 1 << 20}
	r := NewReader(&loopReader{b: in})
	relayOne := func() { relayFrame(t, s, r) }
	relayOne()
	if n := testing.AllocsPerRun(1000, relayOne); n != 0 {
		t.Fatalf("relaying a frame allocates %v times, want 0", n)
	}
}

// TestSocketRelayDoesNotAllocate relays frames read from a TCP socket,
// where the Reader waits for readiness before it takes a buffer.
func TestSocketRelayDoesNotAllocate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	in := raw{fin: true, op: 1, masked: true, payload: bytes.Repeat([]byte("x"), 128)}.bytes()
	s := &Stream{MaxMessageBytes: 1 << 20}
	r := NewReader(c)
	if r.fd < 0 {
		t.Fatal("a TCP connection is not read directly")
	}
	relayOne := func() {
		if _, err := w.Write(in); err != nil {
			t.Fatal(err)
		}
		if err := r.Wait(); err != nil {
			t.Fatal(err)
		}
		relayFrame(t, s, r)
		if r.big != nil {
			t.Fatal("a buffer is held between frames")
		}
	}
	relayOne()
	if n := testing.AllocsPerRun(1000, relayOne); n != 0 && !raceEnabled {
		t.Fatalf("relaying a frame from a socket allocates %v times, want 0", n)
	}
	// EOF and deadlines come through the direct reads.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if err := r.Wait(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Wait past the deadline: %v", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	w.Close()
	if err := r.Wait(); err != io.EOF {
		t.Fatalf("Wait after the peer closed: %v, want EOF", err)
	}
}

func TestUTF8State(t *testing.T) {
	t.Parallel()
	samples := []string{"", "ascii only", "é", "€", "𝄞", "\xed\x9f\xbf", "\xee\x80\x80", "\xf4\x8f\xbf\xbf",
		"\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf5", "\xff", "\x80", "a\xe2\x82", "\xe2\x82\xac\xe2"}
	for _, s := range samples {
		for split := 0; split <= len(s); split++ {
			var st utf8State
			ok := st.valid([]byte(s[:split])) && st.valid([]byte(s[split:])) && st.complete()
			if want := utf8.ValidString(s); ok != want {
				t.Errorf("%q split at %d: valid = %v, want %v", s, split, ok, want)
			}
		}
	}
}

func FuzzUTF8(f *testing.F) {
	for _, s := range []string{"hello", "€", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\xe2\x82"} {
		f.Add([]byte(s), 1)
	}
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		if split < 0 || split > len(b) {
			split = len(b) / 2
		}
		var st utf8State
		ok := st.valid(b[:split]) && st.valid(b[split:]) && st.complete()
		if ok != utf8.Valid(b) {
			t.Fatalf("%q split %d: valid = %v, utf8.Valid = %v", b, split, ok, !ok)
		}
	})
}

// FuzzStream feeds arbitrary bytes to both kinds of stream: no panic, no
// allocation beyond the pool on any announced length, and whatever is
// forwarded is valid frames.
func FuzzStream(f *testing.F) {
	seeds := [][]byte{
		raw{fin: true, op: 1, masked: true, payload: []byte("hello")}.bytes(),
		raw{fin: true, op: 8, masked: true, payload: closeBody(1000, "x")}.bytes(),
		raw{op: 1, masked: true, payload: []byte("a")}.bytes(),
		raw{fin: true, op: 2, masked: true, length: 1 << 40}.bytes(),
		{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0},
	}
	for _, s := range seeds {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in []byte, server bool) {
		from := Client
		if server {
			from = Server
		}
		s := &Stream{From: from, MaxMessageBytes: 1 << 16}
		out, err := relayAll(s, in)
		var ce *CloseError
		if err != nil && !errors.As(err, &ce) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("unexpected error type %T: %v", err, err)
		}
		if ce != nil && !ValidCloseCode(ce.Code) {
			t.Fatalf("violation with an unsendable close code %d", ce.Code)
		}
		// What was forwarded parses back with the right masking and, for
		// whole frames, is accepted by a fresh stream.
		check := &Stream{From: from}
		r := NewReader(bytes.NewReader(reframe(t, out, from)))
		for {
			h, err := check.Next(r)
			if err != nil {
				break
			}
			if _, err := check.Forward(io.Discard, r, h); err != nil {
				break
			}
		}
	})
}

// reframe turns frames written toward a peer back into frames as that
// peer's own sender would write them (masking flipped), for re-checking.
func reframe(t *testing.T, b []byte, from Peer) []byte {
	var out []byte
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		//lint:ignore SA1019 the test's input is bounded; a whole-frame reader is the reference
		f, err := ws.ReadFrame(r)
		if err != nil {
			return out
		}
		if f.Header.Masked {
			f = ws.UnmaskFrameInPlace(f)
		}
		out = append(out, raw{fin: f.Header.Fin, rsv: f.Header.Rsv, op: byte(f.Header.OpCode), masked: from == Client, payload: f.Payload}.bytes()...)
	}
	return out
}

func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{128, 16 << 10} {
		b.Run(byteSize(size), func(b *testing.B) {
			in := raw{fin: true, op: 2, masked: true, payload: make([]byte, size)}.bytes()
			s := &Stream{MaxMessageBytes: 1 << 20}
			r := NewReader(&loopReader{b: in})
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				h, err := s.Next(r)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.Forward(io.Discard, r, h); err != nil {
					b.Fatal(err)
				}
				r.Release()
			}
		})
	}
}

func BenchmarkRelayText(b *testing.B) {
	in := raw{fin: true, op: 1, masked: true, payload: bytes.Repeat([]byte(`{"k":"value"}`), 10)}.bytes()
	s := &Stream{MaxMessageBytes: 1 << 20}
	r := NewReader(&loopReader{b: in})
	b.ReportAllocs()
	for b.Loop() {
		h, _ := s.Next(r)
		if _, err := s.Forward(io.Discard, r, h); err != nil {
			b.Fatal(err)
		}
		r.Release()
	}
}

func byteSize(n int) string { return fmt.Sprintf("%dB", n) }

// TestReaderPrimeOverflow primes more than a buffer: every primed byte is
// Buffered, so a caller that parks only when nothing is buffered never
// parks with bytes pending.
func TestReaderPrimeOverflow(t *testing.T) {
	t.Parallel()
	p := bytes.Repeat([]byte("x"), BufferSize+100)
	r := NewReader(bytes.NewReader(nil))
	r.Prime(p)
	if got := r.Buffered(); got != len(p) {
		t.Fatalf("Buffered() = %d after priming %d bytes", got, len(p))
	}
	got, err := io.ReadAll(io.LimitReader(r, int64(len(p))))
	if err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if r.Buffered() != 0 {
		t.Fatalf("Buffered() = %d after reading everything", r.Buffered())
	}
}

// TestReadReady reads a socket without waiting: ErrWouldBlock with nothing
// there (and no buffer held), the bytes once they arrived, EOF after the
// peer closed; Received counts what was read.
func TestReadReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := NewReader(c)
	if err := r.ReadReady(); err != ErrWouldBlock {
		t.Fatalf("ReadReady on a quiet socket: %v, want ErrWouldBlock", err)
	}
	if r.big != nil {
		t.Fatal("a buffer is held after nothing was read")
	}
	frame := raw{fin: true, op: 1, masked: true, payload: []byte("hello")}.bytes()
	// The header in two pieces: HeaderReady only once it is whole.
	if _, err := w.Write(frame[:1]); err != nil {
		t.Fatal(err)
	}
	waitReady(t, r)
	if r.HeaderReady() {
		t.Fatal("HeaderReady with one byte of the header")
	}
	if _, err := w.Write(frame[1:]); err != nil {
		t.Fatal(err)
	}
	for r.Buffered() < len(frame) {
		waitReady(t, r)
	}
	if !r.HeaderReady() || !bytes.Equal(r.Peek(), frame) {
		t.Fatalf("buffered %x, want %x", r.Peek(), frame)
	}
	if got := r.Received(); got != int64(len(frame)) {
		t.Fatalf("Received() = %d, want %d", got, len(frame))
	}
	w.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := r.ReadReady()
		if err == io.EOF {
			break
		}
		if err != ErrWouldBlock || time.Now().After(deadline) {
			t.Fatalf("ReadReady after the peer closed: %v, want EOF", err)
		}
		time.Sleep(time.Millisecond)
	}
	if r.ReadReady() != io.EOF || r.Buffered() != len(frame) {
		t.Fatal("EOF dropped the buffered frame")
	}
	if err := NewReader(bytes.NewReader(frame)).ReadReady(); err != ErrNotSocket {
		t.Fatalf("ReadReady of a bytes.Reader: %v, want ErrNotSocket", err)
	}
}

// waitReady calls ReadReady until it reads something.
func waitReady(t *testing.T, r *Reader) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := r.ReadReady()
		if err == nil {
			return
		}
		if err != ErrWouldBlock || time.Now().After(deadline) {
			t.Fatalf("ReadReady: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWriteCloseCutsReason: a reason longer than a close frame carries is
// cut to 123 bytes on a rune boundary, so that it stays UTF-8.
func TestWriteCloseCutsReason(t *testing.T) {
	reasonOf := func(s string) string {
		var b bytes.Buffer
		if err := WriteClose(&b, ws.StatusPolicyViolation, s, false); err != nil {
			t.Fatal(err)
		}
		h, err := ws.ReadHeader(&b)
		if err != nil || h.OpCode != ws.OpClose || h.Length != int64(b.Len()) {
			t.Fatalf("header %+v, %v", h, err)
		}
		return string(b.Bytes()[2:])
	}
	long := strings.Repeat("é", 100) // 200 bytes
	got := reasonOf(long)
	if len(got) > 123 || !utf8.ValidString(got) || !strings.HasPrefix(long, got) || len(got) < 121 {
		t.Fatalf("cut to %d bytes: %q", len(got), got)
	}
	if reasonOf("short") != "short" {
		t.Fatal("a short reason changed")
	}
}
