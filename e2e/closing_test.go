//go:build e2e

package e2e

// How a connection ends, through the built binary: a client's close frame, valid or not, is its
// Close, after which the gate ends the TCP connection at once (RFC 6455 section 7.1.1); a refused
// client still receives every reply the backend sent to the messages it was allowed, before the
// 429 frame and the close; a frame that streams for longer than the keepalive's timeout is not
// taken for silence.

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInvalidCloseFrameEndsConnection sends a close frame that breaks RFC 6455 section 5.5.1 and
// expects the gate's 1002 (1007 for a reason that is not UTF-8) and then the end of the TCP
// connection well before the close timeout: the client's frame was its Close, so the closing
// handshake is over once the gate has answered.
func TestInvalidCloseFrameEndsConnection(t *testing.T) {
	t.Parallel()
	g := startRelayGate(t, startGoBackend(t))
	host := strings.TrimPrefix(g.URL, "ws://")
	long := strings.Repeat("r", 124) // with the code, 126 bytes: over a control frame's 125
	cases := []struct {
		name string
		body string
		want int
	}{
		{"code 0", cfCloseBody(0, ""), 1002},
		{"code 999", cfCloseBody(999, ""), 1002},
		{"code 1004", cfCloseBody(1004, ""), 1002},
		{"code 1005", cfCloseBody(1005, ""), 1002},
		{"code 1006", cfCloseBody(1006, ""), 1002},
		{"code 1016", cfCloseBody(1016, ""), 1002},
		{"code 1100", cfCloseBody(1100, ""), 1002},
		{"code 2000", cfCloseBody(2000, ""), 1002},
		{"code 2999", cfCloseBody(2999, ""), 1002},
		{"1-byte body", "\x03", 1002},
		{"reason over 123 bytes", cfCloseBody(1000, long), 1002},
		{"reason not UTF-8", cfCloseBody(1000, "bad \xff\xfe"), 1007},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := cfDial(t, host, "/echo")
			if err := c.send(0, cfMsg(cfOpText, "before")); err != nil {
				t.Fatal(err)
			}
			if _, err := c.readMessages(1, waitLimit); err != nil {
				t.Fatalf("echo before the close: %v\n%s", err, c.report())
			}
			if err := c.send(0, cfMsg(cfOpClose, tc.body)); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if code := c.untilClose(waitLimit); code != tc.want {
				t.Fatalf("close code %d, want %d\n%s", code, tc.want, c.report())
			}
			// The gate's close timeout is 5 s; the end must not wait for it.
			if !c.finish(0, 2*time.Second) {
				t.Fatalf("the gate kept the TCP connection open %v after its close frame\n%s", time.Since(start), c.report())
			}
		})
	}
}

// TestRefusalKeepsReplies sends 150 messages in one write to an echo backend behind the
// default 100/10s rule: the client gets exactly the 100 echoes of the messages that were allowed,
// in order, then the 429 frame, then close 4008; the backend sees close 4008 and never message
// 101. The same holds for a message over --max-message-bytes (1009 after every earlier echo).
func TestRefusalKeepsReplies(t *testing.T) {
	t.Parallel()
	rs := startRedisServer(t)
	node := startNodeBackend(t)
	goBackend := newGoBackend(t)
	cases := []struct {
		name    string
		backend string
		args    []string
	}{
		{"memory, go backend", goBackend.URL, nil},
		{"redis, node backend", node, slices.Concat(redisURL(rs), []string{"--key-prefix", "exact"})},
		{"redis lease, node backend", node, slices.Concat(redisURL(rs), []string{"--key-prefix", "lease", "--limit-mode", "lease"})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := limitGate(t, tc.backend, slices.Concat([]string{"--user-rate", "100/10s", "--ip-rate", "0"}, tc.args)...)
			c := cfDial(t, strings.TrimPrefix(g.URL, "ws://"), "/echo")
			burst := make([]cfOut, 150)
			for i := range burst {
				burst[i] = cfMsg(cfOpText, "m-"+strconv.Itoa(i))
			}
			if err := c.send(0, burst...); err != nil {
				t.Fatal(err)
			}
			got, err := c.readMessages(100, waitLimit)
			if err != nil {
				t.Fatalf("%v\n%s", err, c.report())
			}
			for i, m := range got {
				if want := "m-" + strconv.Itoa(i); string(m.payload) != want {
					t.Fatalf("echo %d is %q, want %q", i, m.payload, want)
				}
			}
			f, ok := c.next(waitLimit)
			if !ok || f.op != cfOpText {
				t.Fatalf("after 100 echoes: %v (ok %v), want the 429 text frame\n%s", f, ok, c.report())
			}
			var body struct {
				Code  int    `json:"code"`
				Error string `json:"error"`
				Scope string `json:"scope"`
			}
			if err := json.Unmarshal(f.payload, &body); err != nil || body.Code != 429 || body.Scope != "user" {
				t.Fatalf("429 frame %q: %+v, %v", f.payload, body, err)
			}
			if code := c.untilClose(waitLimit); code != 4008 {
				t.Fatalf("close %d after the 429 frame, want 4008\n%s", code, c.report())
			}
			if !c.finish(4008, waitLimit) {
				t.Fatalf("the gate did not end the connection after the closing handshake\n%s", c.report())
			}
			if tc.backend == goBackend.URL {
				if ce := goBackend.nextClose(t); ce.Code != 4008 {
					t.Fatalf("backend saw close %d, want 4008", ce.Code)
				}
			}
		})
	}

	t.Run("1009 after every earlier echo", func(t *testing.T) {
		g := startRelayGate(t, goBackend.URL, "--max-message-bytes", "1KiB")
		c := cfDial(t, strings.TrimPrefix(g.URL, "ws://"), "/echo")
		burst := make([]cfOut, 0, 51)
		for i := range 50 {
			burst = append(burst, cfMsg(cfOpText, "s-"+strconv.Itoa(i)))
		}
		burst = append(burst, cfMsg(cfOpBinary, strings.Repeat("x", 2048)))
		if err := c.send(0, burst...); err != nil {
			t.Fatal(err)
		}
		got, err := c.readMessages(50, waitLimit)
		if err != nil {
			t.Fatalf("%v\n%s", err, c.report())
		}
		if last := string(got[49].payload); last != "s-49" {
			t.Fatalf("last echo %q, want s-49", last)
		}
		if code := c.untilClose(waitLimit); code != 1009 {
			t.Fatalf("close %d, want 1009\n%s", code, c.report())
		}
		c.finish(1009, waitLimit)
	})
}

// TestShutdownKeepsReplies sends messages and SIGTERM right behind them: every message the gate
// relayed upstream before the drain gets its echo, then the drain's text frame, then close 1012.
func TestShutdownKeepsReplies(t *testing.T) {
	t.Parallel()
	b := newGoBackend(t)
	g := startRelayGate(t, b.URL, "--shutdown-delay", "0s", "--shutdown-grace", "20s")
	c := cfDial(t, strings.TrimPrefix(g.URL, "ws://"), "/slow-echo?delay=100ms")
	burst := make([]cfOut, 20)
	for i := range burst {
		burst[i] = cfMsg(cfOpText, "d-"+strconv.Itoa(i))
	}
	if err := c.send(0, burst...); err != nil {
		t.Fatal(err)
	}
	// The backend holds each echo 100 ms; the drain starts while they are all in flight.
	waitFor(t, "the gate to count 20 messages", func() bool {
		return g.Metric(t, "holo_ws_messages_total", map[string]string{"direction": "client_to_upstream"}) >= 20
	})
	if err := g.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	got, err := c.readMessages(21, waitLimit)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.report())
	}
	if last := string(got[19].payload); last != "d-19" {
		t.Fatalf("last echo %q, want d-19", last)
	}
	if notice := string(got[20].payload); !strings.HasPrefix(notice, `{"code":1012,"error":"Service restart","retryAfterMs":`) {
		t.Fatalf("after the echoes %q, want the drain's text frame", notice)
	}
	if code := c.untilClose(waitLimit); code != 1012 {
		t.Fatalf("close %d, want 1012\n%s", code, c.report())
	}
	c.finish(1012, waitLimit)
	if code := g.Wait(); code != 0 {
		t.Fatalf("the gate exited %d:\n%s", code, tail(g.Output(), 4<<10))
	}
}

// TestLongFrameIsNotSilence streams one message frame slowly for several ping timeouts: its
// bytes keep the connection alive, and the message arrives whole.
func TestLongFrameIsNotSilence(t *testing.T) {
	t.Parallel()
	g := startRelayGate(t, startGoBackend(t), "--ping-interval", "200ms", "--message-timeout", "0")
	c := cfDial(t, strings.TrimPrefix(g.URL, "ws://"), "/echo")
	msg := []byte(strings.Repeat("z", 40*256))
	frame := cfOut{fin: true, op: cfOpBinary, payload: msg}.encode()
	// 40 pieces 50 ms apart: 2 s, five times the 400 ms after which a silent client is closed.
	piece := (len(frame) + 39) / 40
	for off := 0; off < len(frame); off += piece {
		end := min(off+piece, len(frame))
		if _, err := c.nc.Write(frame[off:end]); err != nil {
			t.Fatalf("write at %d: %v\n%s", off, err, c.report())
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err := c.readMessages(1, waitLimit)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.report())
	}
	if len(got[0].payload) != len(msg) {
		t.Fatalf("echo of %d bytes, want %d", len(got[0].payload), len(msg))
	}
}
