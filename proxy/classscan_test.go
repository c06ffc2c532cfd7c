package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"
)

// appUpstream serves a WebSocket app: read takes one message from a
// connection and says what the app made of it; each answer goes to the
// channel, and "closed" when read fails.
func appUpstream(t *testing.T, read func(context.Context, *websocket.Conn) (string, error)) (string, <-chan string) {
	got := make(chan string, 8)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			s, err := read(r.Context(), c)
			if err != nil {
				got <- "closed"
				return
			}
			got <- s
		}
	}))
	t.Cleanup(up.Close)
	return up.URL, got
}

// classClient starts a gate in front of upstream under the rules file
// rules and opens a raw client to it, its reads and writes bounded.
func classClient(t *testing.T, upstream, rules string) (net.Conn, *bufio.Reader) {
	live, lim := rulesAndLimiter(t, rules)
	g := newGate(t, upstream, func(c *Config) { c.Limiter, c.Rules = lim, live })
	conn, br := rawClient(t, g, "/")
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, br
}

// TestClassFreeOnlyWhenNothingFollows: a message whose first frame holds a
// heartbeat's object whole (an unlimited class) but goes on in a later
// frame is followed to its end; bytes after the object (which strict
// parsers refuse) take its free pass away, and the catch-all rule counts
// it (the fifth independent review's case).
func TestClassFreeOnlyWhenNothingFollows(t *testing.T) {
	upstream, received := appUpstream(t, func(ctx context.Context, c *websocket.Conn) (string, error) {
		_, p, err := c.Read(ctx)
		return string(p), err
	})
	conn, br := classClient(t, upstream, `classes:
  - {name: hb, json-field: {path: type, equals: ping}, unlimited: true}
rules:
  - {name: all, key: ip, limits: [1/1m]}
`)
	heartbeat := []byte(`{"type":"ping"}`)
	for range 3 { // free: past the rule's budget of one
		if _, err := conn.Write(clientFrame(true, false, ws.OpText, heartbeat)); err != nil {
			t.Fatal(err)
		}
		if got := <-received; got != string(heartbeat) {
			t.Fatalf("a heartbeat: the app got %q", got)
		}
	}
	trailed := append(clientFrame(false, false, ws.OpText, heartbeat), clientFrame(true, false, ws.OpContinuation, []byte("x"))...)
	if _, err := conn.Write(trailed); err != nil {
		t.Fatal(err)
	}
	if got := <-received; got != string(heartbeat)+"x" {
		t.Fatalf("the first heartbeat with bytes after it: the app got %q", got)
	}
	if _, err := conn.Write(trailed); err != nil {
		t.Fatal(err)
	}
	if code, _ := readUntilClose(t, br); code != 4008 {
		t.Fatalf("the second: client close %d, want 4008", code)
	}
	if got := <-received; got != "closed" {
		t.Fatalf("the app got %q after the refusal", got)
	}
}

// TestClassChargedBeforeItsBrace: an app that decodes a streamed message
// with json.Decoder (gorilla's ReadJSON, coder/websocket's Reader) acts at
// the object's closing brace, before the message's last frame. The chunk
// that holds the brace goes upstream only after the class it settles has
// been charged, even when a longer prefix class could still have matched
// the first bytes (an independent review's case): over the chat rule's
// budget, the app never decodes the second chat message, and both sides
// hear 4008.
func TestClassChargedBeforeItsBrace(t *testing.T) {
	upstream, decoded := appUpstream(t, func(ctx context.Context, c *websocket.Conn) (string, error) {
		_, rd, err := c.Reader(ctx)
		if err != nil {
			return "", err
		}
		var m map[string]any
		if err := json.NewDecoder(rd).Decode(&m); err != nil {
			return "", err
		}
		return "decoded " + m["type"].(string), nil
	})
	conn, br := classClient(t, upstream, `classes:
  - {name: legacy, prefix: "!cmd:some-long-command-name"}
  - {name: chat, json-field: {path: type, equals: chat}}
rules:
  - {name: chat, class: chat, key: ip, limits: [1/1m]}
`)
	if _, err := conn.Write(clientFrame(true, false, ws.OpText, []byte(`{"type":"chat"}`))); err != nil {
		t.Fatal(err)
	}
	if got := <-decoded; got != "decoded chat" {
		t.Fatalf("the first chat message: %s", got)
	}
	// The second, split after its '{', its last frame never sent.
	second := append(clientFrame(false, false, ws.OpText, []byte(`{`)),
		clientFrame(false, false, ws.OpContinuation, []byte(`"type":"chat"}`))...)
	if _, err := conn.Write(second); err != nil {
		t.Fatal(err)
	}
	if code, _ := readUntilClose(t, br); code != 4008 {
		t.Fatalf("client close %d, want 4008", code)
	}
	if got := <-decoded; got == "decoded chat" {
		t.Fatal("the app decoded the second chat message over the rule's budget")
	}
}
