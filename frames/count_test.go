package frames

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/gobwas/ws"
)

func TestCountMessages(t *testing.T) {
	frame := func(op ws.OpCode, fin, masked bool, size int) []byte {
		var b bytes.Buffer
		h := ws.Header{Fin: fin, OpCode: op, Length: int64(size), Masked: masked}
		if err := ws.WriteHeader(&b, h); err != nil {
			t.Fatal(err)
		}
		b.Write(make([]byte, size))
		return b.Bytes()
	}
	cat := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	text := frame(ws.OpText, true, true, 5)
	big := frame(ws.OpBinary, true, true, 70_000) // 64-bit length
	mid := frame(ws.OpText, true, false, 300)     // 16-bit length, unmasked
	tests := []struct {
		name  string
		p     []byte
		limit int
		want  int
	}{
		{"empty", nil, 10, 0},
		{"one", text, 10, 1},
		{"three kinds of length", cat(text, big, mid), 10, 3},
		{"limit", cat(text, text, text, text), 3, 3},
		{"fragments and control frames", cat(frame(ws.OpText, false, true, 3), frame(ws.OpPing, true, true, 2),
			frame(ws.OpContinuation, true, true, 3), frame(ws.OpPong, true, true, 0), text), 10, 2},
		{"stops at close", cat(text, frame(ws.OpClose, true, true, 2), text), 10, 1},
		{"payload cut: counted, then stop", cat(text, big[:100]), 10, 2},
		{"header cut", cat(text, big[:5]), 10, 1},
		{"one byte", text[:1], 10, 0},
		{"length beyond int64", cat(text, []byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, text), 10, 2},
	}
	for _, tt := range tests {
		if got := CountMessages(tt.p, tt.limit); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
}

// TestCountMessagesMatchesStream compares the count with the message
// starts of random sequences of valid frames (as the generator wrote them)
// cut at random points.
func TestCountMessagesRandomFrames(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		var b bytes.Buffer
		starts := []int{} // offsets of the message-starting frames' ends of header
		open := false
		for range 1 + rng.IntN(8) {
			var op ws.OpCode
			switch k := rng.IntN(4); {
			case k == 0:
				op = ws.OpPing
			case open:
				op = ws.OpContinuation
			default:
				op = ws.OpBinary
			}
			fin := op == ws.OpPing || rng.IntN(2) == 0
			size := []int{0, 7, 125, 126, 300, 70_000}[rng.IntN(6)]
			if op == ws.OpPing {
				size = rng.IntN(126)
			}
			h := ws.Header{Fin: fin, OpCode: op, Length: int64(size), Masked: true}
			_ = ws.WriteHeader(&b, h)
			if op == ws.OpBinary {
				starts = append(starts, b.Len())
			}
			if !op.IsControl() {
				open = !fin
			}
			b.Write(make([]byte, size))
		}
		p := b.Bytes()
		cut := rng.IntN(len(p) + 1)
		want := 0
		for _, end := range starts {
			if end <= cut {
				want++
			}
		}
		if got := CountMessages(p[:cut], 100); got != want {
			t.Fatalf("cut %d of %d: %d, want %d", cut, len(p), got, want)
		}
	}
}
