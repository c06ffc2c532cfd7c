package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/metrics"
)

// Regression tests of the pair's lifecycle: endings that land at the
// moments that used to lose them, and a churn soak after which nothing of
// any pair remains.

// readFrame reads one frame, its payload unmasked.
func readFrame(br *bufio.Reader) (ws.Header, []byte, error) {
	h, err := ws.ReadHeader(br)
	if err != nil {
		return h, nil, err
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(br, p); err != nil {
		return h, nil, err
	}
	if h.Masked {
		ws.Cipher(p, h.Mask, 0)
	}
	return h, p, nil
}

// readUntilClose reads frames until a close frame and returns its code and
// the number of data frames before it.
func readUntilClose(t *testing.T, br *bufio.Reader) (code, data int) {
	t.Helper()
	for {
		h, p, err := readFrame(br)
		if err != nil {
			t.Fatalf("no close frame after %d data frames: %v", data, err)
		}
		switch {
		case h.OpCode == ws.OpClose:
			if len(p) < 2 {
				return 1005, data
			}
			return int(p[0])<<8 | int(p[1]), data
		case !h.OpCode.IsControl():
			data++
		}
	}
}

// TestEndWhileParking publishes the pair's ending at the last moment
// before a direction parks: the direction must still see it, or the pair
// (a client that never answers the close) stays forever.
func TestEndWhileParking(t *testing.T) {
	g := newGate(t, backend(t).URL, func(c *Config) { c.CloseTimeout = 300 * time.Millisecond })
	var once sync.Once
	g.proxy.hooks.beforePark = func(d *direction) {
		if d.client && d.messages == 1 {
			once.Do(func() { d.pr.end(&idleEnding) })
		}
	}
	conn, br := rawClient(t, g, "/echo")
	if _, err := conn.Write(maskedFrame(true, 1, []byte("one"))); err != nil {
		t.Fatal(err)
	}
	code, data := readUntilClose(t, br)
	if code != 1001 || data != 1 {
		t.Fatalf("close %d after %d data frames, want 1001 after the echo", code, data)
	}
	// The client never answers: the close timeout ends the pair.
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
}

// TestEndWhileMessageTimed ends the pair while a client message runs under
// MessageTimeout; the message then completes, and neither the upstream nor
// the client ever answers a close: the close timeout must still bound the
// pair.
func TestEndWhileMessageTimed(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, _ *bufio.Reader) { _, _ = io.Copy(io.Discard, c) })
	g := newGate(t, up.URL, func(c *Config) {
		c.CloseTimeout = 300 * time.Millisecond
		c.MessageTimeout = 30 * time.Second
	})
	conn, br := rawClient(t, g, "/")
	frame := maskedFrame(true, 2, []byte("a message in two pieces"))
	if _, err := conn.Write(frame[:10]); err != nil {
		t.Fatal(err)
	}
	// The gate has read the header: the message is under way.
	waitFor(t, func() bool {
		pr := onlyPair(g.proxy)
		return pr != nil && pr.fromClient.msgDeadline.Load() != 0
	})
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- g.proxy.Shutdown(ctx)
	}()
	waitFor(t, func() bool { return g.proxy.draining.Load() })
	if _, err := conn.Write(frame[10:]); err != nil {
		t.Fatal(err)
	}
	if code, _ := readUntilClose(t, br); code != 1012 {
		t.Fatalf("close %d, want 1012", code)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v (a pair outlived its close timeout)", err)
	}
}

// onlyPair returns the proxy's one pair, or nil.
func onlyPair(p *Proxy) *pair {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		return pr
	}
	return nil
}

// rawUpstream is a hand-written WebSocket backend: it completes the
// handshake and then runs serve on the connection.
func rawUpstream(t *testing.T, serve func(net.Conn, *bufio.Reader)) *httptest.Server {
	t.Helper()
	return rawUpstreamFor(t, func(_ *http.Request, c net.Conn, br *bufio.Reader) { serve(c, br) })
}

// rawUpstreamFor is rawUpstream whose serve also gets the request.
func rawUpstreamFor(t *testing.T, serve func(*http.Request, net.Conn, *bufio.Reader)) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Accept: "+base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n")
		serve(r, conn, rw.Reader)
	}))
	t.Cleanup(s.Close)
	return s
}

// serverFrame encodes an unmasked frame.
func serverFrame(op ws.OpCode, payload []byte) []byte {
	var b strings.Builder
	_ = ws.WriteHeader(&b, ws.Header{Fin: true, OpCode: op, Length: int64(len(payload))})
	b.Write(payload)
	return []byte(b.String())
}

// TestEndWhileBatching ends the pair while frames for the client wait in a
// batch: they are written before the close frame, and exactly what the
// client received is counted.
func TestEndWhileBatching(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, _ *bufio.Reader) {
		var burst []byte
		for i := range 40 {
			burst = append(burst, serverFrame(ws.OpText, []byte("m"+strconv.Itoa(i)))...)
		}
		_, _ = c.Write(burst)
		_, _ = io.Copy(io.Discard, c)
	})
	g := newGate(t, up.URL, func(c *Config) { c.CloseTimeout = 300 * time.Millisecond })
	var once sync.Once
	g.proxy.hooks.afterBatch = func(d *direction) {
		if !d.client && d.out.msgs == 3 {
			once.Do(func() {
				d.pr.end(&ending{initiator: byGate, clientCode: ws.StatusProtocolError, clientReason: "test",
					upCode: ws.StatusGoingAway, upReason: "test"})
			})
		}
	}
	_, br := rawClient(t, g, "/")
	code, data := readUntilClose(t, br)
	if code != 1002 || data < 3 {
		t.Fatalf("close %d after %d data frames, want 1002 after at least the 3 batched", code, data)
	}
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
	if got := testutil.ToFloat64(g.m.Messages.WithLabelValues(metrics.UpstreamToClient)); int(got) != data {
		t.Fatalf("messages_total{upstream_to_client} = %v, the client received %d", got, data)
	}
}

// TestEndWhileWriteBlocked: with WriteTimeout 0, a client that reads
// nothing while the upstream floods it, keepalive pings due, and the pair
// ending: the close deadline still ends the blocked write and the pair.
func TestEndWhileWriteBlocked(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, _ *bufio.Reader) {
		big := serverFrame(ws.OpBinary, make([]byte, 64<<10))
		for {
			if _, err := c.Write(big); err != nil {
				return
			}
		}
	})
	g := newGate(t, up.URL, func(c *Config) {
		c.CloseTimeout = 300 * time.Millisecond
		c.WriteTimeout = 0
		c.PingInterval = 50 * time.Millisecond
		c.MaxMessageBytes = 1 << 20
	})
	_, _ = rawClient(t, g, "/")
	waitFor(t, func() bool { return g.proxy.Active() == 1 })
	time.Sleep(200 * time.Millisecond) // the client's socket fills up; pings fall due
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.proxy.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v (a write blocked past the close deadline)", err)
	}
}

// TestWriteTimeoutPerWrite: WriteTimeout bounds each write that waits for
// a client, not the stream. A client with a 32 KiB receive buffer that
// reads 24 MiB at about 10 MiB/s keeps the gate's writes waiting for
// most of its 2.4 s (the kernel holds at most the gate's 4 MiB send
// buffer and the client's), about ten WriteTimeouts, and receives it all;
// when it then stops reading, it is dropped.
func TestWriteTimeoutPerWrite(t *testing.T) {
	const frameBytes, frames = 64 << 10, 384 // 24 MiB
	up := rawUpstream(t, func(c net.Conn, _ *bufio.Reader) {
		big := serverFrame(ws.OpBinary, make([]byte, frameBytes))
		for {
			if _, err := c.Write(big); err != nil {
				return
			}
		}
	})
	g := newGate(t, up.URL, func(c *Config) {
		c.WriteTimeout = 250 * time.Millisecond
		c.MaxMessageBytes = 1 << 20
	})
	conn, br := rawClient(t, g, "/")
	if err := conn.(*net.TCPConn).SetReadBuffer(32 << 10); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	read := 0
	for i := range frames {
		h, err := ws.ReadHeader(br)
		if err != nil || h.OpCode != ws.OpBinary || h.Length != frameBytes {
			t.Fatalf("frame %d (%d MiB read): %+v %v; want a %d-byte binary frame", i, read>>20, h, err, frameBytes)
		}
		for left := h.Length; left > 0; left -= 16 << 10 {
			if _, err := io.CopyN(io.Discard, br, min(left, 16<<10)); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			read += int(min(left, 16<<10))
			if read%(256<<10) == 0 {
				time.Sleep(25 * time.Millisecond)
			}
		}
	}
	if g.proxy.Active() != 1 {
		t.Fatal("the reading client was dropped")
	}
	waitFor(t, func() bool { return g.proxy.Active() == 0 }) // stopped reading
}

// TestChurn opens and ends a few thousand connections in every way a pair
// ends (client close, upstream close, a limit, idle timeout, ping timeout,
// a client that vanishes, a protocol error, a message timeout, shutdown)
// while directions park and wake; afterwards no pair, descriptor,
// goroutine, connections_active or --ip-max-conns registration remains.
func TestChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("soak")
	}
	const clients, parallel, maxConns = 2000, 48, 64
	lim, err := limit.New(limit.Config{
		Rules:      limit.Rules{IPMessages: limit.Rule{Limit: 40, Window: time.Second, Block: 300 * time.Millisecond}},
		IPMaxConns: maxConns,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	be := backend(t)
	fdsBefore := openFDs(t)
	goroutinesBefore := runtime.NumGoroutine()
	g := newGate(t, be.URL, func(c *Config) {
		c.Limiter = lim
		c.IdleTimeout = 600 * time.Millisecond
		c.PingInterval = 150 * time.Millisecond
		c.MessageTimeout = 400 * time.Millisecond
		c.CloseTimeout = 300 * time.Millisecond
	})
	host := strings.TrimPrefix(g.URL, "http://")

	var failures atomic.Int32
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := churnOne(host, i); err != nil {
					fail("client %d (kind %d): %v", i, i%8, err)
				}
			}
		}()
	}
	for i := range clients {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
	if got := testutil.ToFloat64(g.m.ConnectionsActive); got != 0 {
		t.Fatalf("connections_active = %v after every connection ended", got)
	}
	if got := testutil.ToFloat64(g.m.CloseBackstop); got != 0 {
		t.Fatalf("close_backstop_total = %v, want 0", got)
	}

	// Every --ip-max-conns slot is free again: maxConns connections from one
	// address are all accepted.
	refusedBefore := testutil.ToFloat64(g.m.ConnectionsTotal.WithLabelValues(metrics.ResultRateLimited))
	conns := make([]*websocket.Conn, 0, maxConns)
	for range maxConns {
		c, _, err := websocket.Dial(ctx5(t), "ws://"+host+"/echo", nil)
		if err != nil {
			t.Fatalf("connection %d of %d: %v", len(conns)+1, maxConns, err)
		}
		conns = append(conns, c)
	}
	waitFor(t, func() bool { return g.proxy.Active() == maxConns })
	if got := testutil.ToFloat64(g.m.ConnectionsTotal.WithLabelValues(metrics.ResultRateLimited)); got != refusedBefore {
		t.Fatalf("%v of %d connections refused after the churn: --ip-max-conns registrations leaked", got-refusedBefore, maxConns)
	}
	// Shutdown ends them all with 1012.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	codes := make(chan websocket.StatusCode, len(conns))
	for _, c := range conns {
		go func() {
			var err error
			for err == nil {
				_, _, err = c.Read(ctx) // the drain's text frame, then the close
			}
			codes <- websocket.CloseStatus(err)
			c.CloseNow()
		}()
	}
	if err := g.proxy.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for range conns {
		if code := <-codes; code != websocket.StatusServiceRestart {
			t.Fatalf("shutdown sent %v, want 1012", code)
		}
	}
	if g.proxy.Active() != 0 {
		t.Fatal("pairs left after shutdown")
	}
	// Nothing of any pair is left: descriptors and goroutines are back where
	// they were (the backend's own may take a moment to go).
	waitFor(t, func() bool { return openFDs(t) <= fdsBefore+4 })
	waitFor(t, func() bool { return runtime.NumGoroutine() <= goroutinesBefore+4 })
}

// churnOne runs client i of TestChurn to the end of its connection.
func churnOne(host string, i int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Clients come from many loopback addresses, so that the IP limit
	// refuses some and leaves others alone.
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%100))}
	dialer := &net.Dialer{LocalAddr: local}
	client := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}}
	defer client.CloseIdleConnections()
	switch i % 8 {
	case 0: // echo, then a normal close
		c, _, err := websocket.Dial(ctx, "ws://"+host+"/echo", &websocket.DialOptions{HTTPClient: client})
		if err != nil {
			return err
		}
		defer c.CloseNow()
		for range 3 {
			if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
				return nil // refused by the IP limit: also an ending
			}
			if _, _, err := c.Read(ctx); err != nil {
				return nil
			}
		}
		return c.Close(websocket.StatusNormalClosure, "")
	case 1: // the upstream closes
		c, _, err := websocket.Dial(ctx, "ws://"+host+"/close?code=4000&reason=bye", &websocket.DialOptions{HTTPClient: client})
		if err != nil {
			return err
		}
		defer c.CloseNow()
		_, _, err = c.Read(ctx)
		if code := websocket.CloseStatus(err); code != 4000 && code != 4008 {
			return fmt.Errorf("close %v, want 4000", err)
		}
		return nil
	case 2: // a burst over the IP limit
		conn, br, err := rawDial(ctx, dialer, host)
		if err != nil {
			return err
		}
		defer conn.Close()
		var burst []byte
		for range 60 {
			burst = append(burst, maskedFrame(true, 1, []byte("spam"))...)
		}
		_, _ = conn.Write(burst)
		return readToEnd(conn, br, true)
	case 3: // idle until the idle timeout (pings answered)
		c, _, err := websocket.Dial(ctx, "ws://"+host+"/echo", &websocket.DialOptions{HTTPClient: client})
		if err != nil {
			return err
		}
		defer c.CloseNow()
		_, _, err = c.Read(ctx)
		if code := websocket.CloseStatus(err); code != websocket.StatusGoingAway && code != 4008 {
			return fmt.Errorf("idle close %v, want 1001", err)
		}
		return nil
	case 4: // reads but never answers a ping: ping timeout
		conn, br, err := rawDial(ctx, dialer, host)
		if err != nil {
			return err
		}
		defer conn.Close()
		return readToEnd(conn, br, false)
	case 5: // vanishes after a message
		conn, _, err := rawDial(ctx, dialer, host)
		if err != nil {
			return err
		}
		_, _ = conn.Write(maskedFrame(true, 1, []byte("bye")))
		return conn.Close()
	case 6: // a protocol error
		conn, br, err := rawDial(ctx, dialer, host)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, _ = conn.Write([]byte{0x81, 0x02, 'h', 'i'})
		return readToEnd(conn, br, true)
	default: // a message that never completes: message timeout
		conn, br, err := rawDial(ctx, dialer, host)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, _ = conn.Write(maskedFrame(false, 1, []byte("start")))
		return readToEnd(conn, br, true)
	}
}

// rawDial opens a WebSocket connection to host by hand.
func rawDial(ctx context.Context, d *net.Dialer, host string) (net.Conn, *bufio.Reader, error) {
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	_, _ = io.WriteString(conn, "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, nil, fmt.Errorf("handshake: %s", res.Status)
	}
	return conn, br, nil
}

// readToEnd reads frames until the gate ends the connection (EOF), within
// the connection's deadline; it answers the gate's close frame when answer
// is set.
func readToEnd(conn net.Conn, br *bufio.Reader, answer bool) error {
	for {
		h, err := ws.ReadHeader(br)
		if errors.Is(err, io.EOF) || isReset(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("the gate did not end the connection: %w", err)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(br, p); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
				return nil
			}
			return err
		}
		if h.OpCode == ws.OpClose && answer {
			_, _ = conn.Write(maskedFrame(true, 8, p))
		}
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestBackstop holds a direction away from its socket past the close
// deadline, as a direction that missed its kicks would be: the keeper
// forces the pair closed a close timeout after the deadline and counts it.
func TestBackstop(t *testing.T) {
	const closeTimeout = 200 * time.Millisecond
	g := newGate(t, backend(t).URL, func(c *Config) { c.CloseTimeout = closeTimeout })
	release := make(chan struct{})
	var once sync.Once
	g.proxy.hooks.beforePark = func(d *direction) {
		if d.client && d.messages == 1 {
			once.Do(func() {
				d.pr.end(&idleEnding)
				<-release // stuck: neither the abort nor its past deadlines reach it
			})
		}
	}
	conn, br := rawClient(t, g, "/echo")
	if _, err := conn.Write(maskedFrame(true, 1, []byte("one"))); err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	if code, _ := readUntilClose(t, br); code != 1001 {
		t.Fatalf("close %d, want 1001", code)
	}
	waitFor(t, func() bool { return testutil.ToFloat64(g.m.CloseBackstop) == 1 })
	released = true
	close(release)
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
}

// wrappedListener hands out connections that hide their socket, as a
// PROXY-protocol listener's do: the gate cannot park them and keeps a
// goroutine on each, looking at the pair's state once per keeper tick.
type wrappedListener struct{ net.Listener }

type wrappedConn struct{ net.Conn }

func (l wrappedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return wrappedConn{c}, nil
}

// wrappedGate serves cfg through a wrappedListener.
func wrappedGate(t *testing.T, cfg Config) *gate {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewUnstartedServer(p)
	s.Listener = wrappedListener{s.Listener}
	s.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
		s.Close()
	})
	return &gate{Server: s, proxy: p}
}

// TestUnpollableClient relays through a client connection the poller
// cannot hold: echoes, a refusal that still delivers every reply owed, and
// an idle timeout all work, and nothing remains afterwards.
func TestUnpollableClient(t *testing.T) {
	lim, err := limit.New(limit.Config{Rules: limit.Rules{
		UserMessages: limit.Rule{Limit: 20, Window: time.Minute},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	u := mustURL(t, backend(t).URL)
	g := wrappedGate(t, Config{Upstream: u, Limiter: lim, CloseTimeout: time.Second, IdleTimeout: 400 * time.Millisecond})
	p := g.proxy

	// 25 messages at 20/min: 20 echoes, the 429 frame, 4008.
	conn, br := rawClient(t, g, "/echo")
	var burst []byte
	for i := range 25 {
		burst = append(burst, maskedFrame(true, 1, []byte("m"+strconv.Itoa(i)))...)
	}
	if _, err := conn.Write(burst); err != nil {
		t.Fatal(err)
	}
	code, data := readUntilClose(t, br)
	if code != 4008 || data != 21 {
		t.Fatalf("close %d after %d data frames, want 4008 after 20 echoes and the 429 frame", code, data)
	}
	_, _ = conn.Write(maskedFrame(true, 8, []byte{0x0f, 0xa8}))
	waitFor(t, func() bool { return p.Active() == 0 })

	// A silent connection meets the idle timeout.
	_, br = rawClient(t, g, "/echo")
	if code, _ := readUntilClose(t, br); code != 1001 {
		t.Fatalf("idle close %d, want 1001", code)
	}
	waitFor(t, func() bool { return p.Active() == 0 })
}

// TestSocketsLeaveTheRuntime: where there is a poller, the gate owns both
// sockets of a pair (the runtime's poller would report every segment a
// second time), and a wrapped connection, which it cannot own, stays with
// the runtime.
func TestSocketsLeaveTheRuntime(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	conn, br := rawClient(t, g, "/echo")
	waitFor(t, func() bool { return g.proxy.Active() == 1 })
	g.proxy.mu.Lock()
	for pr := range g.proxy.pairs {
		for _, s := range []*side{&pr.client, &pr.upstream} {
			if g.proxy.pl != nil && (!s.owned || s.Conn != nil || s.fd < 0) {
				t.Errorf("a side with a poller: owned %v, fd %d, conn %T; want the gate's own descriptor", s.owned, s.fd, s.Conn)
			}
		}
	}
	g.proxy.mu.Unlock()
	// The owned sockets relay both ways, and the gate closes them.
	if _, err := conn.Write(maskedFrame(true, 1, []byte("one"))); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(maskedFrame(true, 8, []byte{0x03, 0xe8})); err != nil {
		t.Fatal(err)
	}
	if code, data := readUntilClose(t, br); code != 1000 || data != 1 {
		t.Fatalf("close %d after %d data frames, want 1000 after the echo", code, data)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the closing handshake the gate's socket gave %v, want EOF", err)
	}
	waitFor(t, func() bool { return g.proxy.Active() == 0 })

	var s side
	s.init(wrappedConn{conn}, false, true)
	if s.owned || s.Conn == nil {
		t.Fatal("a wrapped connection was taken from the runtime")
	}
}

// slowRelease is a Limiter whose connection releases take a while, as a
// Redis round trip may.
type slowRelease struct {
	Limiter
	released atomic.Int32
}

func (l *slowRelease) OpenConn(ctx context.Context, ip string) (limit.Decision, func()) {
	d, release := l.Limiter.OpenConn(ctx, ip)
	return d, func() {
		time.Sleep(200 * time.Millisecond)
		release()
		l.released.Add(1)
	}
}

// TestGoneMeansReleased: once a pair is no longer among the proxy's
// connections, everything it held is given back: its concurrent-connection
// slot, the active-connections gauge, its close in the metrics.
func TestGoneMeansReleased(t *testing.T) {
	lim, err := limit.New(limit.Config{IPMaxConns: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	sl := &slowRelease{Limiter: lim}
	g := newGate(t, backend(t).URL, func(c *Config) { c.Limiter = sl })
	conn, br := rawClient(t, g, "/echo")
	waitFor(t, func() bool { return g.proxy.Active() == 1 })
	if _, err := conn.Write(maskedFrame(true, 8, []byte{0x03, 0xe8})); err != nil {
		t.Fatal(err)
	}
	if code, _ := readUntilClose(t, br); code != 1000 {
		t.Fatalf("close %d, want 1000", code)
	}
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
	if n := sl.released.Load(); n != 1 {
		t.Errorf("the pair is gone but its connection slot is not released (%d releases)", n)
	}
	if got := testutil.ToFloat64(g.m.ConnectionsActive); got != 0 {
		t.Errorf("the pair is gone but connections_active = %v", got)
	}
	if got := testutil.ToFloat64(g.m.Closes.WithLabelValues(metrics.InitiatorClient, "1000")); got != 1 {
		t.Errorf("the pair is gone but closes_total{client,1000} = %v", got)
	}
}

// A handshake refused by a limit is answered with 101, the 429 frame and
// 4008, then waits up to the close timeout for the client's close. That
// wait holds neither a pending handshake's slot nor a place under
// --max-conns: a refused client that never answers does not keep an
// unrelated one out.
func TestRefusedHandshakeFreesItsPlaces(t *testing.T) {
	lim, err := limit.New(limit.Config{IPMaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	g := newGate(t, backend(t).URL, func(c *Config) {
		c.Limiter = lim
		c.MaxPendingHandshakes = 1
		c.MaxConns = 2
		c.CloseTimeout = 3 * time.Second
	})
	host := strings.TrimPrefix(g.URL, "http://")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	refused := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c1, _, err := rawDial(ctx, refused, host) // holds the address's one connection
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, br, err := rawDial(ctx, refused, host) // refused; never answers the close
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if h, err := ws.ReadHeader(br); err != nil || h.OpCode != ws.OpText {
		t.Fatalf("refused client: %v %v, want the 429 frame", h, err)
	}
	other := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}}
	c3, _, err := rawDial(ctx, other, host)
	if err != nil {
		t.Fatalf("an unrelated client while the refused one waits: %v", err)
	}
	c3.Close()
}

// TestUpstreamTooBig: an upstream message over --max-message-bytes closes
// the upstream with 1009 (what it broke is the size limit, not the
// protocol) and the client with 1014.
func TestUpstreamTooBig(t *testing.T) {
	got := make(chan int, 1)
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		_, _ = c.Write(serverFrame(ws.OpBinary, make([]byte, 2048)))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			h, payload, err := readFrame(br)
			if err != nil {
				got <- -1
				return
			}
			if h.OpCode == ws.OpClose {
				code := -1
				if len(payload) >= 2 {
					code = int(payload[0])<<8 | int(payload[1])
				}
				got <- code
				return
			}
		}
	})
	g := newGate(t, up.URL, func(c *Config) { c.MaxMessageBytes = 1024 })
	_, br := rawClient(t, g, "/")
	if code, _ := readUntilClose(t, br); code != 1014 {
		t.Errorf("client: close %d, want 1014", code)
	}
	if code := <-got; code != 1009 {
		t.Errorf("upstream: close %d, want 1009", code)
	}
}

// TestNoPingTimeoutInLongFrame: while one upstream frame streams to the
// client for longer than two ping intervals, no ping can go out, and a
// client that answers every ping it gets is not closed as silent.
func TestNoPingTimeoutInLongFrame(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, _ *bufio.Reader) {
		frame := serverFrame(ws.OpBinary, make([]byte, 40*256))
		piece := (len(frame) + 39) / 40
		for off := 0; off < len(frame); off += piece {
			_, _ = c.Write(frame[off:min(off+piece, len(frame))])
			time.Sleep(25 * time.Millisecond)
		}
		_, _ = io.Copy(io.Discard, c)
	})
	g := newGate(t, up.URL, func(c *Config) {
		c.PingInterval = 100 * time.Millisecond
		c.MessageTimeout = 0
	})
	conn, br := rawClient(t, g, "/")
	start := time.Now()
	data, pings := 0, 0
	for time.Since(start) < 1500*time.Millisecond || data == 0 || pings == 0 {
		h, p, err := readFrame(br)
		if err != nil {
			t.Fatalf("read after %v: %v", time.Since(start), err)
		}
		switch h.OpCode {
		case ws.OpPing:
			pings++
			_, _ = conn.Write(maskedFrame(true, 0xA, p))
		case ws.OpClose:
			t.Fatalf("closed %d %q after %v, %d data frames and %d pings", int(p[0])<<8|int(p[1]), p[2:], time.Since(start), data, pings)
		default:
			data++
		}
	}
}

// rawDeflateClient opens a WebSocket to the gate offering permessage-deflate.
func rawDeflateClient(t *testing.T, g *gate, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, br, res := rawClientWith(t, g, path,
		"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n")
	if !strings.Contains(res.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		t.Fatalf("deflate not negotiated: %v", res.Header)
	}
	return conn, br
}

// TestNoPingTimeoutBetweenFragments: the upstream sends a fragmented text
// message whose last fragment comes 800 ms after the first; the client
// answers every ping and sends nothing else. With a 100 ms ping interval
// the connection stays, also when compressed: a compressed message is
// relayed whole inside one step, so no ping goes out until it ends, and a
// held-back ping asks nothing of the client.
func TestNoPingTimeoutBetweenFragments(t *testing.T) {
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprint("compress=", compress), func(t *testing.T) {
			up := rawUpstream(t, func(c net.Conn, _ *bufio.Reader) {
				var b strings.Builder
				_ = ws.WriteHeader(&b, ws.Header{Fin: false, OpCode: ws.OpText, Length: 5})
				b.WriteString("hello")
				_, _ = c.Write([]byte(b.String()))
				time.Sleep(800 * time.Millisecond)
				b.Reset()
				_ = ws.WriteHeader(&b, ws.Header{Fin: true, OpCode: ws.OpContinuation, Length: 6})
				b.WriteString(" world")
				_, _ = c.Write([]byte(b.String()))
				_, _ = io.Copy(io.Discard, c)
			})
			g := newGate(t, up.URL, func(c *Config) {
				c.Compression = compress
				c.PingInterval = 100 * time.Millisecond
				c.CloseTimeout = 2 * time.Second
			})
			var conn net.Conn
			var br *bufio.Reader
			if compress {
				conn, br = rawDeflateClient(t, g, "/")
			} else {
				conn, br = rawClient(t, g, "/")
			}
			start := time.Now()
			pings, fins := 0, 0
			for time.Since(start) < 1500*time.Millisecond || fins == 0 {
				h, p, err := readFrame(br)
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				switch {
				case h.OpCode == ws.OpPing:
					pings++
					_, _ = conn.Write(maskedFrame(true, 0xA, p))
				case h.OpCode == ws.OpClose:
					t.Fatalf("closed %d %q after %v; %d pings received", int(p[0])<<8|int(p[1]), p[2:], time.Since(start), pings)
				case h.Fin:
					fins++
				}
			}
		})
	}
}

// TestDrainTextNotInsideCompressedMessage: an upstream message being
// compressed towards the client is cut short (close deadline) during a
// drain; the drain's text frame must not be written inside the client's open
// compressed message.
func TestDrainTextNotInsideCompressedMessage(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, _ *bufio.Reader) {
		var hdr strings.Builder
		_ = ws.WriteHeader(&hdr, ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 200000})
		payload := make([]byte, 100000)
		_, _ = rand.Read(payload)
		_, _ = c.Write(append([]byte(hdr.String()), payload...))
		_, _ = io.Copy(io.Discard, c) // never sends the rest
	})
	g := newGate(t, up.URL, func(c *Config) {
		c.Compression = true
		c.CloseTimeout = 300 * time.Millisecond
	})
	_, br := rawDeflateClient(t, g, "/")
	// First frame: compressed, not final.
	h, _, err := readFrame(br)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first frame: op %v fin %v rsv %v len %d", h.OpCode, h.Fin, h.Rsv, h.Length)
	open := !h.Fin
	go g.proxy.Drain(context.Background(), 1, 0)
	for {
		h, p, err := readFrame(br)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		t.Logf("frame: op %v fin %v len %d %q", h.OpCode, h.Fin, h.Length, p[:min(len(p), 80)])
		switch {
		case h.OpCode == ws.OpClose:
			return
		case h.OpCode.IsControl():
		case h.OpCode != ws.OpContinuation && open:
			t.Fatalf("a new %v data frame (%q) while a fragmented message is open: protocol error for the client", h.OpCode, p[:min(len(p), 80)])
		default:
			open = !h.Fin
		}
	}
}

// TestPartialHeaderDoesNotHoldUpstreamClose: a client that sent one byte
// of a frame header, and no more, does not hold back the upstream's close
// at a drain until the close deadline: nothing of that frame went
// upstream, so the close goes at once and the upstream has the close
// timeout to answer. Also for a client connection the poller cannot hold
// (a PROXY-protocol listener's), whose direction keeps a goroutine and
// must look at the pair's state once per keeper tick: it used to wait for
// the rest of the header with no deadline.
func TestPartialHeaderDoesNotHoldUpstreamClose(t *testing.T) {
	for _, wrapped := range []bool{false, true} {
		t.Run(fmt.Sprint("wrapped=", wrapped), func(t *testing.T) {
			got := make(chan time.Time, 1)
			up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				h, err := ws.ReadHeader(br)
				if err == nil && h.OpCode == ws.OpClose {
					got <- time.Now()
				}
				_, _ = io.Copy(io.Discard, br)
			})
			var g *gate
			if wrapped {
				g = wrappedGate(t, Config{Upstream: mustURL(t, up.URL), CloseTimeout: 1500 * time.Millisecond})
			} else {
				g = newGate(t, up.URL, func(c *Config) { c.CloseTimeout = 1500 * time.Millisecond })
			}
			conn, _ := rawClient(t, g, "/")
			waitFor(t, func() bool { return g.proxy.Active() == 1 })
			_, _ = conn.Write([]byte{0x81}) // first byte of a header
			time.Sleep(100 * time.Millisecond)
			start := time.Now()
			go g.proxy.Drain(context.Background(), 1, 0)
			select {
			case at := <-got:
				if d := at.Sub(start); d > time.Second {
					t.Fatalf("upstream got its close %v after the drain began (close timeout 1.5s, keeper tick %v)", d, g.proxy.tick)
				}
			case <-time.After(4 * time.Second):
				t.Fatal("no close upstream")
			}
		})
	}
}

// TestWriteErrorMidFrameSkipsPayload cuts the upstream off while a large
// client frame is being relayed: the rest of that frame's payload is
// skipped, not read as frame headers, so the client's close frame after it
// is found and the connection ends with a FIN, not a reset.
func TestWriteErrorMidFrameSkipsPayload(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		var b [16]byte
		_, _ = io.ReadFull(br, b[:]) // part of the big frame
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close() // a reset: the gate's next write fails
	})
	g := newGate(t, up.URL, nil)
	conn, br := rawClient(t, g, "/")

	const size = 256 << 10
	frame := []byte{0x82, 0x80 | 127, 0, 0, 0, 0, 0, size >> 16, size >> 8 & 0xff, size & 0xff, 0, 0, 0, 0}
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = 0xff // read as a header, any byte of it is a bad one
	}
	const first = 64 << 10 // two whole chunks (frames.BufferSize): written before the reset
	if _, err := conn.Write(append(frame, payload[:first]...)); err != nil {
		t.Fatal(err)
	}
	if code := readClose(t, br); code != 1014 {
		t.Fatalf("close %d, want 1014 (upstream went away)", code)
	}
	rest := append(payload[first:], maskedFrame(true, 0x8, []byte{0x03, 0xe8})...)
	if _, err := conn.Write(rest); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("after the client's close: %v, want the gate's FIN", err)
	}
}

// TestIPMaxConnsRefusalIsOneDecision: a handshake the rates allow and
// --ip-max-conns refuses is one decision of limiter_decisions_total, a
// limited one, not an allowed one and a limited one.
func TestIPMaxConnsRefusalIsOneDecision(t *testing.T) {
	lim, err := limit.New(limit.Config{IPMaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	g := newGate(t, backend(t).URL, func(c *Config) { c.Limiter = lim })
	rawClient(t, g, "/echo") // holds the address's one connection
	_, br := rawClient(t, g, "/echo")
	if h, err := ws.ReadHeader(br); err != nil || h.OpCode != ws.OpText {
		t.Fatalf("second client: %v %v, want the 429 frame", h, err)
	}
	sum := func(decision string) float64 {
		var n float64
		for _, cause := range []string{metrics.CauseRules, metrics.CauseFallback} {
			n += testutil.ToFloat64(g.m.LimiterDecisions.WithLabelValues(decision, cause, ""))
		}
		return n
	}
	if a, l := sum(metrics.DecisionAllowed), sum(metrics.DecisionLimited); a != 1 || l != 1 {
		t.Fatalf("two handshakes, one refused by --ip-max-conns: allowed %v, limited %v; want 1 and 1", a, l)
	}

	// Under --shadow, a handshake the rates refuse (counted as shadow)
	// and --ip-max-conns refuses too is still one decision.
	lim, err = limit.New(limit.Config{IPMaxConns: 1, Rules: limit.Rules{IPConns: limit.Rule{Limit: 1, Window: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	g = newGate(t, backend(t).URL, func(c *Config) { c.Limiter, c.Shadow = lim, true })
	rawClient(t, g, "/echo")
	rawClient(t, g, "/echo")
	if a, s, l := sum(metrics.DecisionAllowed), sum(metrics.DecisionShadow), sum(metrics.DecisionLimited); a+s+l != 2 {
		t.Fatalf("two handshakes under --shadow: allowed %v, shadow %v, limited %v; want two decisions", a, s, l)
	}
}
