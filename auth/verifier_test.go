package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is an injected, settable time source.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock    { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

type testKeys struct {
	secret  []byte
	rsa     *rsa.PrivateKey
	rsa2    *rsa.PrivateKey
	ec      *ecdsa.PrivateKey
	rsaPEM  []byte // public key PEM
	rsa2PEM []byte
}

var (
	keysOnce sync.Once
	keys     testKeys
)

func mustKeys(t testing.TB) *testKeys {
	keysOnce.Do(func() {
		keys.secret = make([]byte, 32)
		rand.Read(keys.secret)
		var err error
		if keys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if keys.rsa2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if keys.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		der, _ := x509.MarshalPKIXPublicKey(&keys.rsa.PublicKey)
		keys.rsaPEM = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		der, _ = x509.MarshalPKIXPublicKey(&keys.rsa2.PublicKey)
		keys.rsa2PEM = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	})
	return &keys
}

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type claims map[string]any

func validClaims() claims {
	return claims{"sub": "user-1", "iss": "https://issuer.test", "aud": "wsgate",
		"exp": t0.Add(time.Hour).Unix(), "iat": t0.Add(-time.Minute).Unix()}
}

// sign builds a compact JWS; kid "" means no kid header.
func sign(t testing.TB, alg jwa.SignatureAlgorithm, key any, kid string, c claims) string {
	t.Helper()
	tok := jwt.New()
	for k, v := range c {
		if err := tok.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	hdr := jws.NewHeaders()
	if kid != "" {
		hdr.Set(jws.KeyIDKey, kid)
	}
	out, err := jwt.Sign(tok, jwt.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// rawToken assembles header.payload.signature from JSON parts (for alg=none
// and other tokens jwx refuses to sign).
func rawToken(t testing.TB, header, payload any, sig string) string {
	t.Helper()
	h, _ := json.Marshal(header)
	p, _ := json.Marshal(payload)
	return b64(h) + "." + b64(p) + "." + sig
}

func b64(b []byte) string {
	return base64.RawURLEncoding.EncodeToString(b)
}

func newTestVerifier(t testing.TB, cfg Config) *Verifier {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return t0 }
	}
	v, err := NewVerifier(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

func reqWith(tok string, where string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://gate.test/ws", nil)
	switch where {
	case "header":
		r.Header.Set("Authorization", "Bearer "+tok)
	case "query":
		r.URL.RawQuery = "access_token=" + tok
	case "subprotocol":
		r.Header.Add("Sec-WebSocket-Protocol", "wsgate, bearer."+tok)
	case "cookie":
		r.AddCookie(&http.Cookie{Name: "session", Value: tok})
	}
	return r
}

func reasonOf(err error) string {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Reason
	}
	if err != nil {
		return "non-auth error: " + err.Error()
	}
	return ""
}

func TestAuthenticate(t *testing.T) {
	k := mustKeys(t)
	hsFile := writeFile(t, "secret", k.secret)
	pemFile := writeFile(t, "rsa.pem", k.rsaPEM)
	ecJWK, _ := jwk.FromRaw(&k.ec.PublicKey)
	ecJWK.Set(jwk.KeyIDKey, "ec1")
	ecJSON, _ := json.Marshal(ecJWK)
	ecFile := writeFile(t, "ec.jwk", ecJSON)

	base := Config{HMACSecretFiles: []string{hsFile}, KeyFiles: []string{pemFile}, Issuer: "https://issuer.test",
		Audiences: []string{"other", "wsgate"}, Cookie: "session", Leeway: 30 * time.Second, CacheSize: -1}
	with := func(f func(*claims)) claims { c := validClaims(); f(&c); return c }
	hs := func(c claims) string { return sign(t, jwa.HS256, k.secret, "", c) }
	rs := func(c claims) string { return sign(t, jwa.RS256, k.rsa, "", c) }

	tests := []struct {
		name   string
		cfg    *Config // nil = base
		tok    string
		where  string
		reason string // "" = accepted
	}{
		{name: "hs256 header", tok: hs(validClaims()), where: "header"},
		{name: "hs256 query", tok: hs(validClaims()), where: "query"},
		{name: "hs256 subprotocol", tok: hs(validClaims()), where: "subprotocol"},
		{name: "hs256 cookie", tok: hs(validClaims()), where: "cookie"},
		{name: "rs256 pem", tok: rs(validClaims()), where: "header"},
		{name: "ps256 pem", tok: sign(t, jwa.PS256, k.rsa, "", validClaims()), where: "header"},
		{name: "hs512", tok: sign(t, jwa.HS512, k.secret, "", validClaims()), where: "header"},
		{name: "es256 jwk file", cfg: &Config{KeyFiles: []string{ecFile}}, tok: sign(t, jwa.ES256, k.ec, "ec1", validClaims()), where: "header"},
		{name: "es256 wrong kid", cfg: &Config{KeyFiles: []string{ecFile}}, tok: sign(t, jwa.ES256, k.ec, "ec9", validClaims()), where: "header", reason: ReasonSignature},
		{name: "missing", where: "none", reason: ReasonMissing},
		{name: "malformed garbage", tok: "not-a-jwt", where: "header", reason: ReasonMalformed},
		{name: "malformed base64", tok: "e30.e30.!!!", where: "header", reason: ReasonMalformed},
		{name: "malformed json", tok: b64([]byte("{")) + "." + b64([]byte("{}")) + ".c2ln", where: "header", reason: ReasonMalformed},
		{name: "jwe shape", tok: "a.b.c.d.e", where: "header", reason: ReasonMalformed},
		{name: "oversized", tok: hs(with(func(c *claims) { (*c)["pad"] = strings.Repeat("x", MaxTokenBytes) })), where: "header", reason: ReasonMalformed},
		{name: "bad signature", tok: tamper(hs(validClaims())), where: "header", reason: ReasonSignature},
		{name: "other hmac key", tok: sign(t, jwa.HS256, []byte("another-secret-another-secret-!!"), "", validClaims()), where: "header", reason: ReasonSignature},
		{name: "other rsa key", tok: sign(t, jwa.RS256, k.rsa2, "", validClaims()), where: "header", reason: ReasonSignature},
		{name: "expired beyond leeway", tok: hs(with(func(c *claims) { (*c)["exp"] = t0.Add(-31 * time.Second).Unix() })), where: "header", reason: ReasonExpired},
		{name: "expired within leeway", tok: hs(with(func(c *claims) { (*c)["exp"] = t0.Add(-29 * time.Second).Unix() })), where: "header"},
		{name: "exp zero", tok: hs(with(func(c *claims) { (*c)["exp"] = 0 })), where: "header", reason: ReasonExpired},
		{name: "nbf future", tok: hs(with(func(c *claims) { (*c)["nbf"] = t0.Add(time.Minute).Unix() })), where: "header", reason: ReasonNotYetValid},
		{name: "nbf within leeway", tok: hs(with(func(c *claims) { (*c)["nbf"] = t0.Add(20 * time.Second).Unix() })), where: "header"},
		{name: "iat future", tok: hs(with(func(c *claims) { (*c)["iat"] = t0.Add(time.Hour).Unix() })), where: "header", reason: ReasonNotYetValid},
		{name: "no exp", tok: hs(with(func(c *claims) { delete(*c, "exp") })), where: "header", reason: ReasonMalformed},
		{name: "no sub", tok: hs(with(func(c *claims) { delete(*c, "sub") })), where: "header", reason: ReasonMalformed},
		{name: "wrong iss", tok: hs(with(func(c *claims) { (*c)["iss"] = "https://evil.test" })), where: "header", reason: ReasonIssuer},
		{name: "wrong aud", tok: hs(with(func(c *claims) { (*c)["aud"] = "nope" })), where: "header", reason: ReasonAudience},
		{name: "aud list", tok: hs(with(func(c *claims) { (*c)["aud"] = []string{"x", "other"} })), where: "header"},
		{name: "alg none", tok: rawToken(t, map[string]string{"alg": "none", "typ": "JWT"}, validClaims(), ""), where: "header", reason: ReasonAlgorithm},
		{name: "alg none with sig", tok: rawToken(t, map[string]string{"alg": "none"}, validClaims(), "c2ln"), where: "header", reason: ReasonAlgorithm},
		{name: "hs256 with rsa pem as secret", cfg: &Config{KeyFiles: []string{pemFile}}, tok: sign(t, jwa.HS256, k.rsaPEM, "", validClaims()), where: "header", reason: ReasonAlgorithm},
		{name: "hs256 with rsa pem, HS256 allowed", cfg: &Config{KeyFiles: []string{pemFile}, HMACSecretFiles: []string{hsFile}, Algorithms: []string{"HS256", "RS256"}}, tok: sign(t, jwa.HS256, k.rsaPEM, "", validClaims()), where: "header", reason: ReasonSignature},
		{name: "outside allow-list", cfg: &Config{HMACSecretFiles: []string{hsFile}, KeyFiles: []string{pemFile}, Algorithms: []string{"RS256"}}, tok: hs(validClaims()), where: "header", reason: ReasonAlgorithm},
		{name: "inside allow-list", cfg: &Config{HMACSecretFiles: []string{hsFile}, KeyFiles: []string{pemFile}, Algorithms: []string{"RS256"}}, tok: rs(validClaims()), where: "header"},
		{name: "rs256 but only hmac", cfg: &Config{HMACSecretFiles: []string{hsFile}}, tok: rs(validClaims()), where: "header", reason: ReasonAlgorithm},
		{name: "crit header", tok: critToken(t, k.secret), where: "header", reason: ReasonMalformed},
		{name: "custom subject claim", cfg: &Config{HMACSecretFiles: []string{hsFile}, SubjectClaim: "email"}, tok: hs(with(func(c *claims) { (*c)["email"] = "a@b.test" })), where: "header"},
		{name: "anonymous allowed", cfg: &Config{HMACSecretFiles: []string{hsFile}, AllowAnonymous: true}, where: "none"},
		{name: "anonymous allowed, bad token", cfg: &Config{HMACSecretFiles: []string{hsFile}, AllowAnonymous: true}, tok: tamper(hs(validClaims())), where: "header", reason: ReasonSignature},
		{name: "disabled", cfg: &Config{}, tok: "garbage", where: "header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := base
			if tc.cfg != nil {
				cfg = *tc.cfg
				cfg.CacheSize = -1
			}
			v := newTestVerifier(t, cfg)
			id, err := v.Authenticate(context.Background(), reqWith(tc.tok, tc.where))
			if got := reasonOf(err); got != tc.reason {
				t.Fatalf("reason = %q, want %q (err %v)", got, tc.reason, err)
			}
			if err != nil {
				if tc.tok != "" && strings.Contains(err.Error(), tc.tok) {
					t.Fatalf("error quotes the token: %v", err)
				}
				return
			}
			if id.Anonymous != (tc.tok == "" || !v.Enabled()) {
				t.Fatalf("identity %+v", id)
			}
			if !id.Anonymous && (id.Subject == "" || id.Expiry.IsZero()) {
				t.Fatalf("identity %+v", id)
			}
		})
	}
}

func tamper(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	sig := []byte(tok[i+1:])
	if sig[0] == 'A' {
		sig[0] = 'B'
	} else {
		sig[0] = 'A'
	}
	return tok[:i+1] + string(sig)
}

func critToken(t testing.TB, secret []byte) string {
	tok := jwt.New()
	for k, v := range validClaims() {
		tok.Set(k, v)
	}
	hdr := jws.NewHeaders()
	hdr.Set(jws.CriticalKey, []string{"exp"})
	out, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256, secret, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestNewVerifierErrors: Validate refuses each bad Config with the field
// at fault, and NewVerifier refuses it the same way.
func TestNewVerifierErrors(t *testing.T) {
	k := mustKeys(t)
	hsFile := writeFile(t, "secret", k.secret)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	der, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	smallFile := writeFile(t, "small.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	tests := []struct {
		name  string
		cfg   Config
		field string
		want  string
	}{
		{"missing secret file", Config{HMACSecretFiles: []string{"/nonexistent/secret"}}, "HMACSecretFiles", "hmac secret"},
		{"empty secret", Config{HMACSecretFiles: []string{writeFile(t, "empty", nil)}}, "HMACSecretFiles", "is empty"},
		{"garbage key file", Config{KeyFiles: []string{writeFile(t, "bad.pem", []byte("hello"))}}, "KeyFiles", "neither PEM nor JWK"},
		{"small rsa", Config{KeyFiles: []string{smallFile}}, "KeyFiles", "1024 bits"},
		{"bad jwks url", Config{JWKSURL: "ftp://x"}, "JWKSURL", "jwks url"},
		{"alg none", Config{HMACSecretFiles: []string{hsFile}, Algorithms: []string{"none"}}, "Algorithms", `"none" not supported`},
		{"alg fits no key", Config{HMACSecretFiles: []string{hsFile}, Algorithms: []string{"RS256"}}, "Algorithms", "fits none"},
		{"negative leeway", Config{Leeway: -time.Second}, "Leeway", "negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			verr := tc.cfg.Validate()
			_, nerr := NewVerifier(context.Background(), tc.cfg)
			for _, err := range []error{verr, nerr} {
				var ce *ConfigError
				if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, ErrInvalidConfig) ||
					!strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("err = %v, want one line on %s containing %q", err, tc.field, tc.want)
				}
			}
		})
	}
	if err := (Config{HMACSecretFiles: []string{hsFile}, Algorithms: []string{"HS256"}}).Validate(); err != nil {
		t.Fatalf("a valid config: %v", err)
	}
}

func TestCache(t *testing.T) {
	k := mustKeys(t)
	clk := newClock(t0)
	v := newTestVerifier(t, Config{HMACSecretFiles: []string{writeFile(t, "s", k.secret)}, Now: clk.Now, CacheSize: 2})
	claims := validClaims()
	claims["jti"] = "token-1"
	tok := sign(t, jwa.HS256, k.secret, "", claims)
	for i := range 3 {
		// A cached token keeps its jti: a revocation by token id must
		// find it on every handshake, not only the first.
		id, err := v.Authenticate(context.Background(), reqWith(tok, "header"))
		if err != nil || id.Subject != "user-1" || id.TokenID != "token-1" {
			t.Fatalf("call %d: %+v %v", i, id, err)
		}
	}
	if v.cache.len() != 1 {
		t.Fatalf("cache len %d", v.cache.len())
	}
	// A hit never outlives exp.
	clk.Add(2 * time.Hour)
	if _, err := v.Authenticate(context.Background(), reqWith(tok, "header")); reasonOf(err) != ReasonExpired {
		t.Fatalf("expired cache hit: %v", err)
	}
	if v.cache.len() != 0 {
		t.Fatalf("expired entry kept")
	}
	// Bounded: the least recently used entry goes.
	clk.Add(-2 * time.Hour)
	for i := range 3 {
		c := validClaims()
		c["sub"] = string(rune('a' + i))
		if _, err := v.Authenticate(context.Background(), reqWith(sign(t, jwa.HS256, k.secret, "", c), "header")); err != nil {
			t.Fatal(err)
		}
	}
	if v.cache.len() != 2 {
		t.Fatalf("cache len %d, want 2", v.cache.len())
	}
	// A bad token is never cached, even when its claims match a good one.
	bad := tamper(tok)
	for range 2 {
		if _, err := v.Authenticate(context.Background(), reqWith(bad, "header")); reasonOf(err) != ReasonSignature {
			t.Fatalf("tampered: %v", err)
		}
	}
}

func TestIdentityKey(t *testing.T) {
	a := Identity{Subject: "10.0.0.7", Issuer: "i"}
	if got := a.Key("10.0.0.7"); !strings.HasPrefix(got, "u:") || len(got) != 34 {
		t.Fatalf("key %q", got)
	}
	if a.Key("x") == (Identity{Subject: "10.0.0.7", Issuer: "j"}).Key("x") {
		t.Fatal("issuer not part of the key")
	}
	if got := (Identity{Anonymous: true}).Key("10.0.0.7"); got != "anon:10.0.0.7" {
		t.Fatalf("anon key %q", got)
	}
}

func TestReasons(t *testing.T) {
	if len(Reasons()) != 10 {
		t.Fatal(Reasons())
	}
	e := &Error{Reason: ReasonExpired, Err: jwt.ErrTokenExpired()}
	if !errors.Is(e, jwt.ErrTokenExpired()) || e.Error() != `auth: expired: "exp" not satisfied` {
		t.Fatal(e.Error())
	}
}

// TestCacheKeepsTokensInUse: a full cache drops tokens seen once before
// the one that keeps coming back.
func TestCacheKeepsTokensInUse(t *testing.T) {
	c := newTokenCache(4)
	key := func(i int) [sha256.Size]byte { return sha256.Sum256([]byte{byte(i)}) }
	exp := time.Unix(2_000_000_000, 5).UTC()
	c.put(key(0), Identity{Subject: "kept", Issuer: "iss", Expiry: exp}, 7)
	for i := 1; i < 200; i++ {
		id, kid, ok := c.get(key(0))
		if !ok {
			t.Fatalf("the token in use was evicted after %d others", i-1)
		}
		if id.Subject != "kept" || id.Issuer != "iss" || !id.Expiry.Equal(exp) || kid != 7 {
			t.Fatalf("cached identity %+v, key %d", id, kid)
		}
		c.put(key(i), Identity{Subject: "once", Expiry: exp}, 0)
		if c.len() > 4 {
			t.Fatalf("%d entries, want at most 4", c.len())
		}
	}
}

// TestCacheFarExpiry: a "never expires" token (exp in the year 2286, past
// what UnixNano holds) is accepted again from the cache.
func TestCacheFarExpiry(t *testing.T) {
	k := mustKeys(t)
	v := newTestVerifier(t, Config{HMACSecretFiles: []string{writeFile(t, "s", k.secret)}, Now: newClock(t0).Now})
	c := validClaims()
	c["exp"] = int64(9999999999)
	tok := sign(t, jwa.HS256, k.secret, "", c)
	for i := range 3 {
		id, err := v.Authenticate(context.Background(), reqWith(tok, "header"))
		if err != nil || id.Expiry.Unix() != 9999999999 {
			t.Fatalf("call %d: %+v, %v", i, id, err)
		}
	}
}

// TestSecretEndingInNewline: `echo secret > file` and most editors end a
// secret file with a newline, which is part of the secret (it is used raw:
// a binary secret may end in 0x0a), so every token signed with the secret
// alone fails. The verifier keeps the bytes and says so at start, with the
// byte counts.
func TestSecretEndingInNewline(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	for _, tc := range []struct {
		name, content string
		warn          bool
	}{
		{"newline", string(secret) + "\n", true},
		{"crlf", string(secret) + "\r\n", true},
		{"none", string(secret), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf lockedBuffer
			file := writeFile(t, "secret", []byte(tc.content))
			v := newTestVerifier(t, Config{HMACSecretFiles: []string{file}, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
			out := buf.String()
			if got := strings.Contains(out, "level=WARN") && strings.Contains(out, "newline"); got != tc.warn {
				t.Fatalf("warned %v, want %v:\n%s", got, tc.warn, out)
			}
			if tc.warn && !strings.Contains(out, "bytes="+strconv.Itoa(len(tc.content))) {
				t.Errorf("the warning does not give the file's byte count:\n%s", out)
			}
			// The bytes are the secret, newline included.
			tok := sign(t, jwa.HS256, []byte(tc.content), "", validClaims())
			if _, err := v.Authenticate(context.Background(), reqWith(tok, "header")); err != nil {
				t.Errorf("a token signed with the file's bytes: %v", err)
			}
		})
	}
}

// TestKeepClaims checks that a verified token's claims reach the Identity
// with Config.KeepClaims, from a fresh verification and from the cache,
// and that they are not kept without it.
func TestKeepClaims(t *testing.T) {
	k := mustKeys(t)
	c := validClaims()
	c["plan"] = "pro"
	c["realm_access"] = map[string]any{"roles": []any{"internal"}}
	tok := sign(t, jwa.HS256, k.secret, "", c)
	for _, keep := range []bool{true, false} {
		v := newTestVerifier(t, Config{HMACSecretFiles: []string{writeFile(t, "s", k.secret)}, Now: newClock(t0).Now, KeepClaims: keep})
		for call := range 2 { // the second call is a cache hit
			id, err := v.Authenticate(context.Background(), reqWith(tok, "header"))
			if err != nil {
				t.Fatal(err)
			}
			if !keep {
				if id.Claims != nil {
					t.Fatalf("claims kept without KeepClaims: %v", id.Claims)
				}
				continue
			}
			ra, _ := id.Claims["realm_access"].(map[string]any)
			if id.Claims["plan"] != "pro" || id.Claims["sub"] != "user-1" || ra == nil {
				t.Fatalf("call %d: claims %v", call, id.Claims)
			}
		}
	}
}

// TestLargeNumericClaims: numeric user ids above 2^53 (64-bit ids, as many
// apps issue) reach the claims exactly, so that two users whose ids differ
// in the last digit are never one key of a rule keyed on that claim. The
// payload is written by hand: these numbers must not pass through a float.
func TestLargeNumericClaims(t *testing.T) {
	k := mustKeys(t)
	v := newTestVerifier(t, Config{HMACSecretFiles: []string{writeFile(t, "s", k.secret)}, Now: newClock(t0).Now, KeepClaims: true})
	seen := map[string]bool{}
	for _, uid := range []string{"9007199254740993", "9007199254740992", "1234567890123456789"} {
		payload := fmt.Sprintf(`{"sub":"user-%s","exp":%d,"uid":%s,"exp2":1.5e0}`, uid, t0.Add(time.Hour).Unix(), uid)
		tok, err := jws.Sign([]byte(payload), jws.WithKey(jwa.HS256, k.secret))
		if err != nil {
			t.Fatal(err)
		}
		id, err := v.Authenticate(context.Background(), reqWith(string(tok), "header"))
		if err != nil {
			t.Fatal(err)
		}
		got := fmt.Sprint(id.Claims["uid"])
		if got != uid {
			t.Errorf("claim uid %s came as %s (%T)", uid, got, id.Claims["uid"])
		}
		seen[got] = true
		if id.Expiry.Unix() != t0.Add(time.Hour).Unix() {
			t.Errorf("exp %v, want %v", id.Expiry, t0.Add(time.Hour))
		}
	}
	if len(seen) != 3 {
		t.Errorf("three user ids came as %d distinct values", len(seen))
	}
}

// TestNumericSubjectClaim: --jwt-subject-claim may name a numeric user id;
// an integer is the identity as its exact text, and a fraction is not one.
func TestNumericSubjectClaim(t *testing.T) {
	k := mustKeys(t)
	v := newTestVerifier(t, Config{HMACSecretFiles: []string{writeFile(t, "s", k.secret)}, Now: newClock(t0).Now, SubjectClaim: "uid"})
	for uid, want := range map[string]string{"9007199254740993": "9007199254740993", "-12": "-12", "1.5": "", `"u-7"`: "u-7"} {
		payload := fmt.Sprintf(`{"uid":%s,"exp":%d}`, uid, t0.Add(time.Hour).Unix())
		tok, err := jws.Sign([]byte(payload), jws.WithKey(jwa.HS256, k.secret))
		if err != nil {
			t.Fatal(err)
		}
		id, err := v.Authenticate(context.Background(), reqWith(string(tok), "header"))
		switch {
		case want == "" && reasonOf(err) != ReasonMalformed:
			t.Errorf("uid %s: %v, want a malformed token", uid, err)
		case want != "" && (err != nil || id.Subject != want):
			t.Errorf("uid %s: subject %q, %v; want %q", uid, id.Subject, err, want)
		}
	}
}
