//go:build e2e

package e2e

import (
	"crypto/rand"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/coder/websocket"
)

// TestSIGHUPReloadsKeys: SIGHUP, which ends a process by default, neither
// ends the gate nor touches a connection; it re-reads the secret files, so a
// secret is rotated without a restart: with the old and the new secret
// configured both verify, and once the old file holds a third secret, the
// old one is refused.
func TestSIGHUPReloadsKeys(t *testing.T) {
	t.Parallel()
	oldS, oldFile := newHMACSecret(t)
	newS, newFile := newHMACSecret(t)
	g := authGate(t, startNodeBackend(t), "--jwt-hmac-secret-file", oldFile, "--jwt-hmac-secret-file", newFile,
		"--jwt-issuer", testIssuer, "--jwt-audience", testAudience)
	status := func(secret []byte, sub string) int {
		t.Helper()
		c, resp, err := tryDial(t, g.URL+"/echo", peer{header: http.Header{"Authorization": {"Bearer " + hsToken(t, secret, sub)}}})
		if err == nil {
			c.CloseNow()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("dial as %s: %v", sub, err)
		}
		return resp.StatusCode
	}
	if s := status(oldS, "old"); s != http.StatusSwitchingProtocols {
		t.Fatalf("old secret: %d, want 101", s)
	}
	open := dialAs(t, g.URL+"/echo", peer{header: http.Header{"Authorization": {"Bearer " + hsToken(t, newS, "kept")}}})
	echo(t, open, websocket.MessageText, []byte("before"))

	third := make([]byte, 32)
	if _, err := rand.Read(third); err != nil {
		t.Fatal(err)
	}
	tmp := oldFile + ".new"
	if err := os.WriteFile(tmp, third, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, oldFile); err != nil {
		t.Fatal(err)
	}
	if err := g.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the gate to log the reload", func() bool { return strings.Contains(g.Output(), "SIGHUP: key files re-read") })
	if g.proc.exited() {
		t.Fatalf("the gate exited on SIGHUP:\n%s", tail(g.Output(), 2000))
	}
	echo(t, open, websocket.MessageText, []byte("after"))
	if s := status(oldS, "old-again"); s != http.StatusUnauthorized {
		t.Errorf("old secret after the reload: %d, want 401", s)
	}
	if s := status(newS, "new"); s != http.StatusSwitchingProtocols {
		t.Errorf("new secret after the reload: %d, want 101", s)
	}
	if s := status(third, "third"); s != http.StatusSwitchingProtocols {
		t.Errorf("third secret after the reload: %d, want 101", s)
	}
}
