//go:build e2e

package e2e

// Authentication and client IPs through the built binary: JWT verification at the handshake and
// on pass-through requests (every token source, every refusal reason), identity and token
// handling toward the Node backend, Origin checks, client-IP resolution (X-Forwarded-For, trusted
// chains, IPv6 grouping, PROXY protocol) and per-user limits keyed on the verified subject.

import (
	"bufio"
	"context"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// authGate starts a gate in front of upstream with every rate limit off and args.
func authGate(t *testing.T, upstream string, args ...string) *Gate {
	t.Helper()
	return startGate(t, slices.Concat([]string{"--upstream", upstream, "--user-rate", "0", "--ip-rate", "0"}, noConnRules, args)...)
}

// upstreamView is what the Node backend's /headers path reports about the handshake it got.
type upstreamView struct {
	URL     string
	Headers map[string]string // lower-case names
	raw     string
}

func parseUpstreamView(t testing.TB, p []byte) upstreamView {
	t.Helper()
	var seen struct {
		URL     string         `json:"url"`
		Headers map[string]any `json:"headers"`
	}
	if err := json.Unmarshal(p, &seen); err != nil {
		t.Fatalf("the backend's /headers message %q: %v", tail(string(p), 200), err)
	}
	v := upstreamView{URL: seen.URL, Headers: map[string]string{}, raw: string(p)}
	for k, val := range seen.Headers {
		v.Headers[k] = fmt.Sprint(val)
	}
	return v
}

// upstreamSaw reads the first message of a connection to the Node backend's /headers.
func upstreamSaw(t testing.TB, c *websocket.Conn) upstreamView {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, p, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("reading the backend's /headers message: %v", err)
	}
	return parseUpstreamView(t, p)
}

// wantNoToken fails the test when tok appears anywhere in what the backend saw.
func (v upstreamView) wantNoToken(t testing.TB, tok string) {
	t.Helper()
	sig := tok[strings.LastIndexByte(tok, '.')+1:]
	if strings.Contains(v.raw, sig) {
		t.Errorf("the raw token reached the backend: %s", tail(v.raw, 400))
	}
	if strings.Contains(v.URL, "access_token") {
		t.Errorf("the backend saw the token query parameter in %q", v.URL)
	}
	if a, ok := v.Headers["authorization"]; ok {
		t.Errorf("the backend saw Authorization %q", a)
	}
}

func TestAuthTokenSources(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	g := authGate(t, startNodeBackend(t), "--jwt-hmac-secret-file", secretFile,
		"--jwt-issuer", testIssuer, "--jwt-audience", testAudience, "--token-cookie", "wsgate_token",
		"--strip-header", "X-Internal-Secret")

	for _, tc := range []struct {
		name   string
		query  string
		header func(tok string) http.Header
		cookie string // what the backend must see as Cookie; "" = no Cookie header
	}{
		{name: "authorization header", header: func(tok string) http.Header {
			// A spoofed identity header and a stripped header come along.
			return http.Header{"Authorization": {"Bearer " + tok}, "X-Auth-Subject": {"mallory"}, "X-Internal-Secret": {"s3cr3t"}}
		}},
		{name: "query parameter", query: "&access_token=", header: func(string) http.Header {
			return http.Header{"X-Auth-Subject": {"mallory"}}
		}},
		{name: "cookie", cookie: "theme=dark; lang=en", header: func(tok string) http.Header {
			return http.Header{"Cookie": {"theme=dark; wsgate_token=" + tok + "; lang=en"}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub := "alice-" + strings.ReplaceAll(tc.name, " ", "-")
			tok := hsToken(t, secret, sub)
			path := "/headers?x=1"
			if tc.query != "" {
				path += tc.query + tok
			}
			c := dialAs(t, g.URL+path, peer{header: tc.header(tok)})
			v := upstreamSaw(t, c)
			t.Logf("the backend saw %s %v", v.URL, v.Headers)
			if got := v.Headers["x-auth-subject"]; got != sub {
				t.Errorf("the backend saw X-Auth-Subject %q, want the verified subject %q", got, sub)
			}
			if v.URL != "/headers?x=1" {
				t.Errorf("the backend saw %q, want /headers?x=1", v.URL)
			}
			if got, ok := v.Headers["cookie"]; tc.cookie != "" && got != tc.cookie {
				t.Errorf("the backend saw Cookie %q, want %q (the token cookie removed)", got, tc.cookie)
			} else if tc.cookie == "" && ok {
				t.Errorf("the backend saw Cookie %q, want none", got)
			}
			if got, ok := v.Headers["x-internal-secret"]; ok {
				t.Errorf("the backend saw X-Internal-Secret %q despite --strip-header", got)
			}
			v.wantNoToken(t, tok)
			echoOK(t, c, "authenticated via "+tc.name)
		})
	}

	// The browser form, new WebSocket(url, ["wsgate", "bearer." + jwt]), with the Node ws client,
	// which fails a handshake whose offered protocols get no answer.
	t.Run("subprotocol with the node client", func(t *testing.T) {
		for _, tc := range []struct {
			offered, want, upstream string
		}{
			{"wsgate,bearer.TOKEN", "wsgate", ""},
			{"wsgate,bearer.TOKEN,chat", "chat", "chat"},
		} {
			tok := hsToken(t, secret, "alice-subprotocol")
			events := runNodeClient(t, g.URL+"/headers?x=1", "--protocols", strings.ReplaceAll(tc.offered, "TOKEN", tok), "--expect", "1")
			wantEvent(t, events, 0, map[string]any{"open": true, "protocol": tc.want})
			msg, _ := events[1]["message"].(string)
			v := parseUpstreamView(t, []byte(msg))
			if got := v.Headers["x-auth-subject"]; got != "alice-subprotocol" {
				t.Errorf("offered %s: the backend saw X-Auth-Subject %q", tc.offered, got)
			}
			if got := v.Headers["sec-websocket-protocol"]; got != tc.upstream {
				t.Errorf("offered %s: the backend was offered %q, want %q (no marker, no token)", tc.offered, got, tc.upstream)
			}
			v.wantNoToken(t, tok)
			wantEvent(t, events, 2, map[string]any{"close": 1000})
		}
	})

	t.Run("pass-through HTTP", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, g.HTTP+"/hello", nil)
		req.Header.Set("Authorization", "Bearer "+hsToken(t, secret, "alice-http"))
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "hello" {
			t.Errorf("GET /hello with a token: %d %q, want 200 hello", resp.StatusCode, body)
		}
	})
}

// authCase is one handshake (or request) against one gate and the reason it must be refused
// with; reason "" means it must be admitted.
type authCase struct {
	name   string
	gate   *Gate
	path   string // default /echo
	header http.Header
	reason string
	http   bool // a pass-through GET instead of a handshake
}

// checkAuthCase sends tc and checks the answer, the auth failure metric and that nothing was
// dialed upstream for a refusal.
func checkAuthCase(t *testing.T, b *recordingBackend, tc authCase) {
	t.Helper()
	path := tc.path
	if path == "" {
		path = "/echo"
	}
	before := map[string]float64{}
	for _, r := range []string{"missing", "malformed", "signature", "expired", "not_yet_valid", "issuer", "audience", "algorithm", "jwks_unavailable"} {
		before[r] = tc.gate.Metric(t, mAuthFail, map[string]string{"reason": r})
	}
	conns, reqs := b.conns.Load(), b.reqs.Load()

	var resp *http.Response
	var body []byte
	if tc.http {
		req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, tc.gate.HTTP+path, nil)
		for k, vs := range tc.header {
			req.Header[k] = vs
		}
		var err error
		if resp, err = httpClient.Do(req); err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	} else {
		resp, body = upgradeAttempt(t, nil, tc.gate.HTTP+path, tc.header)
	}

	if tc.reason == "" {
		want := http.StatusSwitchingProtocols
		if tc.http {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Fatalf("status %d %q, want %d", resp.StatusCode, body, want)
		}
		return
	}
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d %q, want 401", resp.StatusCode, body)
	}
	if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer error="invalid_token"` {
		t.Errorf(`WWW-Authenticate %q, want Bearer error="invalid_token"`, got)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e struct {
		Code  int    `json:"code"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Code != 401 || e.Error == "" {
		t.Errorf(`body %q, want {"code":401,"error":"..."}`, body)
	}
	if auth := strings.TrimPrefix(tc.header.Get("Authorization"), "Bearer "); len(auth) > 20 {
		if strings.Contains(string(body), auth[len(auth)-16:]) {
			t.Errorf("the 401 body quotes the token: %q", body)
		}
	}
	waitMetric(t, tc.gate, mAuthFail, map[string]string{"reason": tc.reason}, before[tc.reason]+1)
	for r, v := range before {
		if r == tc.reason {
			continue
		}
		if got := tc.gate.Metric(t, mAuthFail, map[string]string{"reason": r}); got != v {
			t.Errorf("%s{reason=%q} moved from %v to %v, want only reason %q counted", mAuthFail, r, v, got, tc.reason)
		}
	}
	if got := b.conns.Load(); got != conns {
		t.Errorf("the backend accepted a connection for a refused handshake")
	}
	if got := b.reqs.Load(); got != reqs {
		t.Errorf("the backend got a request for a refused one")
	}
}

func TestAuthRefusals(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	rsaKey, otherRSA := newRSAKey(t), newRSAKey(t)
	pemBytes := publicPEM(t, rsaKey)
	pemFile := writeTestFile(t, "rsa.pem", pemBytes)
	b := newRecordingBackend(t)
	claims := []string{"--jwt-issuer", testIssuer, "--jwt-audience", testAudience}

	hsGate := authGate(t, b.URL, slices.Concat([]string{"--jwt-hmac-secret-file", secretFile}, claims)...)
	rsaGate := authGate(t, b.URL, slices.Concat([]string{"--jwt-key-file", pemFile}, claims)...)
	// Both keys configured, but only RS256 allowed.
	rsOnlyGate := authGate(t, b.URL, slices.Concat([]string{"--jwt-hmac-secret-file", secretFile, "--jwt-key-file", pemFile, "--jwt-algorithms", "RS256"}, claims)...)
	// A JWKS URL where nothing listens: no key was ever fetched.
	jwksDown := authGate(t, b.URL, slices.Concat([]string{"--jwks-url", fmt.Sprintf("http://127.0.0.1:%d/jwks.json", freePort(t))}, claims)...)

	hs := map[string]any{"alg": "HS256", "typ": "JWT"}
	rs := map[string]any{"alg": "RS256", "typ": "JWT"}
	with := func(mod func(c map[string]any)) map[string]any {
		c := claimsFor("alice")
		mod(c)
		return c
	}
	now := time.Now()
	valid := makeJWT(t, hs, claimsFor("alice"), hs256(secret))
	// Change one character in the middle of the signature: its bits all count.
	sigAt := strings.LastIndexByte(valid, '.') + 10
	flip := byte('A')
	if valid[sigAt] == 'A' {
		flip = 'B'
	}
	tampered := valid[:sigAt] + string(flip) + valid[sigAt+1:]
	notJSON := b64url([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + b64url([]byte("not json"))
	auth := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

	cases := []authCase{
		{name: "valid HS256", gate: hsGate, header: auth(valid)},
		{name: "missing", gate: hsGate, reason: "missing"},
		{name: "missing on pass-through HTTP", gate: hsGate, path: "/hello", http: true, reason: "missing"},
		{name: "valid on pass-through HTTP", gate: hsGate, path: "/hello", http: true, header: auth(valid)},
		{name: "malformed: not a JWT", gate: hsGate, header: auth("not-a-jwt"), reason: "malformed"},
		{name: "malformed: header not JSON", gate: hsGate, header: auth(b64url([]byte("{")) + "." + b64url([]byte("{}")) + ".c2ln"), reason: "malformed"},
		// The signature is checked before the payload is parsed: an unsigned bad payload is a
		// signature failure, a correctly signed one is malformed.
		{name: "payload not JSON, bad signature", gate: hsGate, header: auth(notJSON + ".c2ln"), reason: "signature"},
		{name: "malformed: payload not JSON, signed", gate: hsGate, header: auth(notJSON + "." + b64url(hs256(secret)([]byte(notJSON)))), reason: "malformed"},
		{name: "bad signature", gate: hsGate, header: auth(tampered), reason: "signature"},
		{name: "bad signature in the query", gate: hsGate, path: "/echo?access_token=" + tampered, reason: "signature"},
		{name: "another HMAC key", gate: hsGate, header: auth(makeJWT(t, hs, claimsFor("alice"), hs256([]byte("another-secret-another-secret-!!")))), reason: "signature"},
		{name: "expired beyond leeway", gate: hsGate, header: auth(makeJWT(t, hs, with(func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() }), hs256(secret))), reason: "expired"},
		{name: "expired within leeway", gate: hsGate, header: auth(makeJWT(t, hs, with(func(c map[string]any) { c["exp"] = now.Add(-5 * time.Second).Unix() }), hs256(secret)))},
		{name: "nbf in the future", gate: hsGate, header: auth(makeJWT(t, hs, with(func(c map[string]any) { c["nbf"] = now.Add(10 * time.Minute).Unix() }), hs256(secret))), reason: "not_yet_valid"},
		// jwx reports a missing required claim as a validation error of its own; the gate
		// files it under malformed (see auth/verifier_test.go "no exp").
		{name: "no exp", gate: hsGate, header: auth(makeJWT(t, hs, with(func(c map[string]any) { delete(c, "exp") }), hs256(secret))), reason: "malformed"},
		{name: "wrong iss", gate: hsGate, header: auth(makeJWT(t, hs, with(func(c map[string]any) { c["iss"] = "https://evil.test" }), hs256(secret))), reason: "issuer"},
		{name: "wrong aud", gate: hsGate, header: auth(makeJWT(t, hs, with(func(c map[string]any) { c["aud"] = "someone-else" }), hs256(secret))), reason: "audience"},
		{name: "alg none", gate: hsGate, header: auth(makeJWT(t, map[string]any{"alg": "none", "typ": "JWT"}, claimsFor("alice"), nil)), reason: "algorithm"},
		{name: "alg none on the RSA gate", gate: rsaGate, header: auth(makeJWT(t, map[string]any{"alg": "none"}, claimsFor("alice"), nil)), reason: "algorithm"},
		{name: "oversized token", gate: hsGate, header: auth(makeJWT(t, hs, with(func(c map[string]any) { c["pad"] = strings.Repeat("x", 9000) }), hs256(secret))), reason: "malformed"},
		{name: "valid RS256", gate: rsaGate, header: auth(makeJWT(t, rs, claimsFor("alice"), rs256(t, rsaKey)))},
		{name: "RS256 signed by another key", gate: rsaGate, header: auth(makeJWT(t, rs, claimsFor("alice"), rs256(t, otherRSA))), reason: "signature"},
		{name: "HS256 signed with the RSA public key", gate: rsaGate, header: auth(makeJWT(t, hs, claimsFor("alice"), hs256(pemBytes))), reason: "algorithm"},
		{name: "valid RS256 under --jwt-algorithms RS256", gate: rsOnlyGate, header: auth(makeJWT(t, rs, claimsFor("alice"), rs256(t, rsaKey)))},
		{name: "HS256 outside --jwt-algorithms", gate: rsOnlyGate, header: auth(makeJWT(t, hs, claimsFor("alice"), hs256(secret))), reason: "algorithm"},
		{name: "JWKS never fetched", gate: jwksDown, header: auth(makeJWT(t, map[string]any{"alg": "RS256", "kid": "k1"}, claimsFor("alice"), rs256(t, rsaKey))), reason: "jwks_unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkAuthCase(t, b, tc) })
	}
}

// jwksServer serves a JWK Set that a test can rotate or take down, and counts fetches.
type jwksServer struct {
	URL     string
	mu      sync.Mutex
	keys    []map[string]any
	down    bool
	fetches atomic.Int64
}

func newJWKSServer(t *testing.T, keys ...map[string]any) *jwksServer {
	s := &jwksServer{keys: keys}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		down, keys := s.down, s.keys
		s.mu.Unlock()
		if down {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL + "/.well-known/jwks.json"
	return s
}

func (s *jwksServer) set(down bool, keys ...map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down, s.keys = down, keys
}

// TestAuthJWKSRotation: keys from a JWKS URL; an unknown kid triggers a refresh (at most one
// per 10 s), so a rotated key is accepted soon after it is published; while the JWKS server is
// down the last good set keeps working, and a kid it does not hold is jwks_unavailable.
func TestAuthJWKSRotation(t *testing.T) {
	t.Parallel()
	k1, k2, k3 := newRSAKey(t), newRSAKey(t), newRSAKey(t)
	js := newJWKSServer(t, rsaJWK(k1, "k1"))
	b := newRecordingBackend(t)
	g := authGate(t, b.URL, "--jwks-url", js.URL, "--jwt-issuer", testIssuer, "--jwt-audience", testAudience)

	n := 0
	rsTok := func(kid string, key *rsa.PrivateKey) string {
		// A new subject each time, so no verification is served from the gate's cache.
		n++
		return makeJWT(t, map[string]any{"alg": "RS256", "typ": "JWT", "kid": kid}, claimsFor(fmt.Sprintf("user-%d", n)), rs256(t, key))
	}
	status := func(tok string) int {
		resp, _ := upgradeAttempt(t, nil, g.HTTP+"/echo", http.Header{"Authorization": {"Bearer " + tok}})
		return resp.StatusCode
	}

	if got := status(rsTok("k1", k1)); got != http.StatusSwitchingProtocols {
		t.Fatalf("token signed by the published k1: status %d, want 101", got)
	}
	checkAuthCase(t, b, authCase{name: "unknown kid", gate: g, header: http.Header{"Authorization": {"Bearer " + rsTok("k9", k3)}}, reason: "signature"})

	// Rotation: k1 retired, k2 published. The gate learns k2 from the first unknown-kid
	// refresh it allows itself; meanwhile the attempts are refused and fetches stay rare.
	js.set(false, rsaJWK(k2, "k2"))
	before := js.fetches.Load()
	attempts := 0
	waitLong(t, "a token signed by the rotated-in k2 to be accepted", 30*time.Second, func() bool {
		attempts++
		switch got := status(rsTok("k2", k2)); got {
		case http.StatusSwitchingProtocols:
			return true
		case http.StatusUnauthorized:
			time.Sleep(200 * time.Millisecond)
			return false
		default:
			t.Fatalf("token signed by k2: status %d, want 101 or 401", got)
			return false
		}
	})
	if fetched := js.fetches.Load() - before; fetched > 2 {
		t.Errorf("the gate fetched the JWKS %d times for %d unknown-kid attempts, want at most 2 (one refresh per 10 s)", fetched, attempts)
	}
	t.Logf("k2 accepted after %d attempts and %d fetches", attempts, js.fetches.Load()-before)
	if got := status(rsTok("k1", k1)); got != http.StatusUnauthorized {
		t.Errorf("a new token signed by the retired k1: status %d, want 401", got)
	}

	// The JWKS server goes down: the last good set keeps working.
	js.set(true)
	if got := status(rsTok("k2", k2)); got != http.StatusSwitchingProtocols {
		t.Fatalf("token signed by k2 while the JWKS server is down: status %d, want 101", got)
	}
	// A kid the gate does not hold needs a refresh that fails: jwks_unavailable.
	waitLong(t, "an unknown kid to be refused as jwks_unavailable while the JWKS server is down", 30*time.Second, func() bool {
		if got := status(rsTok("k3", k3)); got != http.StatusUnauthorized {
			t.Fatalf("token with the unknown kid k3: status %d, want 401", got)
		}
		if g.Metric(t, mAuthFail, map[string]string{"reason": "jwks_unavailable"}) > 0 {
			return true
		}
		time.Sleep(200 * time.Millisecond)
		return false
	})
	if got := status(rsTok("k2", k2)); got != http.StatusSwitchingProtocols {
		t.Errorf("token signed by k2 after a failed refresh: status %d, want 101 (last good set kept)", got)
	}
}

func TestAuthAnonymousAndOrigin(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	node := startNodeBackend(t)

	t.Run("allow anonymous", func(t *testing.T) {
		t.Parallel()
		g := authGate(t, node, "--jwt-hmac-secret-file", secretFile, "--allow-anonymous")
		c := dialAs(t, g.URL+"/headers", peer{header: http.Header{"X-Auth-Subject": {"mallory"}}})
		v := upstreamSaw(t, c)
		if got, ok := v.Headers["x-auth-subject"]; ok {
			t.Errorf("an anonymous client's spoofed X-Auth-Subject reached the backend as %q", got)
		}
		echoOK(t, c, "anonymous")
		c = dialAs(t, g.URL+"/headers", bearer(hsToken(t, secret, "alice")))
		if got := upstreamSaw(t, c).Headers["x-auth-subject"]; got != "alice" {
			t.Errorf("with a token the backend saw X-Auth-Subject %q, want alice", got)
		}
		// A token that is present but bad is still refused.
		resp, _ := upgradeAttempt(t, nil, g.HTTP+"/echo", http.Header{"Authorization": {"Bearer " + hsToken(t, []byte("not-the-secret-not-the-secret-!!"), "alice")}})
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("bad token under --allow-anonymous: status %d, want 401", resp.StatusCode)
		}
		waitMetric(t, g, mAuthFail, map[string]string{"reason": "signature"}, 1)
	})

	t.Run("allowed origins", func(t *testing.T) {
		t.Parallel()
		b := newRecordingBackend(t)
		g := authGate(t, b.URL, "--jwt-hmac-secret-file", secretFile, "--token-cookie", "session",
			"--allowed-origins", "https://app.example.com", "--allowed-origins", "https://*.trusted.test")
		cookie := "session=" + hsToken(t, secret, "alice")
		for _, tc := range []struct {
			origin string
			want   int
		}{
			{"https://app.example.com", http.StatusSwitchingProtocols},
			{"https://eu.trusted.test", http.StatusSwitchingProtocols},
			{"", http.StatusSwitchingProtocols}, // not a browser
			{"https://evil.example", http.StatusForbidden},
			{"https://app.example.com.evil.example", http.StatusForbidden},
			{"http://app.example.com", http.StatusForbidden},
		} {
			conns := b.conns.Load()
			h := http.Header{"Cookie": {cookie}}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			resp, body := upgradeAttempt(t, nil, g.HTTP+"/echo", h)
			if resp.StatusCode != tc.want {
				t.Errorf("Origin %q with a valid cookie: status %d %q, want %d", tc.origin, resp.StatusCode, body, tc.want)
				continue
			}
			if tc.want == http.StatusSwitchingProtocols {
				// The backend counts its connection on its own goroutine: wait for it, so
				// that the next case's count starts from a settled one.
				waitFor(t, "the backend to count the connection", func() bool { return b.conns.Load() == conns+1 })
			}
			if tc.want == http.StatusForbidden {
				var e struct {
					Code int `json:"code"`
				}
				if json.Unmarshal(body, &e) != nil || e.Code != 403 {
					t.Errorf("Origin %q: body %q, want JSON with code 403", tc.origin, body)
				}
				if b.conns.Load() != conns {
					t.Errorf("Origin %q: the backend accepted a connection", tc.origin)
				}
			}
		}
	})
}

// TestClientIPResolution: the per-IP key and the X-Forwarded-For the backend sees, for an
// untrusted peer that spoofs X-Forwarded-For, trusted proxy chains, IPv6 /64 grouping,
// IPv4-mapped addresses and the PROXY protocol.
func TestClientIPResolution(t *testing.T) {
	t.Parallel()
	node := startNodeBackend(t)
	ipRule := []string{"--ip-rate", "2/30s", "--ip-block", "30s"}

	// send opens /headers as p, returns what the backend saw, sends one message and reports
	// whether it was relayed (true) or refused by the IP rule (false).
	send := func(t *testing.T, g *Gate, p peer) (upstreamView, bool) {
		t.Helper()
		c := dialAs(t, g.URL+"/headers", p)
		v := upstreamSaw(t, c)
		ctx := testCtx(t)
		if err := c.Write(ctx, websocket.MessageText, []byte("counted")); err != nil {
			t.Fatal(err)
		}
		_, msg, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if string(msg) == "counted" {
			return v, true
		}
		parseRefusal(t, msg, "ip")
		wantLimitClose(t, c)
		return v, false
	}
	xff := func(v string) peer { return peer{header: http.Header{"X-Forwarded-For": {v}}} }

	t.Run("untrusted peer spoofing X-Forwarded-For", func(t *testing.T) {
		t.Parallel()
		g := startGate(t, slices.Concat([]string{"--upstream", node, "--user-rate", "0"}, noConnRules, ipRule)...)
		for i, spoof := range []string{"10.1.1.1", "10.2.2.2, 10.3.3.3"} {
			v, ok := send(t, g, xff(spoof))
			if !ok {
				t.Fatalf("message %d refused", i)
			}
			if got := v.Headers["x-forwarded-for"]; got != "127.0.0.1" {
				t.Errorf("XFF %q from an untrusted peer reached the backend as %q, want it replaced by 127.0.0.1", spoof, got)
			}
		}
		// Every spoofed value was the same client, 127.0.0.1: its third message is refused.
		if _, ok := send(t, g, xff("10.4.4.4")); ok {
			t.Errorf("the third message of 127.0.0.1 (spoofing yet another XFF) was relayed under 2/30s")
		}
		if _, ok := send(t, g, xff("10.4.4.4").from("127.0.0.2")); !ok {
			t.Errorf("127.0.0.2 was refused: it has its own budget")
		}
		waitMetric(t, g, mRateLimited, ipMessage, 1)
	})

	t.Run("trusted proxy chain", func(t *testing.T) {
		t.Parallel()
		g := startGate(t, slices.Concat([]string{"--upstream", node, "--user-rate", "0",
			"--trusted-proxies", "127.0.0.1/32", "--trusted-proxies", "10.0.0.0/8"}, noConnRules, ipRule)...)
		v, ok := send(t, g, xff("198.51.100.1, 203.0.113.7, 10.0.0.5"))
		if !ok {
			t.Fatal("first message of 203.0.113.7 refused")
		}
		if got, want := v.Headers["x-forwarded-for"], "198.51.100.1, 203.0.113.7, 10.0.0.5, 127.0.0.1"; got != want {
			t.Errorf("the backend saw X-Forwarded-For %q, want %q (appended by a trusted peer)", got, want)
		}
		// A different spoofed left-most hop does not change the key: 203.0.113.7's second.
		if _, ok := send(t, g, xff("192.0.2.99, 203.0.113.7")); !ok {
			t.Fatal("second message of 203.0.113.7 refused")
		}
		if _, ok := send(t, g, xff("203.0.113.7, 10.1.2.3")); ok {
			t.Error("third message of 203.0.113.7 relayed under 2/30s")
		}
		// Other clients behind the same proxy have their own budgets; an IPv4-mapped IPv6
		// address is the IPv4 client.
		if _, ok := send(t, g, xff("203.0.113.8")); !ok {
			t.Error("203.0.113.8 refused")
		}
		if _, ok := send(t, g, xff("::ffff:203.0.113.8")); !ok {
			t.Error("::ffff:203.0.113.8's message (203.0.113.8's second) refused")
		}
		if _, ok := send(t, g, xff("203.0.113.8")); ok {
			t.Error("203.0.113.8's third message (after one as ::ffff:203.0.113.8) relayed under 2/30s")
		}
		// IPv6 clients are grouped by /64.
		if _, ok := send(t, g, xff("2001:db8::1")); !ok {
			t.Error("2001:db8::1 refused")
		}
		if _, ok := send(t, g, xff("2001:db8::2")); !ok {
			t.Error("2001:db8::2 refused")
		}
		if _, ok := send(t, g, xff("2001:db8::3")); ok {
			t.Error("2001:db8::3 relayed: the /64 had used its 2 messages")
		}
		if _, ok := send(t, g, xff("2001:db8:0:1::1")); !ok {
			t.Error("2001:db8:0:1::1 refused: another /64")
		}
		// An untrusted peer's X-Forwarded-For is replaced, and the peer is the client.
		v, ok = send(t, g, xff("203.0.113.9").from("127.0.0.2"))
		if !ok {
			t.Error("127.0.0.2 refused")
		}
		if got := v.Headers["x-forwarded-for"]; got != "127.0.0.2" {
			t.Errorf("XFF from the untrusted peer 127.0.0.2 reached the backend as %q, want 127.0.0.2", got)
		}
		waitMetric(t, g, mRateLimited, ipMessage, 3)
	})

	t.Run("PROXY protocol", func(t *testing.T) {
		t.Parallel()
		g := startGate(t, slices.Concat([]string{"--upstream", node, "--user-rate", "0", "--ip-rate", "0",
			"--proxy-protocol", "--trusted-proxies", "127.0.0.1/32"}, noConnRules)...)
		hostport := strings.TrimPrefix(g.URL, "ws://")
		for _, tc := range []struct {
			name, header, want string
		}{
			{"v1", "PROXY TCP4 192.0.2.10 127.0.0.1 40000 8080\r\n", "192.0.2.10"},
			{"v1 IPv6", "PROXY TCP6 2001:db8::10 ::1 40000 8080\r\n", "2001:db8::10"},
		} {
			nc, err := net.DialTimeout("tcp", hostport, waitLimit)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { nc.Close() })
			_ = nc.SetDeadline(time.Now().Add(waitLimit))
			req := tc.header + "GET /headers HTTP/1.1\r\nHost: " + hostport + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
				"Sec-WebSocket-Key: " + rawClientKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
			if _, err := io.WriteString(nc, req); err != nil {
				t.Fatal(err)
			}
			rc := &rawConn{Conn: nc}
			rc.br = bufio.NewReader(nc)
			resp, err := http.ReadResponse(rc.br, nil)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("%s: status %d", tc.name, resp.StatusCode)
			}
			f, err := rc.readFrame()
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			v := parseUpstreamView(t, f.payload)
			if got := v.Headers["x-forwarded-for"]; got != tc.want {
				t.Errorf("%s: the backend saw X-Forwarded-For %q, want the PROXY source %s", tc.name, got, tc.want)
			}
		}
	})
}

// TestAuthPerUserLimits: with auth on, the user rules key on the verified subject, not on the
// connection's IP.
func TestAuthPerUserLimits(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)

	t.Run("one user from two IPs shares one budget", func(t *testing.T) {
		t.Parallel()
		b := newRecordingBackend(t)
		g := limitGate(t, b.URL, "--jwt-hmac-secret-file", secretFile, "--user-rate", "4/30s", "--user-block", "30s", "--ip-rate", "0")
		alice := bearer(hsToken(t, secret, "alice"))
		c2 := dialAs(t, g.URL+"/echo", alice.from("127.0.0.2"))
		c3 := dialAs(t, g.URL+"/echo", alice.from("127.0.0.3"))
		echoOK(t, c2, "1 from .2")
		echoOK(t, c3, "2 from .3")
		echoOK(t, c2, "3 from .2")
		echoOK(t, c3, "4 from .3")
		if err := c2.Write(testCtx(t), websocket.MessageText, []byte("5 from .2")); err != nil {
			t.Fatal(err)
		}
		wantRefusal(t, c2, "user")
		// Alice is blocked from everywhere; bob, on the same IPs, is not.
		if err := c3.Write(testCtx(t), websocket.MessageText, []byte("6 from .3")); err != nil {
			t.Fatal(err)
		}
		wantRefusal(t, c3, "user")
		wantRefusal(t, dialAs(t, g.URL+"/echo", alice.from("127.0.0.4")), "user")
		echoOK(t, dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "bob")).from("127.0.0.2")), "bob")
		// A browser-style client (Node ws, token in the subprotocol) refused at the handshake:
		// it opens with the marker protocol, so it can read the JSON and the 4008.
		events := runNodeClient(t, g.URL+"/echo", "--protocols", "wsgate,bearer."+hsToken(t, secret, "alice"))
		wantEvent(t, events, 0, map[string]any{"open": true, "protocol": "wsgate"})
		msg, _ := events[1]["message"].(string)
		parseRefusal(t, []byte(msg), "user")
		wantEvent(t, events, 2, map[string]any{"close": 4008, "reason": "Rate limit"})
		if got := b.msgs.Load(); got != 5 {
			t.Errorf("the backend received %d messages, want 5", got)
		}
		// The two refused handshakes were refused by the message rule's block.
		waitMetric(t, g, mRateLimited, userMessage, 4)
		waitMetric(t, g, mRateLimited, userConn, 0)
	})

	t.Run("two users behind one IP", func(t *testing.T) {
		t.Parallel()
		b := newRecordingBackend(t)
		g := limitGate(t, b.URL, "--jwt-hmac-secret-file", secretFile, "--user-rate", "3/30s", "--user-block", "30s",
			"--ip-rate", "5/30s", "--ip-block", "30s")
		carol := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "carol")).from("127.0.0.5"))
		dave := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "dave")).from("127.0.0.5"))
		for i := range 3 {
			echoOK(t, carol, fmt.Sprintf("carol %d", i))
		}
		// Dave's budget is his own: carol's three messages do not count against it…
		echoOK(t, dave, "dave 0")
		echoOK(t, dave, "dave 1")
		// …but the IP's is shared: the IP's sixth message is refused, by the IP rule.
		if err := dave.Write(testCtx(t), websocket.MessageText, []byte("dave 2")); err != nil {
			t.Fatal(err)
		}
		wantRefusal(t, dave, "ip")
		// Another IP is unaffected.
		echoOK(t, dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "erin")).from("127.0.0.6")), "erin")
		if got := b.msgs.Load(); got != 6 {
			t.Errorf("the backend received %d messages, want 6", got)
		}
		waitMetric(t, g, mRateLimited, ipMessage, 1)
		if got := g.Metric(t, mRateLimited, userMessage); got != 0 {
			t.Errorf("user-scope refusals = %v, want 0", got)
		}
	})

	t.Run("a subject spelled like an IP is not that anonymous client", func(t *testing.T) {
		t.Parallel()
		b := newRecordingBackend(t)
		g := limitGate(t, b.URL, "--jwt-hmac-secret-file", secretFile, "--allow-anonymous",
			"--user-rate", "1/30s", "--user-block", "30s", "--ip-rate", "0")
		anon := dialAs(t, g.URL+"/echo", peer{}.from("127.0.0.7"))
		echoOK(t, anon, "anonymous 127.0.0.7")
		if err := anon.Write(testCtx(t), websocket.MessageText, []byte("again")); err != nil {
			t.Fatal(err)
		}
		wantRefusal(t, anon, "user")
		for _, sub := range []string{"127.0.0.7", "anon:127.0.0.7"} {
			c := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, sub)).from("127.0.0.8"))
			echoOK(t, c, "subject "+sub)
		}
	})
}

// TestAuthCloseOnTokenExpiry: under --close-on-token-expiry an open connection is closed with
// 1008 "token expired" once its token's exp (plus the leeway) passes.
func TestAuthCloseOnTokenExpiry(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g := authGate(t, b.URL, "--jwt-hmac-secret-file", secretFile, "--close-on-token-expiry", "--jwt-leeway", "1s")
	claims := claimsFor("short-lived")
	claims["exp"] = time.Now().Add(3 * time.Second).Unix()
	c := dialAs(t, g.URL+"/echo", bearer(makeJWT(t, map[string]any{"alg": "HS256"}, claims, hs256(secret))))
	echoOK(t, c, "before exp")
	if ce := readClose(t, c); ce.Code != websocket.StatusPolicyViolation || ce.Reason != "token expired" {
		t.Errorf("client got close %d %q, want 1008 \"token expired\"", ce.Code, ce.Reason)
	}
	if ce := b.nextClose(t); ce.Code == -1 {
		t.Errorf("the backend's connection ended without a close frame: %s", ce.Reason)
	}
}
