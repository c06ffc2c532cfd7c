package auth

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// TestKeyFileSkipsEncryptionKeys: a JWK Set file as identity providers
// publish it, with an encryption key beside the signing one, loads its
// signing key, as a JWKS fetch of the same set does; a set of encryption
// keys alone is refused.
func TestKeyFileSkipsEncryptionKeys(t *testing.T) {
	key := func(use string) jwk.Key {
		priv, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		k, err := jwk.FromRaw(priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		_ = k.Set(jwk.KeyUsageKey, use)
		_ = k.Set(jwk.KeyIDKey, use)
		return k
	}
	write := func(keys ...jwk.Key) string {
		set := jwk.NewSet()
		for _, k := range keys {
			_ = set.AddKey(k)
		}
		b, err := json.Marshal(set)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "keys.json")
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	keys, err := loadKeyFile(write(key("sig"), key("enc")))
	if err != nil || len(keys) != 1 || keys[0].kid != "sig" {
		t.Fatalf("a set with a signing and an encryption key: %d keys, %v; want the signing key", len(keys), err)
	}
	if _, err := loadKeyFile(write(key("enc"))); err == nil {
		t.Fatal("a set of encryption keys alone was accepted")
	}
}
