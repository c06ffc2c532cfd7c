package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

const handshakeHead = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

// servedGate is a gate served by Serve that counts the connections Serve
// hands to net/http.
func servedGate(t *testing.T, mod func(*Config)) (*gate, *atomic.Int32) {
	t.Helper()
	var handed atomic.Int32
	g := newGate(t, backend(t).URL, func(c *Config) {
		if mod != nil {
			mod(c)
		}
	})
	g.proxy.hooks.handed = func() { handed.Add(1) }
	return g, &handed
}

func dialRaw(t *testing.T, g *gate) (net.Conn, *bufio.Reader) {
	t.Helper()
	dialPoint()
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	return conn, bufio.NewReader(conn)
}

// echoes sends one masked text frame and wants it back.
func echoes(t *testing.T, conn net.Conn, br *bufio.Reader, msg string) {
	t.Helper()
	if _, err := conn.Write(maskedFrame(true, 1, []byte(msg))); err != nil {
		t.Fatal(err)
	}
	wantFrame(t, br, msg)
}

func wantFrame(t *testing.T, br *bufio.Reader, msg string) {
	t.Helper()
	h, p, err := readFrame(br)
	if err != nil || h.OpCode != ws.OpText || string(p) != msg {
		t.Fatalf("got %v %q %v, want the echo %q", h.OpCode, p, err, msg)
	}
}

func want101(t *testing.T, br *bufio.Reader) {
	t.Helper()
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v, want 101", res, err)
	}
}

// TestServeHandshakes: Serve answers handshakes itself however their
// bytes come (one at a time, with bare LF line ends, with a frame right
// behind them), and gives net/http whatever it does not take whole: a
// head over its buffer, a request that is not a handshake, and the
// requests after it on the same connection (a handshake included). (The
// other tests, TestEcho first, go through Serve with client libraries.)
func TestServeHandshakes(t *testing.T) {
	g, handed := servedGate(t, nil)

	t.Run("whole", func(t *testing.T) {
		before := handed.Load()
		conn, br := dialRaw(t, g)
		_, _ = io.WriteString(conn, handshakeHead+"\r\n")
		want101(t, br)
		echoes(t, conn, br, "one")
		if handed.Load() != before {
			t.Fatal("a plain handshake went to net/http")
		}
	})
	t.Run("byte by byte, LF line ends, a frame behind", func(t *testing.T) {
		before := handed.Load()
		conn, br := dialRaw(t, g)
		head := strings.ReplaceAll(handshakeHead, "\r\n", "\n") + "\n"
		for i := range len(head) {
			if _, err := conn.Write([]byte{head[i]}); err != nil {
				t.Fatal(err)
			}
			if i%16 == 0 {
				time.Sleep(time.Millisecond) // separate segments
			}
		}
		_, _ = conn.Write(maskedFrame(true, 1, []byte("early")))
		want101(t, br)
		wantFrame(t, br, "early")
		echoes(t, conn, br, "two")
		if handed.Load() != before {
			t.Fatal("a handshake in pieces went to net/http")
		}
	})
	t.Run("head over the buffer", func(t *testing.T) {
		before := handed.Load()
		conn, br := dialRaw(t, g)
		_, _ = io.WriteString(conn, handshakeHead+"X-Pad: "+strings.Repeat("p", 6000)+"\r\n\r\n")
		_, _ = conn.Write(maskedFrame(true, 1, []byte("early")))
		want101(t, br)
		wantFrame(t, br, "early")
		echoes(t, conn, br, "three")
		if handed.Load() != before+1 {
			t.Fatal("a head of 6 KB was not given to net/http")
		}
	})
	t.Run("keep-alive, then a handshake", func(t *testing.T) {
		before := handed.Load()
		conn, br := dialRaw(t, g)
		for i := range 2 {
			body := "payload" + strconv.Itoa(i)
			_, _ = io.WriteString(conn, "POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || string(b) != body || res.Header.Get("X-Backend") != "go" {
				t.Fatalf("pass-through %d: %d %q", i, res.StatusCode, b)
			}
		}
		_, _ = io.WriteString(conn, handshakeHead+"\r\n")
		want101(t, br)
		echoes(t, conn, br, "four")
		if handed.Load() != before+1 {
			t.Fatalf("%d connections given to net/http, want 1", handed.Load()-before)
		}
	})
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
}

// TestServeRefusals: a handshake Serve refuses gets a whole HTTP answer
// (its status, headers and body, with its length) and then the end of the
// connection.
func TestServeRefusals(t *testing.T) {
	g, handed := servedGate(t, func(c *Config) { c.MaxHeaderBytes = 2048 })
	tests := []struct {
		name, head string
		status     int
		header     string // a header the answer must carry
	}{
		{"version", strings.Replace(handshakeHead, "Version: 13", "Version: 8", 1), http.StatusUpgradeRequired, "Sec-Websocket-Version"},
		{"header size", handshakeHead + "X-Pad: " + strings.Repeat("p", 3000) + "\r\n", http.StatusRequestHeaderFieldsTooLarge, "Content-Type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, br := dialRaw(t, g)
			_, _ = io.WriteString(conn, tt.head+"\r\n")
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || res.StatusCode != tt.status || res.Header.Get(tt.header) == "" || len(b) == 0 ||
				res.ContentLength != int64(len(b)) || !res.Close {
				t.Fatalf("%d %v %q %v, want %d with %s, a body of its length and Connection: close",
					res.StatusCode, res.Header, b, err, tt.status, tt.header)
			}
			if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("after the answer: %d bytes, %v; want EOF", n, err)
			}
		})
	}
	if handed.Load() != 0 {
		t.Fatalf("%d refusals went to net/http", handed.Load())
	}
}

// TestServeLeavesToNetHTTP: a handshake net/http would refuse is left to
// it: a missing Host (the absolute form carries one in its URI), a
// malformed Host, an Expect.
func TestServeLeavesToNetHTTP(t *testing.T) {
	g, handed := servedGate(t, nil)
	rest := strings.TrimPrefix(handshakeHead, "GET /echo HTTP/1.1\r\nHost: x\r\n")
	tests := []struct {
		name, head string
		status     int
	}{
		{"absolute form, no Host", "GET http://x/echo HTTP/1.1\r\n" + rest, http.StatusBadRequest},
		{"malformed Host", "GET /echo HTTP/1.1\r\nHost: a b\r\n" + rest, http.StatusBadRequest},
		{"Expect", handshakeHead + "Expect: nothing\r\n", http.StatusExpectationFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := handed.Load()
			conn, br := dialRaw(t, g)
			_, _ = io.WriteString(conn, tt.head+"\r\n")
			res, err := http.ReadResponse(br, nil)
			if err != nil || res.StatusCode != tt.status {
				t.Fatalf("%v %v, want %d", res, err, tt.status)
			}
			res.Body.Close()
			if handed.Load() != before+1 {
				t.Fatal("not given to net/http")
			}
		})
	}
}

// panicky is the client-IP resolver of the peer, which panics when the
// request names X-Panic in its X-Forwarded-For.
type panicky struct{ peerOnly }

func (panicky) ClientIP(peer netip.Addr, xff []string) netip.Addr {
	if len(xff) > 0 && xff[0] == "X-Panic" {
		panic("as asked")
	}
	return peer.Unmap()
}

// TestServePanic: a panic while a handshake is served ends that
// connection (the client reads EOF), and the gate serves the next.
func TestServePanic(t *testing.T) {
	g, _ := servedGate(t, func(c *Config) { c.ClientIP = panicky{} })
	conn, br := dialRaw(t, g)
	_, _ = io.WriteString(conn, handshakeHead+"X-Forwarded-For: X-Panic\r\n\r\n")
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the panic: %d bytes, %v; want EOF", n, err)
	}
	conn, br = dialRaw(t, g)
	_, _ = io.WriteString(conn, handshakeHead+"\r\n")
	want101(t, br)
	echoes(t, conn, br, "after the panic")
}

// TestServeSilentClients: a connection that sends no head, or part of
// one, is closed at the handshake timeout, without an answer; so is one
// whose head outgrew Serve's buffer and went to net/http, whether
// net/http has no header timeout or a longer one than the client's wait.
func TestServeSilentClients(t *testing.T) {
	for _, headerTimeout := range []time.Duration{0, time.Minute} {
		p, err := New(Config{Upstream: mustURL(t, backend(t).URL), CloseTimeout: time.Second,
			HandshakeTimeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		g := &gate{Server: serveGateWith(t, p, func(srv *http.Server) { srv.ReadHeaderTimeout = headerTimeout }), proxy: p}
		for _, sent := range []string{"", "GET /echo HTTP/1.1\r\nHost: x\r\n", handshakeHead + "X-Pad: " + strings.Repeat("p", 5000)} {
			conn, br := dialRaw(t, g)
			_, _ = io.WriteString(conn, sent)
			if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("net/http's header timeout %v, sent %.60q: %d bytes, %v; want the connection closed",
					headerTimeout, sent, n, err)
			}
		}
	}
}

// TestServeStops: Serve returns http.ErrServerClosed when the server is
// closed, or the proxy shut down (its poller holds the listener), and the
// address no longer takes connections.
func TestServeStops(t *testing.T) {
	for _, how := range []string{"server", "proxy"} {
		t.Run(how, func(t *testing.T) {
			p, err := New(Config{Upstream: mustURL(t, backend(t).URL), CloseTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			s := httptest.NewUnstartedServer(p)
			addr := s.Listener.Addr().String()
			served := make(chan error, 1)
			go func() { served <- p.Serve(s.Listener, s.Config, nil) }()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if how == "server" {
				_ = s.Config.Close()
			}
			_ = p.Shutdown(ctx)
			select {
			case err := <-served:
				if !errors.Is(err, http.ErrServerClosed) {
					t.Fatalf("Serve returned %v, want http.ErrServerClosed", err)
				}
			case <-ctx.Done():
				t.Fatal("Serve did not return")
			}
			_ = s.Config.Close()
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				t.Fatal("the address still takes connections")
			}
		})
	}
}
