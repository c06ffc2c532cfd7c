//go:build linux

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
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"

	"github.com/holo/wsgate/internal/netpoll"
)

// blackhole returns a loopback address whose listener never answers a new
// connection: its accept queue is full, so the kernel drops the SYNs.
func blackhole(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	for range 8 {
		c, err := net.DialTimeout("tcp", ap.String(), 100*time.Millisecond)
		if err != nil {
			return ap // the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the listener's accept queue never filled")
	return ap
}

// TestDialAny: an address that never answers gets its share of the dial's
// time, not all of it, and the next address is dialed; with no other, the
// dial fails as a timeout (the handshake's 504).
func TestDialAny(t *testing.T) {
	pl, err := netpoll.New(2)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	hole := blackhole(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	good := ln.Addr().(*net.TCPAddr).AddrPort()

	// Without shares the first address would take all of it, and the
	// second would not be dialed.
	ctx, cancel := context.WithTimeout(context.Background(), 4200*time.Millisecond)
	defer cancel()
	c, err := dialAny(ctx, pl, []netip.AddrPort{hole, good}, 0)
	if err != nil {
		t.Fatalf("dial with an address that answers: %v", err)
	}
	if got := c.RemoteAddr().String(); got != good.String() {
		t.Errorf("connected to %s, want %s", got, good)
	}
	c.Close()

	// Again and again: a socket registered before its connect(2) started
	// reported itself writable at once, which read as connected now and then.
	for i := range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		c, err := dialAny(ctx, pl, []netip.AddrPort{hole}, 0)
		cancel()
		if err == nil || !isTimeout(err) {
			t.Fatalf("dial %d of an address that never answers: connected %v, %v; want a timeout", i, c != nil, err)
		}
	}
	if _, err := dialAny(context.Background(), pl, nil, 0); err == nil {
		t.Fatal("dial of no address succeeded")
	}
}

// TestDialCanceled: a dial that waits for the peer returns when its
// context is canceled (the client went away), not at its deadline.
func TestDialCanceled(t *testing.T) {
	pl, err := netpoll.New(2)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	hole := blackhole(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := pl.DialTCP(ctx, hole, 0)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled dial: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the canceled dial still waits")
	}
}

// TestPollerClosedUnderConn: a Conn that waits in a poller being closed
// (a handshake under way at shutdown) returns at once, with an error.
func TestPollerClosedUnderConn(t *testing.T) {
	pl, err := netpoll.New(2)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := pl.DialTCP(context.Background(), ln.Addr().(*net.TCPAddr).AddrPort(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1)) // no deadline; the peer never writes
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, netpoll.ErrClosed) {
			t.Fatalf("read in a closed poller: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the read still waits in the closed poller")
	}
}

// TestShutdownDuringUpstreamHandshake: a handshake waiting for the
// upstream's answer when the gate shuts down gets 503 at once, not the
// upstream timeout's 504 after --upstream-dial-timeout.
func TestShutdownDuringUpstreamHandshake(t *testing.T) {
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := hang.Accept(); err == nil {
			accepted <- c
		}
	}()
	g := newGate(t, "http://"+hang.Addr().String(), func(c *Config) { c.DialTimeout = 30 * time.Second })
	done := handshakeAsync(t, g)
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the gate never dialed the upstream")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.proxy.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.status != http.StatusServiceUnavailable {
		t.Fatalf("handshake under way at shutdown: status %d (%v), want 503", a.status, a.err)
	}
}

// TestShutdownDuringUpstreamDial: a handshake whose upstream dial is still
// connecting when the gate shuts down gets 503 at once; the poller's stop
// does not send it on to another dial with net.Dialer.
func TestShutdownDuringUpstreamDial(t *testing.T) {
	up := blackhole(t)
	g := newGate(t, "http://"+up.String(), func(c *Config) { c.DialTimeout = 30 * time.Second })
	done := handshakeAsync(t, g)
	time.Sleep(300 * time.Millisecond) // the dial waits for its connect
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.proxy.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.status != http.StatusServiceUnavailable {
		t.Fatalf("handshake dialing at shutdown: status %d (%v), want 503", a.status, a.err)
	}
}

// handshakeAnswer is the HTTP status a client's handshake got (0 if none)
// and its error.
type handshakeAnswer struct {
	status int
	err    error
}

// handshakeAsync starts a client's handshake with g and delivers its
// answer.
func handshakeAsync(t *testing.T, g *gate) <-chan handshakeAnswer {
	done := make(chan handshakeAnswer, 1)
	go func() {
		_, res, err := websocket.Dial(ctx5(t), wsURL(g.Server, "/"), nil)
		if res == nil {
			done <- handshakeAnswer{0, err}
			return
		}
		done <- handshakeAnswer{res.StatusCode, err}
	}()
	return done
}

// TestShutdownWhileUpstreamAnswers: an upstream that accepts a handshake
// after the gate began to shut down (while an open connection drains) does
// not give the client a 101 that is then cut off (1006): the client gets
// 503.
func TestShutdownWhileUpstreamAnswers(t *testing.T) {
	release := make(chan struct{})
	asked := make(chan struct{}, 1)
	var n atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 2 {
			asked <- struct{}{}
			<-release
		}
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err == nil {
			defer conn.Close()
			_, _ = io.Copy(io.Discard, conn)
		}
	}))
	t.Cleanup(up.Close)
	g := newGate(t, up.URL, nil)
	rawClient(t, g, "/") // open, and slow to answer its drain: Shutdown waits
	done := handshakeAsync(t, g)
	<-asked
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopped <- g.proxy.Shutdown(ctx)
	}()
	waitFor(t, g.proxy.draining.Load)
	close(release)
	if a := <-done; a.status != http.StatusServiceUnavailable {
		t.Fatalf("handshake the upstream accepted during shutdown: status %d (%v), want 503", a.status, a.err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// TestShutdownWhileUpgrading: a handshake that Shutdown overtakes between
// its reservation and its client's 101 is drained like every open
// connection (the drain's notice and close), not cut off (1006).
func TestShutdownWhileUpgrading(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	stopped := make(chan error, 1)
	g.proxy.hooks.upgrading = func() {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			stopped <- g.proxy.Shutdown(ctx)
		}()
		waitFor(t, g.proxy.draining.Load)
	}
	_, br := rawClient(t, g, "/echo")
	h, p, err := readFrame(br)
	if err != nil || h.OpCode != ws.OpText || !strings.Contains(string(p), `"code":1012`) {
		t.Fatalf("first frame %v %q %v; want the drain's notice", h.OpCode, p, err)
	}
	if code := readClose(t, br); code != int(g.proxy.cfg.DrainCode) {
		t.Fatalf("close %d, want the drain's %d", code, g.proxy.cfg.DrainCode)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// TestShutdownAbortsALatePair: a handshake that reserved its place before
// Shutdown began, and whose pair is tracked only after Shutdown's grace ran
// out and it aborted the pairs it had, is aborted as they were: Shutdown
// does not wait for that pair's close timeouts past its own deadline.
func TestShutdownAbortsALatePair(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) { _, _ = io.Copy(io.Discard, br) })
	g := newGate(t, up.URL, func(c *Config) { c.CloseTimeout = 2 * time.Second })
	inHook := make(chan struct{})
	release := make(chan struct{})
	g.proxy.hooks.upgrading = func() {
		close(inHook)
		<-release
	}
	go func() {
		dialPoint()
		conn, err := net.Dial("tcp", g.Listener.Addr().String())
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
		_, _ = io.Copy(io.Discard, conn) // never answers a close
	}()
	<-inHook // reserved: Shutdown waits for it
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- g.proxy.Shutdown(ctx) }()
	<-ctx.Done()
	time.Sleep(200 * time.Millisecond) // Shutdown's abort has run
	close(release)
	err := <-done
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Fatalf("Shutdown with a 300ms grace returned %v after %v (close timeout 2s)", err, took)
	}
	if err == nil {
		t.Fatal("Shutdown past its grace returned no error")
	}
}
