package auth

import (
	"context"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
)

func benchAuth(b *testing.B, alg jwa.SignatureAlgorithm, cacheSize int) {
	k := mustKeys(b)
	var cfg Config
	var key any
	switch alg {
	case jwa.HS256:
		cfg.HMACSecretFiles, key = []string{writeFile(b, "s", k.secret)}, k.secret
	default:
		cfg.KeyFiles, key = []string{writeFile(b, "k.pem", k.rsaPEM)}, k.rsa
	}
	cfg.CacheSize = cacheSize
	v := newTestVerifier(b, cfg)
	r := reqWith(sign(b, alg, key, "", validClaims()), "header")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := v.Authenticate(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}

func BenchmarkAuthenticateHS256(b *testing.B)       { benchAuth(b, jwa.HS256, -1) }
func BenchmarkAuthenticateRS256(b *testing.B)       { benchAuth(b, jwa.RS256, -1) }
func BenchmarkAuthenticateHS256Cached(b *testing.B) { benchAuth(b, jwa.HS256, 0) }
func BenchmarkAuthenticateRS256Cached(b *testing.B) { benchAuth(b, jwa.RS256, 0) }
