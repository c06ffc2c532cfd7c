package frames

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestPayloadWithholdsInvalidChunk: Payload's reader, like Forward, hands
// over no byte of a chunk that holds a UTF-8 violation. A caller that
// writes what a read returned before it looks at the error (io.Copy does)
// must not pass on the bytes around the violation.
func TestPayloadWithholdsInvalidChunk(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		frames []raw
		bad    int // the offset in the message of the byte that breaks it
	}{
		{name: "invalid byte", frames: []raw{{fin: true, op: 1, payload: []byte("abc\xffdef")}}, bad: 3},
		{name: "ends inside a code point", frames: []raw{{fin: true, op: 1, payload: []byte("ab\xe2\x82")}}, bad: 3},
		{name: "masked", frames: []raw{{fin: true, op: 1, masked: true, payload: []byte("ok \xc3\x28 ok")}}, bad: 4},
		{name: "in a later fragment", frames: []raw{
			{op: 1, payload: []byte("first ")},
			{fin: true, op: 0, payload: []byte("then \xed\xa0\x80")}, // a surrogate
		}, bad: 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var in, msg []byte
			for _, f := range tt.frames {
				in = append(in, f.bytes()...)
				msg = append(msg, f.payload...)
			}
			from := Server
			if tt.frames[0].masked {
				from = Client
			}
			s := &Stream{From: from}
			r := NewReader(bytes.NewReader(in))
			var got []byte
			buf := make([]byte, 64)
			for {
				h, err := s.Next(r)
				if err != nil {
					t.Fatalf("after %q: %v", got, err)
				}
				p := s.Payload(r, h)
				var n int
				for err == nil {
					n, err = p.Read(buf)
					got = append(got, buf[:n]...)
				}
				if errors.Is(err, ErrInvalidUTF8) {
					// The bytes before the violation may come in earlier
					// chunks, as the reads fall.
					if n != 0 || len(got) > tt.bad || !bytes.HasPrefix(msg, got) {
						t.Fatalf("read %q (%d with the error), want at most %q and none with the error", got, n, msg[:tt.bad])
					}
					return
				}
				if err != io.EOF {
					t.Fatalf("after %q: %v", got, err)
				}
			}
		})
	}
}
