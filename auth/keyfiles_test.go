package auth

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
)

// replaceFile swaps path's content the way the kubelet updates a Secret
// volume: a new file renamed over the name.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestSecretRotation: with two secret files a token verifies with either,
// so an issuer can move from one to the other without a cut-over; a file
// that changes is re-read (by Reload, and by the watcher on its own), a
// token cached under a secret that left is verified anew and refused, and
// one cached under a secret that stayed stays cached.
func TestSecretRotation(t *testing.T) {
	oldS := []byte("old-secret-0123456789abcdef0123456789")
	newS := []byte("new-secret-0123456789abcdef0123456789")
	nextS := []byte("next-secret-0123456789abcdef012345678")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for p, s := range map[string][]byte{a: oldS, b: newS} {
		if err := os.WriteFile(p, s, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	v := newTestVerifier(t, Config{HMACSecretFiles: []string{a, b}, KeyFileCheck: -1})
	check := func(what string, key []byte, want string) {
		t.Helper()
		tok := sign(t, jwa.HS256, key, "", validClaims())
		_, err := v.Authenticate(context.Background(), reqWith(tok, "header"))
		if got := reasonOf(err); got != want {
			t.Fatalf("%s: reason %q, want %q", what, got, want)
		}
	}
	check("old secret", oldS, "")
	check("new secret", newS, "")
	check("unknown secret", nextS, ReasonSignature)

	// The operator drops the old secret: a replaces its content with the
	// next one. Nothing changes before a reload (the watcher is off).
	replaceFile(t, a, nextS)
	check("old secret before the reload (cached)", oldS, "")
	if err := v.Reload(); err != nil {
		t.Fatal(err)
	}
	check("old secret after the reload", oldS, ReasonSignature)
	check("new secret after the reload", newS, "")
	check("next secret after the reload", nextS, "")

	// A file that cannot be read keeps the keys in use.
	if err := os.WriteFile(a, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := v.Reload(); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("reload of an empty secret: %v, want an error that says so", err)
	}
	check("next secret after a failed reload", nextS, "")
}

// TestKeyFileWatch: the watcher re-reads a key file that changed, with no
// signal, and warns once about a file it cannot read.
func TestKeyFileWatch(t *testing.T) {
	k := mustKeys(t)
	secret := []byte("watched-secret-0123456789abcdef0123")
	file := writeFile(t, "s", secret)
	pem := writeFile(t, "k.pem", k.rsaPEM)
	var log lockedBuffer
	v := newTestVerifier(t, Config{HMACSecretFiles: []string{file}, KeyFiles: []string{pem}, KeyFileCheck: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	rs := sign(t, jwa.RS256, k.rsa, "", validClaims())
	if _, err := v.Authenticate(context.Background(), reqWith(rs, "header")); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, pem, k.rsa2PEM)
	rs2 := sign(t, jwa.RS256, k.rsa2, "", validClaims())
	waitUntil(t, "the watcher to read the new key", func() bool {
		_, err := v.Authenticate(context.Background(), reqWith(rs2, "header"))
		return err == nil
	})
	if _, err := v.Authenticate(context.Background(), reqWith(rs, "header")); reasonOf(err) != ReasonSignature {
		t.Fatalf("a token of the replaced key: %v, want %q", err, ReasonSignature)
	}
	replaceFile(t, pem, []byte("not a key"))
	waitUntil(t, "the watcher to warn", func() bool { return strings.Contains(log.String(), "cannot be read") })
	time.Sleep(50 * time.Millisecond) // ten more looks at the same broken file
	if n := strings.Count(log.String(), "cannot be read"); n != 1 {
		t.Errorf("%d warnings about one broken file, want 1:\n%s", n, log.String())
	}
	if _, err := v.Authenticate(context.Background(), reqWith(rs2, "header")); err != nil {
		t.Errorf("the keys in use stay while the file is broken: %v", err)
	}
	if bytes.Contains([]byte(log.String()), secret) {
		t.Error("the log holds the secret")
	}
}

// waitUntil polls cond for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
