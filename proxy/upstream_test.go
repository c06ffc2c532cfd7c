package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/auth/clientip"
)

// seen is what a backend saw of one request.
type seen struct {
	header http.Header
	host   string
	uri    string
}

// recordingBackend answers WebSocket handshakes (coder/websocket, then a
// normal close) and plain requests (200 "ok"), and reports every request's
// header, Host and URI on the returned channel.
func recordingBackend(t *testing.T) (*httptest.Server, <-chan seen) {
	t.Helper()
	reqs := make(chan seen, 16)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs <- seen{header: r.Header.Clone(), host: r.Host, uri: r.RequestURI}
		if !isWebSocket(r) {
			_, _ = w.Write([]byte("ok"))
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		_ = c.Close(websocket.StatusNormalClosure, "")
	}))
	t.Cleanup(s.Close)
	return s, reqs
}

// hmacAuth returns a Verifier of HS256 tokens and a function that signs one
// for a subject.
func hmacAuth(t *testing.T) (*auth.Verifier, func(sub string) string) {
	t.Helper()
	v, sign := hmacAuthWith(t, 0)
	return v, func(sub string) string { return sign(sub, time.Now().Add(time.Hour)) }
}

// hmacAuthWith is hmacAuth with the verifier's leeway, and a signer of
// tokens that expire at a given time.
func hmacAuthWith(t *testing.T, leeway time.Duration) (*auth.Verifier, func(sub string, exp time.Time) string) {
	t.Helper()
	secret := []byte("0123456789abcdef0123456789abcdef")
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(context.Background(), auth.Config{HMACSecretFiles: []string{file}, Leeway: leeway})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v, func(sub string, exp time.Time) string {
		tok, err := jwt.NewBuilder().Subject(sub).Expiration(exp).Build()
		if err != nil {
			t.Fatal(err)
		}
		signed, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256, secret))
		if err != nil {
			t.Fatal(err)
		}
		return string(signed)
	}
}

// rawRequest writes one request by hand, so that a test controls every
// header (Connection included), and returns the gate's answer.
func rawRequest(t *testing.T, g *gate, req string) *http.Response {
	t.Helper()
	conn, br := dialRaw(t, g)
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the gate's answer: %v", err)
	}
	return res
}

// upstreamPaths are the two ways a request reaches the backend. Each
// writes a request to path with the given Connection value and extra header
// lines.
var upstreamPaths = []struct {
	name       string
	status     int
	request    func(path, connection, extra string) string
	connection string // the Connection tokens a client of this path sends
}{
	{
		name: "websocket", status: http.StatusSwitchingProtocols, connection: "Upgrade",
		request: func(path, connection, extra string) string {
			return "GET " + path + " HTTP/1.1\r\nHost: gate.test\r\nUpgrade: websocket\r\nConnection: " + connection + "\r\n" +
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n"
		},
	},
	{
		name: "pass-through", status: http.StatusOK, connection: "keep-alive",
		request: func(path, connection, extra string) string {
			return "GET " + path + " HTTP/1.1\r\nHost: gate.test\r\nConnection: " + connection + "\r\n" + extra + "\r\n"
		},
	},
}

func nextSeen(t *testing.T, reqs <-chan seen) seen {
	t.Helper()
	select {
	case s := <-reqs:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("the backend saw no request")
		return seen{}
	}
}

// TestConnectionCannotStripIdentity: a client that names the identity
// header in Connection, as if it were hop-by-hop, does not keep the backend
// from seeing the verified subject: hop-by-hop headers go first, then the
// gate sets its own.
func TestConnectionCannotStripIdentity(t *testing.T) {
	for _, path := range upstreamPaths {
		t.Run(path.name, func(t *testing.T) {
			be, reqs := recordingBackend(t)
			v, token := hmacAuth(t)
			g := newGate(t, be.URL, func(c *Config) { c.Auth = v; c.IdentityHeader = "X-Auth-Subject" })
			extra := "Authorization: Bearer " + token("alice") + "\r\nX-Auth-Subject: mallory\r\nX-Keep: 1\r\n"
			res := rawRequest(t, g, path.request("/x?a=1", path.connection+", X-Auth-Subject, X-Drop", extra+"X-Drop: 1\r\n"))
			res.Body.Close()
			if res.StatusCode != path.status {
				t.Fatalf("status %d, want %d", res.StatusCode, path.status)
			}
			got := nextSeen(t, reqs)
			if sub := got.header.Values("X-Auth-Subject"); len(sub) != 1 || sub[0] != "alice" {
				t.Errorf("the backend saw X-Auth-Subject %q, want the verified subject alone", sub)
			}
			if got.header.Get("X-Drop") != "" || got.header.Get("X-Keep") != "1" {
				t.Errorf("Connection-listed X-Drop %q (want removed), X-Keep %q (want kept)", got.header.Get("X-Drop"), got.header.Get("X-Keep"))
			}
			if a := got.header.Get("Authorization"); a != "" {
				t.Errorf("the backend saw Authorization %q", a)
			}
		})
	}
}

// TestForwardedHeaders: both paths send the backend the same
// X-Forwarded-For, -Proto and -Host: a trusted proxy's are kept (its For
// list with the peer appended), an untrusted client's are replaced by what
// the gate sees.
func TestForwardedHeaders(t *testing.T) {
	const fwd = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example.com\r\n"
	for _, path := range upstreamPaths {
		for _, tc := range []struct {
			trusted           string
			for_, proto, host string
		}{
			{trusted: "127.0.0.0/8", for_: "203.0.113.9, 127.0.0.1", proto: "https", host: "app.example.com"},
			{trusted: "", for_: "127.0.0.1", proto: "http", host: "gate.test"},
		} {
			t.Run(fmt.Sprintf("%s trusted %q", path.name, tc.trusted), func(t *testing.T) {
				be, reqs := recordingBackend(t)
				var r clientip.Resolver
				if tc.trusted != "" {
					p, err := clientip.ParsePrefixes([]string{tc.trusted})
					if err != nil {
						t.Fatal(err)
					}
					r.Trusted = p
				}
				g := newGate(t, be.URL, func(c *Config) { c.ClientIP = r })
				res := rawRequest(t, g, path.request("/x", path.connection, fwd))
				res.Body.Close()
				if res.StatusCode != path.status {
					t.Fatalf("status %d, want %d", res.StatusCode, path.status)
				}
				got := nextSeen(t, reqs)
				for _, h := range []struct{ name, want string }{
					{"X-Forwarded-For", tc.for_}, {"X-Forwarded-Proto", tc.proto}, {"X-Forwarded-Host", tc.host},
				} {
					if v := got.header.Values(h.name); len(v) != 1 || v[0] != h.want {
						t.Errorf("the backend saw %s %q, want %q", h.name, v, h.want)
					}
				}
				if got.host != "gate.test" {
					t.Errorf("the backend saw Host %q, want the client's", got.host)
				}
			})
		}
	}
}

func TestUpstreamKeepAlive(t *testing.T) {
	for raw, want := range map[string]time.Duration{
		"http://127.0.0.1:3000":        -1,
		"http://127.0.0.2:3000":        -1,
		"http://[::1]:3000":            -1,
		"http://localhost:3000":        -1,
		"http://backend.default:3000":  30 * time.Second,
		"https://10.0.0.7":             30 * time.Second,
		"http://localhost.example.com": 30 * time.Second,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := upstreamKeepAlive(u); got != want {
			t.Errorf("%s: keepalive %v, want %v", raw, got, want)
		}
	}
}

// TestHangUpTLSAtOnce hangs up a TLS connection whose peer stopped
// reading: hangUp and close run under the proxy's lock, and tls.Conn's own
// Close would wait up to five seconds to write its close_notify alert.
func TestHangUpTLSAtOnce(t *testing.T) {
	ts := httptest.NewTLSServer(http.NotFoundHandler())
	ts.Close()
	a, b := net.Pipe()
	defer b.Close()
	server := tls.Server(b, &tls.Config{Certificates: ts.TLS.Certificates})
	client := tls.Client(a, &tls.Config{InsecureSkipVerify: true})
	go func() { _ = server.Handshake() }() // then it reads nothing more
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	for _, end := range []func(*side){(*side).hangUp, (*side).close} {
		s := &side{Conn: client, fd: -1}
		done := make(chan struct{})
		go func() { end(s); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Fatal("the side waited for a peer that does not read")
		}
	}
}

// TestConnectionNamedForwardedFor: a trusted proxy that names
// X-Forwarded-For in Connection still has its list passed on: the gate
// took the client's address from it, and the backend sees that client,
// not the proxy.
func TestConnectionNamedForwardedFor(t *testing.T) {
	for _, path := range upstreamPaths {
		t.Run(path.name, func(t *testing.T) {
			be, reqs := recordingBackend(t)
			trusted, err := clientip.ParsePrefixes([]string{"127.0.0.0/8"})
			if err != nil {
				t.Fatal(err)
			}
			g := newGate(t, be.URL, func(c *Config) { c.ClientIP = clientip.Resolver{Trusted: trusted} })
			res := rawRequest(t, g, path.request("/x", path.connection+", X-Forwarded-For", "X-Forwarded-For: 203.0.113.9\r\n"))
			res.Body.Close()
			if res.StatusCode != path.status {
				t.Fatalf("status %d, want %d", res.StatusCode, path.status)
			}
			if v := nextSeen(t, reqs).header.Values("X-Forwarded-For"); len(v) != 1 || v[0] != "203.0.113.9, 127.0.0.1" {
				t.Errorf("the backend saw X-Forwarded-For %q, want the client the gate keyed, then the proxy", v)
			}
		})
	}
}

// TestRulesIPKeyGroupsIPv6: a rules file's key: ip counts an IPv6 client
// under its prefix (--ipv6-prefix), as the flag rules do: addresses of one
// /64 share one budget.
func TestRulesIPKeyGroupsIPv6(t *testing.T) {
	live, lim := rulesAndLimiter(t, "rules:\n  - {name: ip-handshakes, key: ip, count: handshakes, limits: [2/30s]}\n")
	trusted, err := clientip.ParsePrefixes([]string{"127.0.0.1/32"})
	if err != nil {
		t.Fatal(err)
	}
	be, reqs := recordingBackend(t)
	g := newGate(t, be.URL, func(c *Config) {
		c.Limiter, c.Rules = lim, live
		c.ClientIP = clientip.Resolver{Trusted: trusted, IPv6Prefix: 64}
	})
	ws := upstreamPaths[0]
	for i := 1; i <= 4; i++ {
		res := rawRequest(t, g, ws.request("/", ws.connection, fmt.Sprintf("X-Forwarded-For: 2001:db8:1:2::%d\r\n", i)))
		res.Body.Close()
	}
	// An allowed handshake reached the backend before its client got 101.
	if n := len(reqs); n != 2 {
		t.Fatalf("%d of 4 handshakes from one IPv6 /64 reached the backend, want 2", n)
	}
}
