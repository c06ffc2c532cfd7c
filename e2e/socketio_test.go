//go:build e2e

package e2e

// socket.io through the built binary, with the unmodified socket.io 4 server of e2e/backend and
// socket.io-client in Node (e2e/backend/sio-app.js): refusals the app's listeners receive,
// counting that fits engine.io polling, heartbeats that never count, the token forms of the
// README's socket.io section on both transports, and the refusal log lines.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// sioTransports are the three ways socket.io-client connects: WebSocket only, polling only, and
// its default (polling, then the upgrade to WebSocket).
var sioTransports = []struct {
	name       string
	transports []string
}{
	{"websocket", []string{"websocket"}},
	{"polling", []string{"polling"}},
	{"upgrade", nil},
}

// sioApp runs e2e/backend/sio-app.js with opts and returns the JSON lines it printed.
func sioApp(t *testing.T, opts map[string]any) []map[string]any {
	t.Helper()
	b, err := json.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	events := runNode(t, "sio-app.js", string(b))
	for _, ev := range events {
		if msg, ok := ev["error"]; ok {
			t.Fatalf("sio-app.js %s: %v (events %v)", b, msg, events)
		}
	}
	return events
}

// only returns the one event that has key, failing the test when there is not exactly one.
func only(t *testing.T, events []map[string]any, key string) map[string]any {
	t.Helper()
	evs := eventsWith(events, key)
	if len(evs) != 1 {
		t.Fatalf("want one %q event, got %d: %v", key, len(evs), events)
	}
	return evs[0]
}

// wantRetry checks the refusal data the app got: code 429, scope, retryAfterMs in (0, max].
func wantRetry(t *testing.T, what string, data any, scope string, maxMs float64) {
	t.Helper()
	m, _ := data.(map[string]any)
	retry, _ := m["retryAfterMs"].(float64)
	if m["code"] != float64(429) || m["scope"] != scope || retry <= 0 || retry > maxMs {
		t.Fatalf("%s: %v, want code 429, scope %s, retryAfterMs in (0, %v]", what, data, scope, maxMs)
	}
}

// TestSocketIORefusalEvent: a socket.io app over the limit gets the refusal as an event its
// listener receives ("wsgate:limited" with retryAfterMs), on every transport; its reconnect
// during the block reaches its connect_error handler with the reason and retryAfterMs in
// err.data. The refusal counts once, under the user message rule.
func TestSocketIORefusalEvent(t *testing.T) {
	t.Parallel()
	backend := startNodeBackend(t)
	for _, tr := range sioTransports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			g := limitGate(t, backend, "--user-rate", "20/30s", "--user-block", "5s", "--ip-rate", "0")
			events := sioApp(t, map[string]any{"url": g.HTTP, "transports": tr.transports, "scenario": "flood"})
			wantRetry(t, "the wsgate:limited event", only(t, events, "limited")["limited"], "user", 5000)
			ce, _ := only(t, events, "connect_error")["connect_error"].(map[string]any)
			if ce["message"] != "Rate limit exceeded" || ce["active"] != false {
				t.Fatalf("connect_error on the reconnect: %v, want message %q from the server (active false)", ce, "Rate limit exceeded")
			}
			wantRetry(t, "connect_error's err.data", ce["data"], "user", 5000)
			waitMetric(t, g, mRateLimited, userMessage, 2)
		})
	}
}

// TestSocketIOPollingReader: a client on the polling transport that only reads a busy room
// (the server sends 20 messages a second) is never refused: its long-poll GETs count against
// no message rule, however small.
func TestSocketIOPollingReader(t *testing.T) {
	t.Parallel()
	g := limitGate(t, startNodeBackend(t), "--user-rate", "5/10s", "--user-block", "5s", "--ip-rate", "5/10s")
	events := sioApp(t, map[string]any{"url": g.HTTP, "transports": []string{"polling"}, "scenario": "read",
		"rate": 20, "ms": 3000})
	got := only(t, events, "received")
	received, _ := got["received"].(float64)
	sent, _ := got["sent"].(float64)
	if got["connected"] != true || received < 40 || received != sent {
		t.Fatalf("the polling reader: %v, want connected, every message of at least 40 received", got)
	}
	if n := g.Metric(t, mRateLimited, nil); n != 0 {
		t.Fatalf("%s = %v for a reader, want 0", mRateLimited, n)
	}
}

// TestSocketIOHeartbeats: engine.io's pings and pongs never count. The server pings every
// 100 ms; over 2.5 s a client sends about 25 pongs, six times the budget of 4 messages, on the
// WebSocket transport as on polling, and is never refused. Nor is the upgrade from one to the
// other: its probe and upgrade packets would make 5 with the CONNECT, the echo and the
// DISCONNECT.
func TestSocketIOHeartbeats(t *testing.T) {
	t.Parallel()
	backend := startNodeBackend(t, "--sio-ping-interval", "100")
	for _, tr := range sioTransports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			g := limitGate(t, backend, "--user-rate", "4/10s", "--user-block", "5s", "--ip-rate", "4/10s")
			events := sioApp(t, map[string]any{"url": g.HTTP, "transports": tr.transports, "scenario": "idle", "ms": 2500})
			got := only(t, events, "echo")
			if got["echo"] != "still here" || len(got["disconnects"].([]any)) != 0 {
				t.Fatalf("after 2.5 s of heartbeats: %v, want the echo and no disconnect", got)
			}
			if tr.transports == nil && got["transport"] != "websocket" {
				t.Fatalf("the default transports ended on %v, want the upgrade to websocket", got["transport"])
			}
			if n := g.Metric(t, mRateLimited, nil); n != 0 {
				t.Fatalf("%s = %v, want 0", mRateLimited, n)
			}
		})
	}
}

// TestSocketIOTokenForms: every token form of the README's socket.io section reaches the gate on
// both transports and identifies the user to the backend; auth: {token} does not (it travels in
// the CONNECT packet, after the gate's decision), and the client sees the gate's 401.
func TestSocketIOTokenForms(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	g := authGate(t, startNodeBackend(t), "--jwt-hmac-secret-file", secretFile, "--token-cookie", "session")
	for _, form := range []string{"query", "header", "cookie"} {
		for _, tr := range sioTransports {
			t.Run(form+"/"+tr.name, func(t *testing.T) {
				t.Parallel()
				sub := fmt.Sprintf("%s-%s", form, tr.name)
				events := sioApp(t, map[string]any{"url": g.HTTP, "transports": tr.transports, "scenario": "whoami",
					"token": hsToken(t, secret, sub), "tokenForm": form, "cookie": "session"})
				who, _ := only(t, events, "whoami")["whoami"].(map[string]any)
				if who["subject"] != sub {
					t.Fatalf("the backend saw subject %v, want %q (events %v)", who["subject"], sub, events)
				}
			})
		}
	}
	t.Run("auth option", func(t *testing.T) {
		t.Parallel()
		events := sioApp(t, map[string]any{"url": g.HTTP, "transports": []string{"polling"}, "scenario": "whoami",
			"token": hsToken(t, secret, "nobody"), "tokenForm": "auth"})
		ce, _ := only(t, events, "connect_error")["connect_error"].(map[string]any)
		if ce["description"] != float64(401) {
			t.Fatalf("auth: {token}: %v, want the gate's 401", ce)
		}
	})
}

// TestSocketIOTokenRefresh: the README's token refresh, a reconnect_attempt listener that puts
// a fresh token in the query, reaches the gate on every transport: the backend sees the new
// subject after the reconnect.
func TestSocketIOTokenRefresh(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	g := authGate(t, startNodeBackend(t), "--jwt-hmac-secret-file", secretFile)
	for _, tr := range sioTransports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			events := sioApp(t, map[string]any{"url": g.HTTP, "transports": tr.transports, "scenario": "refresh",
				"token": hsToken(t, secret, "first-"+tr.name), "tokenForm": "query",
				"token2": hsToken(t, secret, "second-"+tr.name)})
			got := only(t, events, "after")
			before, _ := got["before"].(map[string]any)
			after, _ := got["after"].(map[string]any)
			if before["subject"] != "first-"+tr.name || after["subject"] != "second-"+tr.name {
				t.Fatalf("subjects before and after the reconnect: %v, want first-%s then second-%s", got, tr.name, tr.name)
			}
		})
	}
}

// TestSocketIORefusalLogs: each refusal is one log line that names the rule, the scope, the
// count and limit, the retry, the connection, the client IP and the identity key (the README's
// formula), on both transports; --log-subject adds the subject.
func TestSocketIORefusalLogs(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	backend := startNodeBackend(t)
	for _, tc := range []struct {
		transport  string
		logSubject bool
	}{
		{"websocket", false},
		{"polling", true},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			t.Parallel()
			args := []string{"--user-rate", "20/30s", "--user-block", "5s", "--ip-rate", "0",
				"--jwt-hmac-secret-file", secretFile, "--log-format", "json"}
			if tc.logSubject {
				args = append(args, "--log-subject")
			}
			g := limitGate(t, backend, args...)
			sub := "logged-" + tc.transport
			sioApp(t, map[string]any{"url": g.HTTP, "transports": []string{tc.transport}, "scenario": "flood",
				"token": hsToken(t, secret, sub), "tokenForm": "query"})
			waitMetric(t, g, mRateLimited, userMessage, 2)
			var lines []map[string]any
			waitFor(t, "two refusal log lines", func() bool {
				lines = lines[:0]
				for _, l := range strings.Split(g.Output(), "\n") {
					var m map[string]any
					if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "rate limited" {
						lines = append(lines, m)
					}
				}
				return len(lines) == 2
			})
			events := []string{lines[0]["event"].(string), lines[1]["event"].(string)}
			if !slices.Equal(events, []string{"message", "handshake"}) {
				t.Fatalf("refusal lines for %v, want a message then a handshake:\n%v", events, lines)
			}
			sum := sha256.Sum256([]byte(testIssuer + "\x00" + sub))
			identity := "u:" + hex.EncodeToString(sum[:16])
			for _, l := range lines {
				if id, _ := l["conn_id"].(string); id == "" {
					t.Errorf("refusal line without conn_id: %v", l)
				}
				if l["rule"] != "user-rate" || l["scope"] != "user" || l["limit"] != float64(20) ||
					l["client_ip"] != "127.0.0.1" || l["transport"] != tc.transport || l["path"] != "/socket.io/" {
					t.Errorf("refusal line %v, want rule user-rate, scope user, limit 20, client_ip 127.0.0.1, transport %s, path /socket.io/",
						l, tc.transport)
				}
				if l["identity"] != identity {
					t.Errorf("refusal line's identity %v, want %s: u: and the first 32 hex digits of sha256(iss NUL sub)", l["identity"], identity)
				}
				if subject, ok := l["subject"]; tc.logSubject && subject != sub || !tc.logSubject && ok {
					t.Errorf("refusal line's subject %v (present %v), want it only under --log-subject", subject, ok)
				}
			}
			if lines[0]["count"] != float64(21) || lines[0]["blocked"] != false {
				t.Errorf("the message refusal: %v, want count 21, not blocked", lines[0])
			}
			if lines[1]["blocked"] != true || lines[1]["kind"] != "message" {
				t.Errorf("the handshake refusal: %v, want blocked, under the message rule", lines[1])
			}
			for _, l := range lines {
				if r, _ := l["retry_after_ms"].(float64); r <= 0 || r > float64((5*time.Second).Milliseconds()) {
					t.Errorf("retry_after_ms %v in %v, want in (0, 5000]", l["retry_after_ms"], l)
				}
			}
		})
	}
}

// TestSocketIOBatchedPackets: a POST counts each socket.io packet it carries. socket.io-client
// on polling sends what it queued while a POST was out in one POST, so an app that emits in one
// tick sends a few POSTs of many packets; on WebSocket each packet is a frame of its own. Every
// socket.io packet counts, the CONNECT and the DISCONNECT included: with a budget of 20, the
// CONNECT, 17 events, an "echo" and the DISCONNECT pass; the CONNECT, 19 events and the "echo"
// do not, whatever the number of POSTs they took.
func TestSocketIOBatchedPackets(t *testing.T) {
	t.Parallel()
	backend := startNodeBackend(t)
	for _, tr := range sioTransports[:2] {
		for _, tc := range []struct {
			chats   int
			refused bool
		}{
			{chats: 17, refused: false},
			{chats: 19, refused: true},
		} {
			t.Run(fmt.Sprintf("%s/%d_events", tr.name, tc.chats), func(t *testing.T) {
				t.Parallel()
				g := limitGate(t, backend, "--user-rate", "20/30s", "--user-block", "5s", "--ip-rate", "0")
				events := sioApp(t, map[string]any{"url": g.HTTP, "transports": tr.transports, "scenario": "batch",
					"count": tc.chats})
				got := only(t, events, "echo")
				if writes, _ := got["writes"].(float64); tr.name == "polling" && writes > 3 {
					t.Fatalf("%v POSTs for %d packets: socket.io-client did not batch, the test proves nothing", writes, tc.chats+1)
				}
				if !tc.refused {
					if got["echo"] != "after the batch" || got["limited"] != nil {
						t.Fatalf("%d events within the budget: %v, want the echo and no refusal", tc.chats, got)
					}
					if tr.name == "websocket" {
						// The DISCONNECT is decided before the connection ends.
						waitFor(t, "the connection to end", func() bool {
							return strings.Contains(g.Output(), "connection closed")
						})
					}
					if n := g.Metric(t, mRateLimited, nil); n != 0 {
						t.Fatalf("%s = %v, want 0", mRateLimited, n)
					}
					return
				}
				if echo, _ := got["echo"].(map[string]any); echo == nil || got["connected"] != false {
					t.Fatalf("the packet past the budget: %v, want the echo's ack to fail on the disconnect", got)
				}
				wantRetry(t, "the wsgate:limited event", got["limited"], "user", 5000)
				waitMetric(t, g, mRateLimited, userMessage, 1)
			})
		}
	}
}
