package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"os"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

type family uint8

const (
	famHMAC family = iota + 1
	famRSA
	famP256
	famP384
	famP521
	famEd25519
)

// minRSABits refuses keys that RFC 7518 section 3.3 forbids for RS*/PS*.
const minRSABits = 2048

// algFamily returns the key family an algorithm needs; ok is false for
// "none", "" and algorithms wsgate does not verify (ES256K).
func algFamily(alg jwa.SignatureAlgorithm) (family, bool) {
	switch alg {
	case jwa.HS256, jwa.HS384, jwa.HS512:
		return famHMAC, true
	case jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512:
		return famRSA, true
	case jwa.ES256:
		return famP256, true
	case jwa.ES384:
		return famP384, true
	case jwa.ES512:
		return famP521, true
	case jwa.EdDSA:
		return famEd25519, true
	}
	return 0, false
}

// verifyKey is a public key (or HMAC secret) in the raw form jws verifies
// with, so no per-verification conversion from jwk.Key is needed.
type verifyKey struct {
	kid string
	alg jwa.SignatureAlgorithm // "" = any algorithm of fam
	fam family
	raw any // []byte, *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	// id names the key for as long as it stays in its key file or JWK
	// Set (see jwksSource.identify and keyFiles.reload); never 0.
	id uint64
}

// same reports whether k and o are the same key: same kid, alg and key.
func (k *verifyKey) same(o *verifyKey) bool {
	if k.kid != o.kid || k.alg != o.alg || k.fam != o.fam {
		return false
	}
	switch a := k.raw.(type) {
	case []byte:
		b, ok := o.raw.([]byte)
		return ok && bytes.Equal(a, b)
	case interface{ Equal(crypto.PublicKey) bool }:
		return a.Equal(o.raw)
	}
	return false
}

// fits reports whether k may verify a signature made with alg. The
// algorithm is always checked against the key type, so an RSA public key
// can never be used as an HMAC secret.
func (k *verifyKey) fits(alg jwa.SignatureAlgorithm) bool {
	fam, ok := algFamily(alg)
	return ok && fam == k.fam && (k.alg == "" || k.alg == alg)
}

func fitsAny(keys []verifyKey, alg jwa.SignatureAlgorithm) bool {
	for i := range keys {
		if keys[i].fits(alg) {
			return true
		}
	}
	return false
}

var errSkipKey = errors.New("not a signature verification key")

// keyFromJWK converts one JWK into a verifyKey, using only its public half.
func keyFromJWK(k jwk.Key) (verifyKey, error) {
	if u := k.KeyUsage(); u != "" && u != jwk.ForSignature.String() {
		return verifyKey{}, errSkipKey
	}
	pub, err := jwk.PublicKeyOf(k)
	if err != nil {
		return verifyKey{}, err
	}
	var raw any
	if err := pub.Raw(&raw); err != nil {
		return verifyKey{}, err
	}
	vk := verifyKey{kid: k.KeyID()}
	switch rk := raw.(type) {
	case []byte:
		if len(rk) == 0 {
			return verifyKey{}, errors.New("empty oct key")
		}
		vk.fam, vk.raw = famHMAC, rk
	case *rsa.PublicKey:
		if rk.N.BitLen() < minRSABits {
			return verifyKey{}, fmt.Errorf("rsa key of %d bits, want at least %d", rk.N.BitLen(), minRSABits)
		}
		vk.fam, vk.raw = famRSA, rk
	case *ecdsa.PublicKey:
		switch rk.Curve {
		case elliptic.P256():
			vk.fam = famP256
		case elliptic.P384():
			vk.fam = famP384
		case elliptic.P521():
			vk.fam = famP521
		default:
			return verifyKey{}, fmt.Errorf("ec curve %s not supported", rk.Curve.Params().Name)
		}
		vk.raw = rk
	case ed25519.PublicKey:
		vk.fam, vk.raw = famEd25519, rk
	default:
		return verifyKey{}, fmt.Errorf("key type %T not supported", raw)
	}
	if a := k.Algorithm().String(); a != "" {
		alg := jwa.SignatureAlgorithm(a)
		if fam, ok := algFamily(alg); !ok || fam != vk.fam {
			return verifyKey{}, fmt.Errorf("key alg %q does not fit a %s key", a, k.KeyType())
		}
		vk.alg = alg
	}
	return vk, nil
}

// loadKeyFile reads a PEM file (one or more public keys, certificates or
// private keys), a JWK or a JWK Set.
func loadKeyFile(path string) ([]verifyKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var set jwk.Set
	if i := firstNonSpace(data); i >= 0 && data[i] == '{' {
		set, err = jwk.Parse(data)
	} else {
		set, err = jwk.Parse(data, jwk.WithPEM(true))
	}
	if err != nil {
		return nil, fmt.Errorf("neither PEM nor JWK: %w", err)
	}
	var keys []verifyKey
	for i := range set.Len() {
		k, _ := set.Key(i)
		vk, err := keyFromJWK(k)
		if errors.Is(err, errSkipKey) {
			// An encryption key of the issuer's set ("use": "enc"), as
			// a JWKS fetch skips it.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		keys = append(keys, vk)
	}
	if len(keys) == 0 {
		return nil, errors.New("no signature verification keys")
	}
	return keys, nil
}

func firstNonSpace(b []byte) int {
	for i, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return i
		}
	}
	return -1
}

// keyProvider selects the keys for one signature. It never lets the token
// choose the algorithm alone: the header's alg must be allowed, and every key
// handed to jws must be of the family that algorithm needs (and carry that
// alg when the key names one). It remembers the keys it handed over, in
// order, for verifiedBy.
type keyProvider struct {
	v     *Verifier
	ctx   context.Context
	alg   jwa.SignatureAlgorithm
	cands []*verifyKey // the keys handed to jws, in its order
	buf   [2]*verifyKey
}

func newKeyProvider(v *Verifier, ctx context.Context) *keyProvider {
	p := &keyProvider{v: v, ctx: ctx}
	p.cands = p.buf[:0]
	return p
}

func (p *keyProvider) FetchKeys(_ context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
	v := p.v
	h := sig.ProtectedHeaders()
	if len(h.Critical()) > 0 {
		return &Error{Reason: ReasonMalformed, Err: errCritical}
	}
	if h.ContentType() == "JWT" {
		return &Error{Reason: ReasonMalformed, Err: errNested}
	}
	alg := h.Algorithm()
	if _, ok := algFamily(alg); !ok {
		return &Error{Reason: ReasonAlgorithm, Err: fmt.Errorf("alg %q not supported", alg.String())}
	}
	if v.allowed != nil && !v.allowed[alg] {
		return &Error{Reason: ReasonAlgorithm, Err: fmt.Errorf("alg %s not in the allow-list", alg)}
	}
	p.alg = alg
	kid := h.KeyID()
	static := v.files.current()
	for i := range static {
		k := &static[i]
		// A PEM key has no kid; a kid on both sides must agree.
		if k.fits(alg) && (kid == "" || k.kid == "" || k.kid == kid) {
			sink.Key(alg, k.raw)
			p.cands = append(p.cands, k)
		}
	}
	var jwksKeys []verifyKey
	if v.jwks != nil {
		jwksKeys = v.jwks.current()
		m := matchJWKS(jwksKeys, alg, kid)
		if m == 0 && (jwksKeys == nil || (kid != "" && !hasKid(jwksKeys, kid))) {
			// Unknown kid (a rotation we have not seen) or nothing fetched
			// yet: one refresh, rate-limited across all requests.
			if v.jwks.refresh(p.ctx, true) && len(p.cands) == 0 {
				return &Error{Reason: ReasonJWKSUnavailable, Err: p.ctx.Err()}
			}
			jwksKeys = v.jwks.current()
			m = matchJWKS(jwksKeys, alg, kid)
		}
		if m == 0 && len(p.cands) == 0 && (jwksKeys == nil || v.jwks.failing()) {
			return &Error{Reason: ReasonJWKSUnavailable, Err: v.jwks.lastError()}
		}
		for i := range jwksKeys {
			k := &jwksKeys[i]
			if k.fits(alg) && (kid == "" || k.kid == kid) {
				sink.Key(alg, k.raw)
				p.cands = append(p.cands, k)
			}
		}
	}
	if len(p.cands) > 0 {
		return nil
	}
	if !fitsAny(static, alg) && !fitsAny(jwksKeys, alg) {
		return &Error{Reason: ReasonAlgorithm, Err: fmt.Errorf("alg %s fits no configured key", alg)}
	}
	return &Error{Reason: ReasonSignature, Err: fmt.Errorf("no key with kid %.64q for alg %s", kid, alg)}
}

// verifiedBy returns the key that verified tok, which jws accepted: jws
// tries the keys in the order they were handed over and stops at the first
// that verifies, so with several candidates that is the first one that
// verifies tok again. nil when FetchKeys handed over none.
func (p *keyProvider) verifiedBy(tok string) *verifyKey {
	if len(p.cands) <= 1 {
		if len(p.cands) == 0 {
			return nil
		}
		return p.cands[0]
	}
	for _, k := range p.cands {
		if _, err := jws.Verify([]byte(tok), jws.WithKey(p.alg, k.raw)); err == nil {
			return k
		}
	}
	return nil
}

func matchJWKS(keys []verifyKey, alg jwa.SignatureAlgorithm, kid string) int {
	n := 0
	for i := range keys {
		if keys[i].fits(alg) && (kid == "" || keys[i].kid == kid) {
			n++
		}
	}
	return n
}

func hasKid(keys []verifyKey, kid string) bool {
	for i := range keys {
		if keys[i].kid == kid {
			return true
		}
	}
	return false
}
