// Package admin is the operator's API on the admin port: inspect, reset and
// block a rate-limit key, list and disconnect a user's or an IP's
// connections on every replica, drain a share of this replica's
// connections, and revoke tokens. It is off unless a token file is given;
// every call must carry that token as a bearer token.
//
// Paths are versioned (/v1/...); bodies are JSON in and out. Each action
// that changes something is logged with what it changed. An action that
// concerns every replica (a block, a reset, a revocation, a disconnect)
// goes through the limiter's store: Redis and its pub/sub channel when the
// gate has one, this process alone on the memory store.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/policy"
	"github.com/holo/wsgate/proxy"
)

// Config is what the API acts on.
type Config struct {
	// TokenFile holds the bearer token (surrounding white space is
	// ignored). Required.
	TokenFile string
	Limiter   *limit.Limiter
	Proxy     *proxy.Proxy
	// Rules is the rules file's live policy; nil under the rule flags.
	Rules *policy.Live
	// Issuer is the issuer a "user:<subject>" key is taken under unless
	// the call names one (the rate-limit key of a user hashes both): the
	// gate's --jwt-issuer.
	Issuer string
	// IPKey is the per-IP key of an address under the rule flags (an IPv6
	// client counts by its prefix).
	IPKey func(netip.Addr) string
	// Replica names this process in the answers (the pod name).
	Replica string
	Logger  *slog.Logger
}

// API serves /v1/ on the admin port.
type API struct {
	cfg  Config
	log  *slog.Logger
	hash atomic.Pointer[[sha256.Size]byte] // sha256 of the token
}

// ErrNoToken: the token file is empty.
var ErrNoToken = errors.New("the admin token file is empty")

// New reads the token file and returns the API.
func New(cfg Config) (*API, error) {
	a := &API{cfg: cfg, log: cfg.Logger}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.cfg.IPKey == nil {
		a.cfg.IPKey = func(ip netip.Addr) string { return ip.String() }
	}
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload reads the token file again (SIGHUP); on an error the token in use
// stays.
func (a *API) Reload() error {
	b, err := os.ReadFile(a.cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("admin token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return fmt.Errorf("%w: %s", ErrNoToken, a.cfg.TokenFile)
	}
	h := sha256.Sum256([]byte(tok))
	a.hash.Store(&h)
	return nil
}

// tokenCheck is how often Watch reads the token file, as the key files
// are looked at.
const tokenCheck = 10 * time.Second

// Watch reads the token file every interval (0: every 10 s) until ctx is
// done: a Secret rotated in Kubernetes reaches the mounted file with no
// signal to say so, and a token that leaked must stop working without a
// restart. A file that cannot be read keeps the token in use, with one
// warning per different failure.
func (a *API) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = tokenCheck
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var failed string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		old := a.hash.Load()
		err := a.Reload()
		switch {
		case err != nil && err.Error() != failed:
			failed = err.Error()
			a.log.Warn("admin: the token file cannot be read; keeping the token in use", "err", err)
		case err == nil:
			failed = ""
			if *a.hash.Load() != *old {
				a.log.Info("admin: token file re-read: a new token is in force")
			}
		}
	}
}

// Handler serves the API under /v1/ and passes every other path to next
// (/metrics, /healthz and /readyz stay open).
func (a *API) Handler(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	allow := map[string][]string{} // the methods of each call's path
	for _, c := range []struct {
		method, path string
		fn           http.HandlerFunc
	}{
		{"GET", "/v1/keys", a.inspect},
		{"POST", "/v1/keys/reset", a.reset},
		{"POST", "/v1/keys/block", a.block},
		{"GET", "/v1/connections", a.connections},
		{"POST", "/v1/disconnect", a.disconnect},
		{"POST", "/v1/drain", a.drain},
		{"GET", "/v1/revocations", a.revocations},
		{"POST", "/v1/revocations", a.revoke},
		{"DELETE", "/v1/revocations", a.unrevoke},
	} {
		mux.HandleFunc(c.method+" "+c.path, c.fn)
		allow[c.path] = append(allow[c.path], c.method)
	}
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		if methods, ok := allow[r.URL.Path]; ok {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			fail(w, http.StatusMethodNotAllowed, r.Method+" "+r.URL.Path+": the call takes "+strings.Join(methods, " or "))
			return
		}
		fail(w, http.StatusNotFound, "no such admin call: "+r.Method+" "+r.URL.Path)
	})
	api := a.authorized(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1" || strings.HasPrefix(r.URL.Path, "/v1/") {
			api.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authorized lets through the requests that carry the token. Both sides
// are hashed first, so the comparison takes the same time whatever the
// token's length and however much of it a caller guessed.
func (a *API) authorized(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		ok := strings.EqualFold(scheme, "Bearer") // schemes are case-insensitive (RFC 9110)
		got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		want := a.hash.Load()
		if !ok || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="wsgate-admin"`)
			fail(w, http.StatusUnauthorized, "a valid admin bearer token is required")
			a.log.Warn("admin: call refused: no valid token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// timeout bounds the store calls of one admin call.
const timeout = 5 * time.Second

// maxBody bounds a call's JSON body.
const maxBody = 64 << 10

// decode reads r's JSON body into v, refusing unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		fail(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	return true
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Error is the body of every answer that is not a success.
type Error struct {
	Error string `json:"error"`
}

func fail(w http.ResponseWriter, status int, msg string) {
	reply(w, status, Error{Error: msg})
}

// storeFailed answers an error of the limiter: 400 for what it refused
// to do, 502 when the store did not answer.
func storeFailed(w http.ResponseWriter, err error) {
	if errors.Is(err, limit.ErrBadRequest) {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	fail(w, http.StatusBadGateway, "the store did not answer: "+err.Error())
}

// duration parses a JSON duration: "10m", "1h30m".
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"10m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

// key is a parsed key of a call: what the limiter counts under, and the
// text the operator wrote.
type key struct {
	text string
	ref  limit.KeyRef
	// subject or ip: the connections it stands for, when it names a user
	// or an IP.
	match proxy.Match
}

// parseKey reads "user:<subject>", "ip:<address>", or a rules file's
// "<key kind>:<value>" ("claim:plan:pro", "header:x-tenant:acme",
// "connection:<id>"). A user's rate-limit key hashes the issuer of its
// tokens with the subject: issuer when the call names one ("" for tokens
// without iss), else the gate's --jwt-issuer, which every token then
// carries; with neither the key cannot be known.
func (a *API) parseKey(text string, issuer *string, pol *policy.Policy) (key, error) {
	k := key{text: text}
	kind, value, ok := strings.Cut(text, ":")
	if !ok || value == "" {
		return k, fmt.Errorf("key %q: want user:<subject>, ip:<address> or a rules file's <key>:<value>", text)
	}
	switch kind {
	case "user":
		iss := a.cfg.Issuer
		switch {
		case issuer != nil:
			iss = *issuer
		case iss == "":
			return k, fmt.Errorf("key %q: the gate has no --jwt-issuer, so name the issuer of the user's tokens (issuer; \"\" for tokens without iss)", text)
		}
		k.ref = limit.KeyRef{Scope: "user", ID: auth.Identity{Issuer: iss, Subject: value}.Key("")}
		k.match = proxy.Match{Subject: value}
		return k, nil
	case "ip":
		ip, err := netip.ParseAddr(value)
		if err != nil {
			return k, fmt.Errorf("key %q: %v", text, err)
		}
		ip = ip.Unmap()
		id := a.cfg.IPKey(ip)
		if pol != nil {
			// A rules file's IP rules count by the address itself.
			id = ip.String()
		}
		k.ref = limit.KeyRef{Scope: "ip", ID: id}
		k.match = proxy.Match{IP: ip}
		return k, nil
	}
	if pol == nil {
		return k, fmt.Errorf("key %q: without a rules file only user:<subject> and ip:<address> are counted", text)
	}
	scope := kind
	if kind == "claim" || kind == "header" {
		name, v, ok := strings.Cut(value, ":")
		if !ok || name == "" || v == "" {
			return k, fmt.Errorf("key %q: want %s:<name>:<value>", text, kind)
		}
		if kind == "header" {
			name = strings.ToLower(name)
		}
		scope, value = kind+":"+name, v
	}
	for i := range pol.Rules {
		if pol.Rules[i].Key.String() == scope {
			k.ref = limit.KeyRef{Scope: scope, ID: value}
			return k, nil
		}
	}
	return k, fmt.Errorf("key %q: no rule of the rules file counts by %s", text, scope)
}

// policy is the rules file's policy in force; nil under the rule flags.
func (a *API) policy() *policy.Policy {
	if a.cfg.Rules == nil {
		return nil
	}
	return a.cfg.Rules.Load()
}

// KeyAnswer is the answer to an inspection.
type KeyAnswer struct {
	Key     string `json:"key"`
	Replica string `json:"replica"`
	limit.KeyState
}

func (a *API) inspect(w http.ResponseWriter, r *http.Request) {
	pol := a.policy()
	q := r.URL.Query()
	var issuer *string
	if q.Has("issuer") {
		v := q.Get("issuer")
		issuer = &v
	}
	k, err := a.parseKey(q.Get("key"), issuer, pol)
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	st, err := a.cfg.Limiter.Inspect(ctx, k.ref, pol)
	if err != nil {
		storeFailed(w, err)
		return
	}
	reply(w, http.StatusOK, KeyAnswer{Key: k.text, Replica: a.cfg.Replica, KeyState: st})
}

// KeyCall is the body of a reset or a block.
type KeyCall struct {
	Key string `json:"key"`
	// Issuer is the issuer of a user's tokens, when the gate has no
	// --jwt-issuer ("" for tokens without iss).
	Issuer *string `json:"issuer,omitempty"`
	// For and Reason: a block's length and why (a block only).
	For    duration `json:"for,omitempty"`
	Reason string   `json:"reason,omitempty"`
}

// Done is the answer to an action.
type Done struct {
	Action  string `json:"action"`
	Key     string `json:"key,omitempty"`
	Replica string `json:"replica"`
	// Closed is how many connections this replica closed (disconnect,
	// drain); other replicas close theirs when the event reaches them.
	Closed *int   `json:"closed,omitempty"`
	ForMs  int64  `json:"forMs,omitempty"`
	Reason string `json:"reason,omitempty"`
}

func (a *API) reset(w http.ResponseWriter, r *http.Request) {
	var c KeyCall
	if !decode(w, r, &c) {
		return
	}
	k, ok := a.onKey(w, r, c, func(ctx context.Context, k key, pol *policy.Policy) error {
		return a.cfg.Limiter.Reset(ctx, k.ref, pol)
	})
	if !ok {
		return
	}
	a.log.Info("admin: key reset: its counters, blocks, strikes and hold are gone", "key", k.text, "remote", r.RemoteAddr)
	reply(w, http.StatusOK, Done{Action: "reset", Key: k.text, Replica: a.cfg.Replica})
}

// maxBlock bounds an operator's block: a longer one is a deny list entry.
const maxBlock = 30 * 24 * time.Hour

func (a *API) block(w http.ResponseWriter, r *http.Request) {
	var c KeyCall
	if !decode(w, r, &c) {
		return
	}
	d := time.Duration(c.For)
	if d < time.Second || d > maxBlock {
		fail(w, http.StatusBadRequest, `"for" must be a duration between 1s and 720h, such as "10m"`)
		return
	}
	k, ok := a.onKey(w, r, c, func(ctx context.Context, k key, _ *policy.Policy) error {
		return a.cfg.Limiter.Hold(ctx, k.ref, d, c.Reason)
	})
	if !ok {
		return
	}
	a.log.Info("admin: key blocked on every replica", "key", k.text, "for_ms", d.Milliseconds(), "reason", c.Reason, "remote", r.RemoteAddr)
	reply(w, http.StatusOK, Done{Action: "block", Key: k.text, Replica: a.cfg.Replica, ForMs: d.Milliseconds(), Reason: c.Reason})
}

// onKey parses c's key under the policy in force and runs act on it,
// bounded by timeout. It answers a bad key with 400 and a failure of the
// store with 502, and reports whether act succeeded.
func (a *API) onKey(w http.ResponseWriter, r *http.Request, c KeyCall, act func(context.Context, key, *policy.Policy) error) (key, bool) {
	pol := a.policy()
	k, err := a.parseKey(c.Key, c.Issuer, pol)
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return k, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	if err := act(ctx, k, pol); err != nil {
		storeFailed(w, err)
		return k, false
	}
	return k, true
}

// match reads a connection selector: user, ip, jti.
func match(user, ip, jti string) (proxy.Match, error) {
	m := proxy.Match{Subject: user, TokenID: jti}
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return m, fmt.Errorf("ip %q: %v", ip, err)
		}
		m.IP = a.Unmap()
	}
	if user == "" && ip == "" && jti == "" {
		return m, errors.New("name a user, an ip or a jti")
	}
	return m, nil
}

// Connections is the answer to a listing.
type Connections struct {
	Replica     string       `json:"replica"`
	Connections []proxy.Conn `json:"connections"`
}

func (a *API) connections(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	m, err := match(q.Get("user"), q.Get("ip"), q.Get("jti"))
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	reply(w, http.StatusOK, Connections{Replica: a.cfg.Replica, Connections: a.cfg.Proxy.Connections(m)})
}

// DisconnectCall is the body of a disconnect.
type DisconnectCall struct {
	User   string `json:"user,omitempty"`
	IP     string `json:"ip,omitempty"`
	JTI    string `json:"jti,omitempty"`
	Reason string `json:"reason,omitempty"`
}

func (a *API) disconnect(w http.ResponseWriter, r *http.Request) {
	var c DisconnectCall
	if !decode(w, r, &c) {
		return
	}
	m, err := match(c.User, c.IP, c.JTI)
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	n := a.cfg.Proxy.Disconnect(m, c.Reason)
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	e := limit.Event{Type: limit.EventDisconnect, Subject: c.User, TokenID: c.JTI, Reason: c.Reason}
	if m.IP.IsValid() {
		e.Scope, e.ID = "ip", m.IP.String()
	}
	if err := a.cfg.Limiter.Publish(ctx, e); err != nil {
		a.log.Warn("admin: disconnect: this replica closed its connections but could not tell the others", "err", err)
		fail(w, http.StatusBadGateway, fmt.Sprintf("closed %d here, but the other replicas could not be told: %v", n, err))
		return
	}
	a.log.Info("admin: disconnect on every replica", "user", c.User, "ip", c.IP, "jti", c.JTI, "reason", c.Reason,
		"closed_here", n, "remote", r.RemoteAddr)
	reply(w, http.StatusOK, Done{Action: "disconnect", Replica: a.cfg.Replica, Closed: &n, Reason: c.Reason})
}

// DrainCall is the body of a drain.
type DrainCall struct {
	// Share of this replica's connections, 0 < share <= 1.
	Share  float64  `json:"share"`
	Spread duration `json:"spread,omitempty"`
}

// maxSpread bounds a drain's spread.
const maxSpread = time.Hour

func (a *API) drain(w http.ResponseWriter, r *http.Request) {
	var c DrainCall
	if !decode(w, r, &c) {
		return
	}
	if !(c.Share > 0 && c.Share <= 1) {
		fail(w, http.StatusBadRequest, `"share" must be above 0 and at most 1`)
		return
	}
	spread := time.Duration(c.Spread)
	if spread < 0 || spread > maxSpread {
		fail(w, http.StatusBadRequest, `"spread" must be between 0s and 1h`)
		return
	}
	n := a.cfg.Proxy.StartDrain(c.Share, spread)
	a.log.Info("admin: drain", "share", c.Share, "spread_ms", spread.Milliseconds(), "connections", n, "remote", r.RemoteAddr)
	reply(w, http.StatusAccepted, Done{Action: "drain", Replica: a.cfg.Replica, Closed: &n})
}

// RevocationCall is the body of a revocation: a subject or a jti, for how
// long (the longest lifetime of a token it may name).
type RevocationCall struct {
	Subject string   `json:"subject,omitempty"`
	JTI     string   `json:"jti,omitempty"`
	For     duration `json:"for"`
	Reason  string   `json:"reason,omitempty"`
}

// Revocation is one entry of the list.
type Revocation struct {
	Subject string    `json:"subject,omitempty"`
	JTI     string    `json:"jti,omitempty"`
	Until   time.Time `json:"until"`
	Reason  string    `json:"reason,omitempty"`
}

// Revocations is the answer to a listing of revocations.
type Revocations struct {
	Revocations []Revocation `json:"revocations"`
}

func (a *API) revocations(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	rs, err := a.cfg.Limiter.Revocations(ctx)
	if err != nil {
		storeFailed(w, err)
		return
	}
	out := Revocations{Revocations: []Revocation{}}
	for _, rv := range rs {
		out.Revocations = append(out.Revocations, Revocation{Subject: rv.Subject, JTI: rv.TokenID, Until: rv.Until.UTC(), Reason: rv.Reason})
	}
	reply(w, http.StatusOK, out)
}

// maxRevocation bounds a revocation's life: tokens that live longer
// belong to a subject's deny list entry.
const maxRevocation = 366 * 24 * time.Hour

func (a *API) revoke(w http.ResponseWriter, r *http.Request) {
	var c RevocationCall
	if !decode(w, r, &c) {
		return
	}
	if (c.Subject == "") == (c.JTI == "") {
		fail(w, http.StatusBadRequest, `name exactly one of "subject" and "jti"`)
		return
	}
	d := time.Duration(c.For)
	if d < time.Second || d > maxRevocation {
		fail(w, http.StatusBadRequest, `"for" must be a duration between 1s and 8784h (the longest life of a token it names), such as "24h"`)
		return
	}
	rv := limit.Revocation{Subject: c.Subject, TokenID: c.JTI, Until: time.Now().Add(d), Reason: c.Reason}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	if err := a.cfg.Limiter.Revoke(ctx, rv); err != nil {
		storeFailed(w, err)
		return
	}
	// This replica's connections close through the revocation's event, as
	// every other replica's do.
	a.log.Info("admin: token revoked on every replica", "subject", c.Subject, "jti", c.JTI, "for_ms", d.Milliseconds(),
		"reason", c.Reason, "remote", r.RemoteAddr)
	reply(w, http.StatusOK, Done{Action: "revoke", Replica: a.cfg.Replica, ForMs: d.Milliseconds(), Reason: c.Reason})
}

func (a *API) unrevoke(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	subject, jti := q.Get("subject"), q.Get("jti")
	if (subject == "") == (jti == "") {
		fail(w, http.StatusBadRequest, "name exactly one of subject and jti")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	if err := a.cfg.Limiter.Unrevoke(ctx, subject, jti); err != nil {
		storeFailed(w, err)
		return
	}
	a.log.Info("admin: revocation lifted", "subject", subject, "jti", jti, "remote", r.RemoteAddr)
	reply(w, http.StatusOK, Done{Action: "unrevoke", Replica: a.cfg.Replica})
}

// EventHandler returns what applies the limiter's events to px's
// connections: disconnects and revocations, whichever replica made them
// (on the one that made a disconnect, the call itself closed them and the
// event finds none left open). Every replica installs it, whether or not
// its own API is on.
func EventHandler(px *proxy.Proxy, log *slog.Logger) func(limit.Event) {
	return func(e limit.Event) {
		var m proxy.Match
		reason := e.Reason
		switch e.Type {
		case limit.EventDisconnect:
			m = proxy.Match{Subject: e.Subject, TokenID: e.TokenID}
			if e.Scope == "ip" {
				ip, err := netip.ParseAddr(e.ID)
				if err != nil {
					return
				}
				m.IP = ip
			}
		case limit.EventRevoke:
			m = proxy.Match{Subject: e.Subject, TokenID: e.TokenID}
			reason = "token revoked"
		default:
			return
		}
		if n := px.Disconnect(m, reason); n > 0 {
			log.Info("admin: connections closed", "event", e.Type, "origin", e.Origin, "subject", e.Subject,
				"jti", e.TokenID, "ip", e.ID, "closed", n)
		}
	}
}
