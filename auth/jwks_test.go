package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// jwksServer serves a mutable JWK Set, or 503 while down.
type jwksServer struct {
	*httptest.Server
	body atomic.Pointer[[]byte]
	down atomic.Bool
	hits atomic.Int32
}

func newJWKSServer(t *testing.T, keys ...jwk.Key) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(*s.body.Load())
	}))
	t.Cleanup(s.Close)
	s.set(t, keys...)
	return s
}

func (s *jwksServer) set(t *testing.T, keys ...jwk.Key) {
	set := jwk.NewSet()
	for _, k := range keys {
		set.AddKey(k)
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.body.Store(&b)
}

// pubJWK returns the public JWK of priv with kid and, unless alg is "",
// an alg member.
func pubJWK(t *testing.T, priv any, kid string, alg jwa.SignatureAlgorithm) jwk.Key {
	k, err := jwk.FromRaw(priv)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := jwk.PublicKeyOf(k)
	if err != nil {
		t.Fatal(err)
	}
	pub.Set(jwk.KeyIDKey, kid)
	if alg != "" {
		pub.Set(jwk.AlgorithmKey, alg)
	}
	return pub
}

// TestJWKSRotation documents the reasons while the JWKS changes and fails:
// an unknown kid after a successful refresh is "signature" (the issuer does
// not know that key either); an unknown kid whose refresh failed is
// "jwks_unavailable" (we cannot tell); a known kid keeps verifying with the
// last good set while the server is down.
func TestJWKSRotation(t *testing.T) {
	k := mustKeys(t)
	srv := newJWKSServer(t, pubJWK(t, k.rsa, "k1", "")) // no alg: inferred from the key type
	clk := newClock(t0)
	v := newTestVerifier(t, Config{JWKSURL: srv.URL, Now: clk.Now, CacheSize: -1})
	if !v.Enabled() || srv.hits.Load() != 1 {
		t.Fatalf("enabled %v, hits %d", v.Enabled(), srv.hits.Load())
	}
	auth := func(tok string) string {
		_, err := v.Authenticate(context.Background(), reqWith(tok, "header"))
		return reasonOf(err)
	}
	tok1 := sign(t, jwa.RS256, k.rsa, "k1", validClaims())
	tok2 := sign(t, jwa.RS256, k.rsa2, "k2", validClaims())
	tok3 := sign(t, jwa.ES256, k.ec, "k3", validClaims())

	steps := []struct {
		name     string
		do       func()
		tok      string
		reason   string
		wantHits int32
	}{
		{name: "known kid", tok: tok1, wantHits: 1},
		{name: "ps256 on an alg-less rsa key", tok: sign(t, jwa.PS256, k.rsa, "k1", validClaims()), wantHits: 1},
		{name: "hs256 with the rsa key's kid", tok: sign(t, jwa.HS256, k.rsaPEM, "k1", validClaims()), reason: ReasonAlgorithm, wantHits: 1},
		{name: "unknown kid within 10s of the last fetch: no fetch", tok: tok2, reason: ReasonSignature, wantHits: 1},
		{name: "rotation picked up by the refresh on unknown kid",
			do: func() {
				srv.set(t, pubJWK(t, k.rsa, "k1", jwa.RS256), pubJWK(t, k.rsa2, "k2", jwa.RS256))
				clk.Add(11 * time.Second)
			},
			tok: tok2, wantHits: 2},
		{name: "old kid still in the set", tok: tok1, wantHits: 2},
		{name: "alg not the key's alg", tok: sign(t, jwa.PS256, k.rsa, "k1", validClaims()), reason: ReasonAlgorithm, wantHits: 2},
		{name: "unknown kid, rate-limited", tok: sign(t, jwa.RS256, k.rsa, "k9", validClaims()), reason: ReasonSignature, wantHits: 2},
		{name: "unknown kid after 10s: refresh, still unknown", do: func() { clk.Add(11 * time.Second) }, tok: sign(t, jwa.RS256, k.rsa, "k9", validClaims()), reason: ReasonSignature, wantHits: 3},
		{name: "es256 while the set holds only rsa keys", tok: tok3, reason: ReasonAlgorithm, wantHits: 3},
		{name: "server down: known kid verifies from the last good set",
			do:  func() { srv.down.Store(true); clk.Add(11 * time.Second) },
			tok: tok2, wantHits: 3},
		{name: "server down: unknown kid", do: func() { clk.Add(11 * time.Second) }, tok: tok3, reason: ReasonJWKSUnavailable, wantHits: 4},
		{name: "server down: unknown kid, rate-limited", tok: tok3, reason: ReasonJWKSUnavailable, wantHits: 4},
		{name: "server back: new key", do: func() {
			srv.down.Store(false)
			srv.set(t, pubJWK(t, k.rsa2, "k2", ""), pubJWK(t, k.ec, "k3", ""))
			clk.Add(11 * time.Second)
		}, tok: tok3, wantHits: 5},
		{name: "removed kid", tok: tok1, reason: ReasonSignature, wantHits: 5},
	}
	for _, s := range steps {
		if s.do != nil {
			s.do()
		}
		if got := auth(s.tok); got != s.reason {
			t.Fatalf("%s: reason %q, want %q", s.name, got, s.reason)
		}
		if h := srv.hits.Load(); h != s.wantHits {
			t.Fatalf("%s: %d fetches, want %d", s.name, h, s.wantHits)
		}
	}
}

func TestJWKSDownAtStart(t *testing.T) {
	k := mustKeys(t)
	srv := newJWKSServer(t)
	srv.down.Store(true)
	clk := newClock(t0)
	v := newTestVerifier(t, Config{JWKSURL: srv.URL, Now: clk.Now})
	tok := sign(t, jwa.RS256, k.rsa, "k1", validClaims())
	if _, err := v.Authenticate(context.Background(), reqWith(tok, "header")); reasonOf(err) != ReasonJWKSUnavailable {
		t.Fatalf("got %v", err)
	}
	srv.down.Store(false)
	srv.set(t, pubJWK(t, k.rsa, "k1", ""))
	clk.Add(11 * time.Second)
	if _, err := v.Authenticate(context.Background(), reqWith(tok, "header")); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

// TestJWKSCloseAbortsFetch checks that Close does not wait for a hanging
// JWKS server and leaves no goroutine behind (goleak in TestMain). The
// start-up fetch that NewVerifier stopped waiting for at its context's
// deadline goes on under the verifier; a token waits for it, and Close
// aborts it.
func TestJWKSCloseAbortsFetch(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	clk := newClock(t0)
	v, err := NewVerifier(ctx, Config{JWKSURL: srv.URL, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	<-arrived // the start-up fetch, still under way
	clk.Add(11 * time.Second)
	waiting := make(chan struct{}, 1)
	v.jwks.waiting = func() { waiting <- struct{}{} }
	done := make(chan string)
	go func() {
		tok := sign(t, jwa.RS256, mustKeys(t).rsa, "k1", validClaims())
		_, err := v.Authenticate(context.Background(), reqWith(tok, "header"))
		done <- reasonOf(err)
	}()
	<-waiting
	v.Close()
	select {
	case r := <-done:
		if r != ReasonJWKSUnavailable {
			t.Fatalf("reason %q, want %q", r, ReasonJWKSUnavailable)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Authenticate still blocked on the JWKS fetch after Close")
	}
	if n := len(arrived); n != 0 {
		t.Fatalf("%d more fetches, want none: the token waits for the one under way", n)
	}
}

// TestJWKSRefreshOutlivesCaller: the refresh that a token with an unknown
// kid starts belongs to the verifier, not to the request that needed it. A
// client that hangs up while it waits does not abort it, so the rotated-in
// key is there for the next token instead of a 10s jwks_unavailable.
func TestJWKSRefreshOutlivesCaller(t *testing.T) {
	k := mustKeys(t)
	set := func(keys ...jwk.Key) []byte {
		s := jwk.NewSet()
		for _, key := range keys {
			s.AddKey(key)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	before := set(pubJWK(t, k.rsa, "k1", jwa.RS256))
	after := set(pubJWK(t, k.rsa, "k1", jwa.RS256), pubJWK(t, k.rsa2, "k2", jwa.RS256))
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Write(before)
			return
		}
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write(after)
	}))
	defer srv.Close()
	clk := newClock(t0)
	v := newTestVerifier(t, Config{JWKSURL: srv.URL, Now: clk.Now, CacheSize: -1})
	tok2 := sign(t, jwa.RS256, k.rsa2, "k2", validClaims())
	clk.Add(11 * time.Second) // past the rate limit of on-demand refreshes

	ctx, hangUp := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := v.Authenticate(ctx, reqWith(tok2, "header"))
		first <- err
	}()
	<-arrived // the refresh for k2 reached the JWKS server
	hangUp()
	if err := <-first; err == nil {
		t.Fatal("a client that hung up before the refresh answered was admitted")
	}
	close(release)
	if _, err := v.Authenticate(context.Background(), reqWith(tok2, "header")); err != nil {
		t.Fatalf("the next token with the rotated-in kid: %v (reason %q)", err, reasonOf(err))
	}
	if h := hits.Load(); h != 2 {
		t.Fatalf("%d fetches, want 2 (the start and one refresh)", h)
	}
}

// TestCacheForgetsRevokedKey: a token verified by a JWKS key is admitted
// from the cache only while that key is in the set; once a refresh drops
// the key, the token is verified again and refused. Without a kid every key
// of the alg is a candidate, and the cache remembers the one that verified.
func TestCacheForgetsRevokedKey(t *testing.T) {
	for _, withKid := range []bool{true, false} {
		t.Run(fmt.Sprintf("kid %v", withKid), func(t *testing.T) {
			k := mustKeys(t)
			srv := newJWKSServer(t, pubJWK(t, k.rsa, "k1", jwa.RS256), pubJWK(t, k.rsa2, "k2", jwa.RS256))
			clk := newClock(t0)
			v := newTestVerifier(t, Config{JWKSURL: srv.URL, Now: clk.Now})
			auth := func(tok string) string {
				_, err := v.Authenticate(context.Background(), reqWith(tok, "header"))
				return reasonOf(err)
			}
			kid1, kid2 := "", ""
			if withKid {
				kid1, kid2 = "k1", "k2"
			}
			tok1 := sign(t, jwa.RS256, k.rsa, kid1, validClaims())
			tok2 := sign(t, jwa.RS256, k.rsa2, kid2, validClaims())
			for _, tok := range []string{tok1, tok2, tok1, tok2} {
				if r := auth(tok); r != "" {
					t.Fatalf("before the rotation: reason %q", r)
				}
			}
			if n := v.cache.len(); n != 2 {
				t.Fatalf("%d cached tokens, want 2", n)
			}

			// The issuer revokes k1. An unknown kid makes the verifier refresh.
			srv.set(t, pubJWK(t, k.rsa2, "k2", jwa.RS256))
			clk.Add(11 * time.Second)
			if r := auth(sign(t, jwa.RS256, k.rsa, "k9", validClaims())); r != ReasonSignature {
				t.Fatalf("unknown kid: reason %q, want %q", r, ReasonSignature)
			}
			if h := srv.hits.Load(); h != 2 {
				t.Fatalf("%d fetches, want 2", h)
			}
			if r := auth(tok1); r != ReasonSignature {
				t.Fatalf("a cached token of the revoked key: reason %q, want %q", r, ReasonSignature)
			}
			if r := auth(tok2); r != "" {
				t.Fatalf("a cached token of a key still in the set: reason %q", r)
			}
		})
	}
}

// TestJWKSRefusesSymmetricKeys: a JWK Set is published, so an "oct" key in
// it is a secret anyone can read; it never verifies a token.
func TestJWKSRefusesSymmetricKeys(t *testing.T) {
	k := mustKeys(t)
	oct, err := jwk.FromRaw(k.secret)
	if err != nil {
		t.Fatal(err)
	}
	oct.Set(jwk.KeyIDKey, "h1")
	hs := sign(t, jwa.HS256, k.secret, "h1", validClaims())

	srv := newJWKSServer(t, oct, pubJWK(t, k.rsa, "k1", jwa.RS256))
	v := newTestVerifier(t, Config{JWKSURL: srv.URL, CacheSize: -1})
	if _, err := v.Authenticate(context.Background(), reqWith(hs, "header")); reasonOf(err) != ReasonAlgorithm {
		t.Fatalf("hs256 token signed with the set's oct key: %v, want reason %q", err, ReasonAlgorithm)
	}
	if _, err := v.Authenticate(context.Background(), reqWith(sign(t, jwa.RS256, k.rsa, "k1", validClaims()), "header")); err != nil {
		t.Fatalf("the set's rsa key: %v", err)
	}

	only := newJWKSServer(t, oct)
	v = newTestVerifier(t, Config{JWKSURL: only.URL, CacheSize: -1})
	if _, err := v.Authenticate(context.Background(), reqWith(hs, "header")); reasonOf(err) != ReasonJWKSUnavailable {
		t.Fatalf("a set of nothing but an oct key: %v, want reason %q", err, ReasonJWKSUnavailable)
	}
}

// TestJWKSLogsNoSecret: a JWKS URL may carry credentials (user:password, an
// API key in the query); no log line, JWKS error or config error quotes them,
// whether the server answers with an error status or cannot be reached (the
// HTTP client's error quotes the URL it was given).
func TestJWKSLogsNoSecret(t *testing.T) {
	const secret = "s3cret-pa55"
	srv := newJWKSServer(t)
	srv.down.Store(true)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, tc := range []struct{ name, base string }{
		{"error status", srv.URL},
		{"unreachable", closed.URL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf lockedBuffer
			u := strings.Replace(tc.base, "http://", "http://jwks:"+secret+"@", 1) + "/keys?api_key=" + secret + "&kid=" + secret
			v := newTestVerifier(t, Config{JWKSURL: u, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
			tok := sign(t, jwa.RS256, mustKeys(t).rsa, "k1", validClaims())
			_, err := v.Authenticate(context.Background(), reqWith(tok, "header"))
			if err == nil {
				t.Fatal("verified with no JWKS")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error quotes the secret: %v", err)
			}
			v.Close() // waits for the fetch, which logs after its waiters were released
			out := buf.String()
			if !strings.Contains(out, "jwks refresh failed") {
				t.Fatalf("no refresh failure logged:\n%s", out)
			}
			if strings.Contains(out, secret) {
				t.Errorf("log quotes the secret:\n%s", out)
			}
		})
	}
	err := Config{JWKSURL: "ftp://jwks:" + secret + "@issuer.test/keys?api_key=" + secret}.Validate()
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("Validate: %v: want an error without the secret", err)
	}
}

// lockedBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
