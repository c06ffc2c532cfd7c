//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"html"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// chromium is the browser of TestBrowserSocketIO: Debian's chromium package (make test installs
// it as root, or names it as missing).
const chromium = "chromium"

// TestBrowserSocketIO loads a socket.io page through the gate in headless Chromium, the client
// the issue is about: the page itself and socket.io's script pass without a token
// (--skip-auth-route), the app's wsgate:limited listener receives the refusal with
// retryAfterMs, the refused reconnect reaches connect_error with the reason and retryAfterMs in
// err.data, and a cross-origin fetch without a token reads the gate's 401 (CORS headers for an
// allowed origin) instead of failing as "blocked by CORS policy".
func TestBrowserSocketIO(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath(chromium); err != nil {
		t.Fatalf("%s is not installed: run make test as root, or apt-get install chromium", chromium)
	}
	secret, secretFile := newHMACSecret(t)
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	_, port, _ := net.SplitHostPort(listen)
	startGate(t, "--listen", listen, "--upstream", startNodeBackend(t), "--jwt-hmac-secret-file", secretFile,
		"--skip-auth-route", "GET=^/app/", "--allowed-origins", "http://"+listen,
		"--user-rate", "20/30s", "--user-block", "5s", "--ip-rate", "0", "--user-conn-rate", "0", "--ip-conn-rate", "0")
	// The gate listens where this --listen says (the last one wins), the address that
	// --allowed-origins names.
	page := "http://" + listen + "/app/index.html?token=" + hsToken(t, secret, "browser-user") + "&other=localhost:" + port

	// --dump-dom prints the page once 10 s of its virtual time have passed; the page is done
	// within a second, but Chromium lets virtual time run only while no request is pending, so
	// the run takes about half a minute (t.Parallel: the rest of the suite runs meanwhile).
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
		"--disable-dev-shm-usage", "--no-first-run", "--user-data-dir="+t.TempDir(),
		"--virtual-time-budget=10000", "--dump-dom", page)
	var stderr outputBuffer
	cmd.Stderr = &stderr
	dom, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s\n%s", err, dom, tail(stderr.String(), 3000))
	}
	m := regexp.MustCompile(`(?s)<pre id="result">(.*?)</pre>`).FindSubmatch(dom)
	if m == nil {
		t.Fatalf("no #result in the page:\n%s\n%s", dom, tail(stderr.String(), 3000))
	}
	var got struct {
		CrossOrigin struct {
			Status int            `json:"status"`
			Body   map[string]any `json:"body"`
			Error  string         `json:"error"`
		} `json:"crossOrigin"`
		Limited      map[string]any `json:"limited"`
		Disconnect   string         `json:"disconnect"`
		ConnectError struct {
			Message string         `json:"message"`
			Data    map[string]any `json:"data"`
		} `json:"connectError"`
		Error string `json:"error"`
	}
	text := html.UnescapeString(string(m[1]))
	if err := json.Unmarshal([]byte(text), &got); err != nil {
		t.Fatalf("#result %q: %v", text, err)
	}
	t.Logf("the page saw %s", text)
	if got.Error != "" {
		t.Fatalf("the page failed: %s", got.Error)
	}
	if got.CrossOrigin.Status != 401 || got.CrossOrigin.Body == nil {
		t.Errorf("cross-origin fetch without a token: %+v, want a readable 401 with its JSON body", got.CrossOrigin)
	}
	wantRetry(t, "the wsgate:limited event in the browser", got.Limited, "user", 5000)
	if got.ConnectError.Message != "Rate limit exceeded" {
		t.Errorf("connect_error on the reconnect: %+v, want %q", got.ConnectError, "Rate limit exceeded")
	}
	wantRetry(t, "connect_error's err.data in the browser", got.ConnectError.Data, "user", 5000)
}
