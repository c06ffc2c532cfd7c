// Package auth authenticates WebSocket handshakes for wsgate.
//
// A Verifier finds a JWT in a request (Authorization header, query parameter,
// the "bearer.<jwt>" subprotocol, or a cookie), verifies it against HMAC
// secrets, PEM/JWK key files and a JWKS URL, and returns an Identity whose Key
// is the per-user rate-limit key. Client addresses are package clientip's.
package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/holo/wsgate/internal/redact"
)

// MaxTokenBytes is the longest token Authenticate parses; longer ones are
// refused as malformed before any decoding.
const MaxTokenBytes = 8 << 10

// ErrInvalidConfig matches every error Validate and NewVerifier return for a
// bad Config.
var ErrInvalidConfig = errors.New("invalid auth config")

// A token's numbers come as json.Number, their text as the token has it:
// decoded as float64, jwx's default, two numeric user ids above 2^53 can
// become one, and a rule keyed on that claim would count both users as
// one. The setting is jwx's, for the whole process: its own claims (exp,
// nbf, iat) accept either.
func init() {
	jwx.DecoderSettings(jwx.WithUseNumber(true))
}

// Config configures a Verifier. The zero value disables authentication.
type Config struct {
	// HMACSecretFiles each hold the raw bytes (no trimming: a trailing
	// newline is part of the secret, and logged) of an HS256/384/512 secret.
	// A token verifies with any of them, so a secret is rotated without a
	// cut-over: add the new one, move the issuer to it, remove the old one
	// once the last token it signed has expired. Empty means no secret.
	HMACSecretFiles []string
	// KeyFiles each hold PEM public keys or certificates (RSA, EC,
	// Ed25519), a JWK, or a JWK Set (which may hold HMAC secrets as oct
	// keys). Private keys are accepted and only their public half is used.
	// Empty means no key file.
	KeyFiles []string
	// KeyFileCheck is how often the secret and key files are looked at
	// (os.Stat) and re-read when one changed: a new file behind the name
	// (the kubelet swaps a Secret volume's files by a symlink), a new size
	// or modification time. A read that fails keeps the keys in use. Reload
	// re-reads them at once. 0 means 10s; negative means never.
	KeyFileCheck time.Duration
	// JWKSURL is fetched at start and refreshed in the background; the last
	// good set is kept while the server is down, and a token with an unknown
	// kid triggers at most one refresh per 10s. Its symmetric (oct) keys are
	// refused: the set is public. "" means no JWKS.
	JWKSURL string
	// Algorithms is the allow-list of signature algorithms. Empty means every
	// algorithm that fits a configured key. "none" is never allowed.
	Algorithms []string
	// Issuer, when set, is the required "iss".
	Issuer string
	// Audiences, when set, lists the accepted "aud" values; the token must
	// carry at least one of them.
	Audiences []string
	// SubjectClaim names the claim that identifies the user: a string, or
	// an integer (a numeric user id), which is the identity as its text.
	// "" means "sub".
	SubjectClaim string
	// Leeway is the clock skew tolerated for exp, nbf and iat. 0 means none.
	Leeway time.Duration
	// QueryParam is the query parameter that may carry the token.
	// "" means "access_token".
	QueryParam string
	// Cookie is the cookie that may carry the token. "" means no cookie.
	Cookie string
	// ForwardToken keeps the token in the request sent upstream.
	ForwardToken bool
	// AllowAnonymous admits requests without any token as anonymous when
	// keys are configured. A presented but invalid token is always refused.
	AllowAnonymous bool
	// CacheSize bounds the cache of verified tokens. 0 means 10000; a negative
	// value disables the cache.
	CacheSize int
	// KeepClaims keeps every claim of a verified token in Identity.Claims,
	// for a rules file's tiers and claim keys. false keeps none.
	KeepClaims bool
	// HTTPClient fetches the JWKS. nil means a client with a 10s timeout.
	HTTPClient *http.Client
	// Logger receives key-loading and JWKS events, never a token.
	// nil means discard.
	Logger *slog.Logger
	// Now is the clock. nil means time.Now.
	Now func() time.Time
}

// Verifier authenticates requests. Its methods are safe for concurrent use.
type Verifier struct {
	cfg       Config
	allowed   map[jwa.SignatureAlgorithm]bool // nil: any algorithm that fits a key
	files     *keyFiles                       // nil without secret or key files
	ids       atomic.Uint64                   // the last verifyKey.id handed out
	jwks      *jwksSource
	cache     *tokenCache
	log       *slog.Logger
	now       func() time.Time
	validate  []jwt.ParseOption
	ownClient *http.Client // closed on Close when we created it
}

// Identity is the result of a successful Authenticate.
type Identity struct {
	Subject   string    // verified subject claim; "" when anonymous
	Issuer    string    // "iss" of the token; "" when anonymous
	Expiry    time.Time // "exp" of the token; zero when anonymous
	TokenID   string    // "jti" of the token, what a revocation may name; "" when none
	Anonymous bool
	// Claims are the token's claims as JSON decodes them, with Config.
	// KeepClaims; nil otherwise and when anonymous. Shared: read only.
	Claims map[string]any
}

// Key returns the rate-limit key of id: "u:" and 32 hex digits of
// sha256(issuer "\x00" subject) for a subject, so that a subject spelled like
// an IP address never shares a budget with that anonymous client, and
// "anon:" + clientIP for an anonymous identity. clientIP is the caller's
// per-IP key (clientip.Resolver.Key).
func (id Identity) Key(clientIP string) string {
	if id.Anonymous || id.Subject == "" {
		return "anon:" + clientIP
	}
	h := sha256.New()
	h.Write([]byte(id.Issuer))
	h.Write([]byte{0})
	h.Write([]byte(id.Subject))
	var sum [sha256.Size]byte
	return "u:" + hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// Reasons of an *Error; each is a valid Prometheus label value.
const (
	ReasonMissing         = "missing"
	ReasonMalformed       = "malformed"
	ReasonSignature       = "signature"
	ReasonExpired         = "expired"
	ReasonNotYetValid     = "not_yet_valid"
	ReasonIssuer          = "issuer"
	ReasonAudience        = "audience"
	ReasonAlgorithm       = "algorithm"
	ReasonJWKSUnavailable = "jwks_unavailable"
	// ReasonRevoked: the token verified, but its subject or its jti is on
	// the revocation list (the caller checks that list, not the Verifier).
	ReasonRevoked = "revoked"
)

// Reasons lists every Reason an *Error may carry, for pre-registering metric
// labels.
func Reasons() []string {
	return []string{ReasonMissing, ReasonMalformed, ReasonSignature, ReasonExpired,
		ReasonNotYetValid, ReasonIssuer, ReasonAudience, ReasonAlgorithm, ReasonJWKSUnavailable, ReasonRevoked}
}

// Error is returned by Authenticate for a missing or invalid token. Its
// message never contains the token.
type Error struct {
	Reason string // one of the Reason constants
	Err    error  // detail; may be nil
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "auth: " + e.Reason
	}
	return "auth: " + e.Reason + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

var (
	errNoToken   = errors.New("no token in request")
	errTooLarge  = fmt.Errorf("token longer than %d bytes", MaxTokenBytes)
	errNotJWS    = errors.New("not a compact JWS")
	errWithheld  = errors.New("token rejected by the parser (detail withheld: it quoted the token)")
	errCritical  = errors.New(`"crit" header not supported`)
	errNested    = errors.New("nested tokens not supported")
	errExpZero   = errors.New(`"exp" not satisfied`)
	errNoSubject = errors.New("subject claim missing or not a string or an integer")
)

// ConfigError is a Config field that Validate and NewVerifier refuse. It
// matches ErrInvalidConfig under errors.Is.
type ConfigError struct {
	// Field is the refused field: "HMACSecretFiles", "KeyFiles",
	// "JWKSURL", "Algorithms" or "Leeway".
	Field string
	Err   error
}

func (e *ConfigError) Error() string {
	return ErrInvalidConfig.Error() + ": " + e.Field + ": " + e.Err.Error()
}
func (e *ConfigError) Unwrap() error        { return e.Err }
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// HasKeys reports whether c names a key source; without one a Verifier
// admits every request as anonymous.
func (c Config) HasKeys() bool {
	return len(c.keyFiles()) > 0 || c.JWKSURL != ""
}

// Validate reports, as a *ConfigError, the first field of c that
// NewVerifier refuses; nil when it accepts c. Like NewVerifier it reads the
// secret and key files (an empty secret, an unreadable or unparsable key
// file, an algorithm that fits none of the keys are refused), but it
// fetches no JWKS and starts nothing.
func (c Config) Validate() error {
	_, err := c.load()
	return err
}

// loaded is what NewVerifier takes from a valid Config's files.
type loaded struct {
	allowed map[jwa.SignatureAlgorithm]bool // nil: any algorithm that fits a key
	files   []keyFile
	static  []verifyKey
	notes   []fileNote
	stamps  []os.FileInfo
}

// load checks c and reads its key files.
func (c Config) load() (loaded, error) {
	var l loaded
	bad := func(field string, err error) (loaded, error) {
		return loaded{}, &ConfigError{Field: field, Err: err}
	}
	if c.Leeway < 0 {
		return bad("Leeway", fmt.Errorf("leeway %s is negative", c.Leeway))
	}
	if len(c.Algorithms) > 0 {
		l.allowed = make(map[jwa.SignatureAlgorithm]bool, len(c.Algorithms))
		for _, a := range c.Algorithms {
			alg := jwa.SignatureAlgorithm(a)
			if _, ok := algFamily(alg); !ok {
				return bad("Algorithms", fmt.Errorf("algorithm %q not supported (want HS256/384/512, RS256/384/512, PS256/384/512, ES256/384/512 or EdDSA)", a))
			}
			l.allowed[alg] = true
		}
	}
	l.files = c.keyFiles()
	var err error
	if l.static, l.notes, l.stamps, err = readKeyFiles(l.files); err != nil {
		return loaded{}, err
	}
	if c.JWKSURL != "" {
		u, err := url.Parse(c.JWKSURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("JWKSURL", fmt.Errorf("jwks url %q: want an http or https URL", redact.URL(c.JWKSURL)))
		}
	}
	if l.allowed != nil && (c.JWKSURL != "" || len(l.static) > 0) {
		for _, a := range c.Algorithms {
			alg := jwa.SignatureAlgorithm(a)
			if fam, _ := algFamily(alg); fitsAny(l.static, alg) || c.JWKSURL != "" && fam != famHMAC {
				// A JWK Set may hold a key for any asymmetric algorithm.
				continue
			}
			why := ""
			if c.JWKSURL != "" {
				why = " (a JWKS URL's symmetric keys are never used)"
			}
			return bad("Algorithms", fmt.Errorf("algorithm %s fits none of the configured keys%s", a, why))
		}
	}
	return l, nil
}

// NewVerifier validates cfg (see Validate), loads the key files and, when a
// JWKS URL is set, starts a first fetch and waits for it until ctx is done
// (a failure is logged, not fatal: the refresher keeps trying), and starts
// the background refresher that Close stops. Every JWKS fetch runs under the
// Verifier, never under the context of whoever waits for it. Errors are
// *ConfigError.
func NewVerifier(ctx context.Context, cfg Config) (*Verifier, error) {
	l, err := cfg.load()
	if err != nil {
		return nil, err
	}
	v := &Verifier{cfg: cfg, log: cfg.Logger, now: cfg.Now, allowed: l.allowed}
	v.cfg.Algorithms = slices.Clone(cfg.Algorithms)
	v.cfg.Audiences = slices.Clone(cfg.Audiences)
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.cfg.SubjectClaim == "" {
		v.cfg.SubjectClaim = "sub"
	}
	if v.cfg.QueryParam == "" {
		v.cfg.QueryParam = "access_token"
	}
	if len(l.files) > 0 {
		v.files = newKeyFiles(v, l.files, l.static, l.stamps)
		logNotes(v.log, l.notes)
	}
	switch {
	case cfg.CacheSize == 0:
		v.cache = newTokenCache(10000)
	case cfg.CacheSize > 0:
		v.cache = newTokenCache(cfg.CacheSize)
	}
	v.validate = []jwt.ParseOption{
		jwt.WithValidate(true),
		jwt.WithRequiredClaim("exp"),
		jwt.WithAcceptableSkew(cfg.Leeway),
		jwt.WithClock(jwt.ClockFunc(v.now)),
	}
	if cfg.Issuer != "" {
		v.validate = append(v.validate, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.JWKSURL != "" {
		client := cfg.HTTPClient
		if client == nil {
			client = &http.Client{Timeout: 10 * time.Second}
			v.ownClient = client
		}
		v.jwks = newJWKSSource(cfg.JWKSURL, client, v.log, v.now, v.nextID)
		v.jwks.start(ctx)
	}
	if v.files != nil {
		v.files.watch(cfg.KeyFileCheck)
	}
	return v, nil
}

// nextID hands out the id of a key that joins the static keys or the JWK
// Set.
func (v *Verifier) nextID() uint64 { return v.ids.Add(1) }

// Leeway is Config.Leeway: how long past its exp a token is still
// accepted, which is how long a connection opened with it may outlive its
// exp.
func (v *Verifier) Leeway() time.Duration { return v.cfg.Leeway }

// Enabled reports whether any key source is configured; when false,
// Authenticate admits every request as anonymous.
func (v *Verifier) Enabled() bool { return v.files != nil || v.jwks != nil }

// Close stops the JWKS refresher and the key files' watcher, aborts a
// fetch in flight and waits for their goroutines. Authenticate keeps
// working with the keys it has.
func (v *Verifier) Close() {
	if v.jwks != nil {
		v.jwks.stop()
	}
	if v.files != nil {
		v.files.stop()
	}
	if v.ownClient != nil {
		v.ownClient.CloseIdleConnections()
	}
}

// Authenticate finds the token in r, in this order: "Authorization: Bearer",
// the query parameter, the "bearer.<jwt>" entry of Sec-WebSocket-Protocol,
// the cookie; and verifies it. With authentication disabled, or without a
// token under AllowAnonymous, it returns an anonymous Identity. Every
// failure is an *Error.
func (v *Verifier) Authenticate(ctx context.Context, r *http.Request) (Identity, error) {
	if !v.Enabled() {
		return Identity{Anonymous: true}, nil
	}
	tok, ok := v.extract(r)
	if !ok {
		if v.cfg.AllowAnonymous {
			return Identity{Anonymous: true}, nil
		}
		return Identity{}, &Error{Reason: ReasonMissing, Err: errNoToken}
	}
	return v.verify(ctx, tok)
}

func (v *Verifier) verify(ctx context.Context, tok string) (Identity, error) {
	if len(tok) > MaxTokenBytes {
		return Identity{}, &Error{Reason: ReasonMalformed, Err: errTooLarge}
	}
	if !isCompactJWS(tok) {
		return Identity{}, &Error{Reason: ReasonMalformed, Err: errNotJWS}
	}
	var sum [sha256.Size]byte
	if v.cache != nil {
		sum = sha256.Sum256([]byte(tok))
		if id, key, ok := v.cache.get(sum); ok {
			switch {
			case !v.holds(key):
				// The key that verified it left the JWK Set or a key
				// file: verify anew.
				v.cache.remove(sum)
			case v.expired(id.Expiry):
				v.cache.remove(sum)
				return Identity{}, &Error{Reason: ReasonExpired, Err: jwt.ErrTokenExpired()}
			default:
				return id, nil
			}
		}
	}
	kp := newKeyProvider(v, ctx)
	opts := make([]jwt.ParseOption, 0, len(v.validate)+1)
	opts = append(opts, v.validate...)
	opts = append(opts, jwt.WithKeyProvider(kp))
	t, err := jwt.ParseString(tok, opts...)
	if err != nil {
		return Identity{}, classify(err, tok)
	}
	exp := t.Expiration()
	// jwx treats exp=0 as absent even under WithRequiredClaim("exp").
	if exp.Unix() <= 0 || v.expired(exp) {
		return Identity{}, &Error{Reason: ReasonExpired, Err: errExpZero}
	}
	if len(v.cfg.Audiences) > 0 && !audienceOK(t.Audience(), v.cfg.Audiences) {
		return Identity{}, &Error{Reason: ReasonAudience, Err: jwt.ErrInvalidAudience()}
	}
	id := Identity{Issuer: t.Issuer(), Expiry: exp, TokenID: t.JwtID()}
	if v.cfg.SubjectClaim == "sub" {
		id.Subject = t.Subject()
	} else if raw, ok := t.Get(v.cfg.SubjectClaim); ok {
		id.Subject = subjectText(raw)
	}
	if id.Subject == "" {
		return Identity{}, &Error{Reason: ReasonMalformed, Err: fmt.Errorf("%w: %q", errNoSubject, v.cfg.SubjectClaim)}
	}
	if v.cfg.KeepClaims {
		if id.Claims, err = t.AsMap(ctx); err != nil {
			return Identity{}, &Error{Reason: ReasonMalformed, Err: err}
		}
	}
	if v.cache != nil {
		if k := kp.verifiedBy(tok); k != nil {
			v.cache.put(sum, id, k.id)
		}
	}
	return id, nil
}

// expired applies jwx's rule (now must be before exp+leeway, both truncated
// to the second) so a cache hit answers exactly as a fresh verification.
func (v *Verifier) expired(exp time.Time) bool {
	now := v.now().Truncate(time.Second)
	return !now.Before(exp.Truncate(time.Second).Add(v.cfg.Leeway))
}

func audienceOK(have, want []string) bool {
	for _, a := range have {
		if slices.Contains(want, a) {
			return true
		}
	}
	return false
}

// classify maps a jwt.Parse error to an *Error.
func classify(err error, tok string) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return &Error{Reason: ae.Reason, Err: ae.Err}
	}
	switch {
	case errors.Is(err, jwt.ErrTokenExpired()):
		return &Error{Reason: ReasonExpired, Err: err}
	case errors.Is(err, jwt.ErrTokenNotYetValid()), errors.Is(err, jwt.ErrInvalidIssuedAt()):
		return &Error{Reason: ReasonNotYetValid, Err: err}
	case errors.Is(err, jwt.ErrInvalidIssuer()):
		return &Error{Reason: ReasonIssuer, Err: err}
	case errors.Is(err, jwt.ErrInvalidAudience()):
		return &Error{Reason: ReasonAudience, Err: err}
	case jws.IsVerificationError(err):
		return &Error{Reason: ReasonSignature, Err: err}
	}
	return &Error{Reason: ReasonMalformed, Err: withhold(err, tok)}
}

// withhold drops a parser error whose text quotes the token or its
// signature, so that logging an *Error never leaks a usable credential.
func withhold(err error, tok string) error {
	msg := err.Error()
	sig := tok[strings.LastIndexByte(tok, '.')+1:]
	if strings.Contains(msg, tok) || (len(sig) >= 8 && strings.Contains(msg, sig)) {
		return errWithheld
	}
	return err
}

// isCompactJWS reports whether s has the shape header.payload.signature in
// base64url. The signature may be empty so that alg=none is reported as an
// algorithm problem rather than a malformed token.
func isCompactJWS(s string) bool {
	dots := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			dots++
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	if dots != 2 {
		return false
	}
	i := strings.IndexByte(s, '.')
	j := strings.LastIndexByte(s, '.')
	return i > 0 && j > i+1
}

// subjectText is the identity a subject claim names: a string, or an
// integer (a numeric user id) as its exact text; "" for anything else.
func subjectText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		if isIntegerText(string(x)) {
			return string(x)
		}
	}
	return ""
}

// isIntegerText reports whether s is a JSON integer literal, of any size.
func isIntegerText(s string) bool {
	digits := strings.TrimPrefix(s, "-")
	return digits != "" && strings.Trim(digits, "0123456789") == ""
}
