//go:build e2e

package e2e

// The limits through the built binary: message and connection limits per identity and per IP, on
// the memory store and on a real redis-server, shared by two gate processes, with Redis going away
// and coming back, and in shadow mode. README's "Limits" and "What clients see" are the contract;
// the window and block flags are small so the suite stays fast, except in TestLimitDefaultsRedis.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// noConnRules turns the per-identity and per-IP connection rules off, for tests that reconnect
// more often than they are about.
var noConnRules = []string{"--user-conn-rate", "0", "--ip-conn-rate", "0"}

// redisURL returns the flags that point a gate at rs. The decision deadline is raised from the
// 50 ms default: under -race on a busy machine a slower decision would fall back to the
// in-process store (by design of --failure-mode local) and make exact counts meaningless.
func redisURL(rs *redisServer) []string {
	return []string{"--redis-url", rs.URL(), "--redis-timeout", "2s"}
}

// limitGate starts a gate in front of upstream with the connection rules off and args.
func limitGate(t *testing.T, upstream string, args ...string) *Gate {
	t.Helper()
	return startGate(t, slices.Concat([]string{"--upstream", upstream}, noConnRules, args)...)
}

// msgs returns n distinct messages prefix-0 … prefix-(n-1).
func msgs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + "-" + strconv.Itoa(i)
	}
	return out
}

// TestLimitDefaultsRedis runs the gate with the default rules (100/10s per identity, 5 s
// block) against Redis: 100 messages are relayed, the 101st is refused and never reaches the
// backend.
func TestLimitDefaultsRedis(t *testing.T) {
	t.Parallel()
	rs := startRedisServer(t)
	b := newRecordingBackend(t)
	g := startGate(t, slices.Concat([]string{"--upstream", b.URL}, redisURL(rs))...)

	c := dialAs(t, g.URL+"/echo", peer{})
	// Written back to back and then read, so the 100 fit in the 10 s window even on a busy machine.
	ctx := testCtx(t)
	want := msgs("m", 100)
	for _, m := range want {
		if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
			t.Fatalf("write %s: %v", m, err)
		}
	}
	for i, m := range want {
		_, p, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("reading echo %d: %v", i, err)
		}
		if string(p) != m {
			t.Fatalf("echo %d = %q, want %q", i, p, m)
		}
	}
	if got := b.msgs.Load(); got != 100 {
		t.Fatalf("the backend received %d messages, want 100", got)
	}

	if err := c.Write(ctx, websocket.MessageText, []byte("the 101st")); err != nil {
		t.Fatal(err)
	}
	r := wantRefusal(t, c, "user")
	if r.RetryAfterMs > 5000 {
		t.Errorf("retryAfterMs = %d, want at most the 5 s default block", r.RetryAfterMs)
	}
	if ce := b.nextClose(t); ce.Code != 4008 {
		t.Errorf("the backend saw close %d %q, want 4008", ce.Code, ce.Reason)
	}
	if got := b.msgs.Load(); got != 100 {
		t.Errorf("the backend received %d messages, want 100: the refused one reached it", got)
	}

	waitMetric(t, g, mRateLimited, userMessage, 1)
	waitMetric(t, g, mRateLimited, nil, 1)
	waitMetric(t, g, mDecisions, decLimited, 1)
	if got := g.Metric(t, mDecisions, decAllowed); got < 100 {
		t.Errorf("%s{decision=allowed} = %v, want at least 100", mDecisions, got)
	}
	for _, s := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{mDecisions, decFallback, 0},
		{mDecisions, decShadow, 0},
		{mFallback, nil, 0},
		{mRedisUp, nil, 1},
	} {
		if got := g.Metric(t, s.name, s.labels); got != s.want {
			t.Errorf("%s%v = %v, want %v", s.name, s.labels, got, s.want)
		}
	}
	// The decision was Redis's, not an in-process one: the identity's keys are there.
	if keys := rs.keys("ws-rate:um:*"); len(keys) == 0 {
		t.Errorf("no ws-rate:um:* key in Redis after 101 messages")
	} else {
		t.Logf("redis keys: %v", keys)
	}
}

// TestLimitBlockAndReconnect: over the rule the identity is blocked: its other open connection
// is refused at its next message, a reconnect during the block gets 101, the JSON and 4008 without
// an upstream dial and is counted as kind="connection"; once the block ends a new connection is
// served with a full budget.
func TestLimitBlockAndReconnect(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			b := newRecordingBackend(t)
			args := []string{"--user-rate", "3/20s", "--user-block", "2s", "--ip-rate", "0"}
			if store == "redis" {
				args = append(args, redisURL(startRedisServer(t))...)
			}
			g := limitGate(t, b.URL, args...)

			c := dialAs(t, g.URL+"/echo", peer{})
			other := dialAs(t, g.URL+"/echo", peer{})
			for _, m := range msgs("a", 3) {
				echoOK(t, c, m)
			}
			if err := c.Write(testCtx(t), websocket.MessageText, []byte("over")); err != nil {
				t.Fatal(err)
			}
			r := wantRefusal(t, c, "user")
			if r.RetryAfterMs > 2000 {
				t.Errorf("retryAfterMs = %d, want at most the 2 s block", r.RetryAfterMs)
			}
			if ce := b.nextClose(t); ce.Code != 4008 {
				t.Errorf("the backend saw close %d %q, want 4008", ce.Code, ce.Reason)
			}
			waitMetric(t, g, mRateLimited, userMessage, 1)

			// The identity's other connection is refused at its next message.
			if err := other.Write(testCtx(t), websocket.MessageText, []byte("from the other connection")); err != nil {
				t.Fatal(err)
			}
			wantRefusal(t, other, "user")
			waitMetric(t, g, mRateLimited, userMessage, 2)
			if got := b.msgs.Load(); got != 3 {
				t.Fatalf("the backend received %d messages, want 3", got)
			}

			// A reconnect during the block: 101 with the first offered subprotocol, the JSON,
			// 4008, and no dial upstream.
			conns := b.conns.Load()
			again, resp, err := tryDial(t, g.URL+"/echo", peer{protocols: []string{"chat", "superchat"}})
			if err != nil {
				t.Fatalf("reconnect during the block: %v (status %v)", err, httpStatus(resp))
			}
			if got := again.Subprotocol(); got != "chat" {
				t.Errorf("refused handshake answered subprotocol %q, want the first offered, chat", got)
			}
			r = wantRefusal(t, again, "user")
			// Refused by the message rule's block: counted under that rule.
			waitMetric(t, g, mRateLimited, userMessage, 3)
			if got := b.conns.Load(); got != conns {
				t.Errorf("the backend accepted %d connections during the block, want none", got-conns)
			}

			// After the block: served, with the whole budget again.
			time.Sleep(time.Duration(r.RetryAfterMs)*time.Millisecond + 300*time.Millisecond)
			c = dialAs(t, g.URL+"/echo", peer{})
			for _, m := range msgs("b", 3) {
				echoOK(t, c, m)
			}
			if err := c.Write(testCtx(t), websocket.MessageText, []byte("over again")); err != nil {
				t.Fatal(err)
			}
			wantRefusal(t, c, "user")
			if got := b.msgs.Load(); got != 6 {
				t.Errorf("the backend received %d messages, want 6", got)
			}
			waitMetric(t, g, mRateLimited, userMessage, 4)
			waitMetric(t, g, mRateLimited, userConn, 0)
			waitMetric(t, g, mDecisions, decLimited, 4)
		})
	}
}

// TestLimitTwoGatesShareRedis: two gate processes on one Redis share one budget exactly. Two
// clients of the same identity, one per gate, send 6 messages each at the same time under a
// 10/30s rule: exactly 10 reach the backend.
func TestLimitTwoGatesShareRedis(t *testing.T) {
	t.Parallel()
	rs := startRedisServer(t)
	b := newRecordingBackend(t)
	args := []string{"--redis-url", rs.URL(), "--redis-timeout", "2s", "--user-rate", "10/30s", "--user-block", "30s", "--ip-rate", "0"}
	gates := []*Gate{limitGate(t, b.URL, args...), limitGate(t, b.URL, args...)}

	var conns []*websocket.Conn
	for _, g := range gates {
		conns = append(conns, dialAs(t, g.URL+"/echo", peer{}))
	}
	results := make([]burstResult, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() { results[i] = burst(c, msgs(fmt.Sprintf("gate%d", i), 6)) })
	}
	wg.Wait()

	echoes, refused := 0, 0
	for i, res := range results {
		t.Logf("gate %d: %d echoes, refusal %s, close %d %q", i, len(res.echoes), res.refused, res.close.Code, res.close.Reason)
		if res.err != nil {
			t.Fatalf("client %d: the connection ended without a close frame: %v", i, res.err)
		}
		echoes += len(res.echoes)
		if res.refused != nil {
			refused++
			parseRefusal(t, res.refused, "user")
			if res.close.Code != 4008 || res.close.Reason != "Rate limit" {
				t.Errorf("client %d got close %d %q after the refusal, want 4008 \"Rate limit\"", i, res.close.Code, res.close.Reason)
			}
		}
	}
	// The gate closes the upstream at the refusal, so echoes still in flight may never reach the
	// client; what reached the backend is the measure.
	if echoes > 10 {
		t.Errorf("clients got %d echoes in total, want at most 10", echoes)
	}
	if refused == 0 {
		t.Errorf("no client was refused after 12 messages under 10/30s")
	}
	// Every connection has ended at the backend before the count is final: a refused one with
	// 4008 from the gate, one that got all its echoes with the client's 1000.
	for i, res := range results {
		if res.refused == nil {
			if err := conns[i].Close(websocket.StatusNormalClosure, ""); err != nil {
				t.Errorf("closing client %d: %v", i, err)
			}
		}
	}
	for range conns {
		if ce := b.nextClose(t); ce.Code != 4008 && ce.Code != websocket.StatusNormalClosure {
			t.Errorf("the backend saw close %d %q, want 4008 or 1000", ce.Code, ce.Reason)
		}
	}
	if got := b.msgs.Load(); got != 10 {
		t.Errorf("the backend received %d messages, want exactly 10", got)
	}
	var limited float64
	for _, g := range gates {
		limited += g.Metric(t, mRateLimited, userMessage)
	}
	if limited != float64(refused) {
		t.Errorf("the gates counted %v refusals, the clients saw %d", limited, refused)
	}
	// One more message through either gate is refused: the identity is blocked on both.
	for i, g := range gates {
		before := g.Metric(t, mRateLimited, userMessage)
		c := dialAs(t, g.URL+"/echo", peer{})
		wantRefusal(t, c, "user")
		waitMetric(t, g, mRateLimited, userMessage, before+1)
		if got := b.msgs.Load(); got != 10 {
			t.Errorf("after gate %d's refused handshake the backend has %d messages, want 10", i, got)
		}
	}
}

// TestLimitIPRuleManyIdentities: distinct users (HS256 subjects) from one IP each stay far
// under the user rule but together hit the IP rule; the IP is then blocked for every identity,
// on open connections and new handshakes alike.
func TestLimitIPRuleManyIdentities(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g := limitGate(t, b.URL, "--jwt-hmac-secret-file", secretFile,
		"--user-rate", "100/30s", "--ip-rate", "5/30s", "--ip-block", "30s")

	var open []*websocket.Conn
	for i := range 5 {
		c := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, fmt.Sprintf("user-%d", i))))
		echoOK(t, c, fmt.Sprintf("hello from user-%d", i))
		open = append(open, c)
	}
	c := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "user-5")))
	if err := c.Write(testCtx(t), websocket.MessageText, []byte("the IP's 6th")); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, c, "ip")
	waitMetric(t, g, mRateLimited, ipMessage, 1)

	// A new identity from the blocked IP is refused at the handshake, without a dial.
	conns := b.conns.Load()
	fresh := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "user-6")))
	wantRefusal(t, fresh, "ip")
	waitMetric(t, g, mRateLimited, ipMessage, 2)
	if got := b.conns.Load(); got != conns {
		t.Errorf("the backend accepted %d connections from the blocked IP", got-conns)
	}
	// An identity with budget left, already connected, is refused at its next message.
	if err := open[0].Write(testCtx(t), websocket.MessageText, []byte("user-0 again")); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, open[0], "ip")
	waitMetric(t, g, mRateLimited, ipMessage, 3)
	if got := b.msgs.Load(); got != 5 {
		t.Errorf("the backend received %d messages, want 5", got)
	}
	if got := g.Metric(t, mRateLimited, userMessage) + g.Metric(t, mRateLimited, userConn); got != 0 {
		t.Errorf("user-scope refusals = %v, want 0", got)
	}
}

// TestLimitAnonymousIdentityIsIP: with auth off the user rule keys on the client IP, so a
// client blocked from 127.0.0.2 leaves 127.0.0.3 alone.
func TestLimitAnonymousIdentityIsIP(t *testing.T) {
	t.Parallel()
	b := newRecordingBackend(t)
	g := limitGate(t, b.URL, "--user-rate", "2/30s", "--user-block", "30s", "--ip-rate", "0")

	two := peer{}.from("127.0.0.2")
	three := peer{}.from("127.0.0.3")
	c := dialAs(t, g.URL+"/echo", two)
	echoOK(t, c, "two-0")
	echoOK(t, c, "two-1")
	if err := c.Write(testCtx(t), websocket.MessageText, []byte("two-2")); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, c, "user")
	wantRefusal(t, dialAs(t, g.URL+"/echo", two), "user")

	c = dialAs(t, g.URL+"/echo", three)
	echoOK(t, c, "three-0")
	echoOK(t, c, "three-1")
	waitMetric(t, g, mRateLimited, userMessage, 2)
	waitMetric(t, g, mRateLimited, userConn, 0)
}

// TestLimitPassThroughHTTP: each pass-through HTTP request (REST) counts as one message, in the
// same budget as WebSocket messages, while socket.io's long-polling GETs count nothing; over the
// rule the request gets 429 with Retry-After and the JSON body, and never reaches the backend.
func TestLimitPassThroughHTTP(t *testing.T) {
	t.Parallel()
	g := limitGate(t, startNodeBackend(t), "--user-rate", "4/30s", "--user-block", "30s", "--ip-rate", "0")

	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := httpClient.Get(g.HTTP + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp, body
	}
	const polling = "/socket.io/?EIO=4&transport=polling"

	c := dialAs(t, g.URL+"/echo", peer{})
	echoOK(t, c, "ws-1")
	echoOK(t, c, "ws-2")
	// socket.io's long-polling handshake, as a browser starts it: each answers the open packet,
	// and neither counts.
	for i := range 2 {
		resp, body := get(polling + "&t=" + strconv.Itoa(i))
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), `0{"sid":`) {
			t.Fatalf("polling request %d: %d %q, want 200 and an engine.io open packet", i, resp.StatusCode, body)
		}
	}
	for i := range 2 {
		if resp, body := get("/hello"); resp.StatusCode != http.StatusOK || string(body) != "hello" {
			t.Fatalf("GET /hello %d: %d %q, want 200 hello", i, resp.StatusCode, body)
		}
	}

	for _, path := range []string{"/hello"} {
		resp, body := get(path)
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("GET %s over the budget: %d %q, want 429", path, resp.StatusCode, body)
		}
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || ra < 1 || ra > 30 {
			t.Errorf("Retry-After %q, want whole seconds in 1..30", resp.Header.Get("Retry-After"))
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("Content-Type %q, want application/json", ct)
		}
		if xb := resp.Header.Get("X-Backend"); xb != "" {
			t.Errorf("the 429 carries X-Backend %q: the request reached the backend", xb)
		}
		parseRefusal(t, body, "user")
	}
	// A new polling session during the block gets the gate's own engine.io session, whose
	// CONNECT the gate refuses (socket.io-client shows it in connect_error): it never reaches
	// the backend either.
	if resp, body := get(polling + "&t=late"); resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), `0{"sid":`) ||
		resp.Header.Get("X-Backend") != "" {
		t.Fatalf("a polling open during the block: %d %q (X-Backend %q), want the gate's own open packet",
			resp.StatusCode, body, resp.Header.Get("X-Backend"))
	}
	waitMetric(t, g, mRateLimited, userMessage, 2)
	// http_requests_total carries the exact status, not its class.
	if got := g.Metric(t, "holo_ws_http_requests_total", map[string]string{"code": "429"}); got != 1 {
		t.Errorf("http_requests_total{code=429} = %v, want 1", got)
	}
	if got := g.Metric(t, "holo_ws_http_requests_total", map[string]string{"code": "200"}); got < 4 {
		t.Errorf("http_requests_total{code=200} = %v, want at least 4", got)
	}

	// The open WebSocket shares the budget: its next message is refused too.
	if err := c.Write(testCtx(t), websocket.MessageText, []byte("ws-3")); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, c, "user")
	waitMetric(t, g, mRateLimited, userMessage, 3)
}

// TestLimitSocketIOClient runs the real socket.io client (polling, then the upgrade) through a
// gate whose budget is smaller than the client's polling requests: the client fails, and the
// gate counted the refusal as a message.
func TestLimitSocketIOClient(t *testing.T) {
	t.Parallel()
	backend := startNodeBackend(t)
	// With room to spare the client completes, over polling and then WebSocket.
	roomy := limitGate(t, backend, "--user-rate", "100/30s", "--ip-rate", "0")
	events := runSIOClient(t, roomy.HTTP)
	if len(events) != 1 || events[0]["transport"] != "websocket" {
		t.Fatalf("sio-client printed %v, want both acks over websocket", events)
	}
	allowed := roomy.Metric(t, mDecisions, decAllowed)
	t.Logf("one socket.io session cost %v allowed decisions", allowed)

	tight := limitGate(t, backend, "--user-rate", "2/30s", "--user-block", "30s", "--ip-rate", "0")
	out := runNodeAllowFailure(t, "sio-client.js", tight.HTTP)
	if len(eventsWith(out, "acks")) != 0 {
		t.Fatalf("sio-client completed under a budget of 2 messages: %v", out)
	}
	waitMetricAbove(t, tight, mRateLimited, userMessage, 0)
}

// runNodeAllowFailure is runNode for a script that is expected to fail: it returns the JSON
// lines whatever the exit status.
func runNodeAllowFailure(t testing.TB, script string, args ...string) []map[string]any {
	t.Helper()
	stdout, stderr, err := execNode(script, args, 30*time.Second)
	t.Logf("%s %v: %v\nstdout: %s\nstderr: %s", script, args, err, stdout, tail(stderr, 2000))
	var events []map[string]any
	for _, line := range strings.Split(stdout, "\n") {
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) == nil {
			events = append(events, ev)
		}
	}
	return events
}

// httpStatus is the status of resp for messages, "no response" when there was none.
func httpStatus(resp *http.Response) string {
	if resp == nil {
		return "no response"
	}
	return resp.Status
}

// TestRedisKilledFailureLocal: Redis killed mid-run, the gate keeps serving from its
// in-process store (holo_ws_redis_up 0, the fallback counter growing), and uses Redis again once
// it is back on the same port.
func TestRedisKilledFailureLocal(t *testing.T) {
	t.Parallel()
	rs := startRedisServer(t)
	b := newRecordingBackend(t)
	g := limitGate(t, b.URL, "--redis-url", rs.URL(), "--redis-timeout", "2s", "--failure-mode", "local",
		"--user-rate", "1000/30s", "--ip-rate", "0")

	c := dialAs(t, g.URL+"/echo", peer{})
	echoOK(t, c, "before-0")
	echoOK(t, c, "before-1")
	waitMetric(t, g, mRedisUp, nil, 1)
	if got := g.Metric(t, mFallback, nil); got != 0 {
		t.Fatalf("%s = %v with Redis up, want 0", mFallback, got)
	}

	rs.kill()
	for _, m := range msgs("during", 5) {
		echoOK(t, c, m)
	}
	c2 := dialAs(t, g.URL+"/echo", peer{})
	echoOK(t, c2, "new connection while Redis is down")
	waitMetric(t, g, mRedisUp, nil, 0)
	waitMetricAbove(t, g, mFallback, nil, 0)
	waitMetricAbove(t, g, mDecisions, decFallback, 0)
	if got := g.Metric(t, mRateLimited, nil); got != 0 {
		t.Errorf("%s = %v, want 0: nothing was over the rule", mRateLimited, got)
	}
	resp, err := httpClient.Get(g.Admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz = %d while Redis is down under --failure-mode local, want 200", resp.StatusCode)
	}

	rs.start()
	// redis_up turns 1 again without traffic: the gate probes Redis in the background.
	waitLong(t, "holo_ws_redis_up to return to 1 after Redis restarted", 30*time.Second, func() bool {
		return g.Metric(t, mRedisUp, nil) == 1
	})
	fallback := g.Metric(t, mFallback, nil)
	for _, m := range msgs("after", 3) {
		echoOK(t, c, m)
	}
	if got := g.Metric(t, mFallback, nil); got != fallback {
		t.Errorf("%s grew from %v to %v after Redis came back", mFallback, fallback, got)
	}
	if keys := rs.keys("ws-rate:um:*"); len(keys) == 0 {
		t.Errorf("the restarted Redis holds no ws-rate:um:* key: the gate does not use it again")
	}
}

// TestRedisDownAtStartFailureLocal: a gate whose Redis is down from the start serves and
// still limits, in process; it finds Redis when it appears.
func TestRedisDownAtStartFailureLocal(t *testing.T) {
	t.Parallel()
	port := freePort(t) // nothing listens here yet
	b := newRecordingBackend(t)
	g := limitGate(t, b.URL, "--redis-url", "redis://127.0.0.1:"+strconv.Itoa(port), "--redis-timeout", "2s", "--failure-mode", "local",
		"--user-rate", "3/30s", "--user-block", "30s", "--ip-rate", "0")

	c := dialAs(t, g.URL+"/echo", peer{})
	res := burst(c, msgs("m", 4))
	if res.refused == nil || res.close.Code != 4008 || res.close.Reason != "Rate limit" {
		t.Fatalf("got %d echoes, refusal %s, close %d %q; want the JSON and 4008", len(res.echoes), res.refused, res.close.Code, res.close.Reason)
	}
	parseRefusal(t, res.refused, "user")
	// The backend may still be reading the third message when the client sees the close.
	if ce := b.nextClose(t); ce.Code != 4008 {
		t.Errorf("the backend saw close %d %q, want 4008", ce.Code, ce.Reason)
	}
	if got := b.msgs.Load(); got != 3 {
		t.Errorf("the backend received %d messages, want 3", got)
	}
	waitMetric(t, g, mRateLimited, userMessage, 1)
	waitMetric(t, g, mRedisUp, nil, 0)
	// One per limiter call: the handshake, then the burst's messages, decided
	// together as they arrive (at least the granting call and the refusing one).
	if got := g.Metric(t, mFallback, nil); got < 3 {
		t.Errorf("%s = %v, want at least 3 (handshake and messages decided in process)", mFallback, got)
	}

	rs := &redisServer{t: t, port: port, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	rs.start()
	waitLong(t, "holo_ws_redis_up to turn 1 once Redis is up", 30*time.Second, func() bool {
		return g.Metric(t, mRedisUp, nil) == 1
	})
}

// TestRedisDownFailureClosed: under --failure-mode closed a gate whose Redis went away refuses
// messages and handshakes with the 429 frame and 4008, and serves again when Redis is back.
func TestRedisDownFailureClosed(t *testing.T) {
	t.Parallel()
	rs := startRedisServer(t)
	b := newRecordingBackend(t)
	g := limitGate(t, b.URL, "--redis-url", rs.URL(), "--redis-timeout", "2s", "--failure-mode", "closed",
		"--user-rate", "1000/30s", "--ip-rate", "0")

	c := dialAs(t, g.URL+"/echo", peer{})
	echoOK(t, c, "while Redis is up")
	rs.kill()

	if err := c.Write(testCtx(t), websocket.MessageText, []byte("while Redis is down")); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, c, "user")
	if got := b.msgs.Load(); got != 1 {
		t.Errorf("the backend received %d messages, want 1", got)
	}
	conns := b.conns.Load()
	wantRefusal(t, dialAs(t, g.URL+"/echo", peer{}), "user")
	if got := b.conns.Load(); got != conns {
		t.Errorf("the backend accepted %d connections while Redis was down under closed", got-conns)
	}
	waitMetric(t, g, mRateLimited, userMessage, 1)
	waitMetric(t, g, mRateLimited, userConn, 1)
	waitMetric(t, g, mRedisUp, nil, 0)
	if got := g.Metric(t, mDecisions, decFallback); got < 2 {
		t.Errorf("%s{cause=fallback} = %v, want at least 2", mDecisions, got)
	}
	if got := g.Metric(t, mFallback, nil); got < 2 {
		t.Errorf("%s = %v, want at least 2", mFallback, got)
	}
	if resp, err := httpClient.Get(g.HTTP + "/hello"); err != nil {
		t.Fatal(err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Errorf("pass-through GET while Redis is down under closed: %d %q, want 429", resp.StatusCode, body)
		} else {
			parseRefusal(t, body, "user")
		}
	}

	// Every event would be refused: /readyz sends traffic to replicas that reach Redis.
	if resp, err := httpClient.Get(g.Admin + "/readyz"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("/readyz = %d while Redis is down under --failure-mode closed, want 503", resp.StatusCode)
		}
	}

	rs.start()
	waitLong(t, "holo_ws_redis_up to return to 1 after Redis restarted", 30*time.Second, func() bool {
		return g.Metric(t, mRedisUp, nil) == 1
	})
	c = dialAs(t, g.URL+"/echo", peer{})
	echoOK(t, c, "Redis is back")
}

// TestShadowMode: --shadow evaluates every rule and refuses nothing: every message and
// handshake is relayed, and the would-be refusals count as shadow_limited only. They are logged
// with shadow=true, one line per connection and block rather than one per message.
func TestShadowMode(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			b := newRecordingBackend(t)
			args := []string{"--shadow", "--user-rate", "3/30s", "--user-block", "30s", "--ip-rate", "0", "--log-format", "json"}
			if store == "redis" {
				args = append(args, redisURL(startRedisServer(t))...)
			}
			g := limitGate(t, b.URL, args...)

			c := dialAs(t, g.URL+"/echo", peer{})
			for _, m := range msgs("m", 10) {
				echoOK(t, c, m)
			}
			if got := b.msgs.Load(); got != 10 {
				t.Errorf("the backend received %d messages, want 10", got)
			}
			// Messages 4 … 10 would have been refused (the 4th by the counter, the rest by the block).
			waitMetric(t, g, mDecisions, decShadow, 7)

			// A handshake during the would-be block is served, and counted as shadow_limited.
			c2 := dialAs(t, g.URL+"/echo", peer{})
			echoOK(t, c2, "second connection")
			waitMetric(t, g, mDecisions, decShadow, 9)
			if got := b.msgs.Load(); got != 11 {
				t.Errorf("the backend received %d messages, want 11", got)
			}
			if got := g.Metric(t, mRateLimited, nil); got != 0 {
				t.Errorf("%s = %v under --shadow, want 0", mRateLimited, got)
			}
			if got := g.Metric(t, mDecisions, decLimited); got != 0 {
				t.Errorf("%s{decision=limited} = %v under --shadow, want 0", mDecisions, got)
			}

			// The first connection's 4th message, the second handshake, the second
			// connection's message.
			var events []string
			waitFor(t, "three shadow refusal lines", func() bool {
				events = events[:0]
				for _, l := range strings.Split(g.Output(), "\n") {
					var m map[string]any
					if json.Unmarshal([]byte(l), &m) != nil || m["msg"] != "rate limited" {
						continue
					}
					if m["shadow"] != true || m["rule"] != "user-rate" {
						t.Fatalf("a refusal line under --shadow: %v, want shadow true, rule user-rate", m)
					}
					events = append(events, fmt.Sprint(m["event"]))
				}
				return len(events) >= 3
			})
			if want := []string{"message", "handshake", "message"}; !slices.Equal(events, want) {
				t.Errorf("shadow refusal lines for %v, want %v", events, want)
			}
		})
	}
}

// waitLong is waitFor with its own bound, for waits that include a reconnect backoff.
func waitLong(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
