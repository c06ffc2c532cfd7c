package admin

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/policy"
)

func tokenFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestToken: /v1/ wants the file's token; everything else passes to the
// next handler untouched; a reload takes a new token and an empty file
// keeps the old one.
func TestToken(t *testing.T) {
	file := tokenFile(t, "  s3cret\n")
	a, err := New(Config{TokenFile: file})
	if err != nil {
		t.Fatal(err)
	}
	next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := a.Handler(next)
	call := func(path, authz string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for _, authz := range []string{"", "s3cret", "Bearer", "Bearer s3cre", "Bearer s3cretX", "Basic s3cret"} {
		if w := call("/v1/nothing", authz); w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%q: %d, want 401 with WWW-Authenticate", authz, w.Code)
		}
	}
	if w := call("/v1/nothing", "Bearer s3cret"); w.Code != http.StatusNotFound {
		t.Errorf("the right token on an unknown call: %d, want 404", w.Code)
	}
	r := httptest.NewRequest(http.MethodGet, "/v1/drain", nil)
	r.Header.Set("Authorization", "Bearer s3cret")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "POST" {
		t.Errorf("GET of a POST call: %d, Allow %q; want 405, POST", w.Code, w.Header().Get("Allow"))
	}
	if w := call("/metrics", ""); w.Code != http.StatusTeapot {
		t.Errorf("/metrics without a token: %d, want the next handler's", w.Code)
	}
	if err := os.WriteFile(file, []byte("other"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if w := call("/v1/nothing", "Bearer s3cret"); w.Code != http.StatusUnauthorized {
		t.Errorf("the old token after a reload: %d", w.Code)
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); !errors.Is(err, ErrNoToken) {
		t.Fatalf("an empty file: %v", err)
	}
	if w := call("/v1/nothing", "Bearer other"); w.Code != http.StatusNotFound {
		t.Errorf("the token in use after a failed reload: %d", w.Code)
	}
	if _, err := New(Config{TokenFile: tokenFile(t, " \n")}); !errors.Is(err, ErrNoToken) {
		t.Fatalf("New with an empty file: %v", err)
	}
}

// TestParseKey: the keys an operator writes become the limiter's keys as
// the rules count them.
func TestParseKey(t *testing.T) {
	a, err := New(Config{TokenFile: tokenFile(t, "x"), Issuer: "https://iss",
		IPKey: func(ip netip.Addr) string { return "k:" + ip.String() }})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse("rules.yaml", []byte("rules:\n  - {name: t, key: \"claim:tenant\", limits: [5/1s]}\n  - {name: h, key: \"header:X-Team\", limits: [5/1s]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	other, none := "other", ""
	for _, tc := range []struct {
		text      string
		issuer    *string
		pol       *policy.Policy
		scope, id string
	}{
		{"user:alice", nil, nil, "user", auth.Identity{Issuer: "https://iss", Subject: "alice"}.Key("")},
		{"user:alice", &other, nil, "user", auth.Identity{Issuer: "other", Subject: "alice"}.Key("")},
		{"user:alice", &none, nil, "user", auth.Identity{Subject: "alice"}.Key("")},
		{"ip:10.0.0.1", nil, nil, "ip", "k:10.0.0.1"},
		{"ip:::ffff:10.0.0.1", nil, pol, "ip", "10.0.0.1"},
		{"claim:tenant:acme", nil, pol, "claim:tenant", "acme"},
		{"header:X-Team:a:b", nil, pol, "header:x-team", "a:b"},
	} {
		k, err := a.parseKey(tc.text, tc.issuer, tc.pol)
		if err != nil || k.ref.Scope != tc.scope || k.ref.ID != tc.id {
			t.Errorf("%q: %+v %v, want %s %s", tc.text, k.ref, err, tc.scope, tc.id)
		}
	}
	for _, bad := range []string{"", "alice", "user:", "ip:nope", "claim:tenant:acme", "connection:x"} {
		if _, err := a.parseKey(bad, nil, nil); err == nil {
			t.Errorf("%q parsed without a rules file", bad)
		}
	}
	for _, bad := range []string{"claim:plan:pro", "claim:tenant", "header:x-other:v", "connection:x"} {
		if _, err := a.parseKey(bad, nil, pol); err == nil {
			t.Errorf("%q parsed, but no rule counts by it", bad)
		}
	}
	// Without --jwt-issuer a user's key cannot be known unless the call
	// names the issuer of its tokens.
	a.cfg.Issuer = ""
	if _, err := a.parseKey("user:alice", nil, nil); err == nil || !strings.Contains(err.Error(), "issuer") {
		t.Errorf("user:alice without any issuer: %v", err)
	}
}

// TestWatchToken: a token file rewritten in place (a Secret rotated) is
// taken without a signal; an emptied one keeps the token in use.
func TestWatchToken(t *testing.T) {
	file := tokenFile(t, "first")
	a, err := New(Config{TokenFile: file})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Watch(ctx, 5*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	h := a.Handler(http.NotFoundHandler())
	status := func(tok string) int {
		r := httptest.NewRequest(http.MethodGet, "/v1/nothing", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	waitToken := func(tok string) {
		t.Helper()
		for range 1000 {
			if status(tok) != http.StatusUnauthorized {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("token %q never taken", tok)
	}
	for _, step := range []string{"second", "", "third"} {
		if err := os.WriteFile(file, []byte(step), 0o600); err != nil {
			t.Fatal(err)
		}
		if step == "" {
			time.Sleep(50 * time.Millisecond) // ten reads of the empty file
			if status("second") == http.StatusUnauthorized {
				t.Fatal("an emptied token file dropped the token in use")
			}
			continue
		}
		waitToken(step)
	}
	if status("first") != http.StatusUnauthorized {
		t.Fatal("the first token still works")
	}
}
