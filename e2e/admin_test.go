//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// adminCall calls a gate's admin API with token ("" for none) and returns the status and the
// decoded JSON body.
func adminCall(t testing.TB, g *Gate, token, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, g.Admin+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var out map[string]any
	if len(raw) > 0 && json.Unmarshal(raw, &out) != nil {
		out = map[string]any{"raw": string(raw)}
	}
	return res.StatusCode, out
}

// mustAdmin is adminCall that wants a success.
func mustAdmin(t testing.TB, g *Gate, token, method, path string, body any) map[string]any {
	t.Helper()
	status, out := adminCall(t, g, token, method, path, body)
	if status/100 != 2 {
		t.Fatalf("%s %s: %d %v", method, path, status, out)
	}
	return out
}

// ruleCount returns the count of the first window of rule in an inspection's answer, and its
// block time left.
func ruleCount(t testing.TB, inspected map[string]any, rule string) (count, blockLeftMs float64) {
	t.Helper()
	rules, _ := inspected["rules"].([]any)
	for _, r := range rules {
		m, _ := r.(map[string]any)
		if m["rule"] != rule {
			continue
		}
		ws, _ := m["windows"].([]any)
		if len(ws) > 0 {
			w, _ := ws[0].(map[string]any)
			count, _ = w["count"].(float64)
		}
		blockLeftMs, _ = m["blockLeftMs"].(float64)
		return count, blockLeftMs
	}
	t.Fatalf("no rule %q in %v", rule, inspected)
	return 0, 0
}

// wantClose reads c until its close frame and checks the code and reason.
func wantClose(t testing.TB, c *websocket.Conn, code websocket.StatusCode, reason string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("the connection ended without a close frame: %v", err)
		}
		if ce.Code != code || ce.Reason != reason {
			t.Fatalf("close %d %q, want %d %q", ce.Code, ce.Reason, code, reason)
		}
		return
	}
}

// TestAdminAPI runs two gates on one Redis with the admin API on and exercises every action
// through both, with real clients: what one gate is told, the other honours at once.
func TestAdminAPI(t *testing.T) {
	t.Parallel()
	rs := startRedisServer(t)
	b := newRecordingBackend(t)
	secret, secretFile := newHMACSecret(t)
	const token = "admin-token-of-the-test"
	tokenFile := writeTestFile(t, "admin-token", []byte(token+"\n"))
	args := slices.Concat([]string{"--upstream", b.URL, "--jwt-hmac-secret-file", secretFile,
		"--jwt-issuer", testIssuer, "--jwt-audience", testAudience, "--admin-token-file", tokenFile,
		"--user-rate", "50/1m", "--ip-rate", "0"}, noConnRules, redisURL(rs))
	a, bg := startGate(t, args...), startGate(t, args...)

	t.Run("token", func(t *testing.T) {
		for _, tok := range []string{"", "wrong", token + "x"} {
			status, out := adminCall(t, a, tok, http.MethodGet, "/v1/keys?key=user:alice", nil)
			if status != http.StatusUnauthorized || out["error"] == nil {
				t.Fatalf("token %q: %d %v, want 401 with an error", tok, status, out)
			}
		}
		// The probes and the metrics stay open.
		for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
			if status, _ := adminCall(t, a, "", http.MethodGet, path, nil); status != http.StatusOK {
				t.Fatalf("%s without a token: %d", path, status)
			}
		}
		if status, _ := adminCall(t, a, token, http.MethodGet, "/v1/nothing", nil); status != http.StatusNotFound {
			t.Fatalf("an unknown call: %d, want 404", status)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct {
			method, path string
			body         any
		}{
			{http.MethodGet, "/v1/keys?key=nobody", nil},
			{http.MethodGet, "/v1/keys?key=ip:not-an-ip", nil},
			{http.MethodGet, "/v1/keys?key=claim:plan:pro", nil}, // no rules file
			{http.MethodPost, "/v1/keys/block", map[string]any{"key": "user:x", "for": "-1s"}},
			{http.MethodPost, "/v1/keys/block", map[string]any{"key": "user:x", "for": "forever"}},
			{http.MethodPost, "/v1/keys/block", map[string]any{"key": "user:x", "for": "1m", "extra": 1}},
			{http.MethodPost, "/v1/disconnect", map[string]any{}},
			{http.MethodPost, "/v1/drain", map[string]any{"share": 1.5}},
			{http.MethodPost, "/v1/revocations", map[string]any{"subject": "a", "jti": "b", "for": "1h"}},
		} {
			status, out := adminCall(t, a, token, tc.method, tc.path, tc.body)
			if status != http.StatusBadRequest || out["error"] == nil {
				t.Errorf("%s %s %v: %d %v, want 400 with an error", tc.method, tc.path, tc.body, status, out)
			}
		}
	})

	t.Run("inspect, block, reset", func(t *testing.T) {
		alice := bearer(hsToken(t, secret, "alice"))
		c := dialAs(t, a.URL+"/echo", alice)
		for i := range 3 {
			echoOK(t, c, "m"+string(rune('0'+i)))
		}
		// Gate B reads what gate A counted.
		out := mustAdmin(t, bg, token, http.MethodGet, "/v1/keys?key=user:alice", nil)
		if n, _ := ruleCount(t, out, "user-messages"); n != 3 {
			t.Fatalf("gate B sees %v messages of alice, want 3: %v", n, out)
		}
		// A block made on B holds on A at once: alice's next message there is refused,
		// and so is her handshake on either gate.
		mustAdmin(t, bg, token, http.MethodPost, "/v1/keys/block", map[string]any{"key": "user:alice", "for": "1m", "reason": "abuse"})
		// Gate A honours it once the block's event reaches it: at once, a second at most
		// when the event is lost (its re-read of the store).
		start := time.Now()
		waitFor(t, "gate A to refuse alice's handshakes", func() bool { return handshakeHeld(t, a, alice) })
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("gate A honoured the block after %v", d)
		}
		send(t, c, "after the block")
		wantBlocked(t, c)
		for _, g := range []*Gate{a, bg} {
			c2 := dialAs(t, g.URL+"/echo", alice)
			wantBlocked(t, c2)
		}
		out = mustAdmin(t, a, token, http.MethodGet, "/v1/keys?key=user:alice", nil)
		if h, _ := out["hold"].(map[string]any); h == nil || h["reason"] != "abuse" {
			t.Fatalf("the inspection shows no hold: %v", out)
		}
		// Another user is untouched.
		echoOK(t, dialAs(t, a.URL+"/echo", bearer(hsToken(t, secret, "bob"))), "hello")
		// A reset on A lifts it on B at once, counters included.
		mustAdmin(t, a, token, http.MethodPost, "/v1/keys/reset", map[string]any{"key": "user:alice"})
		waitFor(t, "gate B to lift alice's block", func() bool { return !handshakeHeld(t, bg, alice) })
		c3 := dialAs(t, bg.URL+"/echo", alice)
		echoOK(t, c3, "free again")
		out = mustAdmin(t, a, token, http.MethodGet, "/v1/keys?key=user:alice", nil)
		if n, _ := ruleCount(t, out, "user-messages"); n != 1 || out["hold"] != nil {
			t.Fatalf("after the reset: %v, want 1 message counted and no hold", out)
		}
	})

	t.Run("connections and disconnect", func(t *testing.T) {
		carol := bearer(hsToken(t, secret, "carol"))
		onA, onB := dialAs(t, a.URL+"/echo", carol), dialAs(t, bg.URL+"/echo", carol)
		dave := dialAs(t, bg.URL+"/echo", bearer(hsToken(t, secret, "dave")))
		echoOK(t, onA, "x")
		echoOK(t, onB, "x")
		out := mustAdmin(t, bg, token, http.MethodGet, "/v1/connections?user=carol", nil)
		if cs, _ := out["connections"].([]any); len(cs) != 1 {
			t.Fatalf("gate B lists %v", out)
		}
		// Disconnect on A: carol's connections close on both gates; dave stays.
		out = mustAdmin(t, a, token, http.MethodPost, "/v1/disconnect", map[string]any{"user": "carol", "reason": "abuse report"})
		if out["closed"] != 1.0 {
			t.Fatalf("gate A closed %v here, want 1", out["closed"])
		}
		wantClose(t, onA, websocket.StatusPolicyViolation, "abuse report")
		wantClose(t, onB, websocket.StatusPolicyViolation, "abuse report")
		echoOK(t, dave, "still here")
		out = mustAdmin(t, bg, token, http.MethodGet, "/v1/connections?user=carol", nil)
		if cs, _ := out["connections"].([]any); len(cs) != 0 {
			t.Fatalf("gate B still lists %v", out)
		}
	})

	t.Run("revocation", func(t *testing.T) {
		erinTok := tokenWith(t, secret, "erin", map[string]any{"jti": "erin-1"})
		erinOther := tokenWith(t, secret, "erin", map[string]any{"jti": "erin-2"})
		c1 := dialAs(t, bg.URL+"/echo", bearer(erinTok))
		c2 := dialAs(t, bg.URL+"/echo", bearer(erinOther))
		echoOK(t, c1, "x")
		// Revoking one token on A closes its connection on B, and refuses it everywhere.
		mustAdmin(t, a, token, http.MethodPost, "/v1/revocations", map[string]any{"jti": "erin-1", "for": "1h", "reason": "leaked"})
		start := time.Now()
		wantClose(t, c1, websocket.StatusPolicyViolation, "token revoked")
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("the revoked token's connection closed after %v", d)
		}
		for _, g := range []*Gate{a, bg} {
			if _, resp, err := tryDial(t, g.URL+"/echo", bearer(erinTok)); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("a revoked token's handshake: %v %v, want 401", resp, err)
			}
		}
		echoOK(t, c2, "the other token still works")
		// Revoking the subject ends the rest.
		mustAdmin(t, bg, token, http.MethodPost, "/v1/revocations", map[string]any{"subject": "erin", "for": "1h"})
		wantClose(t, c2, websocket.StatusPolicyViolation, "token revoked")
		out := mustAdmin(t, a, token, http.MethodGet, "/v1/revocations", nil)
		if rv, _ := out["revocations"].([]any); len(rv) != 2 {
			t.Fatalf("revocations: %v", out)
		}
		if got := waitMetricAbove(t, bg, mAuthFail, map[string]string{"reason": "revoked"}, 0); got < 1 {
			t.Fatalf("auth failures for revoked tokens: %v", got)
		}
		// Lifting both lets the tokens in again.
		mustAdmin(t, a, token, http.MethodDelete, "/v1/revocations?subject=erin", nil)
		mustAdmin(t, a, token, http.MethodDelete, "/v1/revocations?jti=erin-1", nil)
		waitFor(t, "gate B to see the revocations lifted", func() bool {
			c, _, err := tryDial(t, bg.URL+"/echo", bearer(erinTok))
			if err == nil {
				c.CloseNow()
			}
			return err == nil
		})
	})

	t.Run("drain", func(t *testing.T) {
		c := dialAs(t, a.URL+"/echo", bearer(hsToken(t, secret, "frank")))
		echoOK(t, c, "x")
		out := mustAdmin(t, a, token, http.MethodPost, "/v1/drain", map[string]any{"share": 1, "spread": "0s"})
		if n, _ := out["closed"].(float64); n < 1 {
			t.Fatalf("drain chose %v", out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		_, p, err := c.Read(ctx)
		if err != nil || !strings.Contains(string(p), `"code":1012`) {
			t.Fatalf("want the drain's JSON frame, got %q %v", p, err)
		}
		wantClose(t, c, websocket.StatusServiceRestart, "service restart")
	})

	t.Run("cli", func(t *testing.T) {
		dialAs(t, a.URL+"/echo", bearer(hsToken(t, secret, "gina")))
		run := func(args ...string) string {
			t.Helper()
			cmd := exec.Command(gateBin, append([]string{"admin"}, args...)...)
			cmd.Env = append(gateEnviron(), "WSGATE_ADMIN_URL="+a.Admin, "WSGATE_ADMIN_TOKEN_FILE="+tokenFile)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("wsgate admin %v: %v\n%s", args, err, out)
			}
			return string(out)
		}
		if out := run("connections", "--user", "gina"); !strings.Contains(out, "1 connection(s)") || !strings.Contains(out, "gina") {
			t.Fatalf("connections:\n%s", out)
		}
		if out := run("block", "user:gina", "--for", "30s", "--reason", "spam"); !strings.Contains(out, "blocked on every replica for 30s") {
			t.Fatalf("block:\n%s", out)
		}
		if out := run("inspect", "user:gina"); !strings.Contains(out, "blocked by an operator") || !strings.Contains(out, "user-messages") {
			t.Fatalf("inspect:\n%s", out)
		}
		var js map[string]any
		if err := json.Unmarshal([]byte(run("inspect", "user:gina", "--json")), &js); err != nil || js["key"] != "user:gina" {
			t.Fatalf("inspect --json: %v %v", js, err)
		}
		run("reset", "user:gina")
		// A wrong token is a one-line error and exit 1.
		cmd := exec.Command(gateBin, "admin", "inspect", "user:gina", "--admin-url", a.Admin,
			"--admin-token-file", writeTestFile(t, "wrong", []byte("nope")))
		cmd.Env = gateEnviron()
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "401") ||
			strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Fatalf("a wrong token: %v\n%s", err, out)
		}
	})
}

// handshakeHeld dials g as p and reports whether the gate refused it with an operator's hold.
func handshakeHeld(t testing.TB, g *Gate, p peer) bool {
	t.Helper()
	c := dialAs(t, g.URL+"/echo", p)
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, msg, err := c.Read(ctx)
	return err == nil && strings.Contains(string(msg), `"rule":"admin-hold"`)
}

// wantBlocked reads the 429 frame of an operator's block and the close 4008.
func wantBlocked(t testing.TB, c *websocket.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, p, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("want the 429 frame, got %v", err)
	}
	var r struct {
		Code         int    `json:"code"`
		Scope        string `json:"scope"`
		RetryAfterMs int64  `json:"retryAfterMs"`
	}
	if json.Unmarshal(p, &r) != nil || r.Code != 429 || r.Scope != "user" || r.RetryAfterMs < 50_000 || r.RetryAfterMs > 60_000 {
		t.Fatalf("refusal %s, want a 429 of scope user with about a minute to wait", p)
	}
	wantLimitClose(t, c)
}

// TestAdminMemoryStore: on the memory store the API acts on the one replica: a block, a
// disconnect and a revocation, and a gate without --admin-token-file serves no /v1/ at all.
func TestAdminMemoryStore(t *testing.T) {
	t.Parallel()
	b := newRecordingBackend(t)
	secret, secretFile := newHMACSecret(t)
	const token = "memory-admin-token"
	tokenFile := writeTestFile(t, "admin-token", []byte(token))
	auth := []string{"--upstream", b.URL, "--jwt-hmac-secret-file", secretFile,
		"--jwt-issuer", testIssuer, "--jwt-audience", testAudience}
	off := startGate(t, slices.Concat(auth, noConnRules)...)
	if status, _ := adminCall(t, off, token, http.MethodGet, "/v1/keys?key=user:a", nil); status != http.StatusNotFound {
		t.Fatalf("without --admin-token-file /v1/ answered %d, want 404", status)
	}
	g := startGate(t, slices.Concat(auth, noConnRules, []string{"--admin-token-file", tokenFile})...)
	hank := bearer(tokenWith(t, secret, "hank", map[string]any{"jti": "hank-1"}))
	c := dialAs(t, g.URL+"/echo", hank)
	echoOK(t, c, "x")
	mustAdmin(t, g, token, http.MethodPost, "/v1/keys/block", map[string]any{"key": "ip:127.0.0.1", "for": "1m"})
	send(t, c, "blocked")
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, p, err := c.Read(ctx); err != nil || !strings.Contains(string(p), `"scope":"ip"`) {
		t.Fatalf("want the 429 frame of scope ip, got %q %v", p, err)
	}
	wantLimitClose(t, c)
	mustAdmin(t, g, token, http.MethodPost, "/v1/keys/reset", map[string]any{"key": "ip:127.0.0.1"})
	c = dialAs(t, g.URL+"/echo", hank)
	echoOK(t, c, "y")
	mustAdmin(t, g, token, http.MethodPost, "/v1/revocations", map[string]any{"jti": "hank-1", "for": "10m"})
	wantClose(t, c, websocket.StatusPolicyViolation, "token revoked")
	if _, resp, err := tryDial(t, g.URL+"/echo", hank); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a revoked token's handshake: %v %v, want 401", resp, err)
	}

	// Without --jwt-issuer a user's key hashes the issuer of its tokens, which the call must
	// name: without it the call is refused, rather than blocking a key nobody has.
	noIss := startGate(t, "--upstream", b.URL, "--jwt-hmac-secret-file", secretFile, "--jwt-audience", testAudience,
		"--admin-token-file", tokenFile, "--user-conn-rate", "0", "--ip-conn-rate", "0")
	if status, out := adminCall(t, noIss, token, http.MethodPost, "/v1/keys/block", map[string]any{"key": "user:ivy", "for": "1m"}); status != http.StatusBadRequest {
		t.Fatalf("a user block without an issuer: %d %v, want 400", status, out)
	}
	ivy := bearer(hsToken(t, secret, "ivy"))
	echoOK(t, dialAs(t, noIss.URL+"/echo", ivy), "free")
	mustAdmin(t, noIss, token, http.MethodPost, "/v1/keys/block", map[string]any{"key": "user:ivy", "issuer": testIssuer, "for": "1m"})
	if !handshakeHeld(t, noIss, ivy) {
		t.Fatal("ivy's handshake passed her block")
	}
}
