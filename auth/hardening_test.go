package auth

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// TestHMACSecretFileRefusesKeys: a secret file that holds a public key, as
// PEM or as a JWK or JWK Set, is refused with one line that points to the
// key file flag: used as an HMAC secret, a key anyone may read would let
// anyone sign HS256 tokens. Bytes that only look alike stay a secret.
func TestHMACSecretFileRefusesKeys(t *testing.T) {
	k := mustKeys(t)
	pub, err := jwk.FromRaw(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	jwkJSON, err := json.Marshal(pub)
	if err != nil {
		t.Fatal(err)
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		t.Fatal(err)
	}
	setJSON, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		secret  []byte
		refused bool
	}{
		{"pem public key", k.rsaPEM, true},
		{"pem after blank lines", append([]byte("\n \t\n"), k.rsaPEM...), true},
		{"jwk", jwkJSON, true},
		{"jwk set", setJSON, true},
		{"jwk set indented", []byte("\n  {\n  \"keys\": []\n}\n"), true},
		{"random bytes", k.secret, false},
		{"dashes", []byte("-----not-a-pem-block-0123456789abcdef"), false},
		{"json without a key", []byte(`{"secret":"0123456789abcdef0123456789abcdef"}`), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, "secret", tc.secret)
			err := Config{HMACSecretFiles: []string{file}}.Validate()
			if !tc.refused {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != "HMACSecretFiles" {
				t.Fatalf("err %v, want a *ConfigError for HMACSecretFiles", err)
			}
			if msg := err.Error(); !strings.Contains(msg, "--jwt-key-file") || strings.Contains(msg, "\n") {
				t.Errorf("message %q, want one line that names --jwt-key-file", msg)
			}
		})
	}
}

// TestHMACSecretRotatedToKeyRefused: a secret file rotated to a public key
// is refused at the reload, and the secret in use stays.
func TestHMACSecretRotatedToKeyRefused(t *testing.T) {
	k := mustKeys(t)
	file := writeFile(t, "secret", k.secret)
	v := newTestVerifier(t, Config{HMACSecretFiles: []string{file}, KeyFileCheck: -1})
	replaceFile(t, file, k.rsaPEM)
	if err := v.Reload(); err == nil || !strings.Contains(err.Error(), "--jwt-key-file") {
		t.Fatalf("reload of a public key as the secret: %v, want a refusal", err)
	}
	for key, want := range map[string]string{"secret": "", "public key": ReasonSignature} {
		secret := k.secret
		if key == "public key" {
			secret = k.rsaPEM
		}
		tok := sign(t, jwa.HS256, secret, "", validClaims())
		if _, err := v.Authenticate(t.Context(), reqWith(tok, "header")); reasonOf(err) != want {
			t.Errorf("token signed with the %s: %v, want reason %q", key, err, want)
		}
	}
}
