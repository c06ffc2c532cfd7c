package proxy

import (
	"net/http"
	"strings"
	"testing"
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
