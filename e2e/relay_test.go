//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// backend is one upstream the gate is put in front of.
type backend struct {
	name string
	url  string     // http://127.0.0.1:port
	gob  *goBackend // nil for the Node backend
}

// noLimits turns off the per-identity and per-IP rate limits: every test connects from 127.0.0.1,
// so the defaults (30 handshakes a minute per identity) would refuse the later connections of a
// test that is about relaying, not limiting.
var noLimits = []string{"--user-rate", "0", "--ip-rate", "0", "--user-conn-rate", "0", "--ip-conn-rate", "0"}

// startRelayGate starts a gate in front of upstream with the rate limits off.
func startRelayGate(t *testing.T, upstream string, args ...string) *Gate {
	t.Helper()
	return startGate(t, append(append(append([]string{}, noLimits...), "--upstream", upstream), args...)...)
}

// startBackends starts the Node backend and the Go backend.
func startBackends(t *testing.T) []backend {
	t.Helper()
	gb := newGoBackend(t)
	return []backend{
		{name: "node", url: startNodeBackend(t)},
		{name: "go", url: gb.URL, gob: gb},
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// payload returns n bytes: printable ASCII for text, every byte value for binary.
func payload(n int, typ websocket.MessageType) []byte {
	p := make([]byte, n)
	for i := range p {
		if typ == websocket.MessageText {
			p[i] = byte('a' + i%26)
		} else {
			p[i] = byte(i * 7)
		}
	}
	return p
}

// echo writes one message and checks that the same type and bytes come back.
func echo(t *testing.T, c *websocket.Conn, typ websocket.MessageType, p []byte) {
	t.Helper()
	ctx := testCtx(t)
	if err := c.Write(ctx, typ, p); err != nil {
		t.Fatalf("write: %v", err)
	}
	gotTyp, got, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if gotTyp != typ || !bytes.Equal(got, p) {
		t.Fatalf("echo = %v %d bytes %q, want %v %d bytes %q", gotTyp, len(got), tail(string(got), 32), typ, len(p), tail(string(p), 32))
	}
}

func closeNormally(t *testing.T, c *websocket.Conn) {
	t.Helper()
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Errorf("close: %v", err)
	}
}

// wantEvent checks that ev has every key of want with an equal value (numbers compared as float64).
func wantEvent(t *testing.T, events []map[string]any, i int, want map[string]any) {
	t.Helper()
	if i >= len(events) {
		t.Fatalf("event %d missing, want %v; events: %v", i, want, events)
	}
	for k, v := range want {
		if n, ok := v.(int); ok {
			v = float64(n)
		}
		if events[i][k] != v {
			t.Fatalf("event %d = %v, want %s=%v; events: %v", i, events[i], k, v, events)
		}
	}
}

func TestEcho(t *testing.T) {
	t.Parallel()
	const maxBytes = 1 << 20
	cases := []struct {
		name string
		typ  websocket.MessageType
		p    []byte
	}{
		{"text empty", websocket.MessageText, nil},
		{"binary empty", websocket.MessageBinary, nil},
		{"text utf-8", websocket.MessageText, []byte("héllo wörld ✓")},
		{"binary 125", websocket.MessageBinary, payload(125, websocket.MessageBinary)},
		{"text 126", websocket.MessageText, payload(126, websocket.MessageText)},
		{"binary 65536", websocket.MessageBinary, payload(65536, websocket.MessageBinary)},
		{"text 1MiB-1", websocket.MessageText, payload(maxBytes-1, websocket.MessageText)},
		{"binary 1MiB-1", websocket.MessageBinary, payload(maxBytes-1, websocket.MessageBinary)},
	}
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url, "--max-message-bytes", strconv.Itoa(maxBytes))
		for _, tc := range cases {
			t.Run(b.name+"/go client/"+tc.name, func(t *testing.T) {
				t.Parallel()
				c := dial(t, g.URL+"/echo", nil)
				c.SetReadLimit(2 * maxBytes)
				echo(t, c, tc.typ, tc.p)
				echo(t, c, tc.typ, tc.p) // the connection stays usable
				closeNormally(t, c)
			})
		}
		t.Run(b.name+"/node client", func(t *testing.T) {
			t.Parallel()
			events := runNodeClient(t, g.URL+"/echo", "--send", "hello", "--send-binary", "bin", "--send", "", "--expect", "3")
			wantEvent(t, events, 0, map[string]any{"open": true, "protocol": ""})
			wantEvent(t, events, 1, map[string]any{"message": "hello", "binary": false})
			wantEvent(t, events, 2, map[string]any{"message": "bin", "binary": true})
			wantEvent(t, events, 3, map[string]any{"message": "", "binary": false})
			wantEvent(t, events, 4, map[string]any{"close": 1000})
		})
	}
}

func TestFragmentedMessages(t *testing.T) {
	t.Parallel()
	parts := []string{"frag-", "mented ", "mess", "age"}
	whole := strings.Join(parts, "")
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)
		for _, typ := range []websocket.MessageType{websocket.MessageText, websocket.MessageBinary} {
			t.Run(b.name+"/client sends fragments/"+typ.String(), func(t *testing.T) {
				t.Parallel()
				ctx := testCtx(t)
				c := dial(t, g.URL+"/echo", nil)
				w, err := c.Writer(ctx, typ)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range parts { // each Write is one frame
					if _, err := w.Write([]byte(p)); err != nil {
						t.Fatalf("write fragment: %v", err)
					}
				}
				if err := w.Close(); err != nil {
					t.Fatalf("finish message: %v", err)
				}
				gotTyp, got, err := c.Read(ctx)
				if err != nil || gotTyp != typ || string(got) != whole {
					t.Fatalf("echo = %v %q, %v; want %v %q", gotTyp, got, err, typ, whole)
				}
				closeNormally(t, c)
			})
		}
		t.Run(b.name+"/control frame between fragments", func(t *testing.T) {
			t.Parallel()
			rc, resp := rawDial(t, strings.TrimPrefix(g.URL, "ws://"), "/echo", nil)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("handshake status %d", resp.StatusCode)
			}
			// RFC 6455 section 5.4: control frames may be injected in the middle of a
			// fragmented message.
			steps := []struct {
				fin    bool
				opcode byte
				p      string
			}{{false, 0x1, "one-"}, {true, 0x9, "ping!"}, {false, 0x0, "two-"}, {true, 0x0, "three"}}
			for _, s := range steps {
				if err := rc.writeFrame(s.fin, s.opcode, []byte(s.p)); err != nil {
					t.Fatalf("write frame: %v", err)
				}
			}
			var msg []byte
			gotPong, gotMsg := false, false
			for !(gotPong && gotMsg) {
				f, err := rc.readFrame()
				if err != nil {
					t.Fatalf("read frame (pong %v, message %v): %v", gotPong, gotMsg, err)
				}
				if f.masked {
					t.Fatalf("the gate sent a masked frame to the client (RFC 6455 section 5.1)")
				}
				switch f.opcode {
				case 0xA:
					if string(f.payload) != "ping!" {
						t.Fatalf("pong payload %q, want %q", f.payload, "ping!")
					}
					gotPong = true
				case 0x1, 0x0:
					msg = append(msg, f.payload...)
					gotMsg = f.fin
				default:
					t.Fatalf("unexpected frame opcode %#x payload %q", f.opcode, f.payload)
				}
			}
			if string(msg) != "one-two-three" {
				t.Fatalf("echo %q, want %q", msg, "one-two-three")
			}
		})
	}

	// The Node backend answers each message with 4 fragments, which the gate relays as frames.
	node := startNodeBackend(t)
	g := startRelayGate(t, node)
	const msg = "abcdefghijklmnopqrstuvwxyz012345"
	t.Run("node/backend sends fragments/go client", func(t *testing.T) {
		t.Parallel()
		c := dial(t, g.URL+"/fragments?n=4", nil)
		echo(t, c, websocket.MessageText, []byte(msg))
		echo(t, c, websocket.MessageBinary, payload(4000, websocket.MessageBinary))
		closeNormally(t, c)
	})
	t.Run("node/backend sends fragments/node client", func(t *testing.T) {
		t.Parallel()
		events := runNodeClient(t, g.URL+"/fragments?n=4", "--send", msg, "--expect", "1")
		wantEvent(t, events, 1, map[string]any{"message": msg, "binary": false})
		wantEvent(t, events, 2, map[string]any{"close": 1000})
	})
	t.Run("node/backend sends fragments/frames kept", func(t *testing.T) {
		t.Parallel()
		rc, resp := rawDial(t, strings.TrimPrefix(g.URL, "ws://"), "/fragments?n=4", nil)
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("handshake status %d", resp.StatusCode)
		}
		if err := rc.writeFrame(true, 0x1, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		var frames []rawFrame
		for len(frames) == 0 || !frames[len(frames)-1].fin {
			f, err := rc.readFrame()
			if err != nil {
				t.Fatalf("after %d frames: %v", len(frames), err)
			}
			frames = append(frames, f)
		}
		var got []byte
		var shape []string
		for _, f := range frames {
			got = append(got, f.payload...)
			shape = append(shape, fmt.Sprintf("op%d/fin=%v", f.opcode, f.fin))
		}
		want := "[op1/fin=false op0/fin=false op0/fin=false op0/fin=true]"
		if fmt.Sprint(shape) != want || string(got) != msg {
			t.Fatalf("frames %v with %q, want %s with %q", shape, got, want, msg)
		}
	})
}

func TestSubprotocols(t *testing.T) {
	t.Parallel()
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)
		for _, tc := range []struct {
			offer []string
			want  string
		}{
			{[]string{"x", "chat"}, "chat"},
			{[]string{"nope"}, ""},
			{nil, ""},
		} {
			t.Run(fmt.Sprintf("%s/go client offers %v", b.name, tc.offer), func(t *testing.T) {
				t.Parallel()
				c := dial(t, g.URL+"/echo", &websocket.DialOptions{Subprotocols: tc.offer})
				if got := c.Subprotocol(); got != tc.want {
					t.Fatalf("subprotocol %q, want %q", got, tc.want)
				}
				echo(t, c, websocket.MessageText, []byte("after negotiation"))
				closeNormally(t, c)
			})
		}
		t.Run(b.name+"/node client offers x,chat", func(t *testing.T) {
			t.Parallel()
			events := runNodeClient(t, g.URL+"/echo", "--protocols", "x,chat", "--send", "m", "--expect", "1")
			wantEvent(t, events, 0, map[string]any{"open": true, "protocol": "chat"})
			wantEvent(t, events, 1, map[string]any{"message": "m"})
		})
		// The Node ws client fails a handshake whose answer names no subprotocol when it
		// offered some ("Server sent no subprotocol"), whoever answers: through the gate it
		// must see exactly what it sees from the backend itself.
		t.Run(b.name+"/node client offers nope", func(t *testing.T) {
			t.Parallel()
			wsBackend := "ws" + strings.TrimPrefix(b.url, "http")
			direct := runNodeClient(t, wsBackend+"/echo", "--protocols", "nope", "--expect", "0")
			gated := runNodeClient(t, g.URL+"/echo", "--protocols", "nope", "--expect", "0")
			if fmt.Sprint(gated) != fmt.Sprint(direct) {
				t.Fatalf("through the gate %v, directly %v", gated, direct)
			}
			t.Logf("node client offering only %q: %v", "nope", gated)
		})
	}
	node := startNodeBackend(t)
	g := startRelayGate(t, node)
	t.Run("node/first supported offer wins", func(t *testing.T) {
		t.Parallel()
		c := dial(t, g.URL+"/echo", &websocket.DialOptions{Subprotocols: []string{"nope", "superchat", "chat"}})
		if got := c.Subprotocol(); got != "superchat" {
			t.Fatalf("subprotocol %q, want superchat", got)
		}
		closeNormally(t, c)
	})
}

func TestCloseCodes(t *testing.T) {
	t.Parallel()
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)

		t.Run(b.name+"/client closes 4001/go client", func(t *testing.T) {
			t.Parallel()
			c := dial(t, g.URL+"/echo", nil)
			echo(t, c, websocket.MessageText, []byte("x"))
			// Close returns nil only when the peer answered with the same code.
			if err := c.Close(4001, "bye"); err != nil {
				t.Fatalf("close 4001: %v", err)
			}
			if b.gob != nil {
				if ce := b.gob.nextClose(t); ce.Code != 4001 || ce.Reason != "bye" {
					t.Fatalf("the backend saw close %d %q, want 4001 \"bye\"", ce.Code, ce.Reason)
				}
			}
		})
		t.Run(b.name+"/client closes 4001/node client", func(t *testing.T) {
			t.Parallel()
			events := runNodeClient(t, g.URL+"/echo", "--send", "x", "--expect", "1", "--close-code", "4001", "--close-reason", "bye")
			wantEvent(t, events, 2, map[string]any{"close": 4001, "reason": "bye"})
		})

		for _, tc := range []struct {
			code   int
			reason string
		}{
			{1000, "r"}, {1001, "r"}, {1011, "r"}, {1012, "r"}, {1013, "r"}, {1014, "r"},
			{4000, "r"}, {3000, "a longer reason ✓"}, {1000, ""},
		} {
			path := fmt.Sprintf("/close?code=%d&reason=%s", tc.code, url.QueryEscape(tc.reason))
			t.Run(fmt.Sprintf("%s/upstream closes %d %q/go client", b.name, tc.code, tc.reason), func(t *testing.T) {
				t.Parallel()
				c := dial(t, g.URL+path, nil)
				ce := readClose(t, c)
				if int(ce.Code) != tc.code || ce.Reason != tc.reason {
					t.Fatalf("client got close %d %q, want %d %q", ce.Code, ce.Reason, tc.code, tc.reason)
				}
			})
			t.Run(fmt.Sprintf("%s/upstream closes %d %q/node client", b.name, tc.code, tc.reason), func(t *testing.T) {
				t.Parallel()
				events := runNodeClient(t, g.URL+path)
				wantEvent(t, events, 1, map[string]any{"close": tc.code, "reason": tc.reason})
			})
		}
	}
}

func TestUpstreamDiesMidConnection(t *testing.T) {
	t.Parallel()
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)
		t.Run(b.name+"/go client", func(t *testing.T) {
			t.Parallel()
			c := dial(t, g.URL+"/die", nil)
			if err := c.Write(testCtx(t), websocket.MessageText, []byte("die now")); err != nil {
				t.Fatal(err)
			}
			if ce := readClose(t, c); ce.Code != websocket.StatusBadGateway {
				t.Fatalf("client got close %d %q, want 1014", ce.Code, ce.Reason)
			}
		})
		t.Run(b.name+"/node client", func(t *testing.T) {
			t.Parallel()
			events := runNodeClient(t, g.URL+"/die", "--send", "die now")
			wantEvent(t, events, 1, map[string]any{"close": 1014})
		})
	}
}

// upgradeRequest is a WebSocket handshake sent with net/http, to read the gate's refusal in full.
func upgradeRequest(t *testing.T, rawURL string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", rawClientKey)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("handshake with net/http: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestUpstreamUnreachable(t *testing.T) {
	t.Parallel()

	// resetter accepts connections and closes them at once; staller accepts and never answers.
	resetter := listen(t, func(c net.Conn) {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST instead of FIN
		}
		c.Close()
	})
	staller := listen(t, func(c net.Conn) {
		io.Copy(io.Discard, c) // until the gate gives up and the test closes it
	})
	down := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))

	for _, tc := range []struct {
		name     string
		upstream string
		status   int
		result   string
	}{
		{"nothing listening", down, http.StatusBadGateway, "upstream_error"},
		{"reset at handshake", resetter, http.StatusBadGateway, "upstream_error"},
		{"no answer to the handshake", staller, http.StatusGatewayTimeout, "upstream_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := startRelayGate(t, tc.upstream, "--upstream-dial-timeout", "1s", "--handshake-timeout", "1s")

			_, resp, err := websocket.Dial(testCtx(t), g.URL+"/echo", nil)
			if err == nil || resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("go client: resp %v, err %v; want status %d", statusOf(resp), err, tc.status)
			}

			resp = upgradeRequest(t, g.HTTP+"/echo")
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("net/http: status %d, want %d; body %q", resp.StatusCode, tc.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, "json") || !json.Valid(body) {
				t.Errorf("net/http: Content-Type %q, body %q; want a JSON body", ct, body)
			}

			events := runNodeClient(t, g.URL+"/echo")
			wantEvent(t, events, 0, map[string]any{"status": tc.status})

			if got := g.Metric(t, "holo_ws_connections_total", map[string]string{"result": tc.result}); got < 3 {
				t.Errorf("holo_ws_connections_total{result=%q} = %v, want >= 3", tc.result, got)
			}
		})
	}
	t.Run("plain http, nothing listening", func(t *testing.T) {
		t.Parallel()
		g := startRelayGate(t, down)
		resp, err := httpClient.Get(g.HTTP + "/hello")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("status %d, want 502", resp.StatusCode)
		}
	})
}

func statusOf(resp *http.Response) string {
	if resp == nil {
		return "<nil>"
	}
	return resp.Status
}

// listen runs a TCP server on a free loopback port whose connections are handed to handle, and
// returns its http:// URL; it is stopped in t.Cleanup.
func listen(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "http://" + ln.Addr().String()
}

func TestUpstreamRefusesHandshake(t *testing.T) {
	t.Parallel()
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)
		t.Run(b.name+"/go client", func(t *testing.T) {
			t.Parallel()
			_, resp, err := websocket.Dial(testCtx(t), g.URL+"/forbidden", nil)
			if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("resp %v, err %v; want 403", statusOf(resp), err)
			}
		})
		t.Run(b.name+"/net/http", func(t *testing.T) {
			t.Parallel()
			resp := upgradeRequest(t, g.HTTP+"/forbidden")
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusForbidden || string(body) != "forbidden by backend" {
				t.Fatalf("status %d body %q, want 403 %q", resp.StatusCode, body, "forbidden by backend")
			}
		})
		t.Run(b.name+"/node client", func(t *testing.T) {
			t.Parallel()
			events := runNodeClient(t, g.URL+"/forbidden")
			wantEvent(t, events, 0, map[string]any{"status": 403, "body": "forbidden by backend"})
		})
	}
}

func TestSendOnOpen(t *testing.T) {
	t.Parallel()
	const n = 100
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)
		t.Run(b.name+"/go client", func(t *testing.T) {
			t.Parallel()
			for range 5 { // the loss this guards against depends on timing: try a few times
				c := dial(t, g.URL+"/send-on-open?n="+strconv.Itoa(n), nil)
				ctx := testCtx(t)
				for i := range n {
					_, p, err := c.Read(ctx)
					if err != nil {
						t.Fatalf("message %d: %v", i, err)
					}
					if want := "hello-" + strconv.Itoa(i); string(p) != want {
						t.Fatalf("message %d = %q, want %q", i, p, want)
					}
				}
				echo(t, c, websocket.MessageText, []byte("then echo"))
				closeNormally(t, c)
			}
		})
		t.Run(b.name+"/node client", func(t *testing.T) {
			t.Parallel()
			events := runNodeClient(t, g.URL+"/send-on-open?n="+strconv.Itoa(n), "--expect", strconv.Itoa(n))
			msgs := eventsWith(events, "message")
			if len(msgs) != n {
				t.Fatalf("got %d messages, want %d: %v", len(msgs), n, events)
			}
			for i, m := range msgs {
				if want := "hello-" + strconv.Itoa(i); m["message"] != want {
					t.Fatalf("message %d = %v, want %q", i, m["message"], want)
				}
			}
		})
	}
}

func TestPingPong(t *testing.T) {
	t.Parallel()
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)
		t.Run(b.name+"/go client", func(t *testing.T) {
			t.Parallel()
			c := dial(t, g.URL+"/echo", nil)
			ctx := c.CloseRead(testCtx(t)) // Ping needs a concurrent reader for the pong
			for i := range 3 {
				if err := c.Ping(ctx); err != nil {
					t.Fatalf("ping %d: %v", i, err)
				}
			}
			closeNormally(t, c)
		})
		t.Run(b.name+"/payload comes back", func(t *testing.T) {
			t.Parallel()
			rc, resp := rawDial(t, strings.TrimPrefix(g.URL, "ws://"), "/echo", nil)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("handshake status %d", resp.StatusCode)
			}
			if err := rc.writeFrame(true, 0x9, []byte("are you there")); err != nil {
				t.Fatal(err)
			}
			f, err := rc.readFrame()
			if err != nil {
				t.Fatal(err)
			}
			if f.opcode != 0xA || string(f.payload) != "are you there" {
				t.Fatalf("got opcode %#x payload %q, want a pong with the ping's payload", f.opcode, f.payload)
			}
		})
	}
}

func TestSocketIO(t *testing.T) {
	t.Parallel()
	g := startRelayGate(t, startNodeBackend(t))
	events := runSIOClient(t, g.HTTP)
	if len(events) != 1 {
		t.Fatalf("sio-client printed %v, want one result line", events)
	}
	if got := fmt.Sprint(events[0]["acks"]); got != "[ping-1 ping-2]" || events[0]["transport"] != "websocket" {
		t.Fatalf("sio-client printed %v, want both acks over the websocket transport", events[0])
	}
}

func TestHTTPPassThrough(t *testing.T) {
	t.Parallel()
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)
		for _, size := range []int{0, 11, 256 << 10} {
			t.Run(fmt.Sprintf("%s/POST %d bytes", b.name, size), func(t *testing.T) {
				t.Parallel()
				body := payload(size, websocket.MessageBinary)
				req, _ := http.NewRequestWithContext(testCtx(t), http.MethodPost, g.HTTP+"/post?q=1", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/x-e2e")
				resp, err := httpClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				got, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
					t.Fatalf("status %d, %d bytes back; want 200 and the %d bytes sent", resp.StatusCode, len(got), size)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/x-e2e" {
					t.Errorf("Content-Type %q, want application/x-e2e", ct)
				}
				if xb := resp.Header.Get("X-Backend"); xb != b.name {
					t.Errorf("X-Backend %q, want %q", xb, b.name)
				}
			})
		}
		for _, tc := range []struct {
			path   string
			status int
			body   string
		}{{"/hello", 200, "hello"}, {"/missing", 404, ""}} {
			t.Run(b.name+"/GET "+tc.path, func(t *testing.T) {
				t.Parallel()
				resp, err := httpClient.Get(g.HTTP + tc.path)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				got, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != tc.status || (tc.body != "" && string(got) != tc.body) {
					t.Fatalf("status %d body %q, want %d %q", resp.StatusCode, got, tc.status, tc.body)
				}
				if xb := resp.Header.Get("X-Backend"); xb != b.name {
					t.Errorf("X-Backend %q, want %q", xb, b.name)
				}
			})
		}
	}
}

func TestForwardedHeaders(t *testing.T) {
	t.Parallel()
	const path = "/headers?a=1&b=two%20words"
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url)
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			gateHost := strings.TrimPrefix(g.URL, "ws://")
			rc, resp := rawDial(t, gateHost, path, http.Header{
				"X-Custom":   {"1"},
				"Keep-Alive": {"timeout=5"},
				// RFC 9110 section 7.6.1: a header named in Connection is hop-by-hop.
				"Connection": {"X-Hop"},
				"X-Hop":      {"1"},
				// The gate does not negotiate compression for the backend.
				"Sec-WebSocket-Extensions": {"permessage-deflate; client_max_window_bits"},
			})
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("handshake status %d", resp.StatusCode)
			}
			if got := resp.Header.Get("Sec-WebSocket-Accept"); got != rawClientAccept {
				t.Fatalf("Sec-WebSocket-Accept %q, want %q (computed from the client's key)", got, rawClientAccept)
			}
			f, err := rc.readFrame()
			if err != nil {
				t.Fatal(err)
			}
			if f.masked || f.opcode != 0x1 || !f.fin {
				t.Fatalf("first frame opcode %#x fin %v masked %v, want one unmasked text frame", f.opcode, f.fin, f.masked)
			}
			var seen struct {
				URL     string            `json:"url"`
				Headers map[string]string `json:"headers"`
			}
			if err := json.Unmarshal(f.payload, &seen); err != nil {
				t.Fatalf("%v: %s", err, f.payload)
			}
			h := seen.Headers
			t.Logf("the backend saw %s with %v", seen.URL, h)
			if seen.URL != path {
				t.Errorf("backend saw %q, want %q", seen.URL, path)
			}
			for k, want := range map[string]string{
				"x-custom":          "1",
				"x-forwarded-for":   "127.0.0.1",
				"x-forwarded-proto": "http",
				"x-forwarded-host":  gateHost,
			} {
				if h[k] != want {
					t.Errorf("backend saw %s: %q, want %q", k, h[k], want)
				}
			}
			if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
				t.Errorf("the gate answered Sec-WebSocket-Extensions %q, want none", ext)
			}
			for _, k := range []string{"keep-alive", "x-hop", "sec-websocket-extensions"} {
				if v, ok := h[k]; ok {
					t.Errorf("backend saw %s: %q, want it dropped", k, v)
				}
			}
			if key := h["sec-websocket-key"]; key == "" || key == rawClientKey {
				t.Errorf("backend saw Sec-WebSocket-Key %q; want the gate's own key", key)
			}
		})
	}
}

func TestOversizeMessage(t *testing.T) {
	t.Parallel()
	for _, b := range startBackends(t) {
		g := startRelayGate(t, b.url, "--max-message-bytes", "1024")
		// The environment variable sets the same limit.
		gEnv := startGateEnv(t, []string{"WSGATE_MAX_MESSAGE_BYTES=1024"}, append(append([]string{}, noLimits...), "--upstream", b.url)...)

		t.Run(b.name+"/go client", func(t *testing.T) {
			for _, gate := range []*Gate{g, gEnv} {
				c := dial(t, gate.URL+"/echo", nil)
				echo(t, c, websocket.MessageBinary, payload(1024, websocket.MessageBinary))
				if err := c.Write(testCtx(t), websocket.MessageBinary, payload(2048, websocket.MessageBinary)); err != nil {
					t.Fatal(err)
				}
				if ce := readClose(t, c); ce.Code != websocket.StatusMessageTooBig {
					t.Fatalf("client got close %d %q, want 1009", ce.Code, ce.Reason)
				}
				if b.gob != nil {
					if ce := b.gob.nextClose(t); ce.Code != websocket.StatusGoingAway {
						t.Fatalf("the backend saw close %d %q, want 1001", ce.Code, ce.Reason)
					}
				}
			}
			if got := g.Metric(t, "holo_ws_closes_total", map[string]string{"initiator": "gate", "code": "1009"}); got != 1 {
				t.Errorf(`holo_ws_closes_total{initiator="gate",code="1009"} = %v, want 1`, got)
			}
		})
		t.Run(b.name+"/fragmented, over the limit in total", func(t *testing.T) {
			c := dial(t, g.URL+"/echo", nil)
			w, err := c.Writer(testCtx(t), websocket.MessageText)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if _, err := w.Write(payload(600, websocket.MessageText)); err != nil {
					break // the gate may close as soon as the limit is crossed
				}
			}
			_ = w.Close()
			if ce := readClose(t, c); ce.Code != websocket.StatusMessageTooBig {
				t.Fatalf("client got close %d %q, want 1009", ce.Code, ce.Reason)
			}
			if b.gob != nil {
				if ce := b.gob.nextClose(t); ce.Code != websocket.StatusGoingAway {
					t.Fatalf("the backend saw close %d %q, want 1001", ce.Code, ce.Reason)
				}
			}
		})
		t.Run(b.name+"/node client", func(t *testing.T) {
			events := runNodeClient(t, g.URL+"/echo", "--send", strings.Repeat("x", 2048))
			wantEvent(t, events, 1, map[string]any{"close": 1009})
			if b.gob != nil {
				if ce := b.gob.nextClose(t); ce.Code != websocket.StatusGoingAway {
					t.Fatalf("the backend saw close %d %q, want 1001", ce.Code, ce.Reason)
				}
			}
		})
	}
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	for _, b := range startBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			const delay = time.Second
			g := startRelayGate(t, b.url, "--shutdown-delay", delay.String(), "--shutdown-grace", "5s")
			var conns []*websocket.Conn
			for range 3 {
				c := dial(t, g.URL+"/echo", nil)
				echo(t, c, websocket.MessageText, []byte("before"))
				conns = append(conns, c)
			}

			start := time.Now()
			if err := g.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			// /readyz turns 503 at once, well inside the delay.
			ready := 0
			for time.Since(start) < delay/2 {
				resp, err := httpClient.Get(g.Admin + "/readyz")
				if err == nil {
					ready = resp.StatusCode
					resp.Body.Close()
					if ready == http.StatusServiceUnavailable {
						break
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			if ready != http.StatusServiceUnavailable {
				t.Errorf("/readyz = %d within %v of SIGTERM, want 503", ready, delay/2)
			}
			// The gate keeps serving during the delay: old connections and new ones.
			if time.Since(start) < delay*3/4 {
				echo(t, conns[0], websocket.MessageText, []byte("during the delay"))
				c := dial(t, g.URL+"/echo", nil)
				echo(t, c, websocket.MessageText, []byte("new during the delay"))
				conns = append(conns, c)
			}

			for i, c := range conns {
				if notice := readText(t, c); !strings.Contains(notice, `"code":1012`) {
					t.Errorf("client %d got %q before its close, want the drain's text frame", i, notice)
				}
				ce := readClose(t, c)
				if ce.Code != websocket.StatusServiceRestart {
					t.Errorf("client %d got close %d %q, want 1012", i, ce.Code, ce.Reason)
				}
			}
			if elapsed := time.Since(start); elapsed < delay*8/10 {
				t.Errorf("clients were closed %v after SIGTERM, before the %v shutdown delay", elapsed, delay)
			}
			if code := g.Wait(); code != 0 {
				t.Errorf("the gate exited with %d, want 0", code)
			}
			if b.gob != nil {
				for i := range conns {
					if ce := b.gob.nextClose(t); ce.Code != websocket.StatusGoingAway {
						t.Errorf("upstream connection %d saw close %d %q, want 1001", i, ce.Code, ce.Reason)
					}
				}
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	g := startRelayGate(t, startNodeBackend(t))

	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := httpClient.Get(g.Admin + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s = %d, want 200", path, resp.StatusCode)
		}
	}
	if !g.HasMetric(t, "holo_ws_build_info") {
		t.Errorf("holo_ws_build_info is missing")
	}

	type series struct {
		name   string
		labels map[string]string
	}
	var (
		c2u      = series{"holo_ws_messages_total", map[string]string{"direction": "client_to_upstream"}}
		u2c      = series{"holo_ws_messages_total", map[string]string{"direction": "upstream_to_client"}}
		c2uBytes = series{"holo_ws_message_bytes_total", map[string]string{"direction": "client_to_upstream"}}
		u2cBytes = series{"holo_ws_message_bytes_total", map[string]string{"direction": "upstream_to_client"}}
		ok       = series{"holo_ws_connections_total", map[string]string{"result": "ok"}}
		status   = series{"holo_ws_connections_total", map[string]string{"result": "upstream_status"}}
		active   = series{"holo_ws_connections_active", nil}
		byClient = series{"holo_ws_closes_total", map[string]string{"initiator": "client", "code": "1000"}}
		// Application close codes share one label value, so the series stay bounded.
		byUp      = series{"holo_ws_closes_total", map[string]string{"initiator": "upstream", "code": "4xxx"}}
		handshake = series{"holo_ws_handshake_duration_seconds_count", nil}
	)
	all := []series{c2u, u2c, c2uBytes, u2cBytes, ok, status, active, byClient, byUp, handshake}
	base := map[string]float64{}
	key := func(s series) string { return fmt.Sprint(s.name, s.labels) }
	for _, s := range all {
		base[key(s)] = g.Metric(t, s.name, s.labels)
	}
	// expect waits until every series has grown by its delta.
	expect := func(deltas map[string]float64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			var bad []string
			for _, s := range all {
				want, ok := deltas[key(s)]
				if !ok {
					continue
				}
				if got := g.Metric(t, s.name, s.labels) - base[key(s)]; got != want {
					bad = append(bad, fmt.Sprintf("%s%v grew by %v, want %v", s.name, s.labels, got, want))
				}
			}
			if len(bad) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("metrics:\n%s", strings.Join(bad, "\n"))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	const n = 5
	c := dial(t, g.URL+"/echo", nil)
	total := 0
	for i := range n {
		p := payload(10*(i+1), websocket.MessageText)
		total += len(p)
		echo(t, c, websocket.MessageText, p)
	}
	expect(map[string]float64{key(active): 1, key(ok): 1, key(handshake): 1, key(c2u): n, key(u2c): n})
	closeNormally(t, c)
	expect(map[string]float64{
		key(active): 0, key(ok): 1, key(handshake): 1,
		key(c2u): n, key(u2c): n, key(c2uBytes): float64(total), key(u2cBytes): float64(total),
		key(byClient): 1,
	})

	c = dial(t, g.URL+"/close?code=4000&reason=r", nil)
	readClose(t, c)
	expect(map[string]float64{key(active): 0, key(ok): 2, key(byUp): 1, key(c2u): n, key(u2c): n})

	_, _, err := websocket.Dial(testCtx(t), g.URL+"/forbidden", nil)
	if err == nil {
		t.Fatal("dial /forbidden succeeded")
	}
	expect(map[string]float64{key(active): 0, key(ok): 2, key(status): 1})
}

func TestClientProtocolErrors(t *testing.T) {
	t.Parallel()
	type frame struct {
		first  byte // FIN, RSV1-3 and opcode
		masked bool
		p      []byte
	}
	closeWith := func(code int) []byte { return []byte{byte(code >> 8), byte(code)} }
	cases := []struct {
		name   string
		frames []frame
		want   int
	}{
		{"unmasked frame", []frame{{0x81, false, []byte("hi")}}, 1002},
		{"reserved bit RSV1 without an extension", []frame{{0xC1, true, []byte("hi")}}, 1002},
		{"reserved opcode", []frame{{0x83, true, []byte("hi")}}, 1002},
		{"continuation without a message", []frame{{0x80, true, []byte("hi")}}, 1002},
		{"new message inside a fragmented one", []frame{{0x01, true, []byte("a")}, {0x81, true, []byte("b")}}, 1002},
		{"fragmented ping", []frame{{0x09, true, []byte("p")}}, 1002},
		{"ping of 126 bytes", []frame{{0x89, true, bytes.Repeat([]byte("p"), 126)}}, 1002},
		{"close code 1005 on the wire", []frame{{0x88, true, closeWith(1005)}}, 1002},
		{"close code 999", []frame{{0x88, true, closeWith(999)}}, 1002},
		{"close payload of 1 byte", []frame{{0x88, true, []byte{3}}}, 1002},
		{"invalid UTF-8 text", []frame{{0x81, true, []byte{'a', 0xff, 0xfe}}}, 1007},
		{"invalid UTF-8 across fragments", []frame{{0x01, true, []byte{'a', 0xe2}}, {0x80, true, []byte{0x28, 0xa1}}}, 1007},
		{"invalid UTF-8 close reason", []frame{{0x88, true, append(closeWith(1000), 0xff)}}, 1007},
	}
	gb := newGoBackend(t)
	g := startRelayGate(t, gb.URL)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc, resp := rawDial(t, strings.TrimPrefix(g.URL, "ws://"), "/echo", nil)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("handshake status %d", resp.StatusCode)
			}
			for _, f := range tc.frames {
				if err := rc.writeRawFrame(f.first, f.masked, f.p); err != nil {
					t.Fatal(err)
				}
			}
			if code, reason := rc.readCloseCode(); code != tc.want {
				t.Errorf("client got close %d %q, want %d", code, reason, tc.want)
			}
			// The upstream is told the client went away (and never sees the bad frame).
			if ce := gb.nextClose(t); ce.Code != websocket.StatusGoingAway {
				t.Errorf("the backend saw close %d %q, want 1001", ce.Code, ce.Reason)
			}
		})
	}
}
