package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/metrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// backend is a Go WebSocket server written with another library than the
// gate's: echo, /close?code=&reason=, /headers, /status, /post.
func backend(t testing.TB) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/post", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", "go")
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Why", "policy")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, "forbidden by backend")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"chat"}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		ctx := r.Context()
		switch r.URL.Path {
		case "/close":
			code, _ := strconv.Atoi(r.URL.Query().Get("code"))
			_ = c.Close(websocket.StatusCode(code), r.URL.Query().Get("reason"))
			return
		case "/headers":
			b, _ := json.Marshal(map[string]any{"header": r.Header, "uri": r.RequestURI, "host": r.Host})
			_ = c.Write(ctx, websocket.MessageText, b)
		}
		for {
			typ, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, b); err != nil {
				return
			}
		}
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

type gate struct {
	*httptest.Server
	proxy *Proxy
	reg   *prometheus.Registry
	m     *metrics.Metrics
}

func newGate(t testing.TB, upstream string, mod func(*Config)) *gate {
	t.Helper()
	return buildGate(t, upstream, mod, serveGate)
}

// newHTTPGate is newGate serving through net/http alone (the Proxy as an
// http.Handler, as a program that embeds it may serve it).
func newHTTPGate(t testing.TB, upstream string, mod func(*Config)) *gate {
	t.Helper()
	return buildGate(t, upstream, mod, func(t testing.TB, p *Proxy) *httptest.Server {
		s := httptest.NewServer(p)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = p.Shutdown(ctx)
			s.Close()
		})
		return s
	})
}

func buildGate(t testing.TB, upstream string, mod func(*Config), serve func(testing.TB, *Proxy) *httptest.Server) *gate {
	t.Helper()
	u, _ := url.Parse(upstream)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test", "test")
	cfg := Config{Upstream: u, Metrics: m, MaxMessageBytes: 1 << 20, MaxHeaderBytes: 16 << 10, CloseTimeout: time.Second}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &gate{Server: serve(t, p), proxy: p, reg: reg, m: m}
}

// dialSync orders what a test set before it dialed (a hook) before what
// the gate does with the connection, for the race detector: the gate reads
// its sockets with system calls of its own, which carry none of the
// ordering the net package's reads and writes give to the detector.
var dialSync sync.Mutex

func dialPoint() {
	dialSync.Lock()
	//lint:ignore SA2001 an empty critical section: the order is the point
	dialSync.Unlock()
}

// serveGate serves p as the gate's binary does (Proxy.Serve: handshakes
// on sockets of its own, the rest through net/http) and stops it when
// the test ends.
func serveGate(t testing.TB, p *Proxy) *httptest.Server {
	t.Helper()
	return serveGateWith(t, p, nil)
}

// serveGateWith is serveGate with srv set up by mod first.
func serveGateWith(t testing.TB, p *Proxy, mod func(srv *http.Server)) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(p)
	if mod != nil {
		mod(s.Config)
	}
	s.URL = "http://" + s.Listener.Addr().String()
	served := make(chan error, 1)
	go func() { served <- p.Serve(s.Listener, s.Config, func(net.Addr) { dialPoint() }) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
		_ = s.Config.Close()
		if err := <-served; err != http.ErrServerClosed {
			t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
		}
	})
	return s
}

func wsURL(s *httptest.Server, path string) string {
	return "ws" + strings.TrimPrefix(s.URL, "http") + path
}

func dial(t *testing.T, url string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(4 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEcho(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	c := dial(t, wsURL(g.Server, "/echo"), &websocket.DialOptions{Subprotocols: []string{"x", "chat"}})
	if c.Subprotocol() != "chat" {
		t.Fatalf("subprotocol %q, want chat", c.Subprotocol())
	}
	ctx := ctx5(t)
	for _, m := range []struct {
		typ websocket.MessageType
		b   []byte
	}{
		{websocket.MessageText, []byte("hello")},
		{websocket.MessageBinary, []byte{}},
		{websocket.MessageBinary, make([]byte, 1<<20-1)},
		{websocket.MessageText, []byte(strings.Repeat("é", 40000))},
	} {
		if err := c.Write(ctx, m.typ, m.b); err != nil {
			t.Fatal(err)
		}
		typ, b, err := c.Read(ctx)
		if err != nil || typ != m.typ || string(b) != string(m.b) {
			t.Fatalf("echo of %d bytes: type %v, %d bytes, err %v", len(m.b), typ, len(b), err)
		}
	}
	// coder/websocket reads pongs only while something reads the conn.
	c.CloseRead(ctx)
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if err := c.Close(websocket.StatusCode(4001), "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
	if got := testutil.ToFloat64(g.m.Messages.WithLabelValues(metrics.ClientToUpstream)); got != 4 {
		t.Fatalf("messages client_to_upstream = %v, want 4", got)
	}
	if got := testutil.ToFloat64(g.m.Closes.WithLabelValues(metrics.InitiatorClient, "4xxx")); got != 1 {
		t.Fatalf("closes{client,4xxx} = %v, want 1", got)
	}
}

func TestUpstreamCloseCodes(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	for _, code := range []int{1000, 1012, 1013, 1014, 4000} {
		c := dial(t, wsURL(g.Server, "/close?code="+strconv.Itoa(code)+"&reason=r"), nil)
		_, _, err := c.Read(ctx5(t))
		if got := websocket.CloseStatus(err); int(got) != code {
			t.Fatalf("client got %v (%v), want %d", got, err, code)
		}
	}
}

func TestHeadersForwarded(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	h := http.Header{"X-Custom": {"1"}, "Keep-Alive": {"timeout=5"}, "X-Forwarded-For": {"6.6.6.6"}}
	c := dial(t, wsURL(g.Server, "/headers?a=1&b=2"), &websocket.DialOptions{HTTPHeader: h})
	_, b, err := c.Read(ctx5(t))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Header http.Header
		URI    string
		Host   string
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.URI != "/headers?a=1&b=2" {
		t.Errorf("upstream request URI %q", got.URI)
	}
	if got.Header.Get("X-Custom") != "1" || got.Header.Get("Keep-Alive") != "" {
		t.Errorf("end-to-end/hop-by-hop headers wrong: %v", got.Header)
	}
	if xff := got.Header.Get("X-Forwarded-For"); xff != "127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want the peer only (untrusted XFF replaced)", xff)
	}
	if got.Header.Get("X-Forwarded-Proto") != "http" || got.Header.Get("X-Forwarded-Host") == "" {
		t.Errorf("X-Forwarded-Proto/Host missing: %v", got.Header)
	}
	if got.Host != strings.TrimPrefix(g.URL, "http://") {
		t.Errorf("upstream Host %q, want the client's", got.Host)
	}
}

func TestUpstreamFailures(t *testing.T) {
	be := backend(t)
	// A port nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	down := "http://" + ln.Addr().String()
	ln.Close()
	// A listener that accepts and never answers.
	hang, _ := net.Listen("tcp", "127.0.0.1:0")
	t.Cleanup(func() { hang.Close() })
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	tests := []struct {
		name, upstream, path string
		want                 int
		body                 string
	}{
		{"refused", down, "/", http.StatusBadGateway, `"code":502`},
		{"hangs", "http://" + hang.Addr().String(), "/", http.StatusGatewayTimeout, `"code":504`},
		{"answers 403", be.URL, "/status", http.StatusForbidden, "forbidden by backend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGate(t, tt.upstream, func(c *Config) { c.DialTimeout = 300 * time.Millisecond })
			_, res, err := websocket.Dial(ctx5(t), wsURL(g.Server, tt.path), nil)
			if err == nil || res == nil {
				t.Fatalf("dial succeeded or no response: %v", err)
			}
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != tt.want || !strings.Contains(string(b), tt.body) {
				t.Fatalf("status %d body %q, want %d with %q", res.StatusCode, b, tt.want, tt.body)
			}
		})
	}
}

// TestUpstreamByName: an upstream given by host name is resolved and
// dialed (on the gate's own socket, netpoll.DialTCP), and relays.
func TestUpstreamByName(t *testing.T) {
	be := backend(t)
	_, port, err := net.SplitHostPort(strings.TrimPrefix(be.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	g := newGate(t, "http://localhost:"+port, nil)
	c := dial(t, wsURL(g.Server, "/echo"), nil)
	ctx := ctx5(t)
	if err := c.Write(ctx, websocket.MessageText, []byte("by name")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.Read(ctx); err != nil || string(b) != "by name" {
		t.Fatalf("echo %q, %v", b, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

func TestPassThrough(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	res, err := http.Post(g.URL+"/post", "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || string(b) != "payload" || res.Header.Get("X-Backend") != "go" {
		t.Fatalf("pass-through: %d %q %v", res.StatusCode, b, res.Header)
	}
}

func TestHeaderTooLarge(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.MaxHeaderBytes = 2048 })
	req, _ := http.NewRequest("GET", g.URL+"/post", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 4096))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", res.StatusCode)
	}
}

func TestTooBig(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.MaxMessageBytes = 1024 })
	c := dial(t, wsURL(g.Server, "/echo"), nil)
	ctx := ctx5(t)
	_ = c.Write(ctx, websocket.MessageBinary, make([]byte, 2048))
	_, _, err := c.Read(ctx)
	if got := websocket.CloseStatus(err); got != websocket.StatusMessageTooBig {
		t.Fatalf("close %v (%v), want 1009", got, err)
	}
}

// rawClient opens a WebSocket to the gate by hand so a test can send frames
// no library would.
func rawClient(t *testing.T, g *gate, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, br, _ := rawClientWith(t, g, path, "")
	return conn, br
}

// rawClientWith is rawClient with extra request header lines (each ending
// in CRLF); it also returns the 101 response.
func rawClientWith(t *testing.T, g *gate, path, extra string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, br := dialRaw(t, g)
	_, _ = io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+extra+"\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", res, err)
	}
	return conn, br, res
}

// readClose reads frames until a close frame and returns its code.
func readClose(t *testing.T, br *bufio.Reader) int {
	t.Helper()
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		n := int(h[1] & 0x7f)
		if n == 126 {
			var l [2]byte
			_, _ = io.ReadFull(br, l[:])
			n = int(binary.BigEndian.Uint16(l[:]))
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
		if h[0]&0x0f == 8 {
			if len(p) < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

func TestClientProtocolErrors(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	tests := []struct {
		name  string
		frame []byte
		want  int
	}{
		{"unmasked text", []byte{0x81, 0x02, 'h', 'i'}, 1002},
		{"reserved opcode", []byte{0x83, 0x80, 0, 0, 0, 0}, 1002},
		{"rsv1", []byte{0xC1, 0x80, 0, 0, 0, 0}, 1002},
		{"bad utf-8", []byte{0x81, 0x81, 0, 0, 0, 0, 0xff}, 1007},
		{"close code 1005", []byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xed}, 1002},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, br := rawClient(t, g, "/echo")
			if _, err := conn.Write(tt.frame); err != nil {
				t.Fatal(err)
			}
			if got := readClose(t, br); got != tt.want {
				t.Fatalf("close %d, want %d", got, tt.want)
			}
		})
	}
}

// TestShutdownDrains: shutdown tells each client why and when to come
// back, a text frame {"code":1012,"error":"Service restart","retryAfterMs":N}
// then close 1012 (or the configured 1001), and refuses new handshakes
// (with 503 through net/http; Serve stops accepting: TestServeStops).
func TestShutdownDrains(t *testing.T) {
	for _, code := range []websocket.StatusCode{websocket.StatusServiceRestart, websocket.StatusGoingAway} {
		t.Run(strconv.Itoa(int(code)), func(t *testing.T) {
			g := newHTTPGate(t, backend(t).URL, func(c *Config) {
				if code == websocket.StatusGoingAway {
					c.DrainCode = 1001
				}
			})
			c := dial(t, wsURL(g.Server, "/echo"), nil)
			type read struct {
				p   []byte
				err error
			}
			reads := make(chan read, 2)
			go func() {
				for {
					_, p, err := c.Read(context.Background())
					reads <- read{p, err}
					if err != nil {
						return
					}
				}
			}()
			waitFor(t, func() bool { return g.proxy.Active() == 1 })
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := g.proxy.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			first := <-reads
			var notice struct {
				Code         int    `json:"code"`
				Error        string `json:"error"`
				RetryAfterMs int64  `json:"retryAfterMs"`
			}
			if err := json.Unmarshal(first.p, &notice); first.err != nil || err != nil ||
				notice.Code != int(code) || notice.Error == "" || notice.RetryAfterMs < 250 {
				t.Fatalf("before the close: %q %v, want {\"code\":%d,\"error\":...,\"retryAfterMs\":>=250}", first.p, first.err, code)
			}
			if got := websocket.CloseStatus((<-reads).err); got != code {
				t.Fatalf("close %v, want %v", got, code)
			}
			// New handshakes are refused while draining.
			_, res, err := websocket.Dial(ctx, wsURL(g.Server, "/echo"), nil)
			if err == nil || res == nil || res.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("handshake after shutdown: %v %v", res, err)
			}
		})
	}
}

// TestShutdownSpread: with a drain spread, the closes are spread over the
// window rather than made at once, and shutdown returns once all are done.
func TestShutdownSpread(t *testing.T) {
	const n, spread = 20, time.Second
	g := newGate(t, backend(t).URL, func(c *Config) { c.DrainSpread = spread })
	closed := make(chan time.Time, n)
	for range n {
		c := dial(t, wsURL(g.Server, "/echo"), nil)
		go func() {
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					closed <- time.Now()
					return
				}
			}
		}()
	}
	waitFor(t, func() bool { return g.proxy.Active() == n })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := g.proxy.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	var first, last time.Duration
	for i := range n {
		at := (<-closed).Sub(start)
		if i == 0 || at < first {
			first = at
		}
		last = max(last, at)
	}
	// The i-th of n is due at spread*i/n: the last at 950 ms.
	if first > spread/2 || last < spread/2 {
		t.Fatalf("closes from %v to %v after shutdown began, want them spread over %v", first, last, spread)
	}
}

func TestIdleTimeout(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.IdleTimeout = 200 * time.Millisecond })
	c := dial(t, wsURL(g.Server, "/echo"), nil)
	_, _, err := c.Read(ctx5(t))
	if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
		t.Fatalf("close %v (%v), want 1001", got, err)
	}
}

func TestMessageLimit(t *testing.T) {
	lim, err := limit.New(limit.Config{Rules: limit.Rules{
		UserMessages: limit.Rule{Limit: 5, Window: time.Minute, Block: time.Minute},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	g := newGate(t, backend(t).URL, func(c *Config) { c.Limiter = lim })
	c := dial(t, wsURL(g.Server, "/echo"), nil)
	ctx := ctx5(t)
	for i := range 5 {
		if err := c.Write(ctx, websocket.MessageText, []byte("m")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	_ = c.Write(ctx, websocket.MessageText, []byte("sixth"))
	_, b, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(b), `"code":429`) || !strings.Contains(string(b), `"scope":"user"`) {
		t.Fatalf("6th message answer %q, %v", b, err)
	}
	_, _, err = c.Read(ctx)
	if got := websocket.CloseStatus(err); got != 4008 {
		t.Fatalf("close %v, want 4008", got)
	}
	// A new handshake while blocked: 101, the JSON, 4008.
	c2 := dial(t, wsURL(g.Server, "/echo"), nil)
	_, b, err = c2.Read(ctx)
	if err != nil || !strings.Contains(string(b), `"code":429`) {
		t.Fatalf("blocked handshake answer %q, %v", b, err)
	}
	_, _, err = c2.Read(ctx)
	if got := websocket.CloseStatus(err); got != 4008 {
		t.Fatalf("close %v, want 4008", got)
	}
	// The handshake was refused by the message rule's block: its refusal
	// is that rule's, not a connection rule's.
	if got := testutil.ToFloat64(g.m.RateLimited.WithLabelValues("user", "message", "user-rate", "")); got != 2 {
		t.Fatalf("rate_limited{user,message} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(g.m.RateLimited.WithLabelValues("user", "connection", "user-conn-rate", "")); got != 0 {
		t.Fatalf("rate_limited{user,connection} = %v, want 0", got)
	}
	// Pass-through requests are refused with 429 and Retry-After.
	res, err := http.Get(g.URL + "/post")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" {
		t.Fatalf("pass-through while blocked: %d %v", res.StatusCode, res.Header)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met in 5s")
}

// maskedFrame encodes a small masked client frame (zero mask key).
func maskedFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	return append([]byte{b0, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
}

func TestControlFrameRate(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.ControlFrameRate = limit.Rule{Limit: 5, Window: time.Minute} })
	conn, br := rawClient(t, g, "/echo")
	for range 6 {
		if _, err := conn.Write(maskedFrame(true, 0x9, []byte("p"))); err != nil {
			t.Fatal(err)
		}
	}
	if got := readClose(t, br); got != 1008 {
		t.Fatalf("close %d, want 1008", got)
	}
}

func TestMessageTimeout(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.MessageTimeout = 200 * time.Millisecond })
	conn, br := rawClient(t, g, "/echo")
	// The first fragment of a message that never ends.
	if _, err := conn.Write(maskedFrame(false, 0x1, []byte("start"))); err != nil {
		t.Fatal(err)
	}
	if got := readClose(t, br); got != 1008 {
		t.Fatalf("close %d, want 1008", got)
	}
}

func TestMaxConns(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.MaxConns = 1 })
	c := dial(t, wsURL(g.Server, "/echo"), nil)
	_, res, err := websocket.Dial(ctx5(t), wsURL(g.Server, "/echo"), nil)
	if err == nil || res == nil || res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second connection: %v %v, want 503", res, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
	dial(t, wsURL(g.Server, "/echo"), nil)
}

func TestPingInterval(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.PingInterval = 100 * time.Millisecond })
	conn, br := rawClient(t, g, "/echo")
	// The gate pings; a client that answers nothing is closed after two
	// intervals of silence.
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil || h[0] != 0x89 {
		t.Fatalf("first frame %x, %v; want a ping", h, err)
	}
	p := make([]byte, h[1])
	_, _ = io.ReadFull(br, p)
	if string(p) != string(gatePing) {
		t.Fatalf("ping payload %q", p)
	}
	if got := readClose(t, br); got != 1001 {
		t.Fatalf("close %d, want 1001", got)
	}
	_ = conn
	// A client that answers pings stays.
	c := dial(t, wsURL(g.Server, "/echo"), nil)
	ctx := ctx5(t)
	c.CloseRead(ctx) // reads, and so answers pings, in the background
	time.Sleep(500 * time.Millisecond)
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("connection answering pings was closed: %v", err)
	}
}

func TestCompression(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.Compression = true; c.MaxMessageBytes = 1 << 20 })
	opts := &websocket.DialOptions{CompressionMode: websocket.CompressionNoContextTakeover, CompressionThreshold: 1}
	ctx := ctx5(t)
	c, res, err := websocket.Dial(ctx, wsURL(g.Server, "/echo"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(4 << 20)
	if ext := res.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("extension not negotiated: %q", ext)
	}
	for _, m := range []struct {
		typ websocket.MessageType
		b   []byte
	}{
		{websocket.MessageText, []byte("hello compressed world")},
		{websocket.MessageBinary, make([]byte, 300<<10)},
		{websocket.MessageText, []byte(strings.Repeat("é and € ", 20000))},
		{websocket.MessageText, []byte("x")},
	} {
		if err := c.Write(ctx, m.typ, m.b); err != nil {
			t.Fatal(err)
		}
		typ, b, err := c.Read(ctx)
		if err != nil || typ != m.typ || string(b) != string(m.b) {
			t.Fatalf("echo of %d bytes: type %v, %d bytes, err %v", len(m.b), typ, len(b), err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")

	// A deflate bomb: 2 MiB of zeros is a few KiB compressed.
	c = dial(t, wsURL(g.Server, "/echo"), opts)
	_ = c.Write(ctx, websocket.MessageBinary, make([]byte, 2<<20))
	_, _, err = c.Read(ctx)
	if got := websocket.CloseStatus(err); got != websocket.StatusMessageTooBig {
		t.Fatalf("bomb: close %v (%v), want 1009", got, err)
	}
}

func TestCompressionOff(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	opts := &websocket.DialOptions{CompressionMode: websocket.CompressionNoContextTakeover, CompressionThreshold: 1}
	c := dial(t, wsURL(g.Server, "/echo"), opts)
	ctx := ctx5(t)
	// Not negotiated: the client sends plain frames and all works.
	if err := c.Write(ctx, websocket.MessageText, []byte(strings.Repeat("a", 2000))); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.Read(ctx); err != nil || len(b) != 2000 {
		t.Fatalf("echo: %d bytes, %v", len(b), err)
	}
	// An RSV1 frame anyway is a protocol error.
	conn, br := rawClient(t, g, "/echo")
	_, _ = conn.Write([]byte{0xC1, 0x80, 0, 0, 0, 0})
	if got := readClose(t, br); got != 1002 {
		t.Fatalf("close %d, want 1002", got)
	}
}

func TestAnswerProtocol(t *testing.T) {
	for _, tt := range []struct {
		offered []string
		want    string
	}{
		{nil, ""},
		{[]string{"chat"}, "chat"},
		{[]string{"wsgate", "bearer.x.y.z"}, "wsgate"},
		{[]string{"bearer.x.y.z", "chat"}, "chat"},
		{[]string{"bearer.x.y.z"}, ""},
	} {
		if got := answerProtocol(tt.offered); got != tt.want {
			t.Errorf("answerProtocol(%q) = %q, want %q", tt.offered, got, tt.want)
		}
	}
}

// TestReusedDescriptorStaysPolled: a pair whose client vanished lets go of
// the client's socket while its upstream still owes a close frame; a new
// connection accepted meanwhile gets the same descriptor number and parks
// in the poller. When the first pair finishes it must not take the new
// connection's socket out of the poller, or the new connection's next
// message is never relayed.
func TestReusedDescriptorStaysPolled(t *testing.T) {
	mux := http.NewServeMux()
	hold := make(chan struct{})
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		// Accepts and never reads: the gate's close frame goes unanswered
		// until CloseTimeout.
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		<-hold
	})
	echo := backend(t)
	mux.Handle("/", httputil.NewSingleHostReverseProxy(mustURL(t, echo.URL)))
	up := httptest.NewServer(mux)
	t.Cleanup(up.Close)
	t.Cleanup(func() { close(hold) })
	g := newGate(t, up.URL, func(c *Config) { c.CloseTimeout = 500 * time.Millisecond })

	for round := range 3 {
		a, _ := rawClient(t, g, "/hold")
		waitFor(t, func() bool { return testutil.ToFloat64(g.m.ConnectionsActive) == 1 })
		a.Close() // the client vanishes: the gate lets go of its socket at once
		time.Sleep(50 * time.Millisecond)
		b, br := rawClient(t, g, "/echo")
		// The first pair finishes (its upstream never answers the close).
		waitFor(t, func() bool { return testutil.ToFloat64(g.m.ConnectionsActive) == 1 })
		time.Sleep(50 * time.Millisecond)
		if _, err := b.Write(maskedFrame(true, 1, []byte("still here"))); err != nil {
			t.Fatal(err)
		}
		_ = b.SetReadDeadline(time.Now().Add(3 * time.Second))
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("round %d: no echo after the other pair finished: %v", round, err)
		}
		p := make([]byte, h[1]&0x7f)
		if _, err := io.ReadFull(br, p); err != nil || string(p) != "still here" {
			t.Fatalf("round %d: echo %q, %v", round, p, err)
		}
		b.Close()
		waitFor(t, func() bool { return testutil.ToFloat64(g.m.ConnectionsActive) == 0 })
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// countingLimiter counts the calls that decide messages.
type countingLimiter struct {
	*limit.Limiter
	calls atomic.Int64
}

func (c *countingLimiter) MessagesOf(ctx context.Context, cl *limit.Client, n int) limit.Decision {
	c.calls.Add(1)
	return c.Limiter.MessagesOf(ctx, cl, n)
}

// TestMessageLimitBurst: messages that arrive together are decided by one
// limiter call, and the outcome is the same as one by one: of a burst of 8
// with 5 left, the backend gets 5, the client the 429 and 4008.
func TestMessageLimitBurst(t *testing.T) {
	lim, err := limit.New(limit.Config{Rules: limit.Rules{
		UserMessages: limit.Rule{Limit: 5, Window: time.Minute, Block: time.Minute},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer close(done)
		defer c.CloseNow()
		for {
			_, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, string(b))
			mu.Unlock()
		}
	}))
	t.Cleanup(up.Close)
	cl := &countingLimiter{Limiter: lim}
	g := newGate(t, up.URL, func(c *Config) { c.Limiter = cl })
	conn, br := rawClient(t, g, "/")
	var burst []byte
	for i := range 8 {
		burst = append(burst, maskedFrame(true, 1, []byte(fmt.Sprint("m", i)))...)
	}
	if _, err := conn.Write(burst); err != nil {
		t.Fatal(err)
	}
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil || h[0]&0x0f != 1 {
		t.Fatalf("frame %x, %v; want the 429 text", h, err)
	}
	p := make([]byte, h[1]&0x7f)
	if _, err := io.ReadFull(br, p); err != nil || !strings.Contains(string(p), `"code":429`) {
		t.Fatalf("429 frame %q, %v", p, err)
	}
	if code := readClose(t, br); code != 4008 {
		t.Fatalf("close %d, want 4008", code)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's connection did not end")
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"m0", "m1", "m2", "m3", "m4"}; !slices.Equal(got, want) {
		t.Fatalf("backend got %q, want %q", got, want)
	}
	if got := testutil.ToFloat64(g.m.RateLimited.WithLabelValues("user", "message", "user-rate", "")); got != 1 {
		t.Fatalf("rate_limited{user,message} = %v, want 1", got)
	}
	// One per event: the handshake and the 5 messages.
	if got := testutil.ToFloat64(g.m.LimiterDecisions.WithLabelValues("allowed", "rules", "")); got != 6 {
		t.Fatalf("limiter_decisions_total{allowed} = %v, want 6", got)
	}
	// One read takes the whole burst: one call grants 5, one refuses.
	if calls := cl.calls.Load(); calls != 2 {
		t.Fatalf("%d limiter calls for a burst of 8, want 2", calls)
	}
	t.Logf("%d limiter calls for a burst of 8 messages", cl.calls.Load())
}

// TestRuleName: a refusal is named by its rule, a flag rule by its flag,
// and one no rule decided (--failure-mode closed with Redis down) by the
// failure mode, even where it carries a rule for its action.
func TestRuleName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		d        limit.Decision
		openConn bool
		want     string
	}{
		{limit.Decision{Rule: "chat", Kind: limit.KindMessage, Scope: "user"}, false, "chat"},
		{limit.Decision{Rule: "chat", Fallback: true, Kind: limit.KindMessage, Scope: "user"}, false, "failure-mode"},
		{limit.Decision{Rule: "chat", Fallback: true, Store: "memory", Kind: limit.KindMessage, Scope: "user"}, false, "chat"},
		{limit.Decision{Fallback: true, Kind: limit.KindMessage, Scope: limit.ScopeUser}, false, "failure-mode"},
		{limit.Decision{Kind: limit.KindMessage, Scope: limit.ScopeUser}, false, "user-rate"},
		{limit.Decision{Kind: limit.KindMessage, Scope: limit.ScopeIP}, false, "ip-rate"},
		{limit.Decision{Kind: limit.KindConnection, Scope: limit.ScopeIP}, true, "ip-max-conns"},
		{limit.Decision{Kind: limit.KindConnection, Scope: limit.ScopeIP}, false, "ip-conn-rate"},
		{limit.Decision{Kind: limit.KindConnection, Scope: limit.ScopeUser}, false, "user-conn-rate"},
	} {
		if got := ruleName(tc.d, tc.openConn); got != tc.want {
			t.Errorf("ruleName(%+v, %v) = %q, want %q", tc.d, tc.openConn, got, tc.want)
		}
	}
}

// TestMaxConnAge: a connection past its age is retired the way a drain
// closes it; a younger one stays.
func TestMaxConnAge(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.MaxConnAge = 300 * time.Millisecond })
	c := dial(t, wsURL(g.Server, "/echo"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	typ, p, err := c.Read(ctx)
	if err != nil || typ != websocket.MessageText || !strings.Contains(string(p), `"code":1012`) {
		t.Fatalf("an old connection got %v %q %v, want the drain's text frame", typ, p, err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusServiceRestart {
		t.Fatalf("an old connection closed with %v, want 1012", err)
	}
}

// TestMaxPendingHandshakes: over the bound, a handshake waits a little and
// gets 503 with a Retry-After of 1 to 5 s; the one in progress completes,
// and once it has, the next handshake passes.
func TestMaxPendingHandshakes(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		_, _, _ = c.Read(r.Context())
	}))
	t.Cleanup(slow.Close)
	g := newGate(t, slow.URL, func(c *Config) { c.MaxPendingHandshakes = 1 })
	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, wsURL(g.Server, "/slow"), nil)
		if err == nil {
			c.CloseNow()
		}
		first <- err
	}()
	waitFor(t, func() bool { return len(g.proxy.slots) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, res, err := websocket.Dial(ctx, wsURL(g.Server, "/fast"), nil)
	if err == nil || res == nil || res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a handshake over the bound: %v %v, want 503", res, err)
	}
	if s, _ := strconv.Atoi(res.Header.Get("Retry-After")); s < 1 || s > 5 {
		t.Fatalf("Retry-After %q, want 1 to 5", res.Header.Get("Retry-After"))
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("the handshake in progress: %v", err)
	}
	dial(t, wsURL(g.Server, "/fast"), nil)
}
