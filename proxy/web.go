package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/limit"
)

// What a web app behind the gate needs beyond a WebSocket relay: routes
// that need no token, CORS headers on the gate's own errors, one log line
// per refusal, and socket.io spoken in its own protocol (socketio.go).

// ErrBadWebConfig is returned (wrapped) by New for a SocketIOPath,
// SocketIOEvent, SkipAuth route or HealthPaths entry it cannot use.
var ErrBadWebConfig = errors.New("proxy: bad web config")

// defaultSocketIOEvent is the refusal event without Config.SocketIOEvent.
const defaultSocketIOEvent = "wsgate:limited"

// web is the Proxy's state for these features, fixed by New.
type web struct {
	// sioBase is Config.SocketIOPath without its trailing slash; "" when
	// socket.io is not recognised.
	sioBase string
	// sioEventHead is the JSON array's start of the refusal event:
	// `["wsgate:limited",`.
	sioEventHead []byte
	health       map[string]bool
	sessions     *sessions  // the sessions the gate answers for (polling.go)
	drops        *pollDrops // the polling sessions with dropped packets (pollingdrop.go)
}

func newWeb(cfg *Config) (web, error) {
	var w web
	if p := cfg.SocketIOPath; p != "" {
		if !strings.HasPrefix(p, "/") {
			return w, fmt.Errorf("%w: socket.io path %q must start with /", ErrBadWebConfig, p)
		}
		w.sioBase = strings.TrimRight(p, "/")
	}
	event := cfg.SocketIOEvent
	if event == "" {
		event = defaultSocketIOEvent
	}
	name, _ := json.Marshal(event)
	w.sioEventHead = append(append([]byte{'['}, name...), ',')
	for _, rt := range cfg.SkipAuth {
		if rt.Path == nil {
			return w, fmt.Errorf("%w: skip-auth route without a path pattern", ErrBadWebConfig)
		}
	}
	for _, h := range cfg.HealthPaths {
		if !strings.HasPrefix(h, "/") {
			return w, fmt.Errorf("%w: health path %q must start with /", ErrBadWebConfig, h)
		}
		if w.health == nil {
			w.health = make(map[string]bool)
		}
		w.health[h] = true
	}
	w.sessions = newSessions()
	w.drops = newPollDrops()
	return w, nil
}

// Route matches requests by method and path, as oauth2-proxy's
// --skip-auth-route writes it. Create it with ParseRoute.
type Route struct {
	// Method is the request method matched, upper case; "" matches any.
	Method string
	// Path is matched against the request's path (not its query).
	Path *regexp.Regexp
}

// ParseRoute parses "METHOD=regex" (METHOD letters only, any case) or
// "regex" (any method).
func ParseRoute(s string) (Route, error) {
	var rt Route
	pattern := s
	if m, rest, ok := strings.Cut(s, "="); ok && m != "" && strings.IndexFunc(m, notLetter) < 0 {
		rt.Method, pattern = strings.ToUpper(m), rest
	}
	if pattern == "" {
		return rt, fmt.Errorf("route %q: empty path pattern", s)
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return rt, fmt.Errorf("route %q: %w", s, err)
	}
	rt.Path = re
	return rt, nil
}

func notLetter(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') }

// Match reports whether r is on the route. A request whose path is not
// clean (cleanPath) is on no route: "/public/../secret" matches "^/public/"
// as text, but the backend may well serve /secret for it.
func (rt Route) Match(r *http.Request) bool {
	return (rt.Method == "" || rt.Method == r.Method) && cleanPath(r.URL) && rt.Path.MatchString(r.URL.Path)
}

// cleanPath reports whether u's path is what path.Clean makes of it, but
// for a trailing slash, and encodes no slash: a path with dot segments,
// doubled slashes or a %2F names something else for a backend that
// resolves or decodes it, so a pattern matched against it proves nothing.
func cleanPath(u *url.URL) bool {
	p := u.Path
	if c := path.Clean(p); c != p && c+"/" != p {
		return false
	}
	return !strings.Contains(strings.ToLower(u.RawPath), "%2f")
}

// isHealth reports whether r is the backend's health check, passed
// without a token, an Origin check or a limit.
func (p *Proxy) isHealth(r *http.Request) bool {
	return p.web.health[r.URL.Path] && (r.Method == http.MethodGet || r.Method == http.MethodHead) && !isWebSocket(r)
}

// skipsAuth reports whether r is admitted without a token: a SkipAuth
// route, or a CORS preflight under SkipAuthPreflight.
func (p *Proxy) skipsAuth(r *http.Request) bool {
	if p.cfg.SkipAuthPreflight && isPreflight(r) {
		return true
	}
	for _, rt := range p.cfg.SkipAuth {
		if rt.Match(r) {
			return true
		}
	}
	return false
}

// isPreflight reports whether r is a CORS preflight (Fetch standard,
// "CORS-preflight request").
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != ""
}

// allowCORS lets a browser read a response the gate writes itself (401,
// 429, 503, the socket.io answers) to a cross-origin request: without it
// the browser reports a CORS failure instead of the status. An Origin that
// Config.AllowedOrigins names is echoed with credentials allowed, as the
// app's own responses usually are. With no AllowedOrigins the answer is
// "*" without credentials: echoing any origin with credentials would let
// any site read, with a visitor's cookie, whether the gate refuses that
// visitor (a logged-in oracle). Responses that come from the upstream
// carry the upstream's CORS headers and never these.
func (p *Proxy) allowCORS(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" || origin == "null" {
		return
	}
	h := w.Header()
	switch {
	case len(p.cfg.AllowedOrigins) == 0:
		h.Set("Access-Control-Allow-Origin", "*")
	case auth.OriginAllowed(p.cfg.AllowedOrigins, origin):
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
	default:
		return
	}
	h.Set("Access-Control-Expose-Headers", "Retry-After, WWW-Authenticate")
}

// connInfo is what a connection's logs, refusals, rules and the admin API
// need beyond its pair's sockets. The fields given at the handshake (id,
// subject, tokenID, ip, path, protocol, sio, rules) never change after it,
// so any goroutine may read them; freeStart, freeCount and quietUntil
// belong to the client direction, which decides the connection's
// messages; notice is published by one direction for the other.
type connInfo struct {
	id string // the engine.io sid of a socket.io upgrade, else random
	// subject and tokenID are the verified token's subject and jti, for
	// the operator's disconnects and revocations; the subject is logged
	// only under Config.LogSubject.
	subject, tokenID string
	ip               netip.Addr // the client's
	path, protocol   string     // the request's path and the subprotocol agreed
	// userKey and ipKey are the limiter's keys of the connection's user
	// and client address; limits, the two as the flag rules' message
	// decisions take them, made at the first (nil before it, and under a
	// rules file).
	userKey, ipKey string
	limits         *limit.Client

	// freeStart and freeCount are the window of the engine.io control
	// packets that pass without counting (sioFreeControl).
	freeStart int64
	freeCount int32
	sio       bool // the connection speaks engine.io 4
	// quietUntil is when the next refusal may be logged (unix
	// nanoseconds): one line per block, not one per message.
	quietUntil int64

	// rules is the connection's admission under the rules file; nil under
	// the flag rules. Only the direction from the client uses it.
	rules *connRules
	// notice is a text frame the direction to the client sends at its next
	// message boundary (the 429 frame of a dropped message), published by
	// the direction from the client.
	notice atomic.Pointer[[]byte]
}

// newConnID returns 16 random hex digits.
func newConnID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// refusal is who and what a refusal log line is about.
type refusal struct {
	event     string // "message", "handshake", "request"
	transport string // "websocket", "polling", "http"
	connID    string
	ip        netip.Addr
	userKey   string
	subject   string
	path      string
	openConn  bool // refused by OpenConn (--ip-max-conns)
}

// refusalOf describes a request's refusal.
func (p *Proxy) refusalOf(r *http.Request, cl client, event, transport, connID string) refusal {
	if connID == "" {
		connID = newConnID()
	}
	rf := refusal{event: event, transport: transport, connID: connID, ip: cl.ip, userKey: cl.userKey, path: r.URL.Path}
	if p.cfg.LogSubject {
		rf.subject = cl.identity.Subject
	}
	return rf
}

// logRefusal writes the one line of a refusal: the rule and its scope, the
// count and the limit, the retry, the connection, the client. The identity
// is its rate-limit key (auth.Identity.Key: "u:" and the first 32 hex
// digits of sha256(issuer NUL subject), or "anon:<ip key>"); the subject
// itself only under Config.LogSubject. A refusal under Config.Shadow is
// logged with shadow=true.
func (p *Proxy) logRefusal(d limit.Decision, rf refusal) {
	attrs := make([]slog.Attr, 0, 16)
	attrs = append(attrs,
		slog.String("event", rf.event),
		slog.String("rule", ruleName(d, rf.openConn)),
		slog.String("scope", d.Scope),
		slog.String("kind", d.Kind),
		slog.Bool("blocked", d.Blocked),
		slog.Int("limit", d.Limit))
	if !d.Blocked && d.Limit > 0 {
		// The refused event is the one past the limit.
		attrs = append(attrs, slog.Int("count", d.Limit+1))
	}
	attrs = append(attrs,
		slog.Int64("retry_after_ms", d.RetryAfter.Milliseconds()),
		slog.String("transport", rf.transport),
		slog.String("conn_id", rf.connID),
		slog.String("client_ip", rf.ip.String()),
		slog.String("identity", rf.userKey))
	if rf.subject != "" {
		attrs = append(attrs, slog.String("subject", rf.subject))
	}
	attrs = append(attrs, slog.String("path", rf.path), slog.Bool("shadow", p.cfg.Shadow))
	if d.Fallback {
		attrs = append(attrs, slog.Bool("fallback", true))
	}
	p.log.LogAttrs(context.Background(), slog.LevelInfo, "rate limited", attrs...)
}

// ruleName names the rule behind a refusal by its flag.
func ruleName(d limit.Decision, openConn bool) string {
	switch {
	case d.Fallback && d.Store == "":
		return "failure-mode" // closed: no rule decided
	case d.Rule != "":
		return d.Rule
	case openConn && d.Kind == limit.KindConnection:
		return "ip-max-conns"
	case d.Kind == limit.KindMessage && d.Scope == limit.ScopeIP:
		return "ip-rate"
	case d.Kind == limit.KindMessage:
		return "user-rate"
	case d.Scope == limit.ScopeIP:
		return "ip-conn-rate"
	}
	return "user-conn-rate"
}

// refused logs the refusal of a message of pr, allowed under Shadow,
// dropped by a rule, or closing the connection: one line per block (or
// second) and connection.
func (pr *pair) refused(d limit.Decision) {
	info := pr.info
	now := time.Now().UnixNano()
	if now < info.quietUntil {
		return
	}
	info.quietUntil = now + max(d.RetryAfter, time.Second).Nanoseconds()
	transport := "websocket"
	rf := refusal{event: "message", transport: transport, connID: info.id, ip: info.ip,
		userKey: info.userKey, path: info.path}
	if pr.p.cfg.LogSubject {
		rf.subject = info.subject
	}
	pr.p.logRefusal(d, rf)
}
