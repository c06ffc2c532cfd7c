package proxy

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// Tests of permessage-deflate on the client leg (compress.go): a
// compressed message must be held to the same rules as a plain one.

// upstreamSaw is what a recordingUpstream received: its data frames, their
// payloads unmasked, and the code of the gate's close frame.
type upstreamSaw struct {
	data  []ws.Header
	bytes []byte
	close int
}

// recordingUpstream is a backend that reads frames up to the gate's close
// frame, answers that close with the same code, and then reports what it
// received.
func recordingUpstream(t *testing.T) (url string, saw <-chan upstreamSaw) {
	t.Helper()
	ch := make(chan upstreamSaw, 1)
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		var s upstreamSaw
		defer func() { ch <- s }()
		for {
			h, p, err := readFrame(br)
			if err != nil {
				s.close = -1
				return
			}
			if h.OpCode == ws.OpClose {
				if len(p) >= 2 {
					s.close = int(binary.BigEndian.Uint16(p))
				}
				_, _ = c.Write(serverFrame(ws.OpClose, p[:min(len(p), 2)]))
				_, _ = io.Copy(io.Discard, c)
				return
			}
			if !h.OpCode.IsControl() {
				s.data = append(s.data, h)
				s.bytes = append(s.bytes, p...)
			}
		}
	})
	return up.URL, ch
}

// nextSaw waits for what the recording upstream received.
func nextSaw(t *testing.T, saw <-chan upstreamSaw) upstreamSaw {
	t.Helper()
	select {
	case s := <-saw:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream never got a close frame")
		return upstreamSaw{}
	}
}

// clientFrame encodes a masked client frame (zero mask key) with any
// payload length, RSV1 set when rsv1.
func clientFrame(fin, rsv1 bool, op ws.OpCode, p []byte) []byte {
	var b bytes.Buffer
	_ = ws.WriteHeader(&b, ws.Header{Fin: fin, Rsv: ws.Rsv(rsv1, false, false), OpCode: op, Masked: true, Length: int64(len(p))})
	b.Write(p)
	return b.Bytes()
}

// storedBlock is p as one non-final stored (uncompressed) deflate block:
// deflate data whose length the test controls exactly.
func storedBlock(p []byte) []byte {
	n := uint16(len(p))
	return append([]byte{0, byte(n), byte(n >> 8), ^byte(n), ^byte(n >> 8)}, p...)
}

// TestByteRuleChargesCompressedFragments sends an 8 KiB message in 1 KiB
// fragments under a 4 KiB byte rule, plain and compressed. A byte rule
// charges every frame of a message, so both are refused the same way: the
// upstream never gets the whole message and both sides get 4008.
func TestByteRuleChargesCompressedFragments(t *testing.T) {
	kib := bytes.Repeat([]byte("y"), 1024)
	for _, compressed := range []bool{false, true} {
		t.Run(fmt.Sprint("compressed=", compressed), func(t *testing.T) {
			live, lim := rulesAndLimiter(t, "rules:\n  - {name: bytes, key: ip, count: bytes, limits: [4KiB/30s]}\n")
			url, saw := recordingUpstream(t)
			g := newGate(t, url, func(c *Config) { c.Compression = true; c.Limiter = lim; c.Rules = live })
			conn, br := rawDeflateClient(t, g, "/")

			first := []byte("x")
			if compressed {
				first = storedBlock(first)
			}
			msg := clientFrame(false, compressed, ws.OpBinary, first)
			for i := range 8 {
				p := kib
				if compressed {
					p = storedBlock(kib)
					if i == 7 {
						p = append(p, 0) // the empty block that RFC 7692's sender leaves before the stripped tail
					}
				}
				msg = append(msg, clientFrame(i == 7, false, ws.OpContinuation, p)...)
			}
			// Past a refusal the client's close is discarded; a message let
			// through is followed by the client's own close 1000.
			msg = append(msg, clientFrame(true, false, ws.OpClose, []byte{0x03, 0xe8})...)
			if _, err := conn.Write(msg); err != nil {
				t.Fatal(err)
			}

			if code, _ := readUntilClose(t, br); code != 4008 {
				t.Errorf("client: close %d, want 4008", code)
			}
			s := nextSaw(t, saw)
			if s.close != 4008 {
				t.Errorf("upstream: close %d, want 4008", s.close)
			}
			for _, h := range s.data {
				if h.Fin {
					t.Errorf("upstream got the message whole (%d bytes) past a 4 KiB byte rule", len(s.bytes))
				}
			}
		})
	}
}

// TestFinalDeflateBlock: RFC 7692 section 7.2.3.4 lets a sender end a
// message's deflate data with a final block (BFINAL set) followed by an
// empty block's byte. The inflater stops at the final block; the message
// still ends where its frames do, and is relayed. A message whose frames
// end inside the deflate data is not.
func TestFinalDeflateBlock(t *testing.T) {
	hello := []byte{0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00} // "Hello", RFC 7692 section 7.2.3.4
	cut := storedBlock(bytes.Repeat([]byte("c"), 100))[:15]
	tests := []struct {
		name   string
		frames [][]byte
		want   string // what the upstream gets; "" for a refusal with 1007
	}{
		{name: "one frame", frames: [][]byte{clientFrame(true, true, ws.OpText, hello)}, want: "Hello"},
		{name: "padding in a later frame", frames: [][]byte{
			clientFrame(false, true, ws.OpText, hello[:7]),
			clientFrame(true, false, ws.OpContinuation, hello[7:]),
		}, want: "Hello"},
		{name: "empty frames after the final block", frames: [][]byte{
			clientFrame(false, true, ws.OpText, hello[:7]),
			clientFrame(false, false, ws.OpContinuation, nil),
			clientFrame(true, false, ws.OpContinuation, hello[7:]),
		}, want: "Hello"},
		// A stored block that announces 100 bytes and holds 10: the
		// inflater runs out of data, even with the tail it is given.
		// Binary, so that no UTF-8 check can refuse it first.
		{name: "frames end inside a block", frames: [][]byte{clientFrame(true, true, ws.OpBinary, cut)}},
		{name: "frames end inside a block, fragmented", frames: [][]byte{
			clientFrame(false, true, ws.OpBinary, cut[:7]),
			clientFrame(true, false, ws.OpContinuation, cut[7:]),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, saw := recordingUpstream(t)
			g := newGate(t, url, func(c *Config) { c.Compression = true })
			conn, br := rawDeflateClient(t, g, "/")
			msg := bytes.Join(tt.frames, nil)
			// A message the gate lets through is followed by the client's close.
			msg = append(msg, clientFrame(true, false, ws.OpClose, []byte{0x03, 0xe8})...)
			if _, err := conn.Write(msg); err != nil {
				t.Fatal(err)
			}
			code, _ := readUntilClose(t, br)
			s := nextSaw(t, saw)
			if tt.want == "" {
				if code != 1007 || len(s.data) != 0 {
					t.Fatalf("client close %d, upstream got %q; want 1007 and nothing", code, s.bytes)
				}
				return
			}
			if code != 1000 || string(s.bytes) != tt.want || len(s.data) == 0 || !s.data[len(s.data)-1].Fin ||
				s.data[0].OpCode != ws.OpText {
				t.Fatalf("client close %d, upstream got %q in %v; want 1000 and %q", code, s.bytes, s.data, tt.want)
			}
		})
	}
}

// TestDeflateWithholdsInvalidUTF8: an upstream text message with an
// invalid byte, bound for a client that gets compressed messages. As on
// the plain path, no byte of the chunk that holds the violation reaches
// the client: the compressor never sees it, so it cannot be flushed with a
// block that the rest of the chunk completes.
func TestDeflateWithholdsInvalidUTF8(t *testing.T) {
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	rng := rand.New(rand.NewPCG(1, 2))
	msg := make([]byte, 140000)
	for i := range msg {
		msg[i] = alpha[rng.IntN(len(alpha))]
	}
	// The violation is in the chunk that takes the compressor past its
	// second 64 KiB block, which it then encodes and writes.
	const split, bad = 125000, 125100
	msg[bad] = 0xff
	up := rawUpstream(t, func(c net.Conn, _ *bufio.Reader) {
		_ = ws.WriteHeader(c, ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(msg))})
		_, _ = c.Write(msg[:split])
		// The gate reads the rest as one chunk.
		time.Sleep(200 * time.Millisecond)
		_, _ = c.Write(msg[split:])
		_, _ = io.Copy(io.Discard, c)
	})
	g := newGate(t, up.URL, func(c *Config) { c.Compression = true })
	_, br := rawDeflateClient(t, g, "/")
	var deflated []byte
	code := 0
	for code == 0 {
		h, p, err := readFrame(br)
		if err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		switch {
		case h.OpCode == ws.OpClose && len(p) >= 2:
			code = int(binary.BigEndian.Uint16(p))
		case h.OpCode == ws.OpClose:
			code = 1005
		case !h.OpCode.IsControl():
			deflated = append(deflated, p...)
		}
	}
	if code != 1014 {
		t.Errorf("close %d, want 1014", code)
	}
	// What the client can inflate of the message it got.
	fr := flate.NewReader(bytes.NewReader(deflated))
	got, _ := io.ReadAll(fr)
	if i := bytes.IndexByte(got, 0xff); i >= 0 {
		t.Fatalf("the invalid byte reached the client, at %d of the %d bytes it could inflate", i, len(got))
	}
	if len(got) > bad {
		t.Fatalf("the client inflated %d bytes, past the violation at %d", len(got), bad)
	}
}
