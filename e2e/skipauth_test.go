//go:build e2e

package e2e

// Paths that need no token (--skip-auth-route, --skip-auth-preflight, --health-passthrough) and
// CORS headers on the gate's own errors, through the built binary in front of the Node app.

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// request sends method path to g with headers (name, value pairs) and returns the status, the
// headers and the body.
func request(t *testing.T, client *http.Client, g *Gate, method, path string, headers ...string) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, g.HTTP+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

// TestSkipAuthRoutes: with authentication on, the health check, the skipped routes and CORS
// preflights reach the backend without a token, while the app's other routes and /socket.io/
// still need one. Skipped requests count under the IP rules (anonymous, keyed by IP); the health
// check counts under none.
func TestSkipAuthRoutes(t *testing.T) {
	t.Parallel()
	_, secretFile := newHMACSecret(t)
	g := limitGate(t, startNodeBackend(t), "--jwt-hmac-secret-file", secretFile,
		"--skip-auth-route", "POST=^/login$", "--skip-auth-route", `GET=^/app/`,
		"--skip-auth-preflight", "--health-passthrough", "/health",
		"--user-rate", "100/30s", "--ip-rate", "6/30s", "--ip-block", "30s")
	client := loopbackClient(t, "127.0.0.2")
	preflight := []string{"Origin", "http://app.test", "Access-Control-Request-Method", "GET",
		"Access-Control-Request-Headers", "authorization"}
	for _, tc := range []struct {
		method, path string
		headers      []string
		status       int
		body         string
	}{
		{"GET", "/health", nil, 200, "ok"},
		{"POST", "/login", nil, 200, `{"login":"ok"}`},
		{"GET", "/app/index.html", nil, 200, "<!doctype html>"},
		{"OPTIONS", "/api/me", preflight, 204, ""},
		{"OPTIONS", "/socket.io/?EIO=4&transport=polling", preflight, 204, ""},
		// Not skipped: the method does not match, or the path is the app's API or socket.io.
		{"GET", "/login", nil, 401, `"code":401`},
		{"GET", "/api/me", nil, 401, `"code":401`},
		{"OPTIONS", "/api/me", nil, 401, `"code":401`},
		{"GET", "/socket.io/?EIO=4&transport=polling", nil, 401, `"code":401`},
	} {
		status, hdr, body := request(t, client, g, tc.method, tc.path, tc.headers...)
		if status != tc.status || !strings.Contains(body, tc.body) {
			t.Errorf("%s %s: %d %q, want %d with %q", tc.method, tc.path, status, body, tc.status, tc.body)
		}
		// The socket.io server answers its preflights itself, with its CORS
		// headers; the app's own routes carry X-Backend.
		if status < 400 && hdr.Get("X-Backend") != "node" && hdr.Get("Access-Control-Allow-Origin") != "http://app.test" {
			t.Errorf("%s %s: %d without X-Backend: it did not come from the backend", tc.method, tc.path, status)
		}
	}
	// Four of them reached the backend without a token and counted under the IP rule (the
	// health check is not counted, the 401s never reach the rules): two more are allowed, the
	// seventh is refused.
	for i := 5; i <= 6; i++ {
		if status, _, body := request(t, client, g, "POST", "/login"); status != 200 {
			t.Fatalf("request %d of the IP: %d %q, want 200", i, status, body)
		}
	}
	if status, _, body := request(t, client, g, "POST", "/login"); status != http.StatusTooManyRequests {
		t.Fatalf("request 7 of the IP: %d %q, want 429", status, body)
	}
	if status, _, body := request(t, client, g, "GET", "/health"); status != 200 {
		t.Fatalf("the health check while the IP is blocked: %d %q, want 200", status, body)
	}
	waitMetric(t, g, mRateLimited, ipMessage, 1)
}

// TestCORSOnGateErrors: the gate's own 401 and 429 carry CORS headers for an allowed origin, so
// that a browser can read them; a foreign origin gets the 403 without them.
func TestCORSOnGateErrors(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	g := limitGate(t, startNodeBackend(t), "--jwt-hmac-secret-file", secretFile,
		"--allowed-origins", "http://app.test", "--user-rate", "1/30s", "--user-block", "30s", "--ip-rate", "0")
	const origin = "http://app.test"
	wantCORS := func(what string, hdr http.Header) {
		t.Helper()
		if hdr.Get("Access-Control-Allow-Origin") != origin || hdr.Get("Access-Control-Allow-Credentials") != "true" {
			t.Errorf("%s: Access-Control-Allow-Origin %q, -Credentials %q, want %q and true", what,
				hdr.Get("Access-Control-Allow-Origin"), hdr.Get("Access-Control-Allow-Credentials"), origin)
		}
		if !strings.Contains(strings.ToLower(hdr.Get("Access-Control-Expose-Headers")), "retry-after") {
			t.Errorf("%s: Access-Control-Expose-Headers %q, want Retry-After exposed", what, hdr.Get("Access-Control-Expose-Headers"))
		}
	}
	status, hdr, body := request(t, httpClient, g, "GET", "/socket.io/?EIO=4&transport=polling", "Origin", origin)
	if status != http.StatusUnauthorized {
		t.Fatalf("without a token: %d %q, want 401", status, body)
	}
	wantCORS("the 401", hdr)

	tok := "Bearer " + hsToken(t, secret, "alice")
	if status, _, body := request(t, httpClient, g, "GET", "/api/me", "Origin", origin, "Authorization", tok); status != 200 {
		t.Fatalf("alice's first request: %d %q, want 200", status, body)
	}
	status, hdr, body = request(t, httpClient, g, "GET", "/api/me", "Origin", origin, "Authorization", tok)
	if status != http.StatusTooManyRequests {
		t.Fatalf("alice's second request: %d %q, want 429", status, body)
	}
	wantCORS("the 429", hdr)

	status, hdr, _ = request(t, httpClient, g, "GET", "/api/me", "Origin", "http://evil.test")
	if status != http.StatusForbidden || hdr.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("a foreign origin: %d with Access-Control-Allow-Origin %q, want 403 without", status, hdr.Get("Access-Control-Allow-Origin"))
	}
}

// TestCORSWithoutAllowedOrigins: with no --allowed-origins the gate's own errors are readable
// from any origin, but as "*" without credentials: echoing every origin with credentials would let
// any site read, with a visitor's cookie, whether the gate refuses that visitor.
func TestCORSWithoutAllowedOrigins(t *testing.T) {
	t.Parallel()
	_, secretFile := newHMACSecret(t)
	g := limitGate(t, startNodeBackend(t), "--jwt-hmac-secret-file", secretFile, "--token-cookie", "session")
	status, hdr, body := request(t, httpClient, g, "GET", "/api/me", "Origin", "http://any.test", "Cookie", "session=not-a-token")
	if status != http.StatusUnauthorized {
		t.Fatalf("a bad cookie: %d %q, want 401", status, body)
	}
	if hdr.Get("Access-Control-Allow-Origin") != "*" || hdr.Get("Access-Control-Allow-Credentials") != "" {
		t.Errorf("Access-Control-Allow-Origin %q, -Credentials %q, want * and none",
			hdr.Get("Access-Control-Allow-Origin"), hdr.Get("Access-Control-Allow-Credentials"))
	}
}
