package proxy

import (
	"context"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/holo/wsgate/auth"
)

// sameVariableName is how a CGI, Rack or WSGI backend compares header
// names: HTTP_X_AUTH_SUBJECT stands for both X-Auth-Subject and
// X_Auth_Subject.
func sameVariableName(a, b string) bool {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "-")) }
	return norm(a) == norm(b)
}

// TestUnderscoreAliasesDoNotReachBackend: a client header that a CGI-style
// backend reads as one the gate sets or strips (underscores for hyphens,
// any case) never reaches the backend on either path; the gate's own value
// is the only one, and unrelated underscored headers pass.
func TestUnderscoreAliasesDoNotReachBackend(t *testing.T) {
	extra := "X_Auth_Subject: admin\r\n" +
		"x_forwarded_for: 6.6.6.6\r\n" +
		"X_Forwarded_Proto: https\r\n" +
		"X_FORWARDED_HOST: evil.test\r\n" +
		"X_Internal_Role: root\r\n" +
		"X-Legacy-Token: t\r\n" +
		"X_Other: kept\r\n"
	want := map[string]string{
		"X-Auth-Subject":    "alice",
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Host":  "gate.test",
		"X-Internal-Role":   "",
		"X-Legacy-Token":    "",
	}
	for _, path := range upstreamPaths {
		t.Run(path.name, func(t *testing.T) {
			be, reqs := recordingBackend(t)
			v, token := hmacAuth(t)
			g := newGate(t, be.URL, func(c *Config) {
				c.Auth = v
				c.IdentityHeader = "X-Auth-Subject"
				// A strip-header written with underscores covers the
				// hyphenated spelling too.
				c.StripHeaders = []string{"X-Internal-Role", "X_Legacy_Token"}
			})
			res := rawRequest(t, g, path.request("/x", path.connection, "Authorization: Bearer "+token("alice")+"\r\n"+extra))
			res.Body.Close()
			if res.StatusCode != path.status {
				t.Fatalf("status %d, want %d", res.StatusCode, path.status)
			}
			got := nextSeen(t, reqs)
			for name, value := range want {
				var seen []string
				for k, vs := range got.header {
					if sameVariableName(k, name) {
						for _, v := range vs {
							seen = append(seen, k+": "+v)
						}
					}
				}
				switch {
				case value == "" && len(seen) > 0:
					t.Errorf("the backend saw %q, want no %s", seen, name)
				case value != "" && (len(seen) != 1 || seen[0] != name+": "+value):
					t.Errorf("the backend saw %q, want %s: %s alone", seen, name, value)
				}
			}
			if o := got.header.Values("X_Other"); len(o) != 1 || o[0] != "kept" {
				t.Errorf("the backend saw X_Other %q, want it kept", o)
			}
		})
	}
}

// TestSkipAuthRouteNeedsCleanPath: a route that skips authentication
// admits a request without a token only when its path is clean; one with
// dot segments, doubled slashes or an encoded slash, which a backend may
// resolve to a path outside the route, needs a token like any other.
func TestSkipAuthRouteNeedsCleanPath(t *testing.T) {
	be, reqs := recordingBackend(t)
	v, token := hmacAuth(t)
	rt, err := ParseRoute("GET=^/public/")
	if err != nil {
		t.Fatal(err)
	}
	g := newGate(t, be.URL, func(c *Config) { c.Auth = v; c.SkipAuth = []Route{rt} })
	bearer := "Authorization: Bearer " + token("alice") + "\r\n"
	for _, tc := range []struct {
		path string
		open bool // admitted without a token
	}{
		{"/public/app.js", true},
		{"/public/", true},
		{"/public/dir/", true},
		{"/public/a%20b", true},
		{"/secret", false},
		{"/public/../secret", false},
		{"/public/%2e%2e/secret", false},
		{"/public/%2E%2E/secret", false},
		{"/public/..%2fsecret", false},
		{"/public/a%2Fb", false},
		{"/public/./app.js", false},
		{"/public//app.js", false},
	} {
		t.Run(tc.path, func(t *testing.T) {
			for _, header := range []string{"", bearer} {
				res := rawRequest(t, g, "GET "+tc.path+" HTTP/1.1\r\nHost: gate.test\r\n"+header+"\r\n")
				res.Body.Close()
				want := http.StatusUnauthorized
				if tc.open || header != "" {
					want = http.StatusOK
				}
				if res.StatusCode != want {
					t.Fatalf("token %v: status %d, want %d", header != "", res.StatusCode, want)
				}
				if res.StatusCode == http.StatusOK {
					nextSeen(t, reqs)
				}
			}
		})
	}
}

// TestTokenExpiryHonoursLeeway: under CloseOnTokenExpiry a connection lives
// as long as its token would still be accepted, until exp plus the
// verifier's leeway, not only until exp: a token accepted within the leeway
// is not followed by an immediate close, and is closed with 1008 once the
// leeway has run out.
func TestTokenExpiryHonoursLeeway(t *testing.T) {
	const leeway = 4 * time.Second
	v, sign := hmacAuthWith(t, leeway)
	// A short close timeout makes the keeper sweep every 10ms.
	g := newGate(t, backend(t).URL, func(c *Config) { c.Auth = v; c.CloseOnTokenExpiry = true; c.CloseTimeout = 40 * time.Millisecond })

	exp := time.Now().Add(-time.Second).Truncate(time.Second)
	c := dial(t, wsURL(g.Server, "/echo"), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + sign("svc", exp)}}})
	time.Sleep(100 * time.Millisecond) // ten sweeps
	if time.Now().After(exp.Add(leeway - 200*time.Millisecond)) {
		// exp+leeway was 2 s away at least: the machine stalled that long.
		t.Fatal("too slow to see the connection inside its leeway")
	}
	if err := c.Write(ctx5(t), websocket.MessageText, []byte("hi")); err != nil {
		t.Fatalf("a token inside its leeway: write: %v", err)
	}
	if _, b, err := c.Read(ctx5(t)); err != nil || string(b) != "hi" {
		t.Fatalf("a token inside its leeway: read %q, %v; want the echo", b, err)
	}
	_, _, err := c.Read(ctx5(t))
	if code := websocket.CloseStatus(err); code != websocket.StatusPolicyViolation {
		t.Fatalf("after the leeway: %v, want close 1008", err)
	}
	if late := time.Since(exp.Add(leeway)); late < 0 {
		t.Errorf("closed %v before exp plus the leeway", -late)
	}
}

// TestTokenExpiryArithmetic: the keeper's expiry check allows the
// verifier's leeway without wrapping near the end of int64, and an exp
// that int64 nanoseconds cannot hold is kept as no expiry (after) or long
// past (before), never as UnixNano's wrapped value.
func TestTokenExpiryArithmetic(t *testing.T) {
	const leeway = 30 * time.Second
	v, err := auth.NewVerifier(context.Background(), auth.Config{Leeway: leeway})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		exp     time.Time
		nanos   int64
		expired bool
	}{
		{name: "none", exp: time.Time{}, nanos: 0},
		{name: "in an hour", exp: now.Add(time.Hour), nanos: now.Add(time.Hour).UnixNano()},
		{name: "inside the leeway", exp: now.Add(-leeway + time.Second), nanos: now.Add(-leeway + time.Second).UnixNano()},
		{name: "at the leeway's end", exp: now.Add(-leeway), nanos: now.Add(-leeway).UnixNano(), expired: true},
		{name: "last nanosecond of int64", exp: time.Unix(0, math.MaxInt64), nanos: math.MaxInt64},
		{name: "past int64", exp: time.Unix(0, math.MaxInt64).Add(time.Nanosecond), nanos: 0},
		{name: "year 2600", exp: time.Date(2600, 1, 1, 0, 0, 0, 0, time.UTC), nanos: 0},
		{name: "year 9999", exp: time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), nanos: 0},
		{name: "year 1000", exp: time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC), nanos: math.MinInt64, expired: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nanos := expiryNanos(tc.exp)
			if nanos != tc.nanos {
				t.Errorf("expiryNanos %d, want %d", nanos, tc.nanos)
			}
			p := &Proxy{cfg: Config{Auth: v}}
			if got := (&pair{expiry: p.tokenExpiry(tc.exp)}).tokenExpired(now.UnixNano()); got != tc.expired {
				t.Errorf("tokenExpired %v, want %v", got, tc.expired)
			}
		})
	}
}

// TestFarTokenExpiryStaysOpen: a token whose exp is past what int64
// nanoseconds hold (year 9999) is one that never expires while the gate
// runs, not one whose wrapped exp has passed.
func TestFarTokenExpiryStaysOpen(t *testing.T) {
	v, sign := hmacAuthWith(t, 0)
	g := newGate(t, backend(t).URL, func(c *Config) { c.Auth = v; c.CloseOnTokenExpiry = true; c.CloseTimeout = 40 * time.Millisecond })
	for _, exp := range []time.Time{time.Date(2600, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)} {
		c := dial(t, wsURL(g.Server, "/echo"), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + sign("svc", exp)}}})
		time.Sleep(100 * time.Millisecond) // ten sweeps
		if err := c.Write(ctx5(t), websocket.MessageText, []byte("hi")); err != nil {
			t.Fatalf("exp %v: write: %v", exp.Year(), err)
		}
		if _, b, err := c.Read(ctx5(t)); err != nil || string(b) != "hi" {
			t.Fatalf("exp %v: read %q, %v; want the echo", exp.Year(), b, err)
		}
	}
}
