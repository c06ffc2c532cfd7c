//go:build e2e

package e2e

// Helpers of limits_test.go and auth_test.go: a backend that counts what reaches it, clients that
// connect from a chosen loopback address, the rate-limit refusal check, metric polling, a Redis
// that can be killed and restarted on its port, and hand-made JWTs.

import (
	"bufio"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// recordingBackend is an echo backend (coder/websocket) that counts what reaches it, so a test can
// prove that a refused message or handshake never did. Plain HTTP: GET /hello answers "hello".
type recordingBackend struct {
	URL string // http://127.0.0.1:port

	conns atomic.Int64 // WebSocket connections accepted
	msgs  atomic.Int64 // data messages received, over all connections
	reqs  atomic.Int64 // plain HTTP requests

	// closes receives, per ended connection, the close frame the backend got from the gate, or a
	// CloseError with Code -1 when the connection ended without one.
	closes closeLog
}

func newRecordingBackend(t testing.TB) *recordingBackend {
	t.Helper()
	b := &recordingBackend{closes: newCloseLog()}
	b.URL = serveBackend(t, "recording backend", b.serve).URL
	return b
}

func (b *recordingBackend) serve(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		b.reqs.Add(1)
		if r.URL.Path == "/hello" {
			io.WriteString(w, "hello")
			return
		}
		http.NotFound(w, r)
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"chat"}, InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	b.conns.Add(1)
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			b.closes.record(err)
			return
		}
		b.msgs.Add(1)
		if c.Write(ctx, typ, p) != nil {
			return
		}
	}
}

// nextClose returns the next close the backend recorded, waiting at most waitLimit.
func (b *recordingBackend) nextClose(t testing.TB) websocket.CloseError {
	t.Helper()
	return b.closes.next(t, "the recording backend")
}

// loopbackClient returns an HTTP client whose connections leave from the loopback address ip
// (127.0.0.2, 127.0.0.3, …), so the gate sees distinct client IPs. It has no Timeout (coder/websocket
// refuses one): bound requests with a context.
func loopbackClient(t testing.TB, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: waitLimit}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// peer says how a test client connects: from which loopback address, with which headers and
// subprotocols. The zero value connects from 127.0.0.1 with no extra headers.
type peer struct {
	ip        string // "" = 127.0.0.1
	header    http.Header
	protocols []string
}

func (p peer) options(t testing.TB) *websocket.DialOptions {
	opts := &websocket.DialOptions{HTTPHeader: p.header, Subprotocols: p.protocols}
	if p.ip != "" {
		opts.HTTPClient = loopbackClient(t, p.ip)
	}
	return opts
}

// bearer returns a peer that sends tok in an Authorization header.
func bearer(tok string) peer {
	return peer{header: http.Header{"Authorization": {"Bearer " + tok}}}
}

// from returns p connecting from ip.
func (p peer) from(ip string) peer {
	p.ip = ip
	return p
}

// tryDial dials url as p and returns what happened; a connection is closed in t.Cleanup.
func tryDial(t testing.TB, url string, p peer) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, p.options(t))
	if err == nil {
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

// dialAs dials url as p and fails the test when the handshake fails.
func dialAs(t testing.TB, url string, p peer) *websocket.Conn {
	t.Helper()
	c, resp, err := tryDial(t, url, p)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: status %d: %v", url, status, err)
	}
	return c
}

// echoOK sends msg and fails the test unless the same text comes back.
func echoOK(t testing.TB, c *websocket.Conn, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	typ, p, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read the echo of %q: %v", msg, err)
	}
	if typ != websocket.MessageText || string(p) != msg {
		t.Fatalf("got %v %q, want the echo %q", typ, tail(string(p), 200), msg)
	}
}

// refusal is the JSON a client gets when a limit refuses it.
type refusal struct {
	Code         int    `json:"code"`
	Error        string `json:"error"`
	Scope        string `json:"scope"`
	RetryAfterMs int64  `json:"retryAfterMs"`
}

// parseRefusal checks p is exactly {"code":429,"error":"Rate limit exceeded","scope":scope,
// "retryAfterMs":N} with N > 0 and returns it.
func parseRefusal(t testing.TB, p []byte, scope string) refusal {
	t.Helper()
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(p, &keys); err != nil {
		t.Fatalf("refusal %q is not a JSON object: %v", p, err)
	}
	if len(keys) != 4 {
		t.Errorf("refusal %s has %d keys, want code, error, scope, retryAfterMs", p, len(keys))
	}
	var r refusal
	if err := json.Unmarshal(p, &r); err != nil {
		t.Fatalf("refusal %s: %v", p, err)
	}
	if r.Code != 429 || r.Error != "Rate limit exceeded" || r.Scope != scope || r.RetryAfterMs <= 0 {
		t.Fatalf(`refusal %s, want {"code":429,"error":"Rate limit exceeded","scope":%q,"retryAfterMs":N>0}`, p, scope)
	}
	return r
}

// wantRefusal reads the next frames of c: the 429 JSON text frame of scope, then close 4008
// "Rate limit". It returns the refusal.
func wantRefusal(t testing.TB, c *websocket.Conn, scope string) refusal {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	typ, p, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("want the 429 JSON frame, got %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("got a %v message %q, want the 429 JSON as text", typ, p)
	}
	r := parseRefusal(t, p, scope)
	wantLimitClose(t, c)
	return r
}

// wantLimitClose reads until the close frame and checks it is 4008 "Rate limit".
func wantLimitClose(t testing.TB, c *websocket.Conn) {
	t.Helper()
	if ce := readClose(t, c); ce.Code != 4008 || ce.Reason != "Rate limit" {
		t.Fatalf("client got close %d %q, want 4008 \"Rate limit\"", ce.Code, ce.Reason)
	}
}

// burstResult is what a client saw after a burst of messages.
type burstResult struct {
	echoes  []string             // data messages that came back, in order
	refused []byte               // the 429 JSON frame, nil when none came
	close   websocket.CloseError // the close frame that ended the connection
	err     error                // set when the connection ended without a close frame
}

// burst writes msgs on c without waiting, then reads until every message came back or the
// connection ended. It does not touch t, so tests may run it on several goroutines.
func burst(c *websocket.Conn, msgs []string) burstResult {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for _, m := range msgs {
		if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
			break // the gate closes the connection at the refusal
		}
	}
	var res burstResult
	for len(res.echoes) < len(msgs) {
		_, p, err := c.Read(ctx)
		if err != nil {
			if !errors.As(err, &res.close) {
				res.err = err
			}
			return res
		}
		if strings.HasPrefix(string(p), `{"code":429`) {
			res.refused = p
			continue
		}
		res.echoes = append(res.echoes, string(p))
	}
	return res
}

// waitMetric polls g's metric name{labels} until it equals want, at most waitLimit.
func waitMetric(t testing.TB, g *Gate, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		got := g.Metric(t, name, labels)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitMetricAbove polls g's metric name{labels} until it exceeds floor, at most waitLimit, and
// returns it.
func waitMetricAbove(t testing.TB, g *Gate, name string, labels map[string]string, floor float64) float64 {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		got := g.Metric(t, name, labels)
		if got > floor {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want more than %v", name, labels, got, floor)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Label sets of the limiter's metrics.
var (
	decAllowed  = map[string]string{"decision": "allowed"}
	decLimited  = map[string]string{"decision": "limited"}
	decShadow   = map[string]string{"decision": "shadow_limited"}
	decFallback = map[string]string{"cause": "fallback"}
	userMessage = map[string]string{"scope": "user", "kind": "message"}
	userConn    = map[string]string{"scope": "user", "kind": "connection"}
	ipMessage   = map[string]string{"scope": "ip", "kind": "message"}
	ipConn      = map[string]string{"scope": "ip", "kind": "connection"}
)

const (
	mRateLimited = "holo_ws_rate_limited_total"
	mDecisions   = "holo_ws_limiter_decisions_total"
	mFallback    = "holo_ws_limiter_fallback_total"
	mRedisUp     = "holo_ws_redis_up"
	mDuration    = "holo_ws_limiter_duration_seconds"
	mAuthFail    = "holo_ws_auth_failures_total"
)

// redisServer is a redis-server that a test can kill and start again on the same port.
type redisServer struct {
	t    testing.TB
	port int
	Addr string // 127.0.0.1:port
	p    *proc
}

func (r *redisServer) URL() string { return "redis://" + r.Addr }

// startRedisServer runs redis-server on a free port without persistence.
func startRedisServer(t testing.TB) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH")
	}
	port := freePort(t)
	r := &redisServer{t: t, port: port, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	r.start()
	return r
}

// start runs redis-server on r's port and waits until it answers PING.
func (r *redisServer) start() {
	r.t.Helper()
	r.p = startProc(r.t, "redis-server", exec.Command("redis-server",
		"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"))
	waitFor(r.t, "redis-server to answer PING", func() bool {
		if r.p.exited() {
			r.t.Fatalf("redis-server exited:\n%s", r.p.out.String())
		}
		reply, err := redisDo(r.Addr, "PING")
		return err == nil && len(reply) == 1 && reply[0] == "PONG"
	})
}

// kill stops redis-server with SIGKILL and waits for it to exit.
func (r *redisServer) kill() {
	r.t.Helper()
	_ = syscall.Kill(-r.p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-r.p.done:
	case <-time.After(waitLimit):
		r.t.Fatalf("redis-server did not exit after SIGKILL")
	}
}

// keys returns the Redis keys that match pattern.
func (r *redisServer) keys(pattern string) []string {
	r.t.Helper()
	reply, err := redisDo(r.Addr, "KEYS", pattern)
	if err != nil {
		r.t.Fatalf("redis KEYS %s: %v", pattern, err)
	}
	return reply
}

// redisDo sends one command in RESP and returns the reply flattened to strings.
func redisDo(addr string, args ...string) ([]string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var req strings.Builder
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, req.String()); err != nil {
		return nil, err
	}
	var out []string
	err = readRESP(bufio.NewReader(c), &out)
	return out, err
}

func readRESP(br *bufio.Reader, out *[]string) error {
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return errors.New("empty RESP line")
	}
	switch line[0] {
	case '+', ':':
		*out = append(*out, line[1:])
	case '-':
		return errors.New(line[1:])
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return err
		}
		*out = append(*out, string(buf[:n]))
	case '*':
		n, _ := strconv.Atoi(line[1:])
		for range n {
			if err := readRESP(br, out); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unexpected RESP line %q", line)
	}
	return nil
}

// Hand-made JWTs: every byte of header and claims is the test's choice, so malformed and
// hostile tokens are as easy to make as valid ones.

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// signer signs a JWS signing input.
type signer func(input []byte) []byte

func hmacSigner(h func() hash.Hash, secret []byte) signer {
	return func(input []byte) []byte {
		m := hmac.New(h, secret)
		m.Write(input)
		return m.Sum(nil)
	}
}

func hs256(secret []byte) signer { return hmacSigner(sha256.New, secret) }

func rs256(t testing.TB, key *rsa.PrivateKey) signer {
	return func(input []byte) []byte {
		sum := sha256.Sum256(input)
		sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatalf("rs256: %v", err)
		}
		return sig
	}
}

// makeJWT returns header.claims.signature; a nil sign leaves the signature empty (alg=none).
func makeJWT(t testing.TB, header, claims map[string]any, sign signer) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	input := b64url(h) + "." + b64url(c)
	if sign == nil {
		return input + "."
	}
	return input + "." + b64url(sign([]byte(input)))
}

// Claims every valid test token carries; the gates of the tests require them.
const (
	testIssuer   = "https://issuer.e2e.test"
	testAudience = "wsgate-e2e"
)

// claimsFor returns valid claims for sub: issuer, audience, exp in an hour, iat a minute ago.
func claimsFor(sub string) map[string]any {
	now := time.Now()
	return map[string]any{
		"sub": sub, "iss": testIssuer, "aud": testAudience,
		"exp": now.Add(time.Hour).Unix(), "iat": now.Add(-time.Minute).Unix(),
	}
}

// hsToken returns a valid HS256 token for sub signed with secret.
func hsToken(t testing.TB, secret []byte, sub string) string {
	t.Helper()
	return makeJWT(t, map[string]any{"alg": "HS256", "typ": "JWT"}, claimsFor(sub), hs256(secret))
}

// writeTestFile writes data to a new file under t.TempDir and returns its path.
func writeTestFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newHMACSecret returns a random 32-byte secret and the path of a file holding it.
func newHMACSecret(t testing.TB) (secret []byte, path string) {
	t.Helper()
	secret = make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	return secret, writeTestFile(t, "hmac.secret", secret)
}

func newRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// publicPEM returns the PKIX "PUBLIC KEY" PEM of k's public key.
func publicPEM(t testing.TB, k *rsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// rsaJWK returns the public JWK of k with kid and alg RS256.
func rsaJWK(k *rsa.PrivateKey, kid string) map[string]any {
	return map[string]any{
		"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
		"n": b64url(k.PublicKey.N.Bytes()),
		"e": b64url(big.NewInt(int64(k.PublicKey.E)).Bytes()),
	}
}

// upgradeAttempt sends a WebSocket handshake as a plain HTTP request through client (nil =
// httpClient) and returns the response with its body read (empty for a 101).
func upgradeAttempt(t testing.TB, client *http.Client, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	if client == nil {
		client = httpClient
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", rawClientKey)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("handshake to %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, nil
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the %d body: %v", resp.StatusCode, err)
	}
	return resp, body
}
