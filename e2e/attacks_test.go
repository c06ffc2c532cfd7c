//go:build e2e

package e2e

// Attacks and faults through the built binary (README, "What the gate guarantees under
// attack"): slow and oversized handshakes, a
// message that never ends, a ping flood, a client that stops reading, a peer that goes silent,
// --max-conns, and backends that refuse, hang or reset. Every case asserts what the client gets,
// what reached the backend, and that the gate and its other connections are unharmed; time only
// ever bounds a wait (a decision arrives with a margin of seconds), it is never a budget.
//
// Not covered here: the conformance table (conformance_test.go), Redis faults (limit/),
// --ip-max-conns (limits tests) and --compression (proxy tests).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// atkMemCapKiB bounds how much the gate's RSS may grow during one attack. Without a bound on
// buffering each of these attacks grows the gate by far more (the slow reader alone by the
// hundreds of MiB the backend would stream); with one the growth is a few MiB of buffers and
// race-detector shadow memory.
const atkMemCapKiB = 64 << 10

// TestAttackSlowlorisHandshake trickles upgrade requests at one byte per 100 ms: the gate closes
// each connection at --handshake-timeout, long before the headers are complete, forwards nothing,
// and keeps relaying for an established neighbour meanwhile.
func TestAttackSlowlorisHandshake(t *testing.T) {
	t.Parallel()
	b := newAtkBackend(t)
	g := atkGate(t, b.URL, "--handshake-timeout", "1s")
	hp := atkHostPort(g)
	neighbour := dial(t, g.URL+"/echo", nil)
	atkEcho(t, neighbour, "before the slowloris")
	base := b.requests.Load()

	// About 330 bytes: sending it whole at 10 bytes a second would take over half a minute.
	req := atkUpgradeRequest(hp, "/echo", "X-Pad: "+strings.Repeat("p", 200))
	const attackers = 8
	type result struct {
		sent   int64
		answer []byte
		err    error
	}
	results := make(chan result, attackers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var conns []net.Conn
	defer wg.Wait()
	defer func() {
		close(stop)
		for _, c := range conns {
			c.Close()
		}
	}()
	for range attackers {
		nc, err := net.DialTimeout("tcp", hp, waitLimit)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		var sent atomic.Int64
		wg.Add(2)
		go func() {
			defer wg.Done()
			tk := time.NewTicker(100 * time.Millisecond)
			defer tk.Stop()
			for i := range req {
				if _, err := nc.Write(req[i : i+1]); err != nil {
					return
				}
				sent.Add(1)
				select {
				case <-stop:
					return
				case <-tk.C:
				}
			}
		}()
		go func() {
			defer wg.Done()
			_ = nc.SetReadDeadline(time.Now().Add(15 * time.Second))
			answer, err := io.ReadAll(nc)
			results <- result{sent: sent.Load(), answer: answer, err: err}
		}()
	}

	for i := range attackers {
		atkEcho(t, neighbour, "during the slowloris "+strconv.Itoa(i))
		r := <-results
		if errors.Is(r.err, os.ErrDeadlineExceeded) {
			t.Fatalf("attacker %d: the gate kept a trickled handshake open for 15 s (%d of %d bytes sent) with --handshake-timeout 1s", i, r.sent, len(req))
		}
		if r.sent >= int64(len(req)) {
			t.Errorf("attacker %d: the whole request (%d bytes) went out before the gate closed", i, r.sent)
		}
		if bytes.HasPrefix(r.answer, []byte("HTTP/1.1 101")) {
			t.Errorf("attacker %d: the gate upgraded a trickled handshake: %q", i, tail(string(r.answer), 200))
		}
		t.Logf("attacker %d: closed after %d of %d bytes; answer %q, err %v", i, r.sent, len(req), tail(string(r.answer), 80), r.err)
	}
	if got := b.requests.Load(); got != base {
		t.Errorf("the backend got %d requests during the slowloris, want none", got-base)
	}
	atkHealthy(t, g, neighbour, "the slowloris", true)
}

// TestAttackOversizedHeaders sends upgrade requests whose headers are over --max-header-bytes, by
// one big header or by many small ones, a little over (the gate's own check) and far over
// (net/http's): each gets 431 and nothing reaches the backend.
func TestAttackOversizedHeaders(t *testing.T) {
	t.Parallel()
	b := newAtkBackend(t)
	g := atkGate(t, b.URL) // --max-header-bytes 16KiB
	hp := atkHostPort(g)

	manyHeaders := func(n int) []string {
		h := make([]string, n)
		for i := range h {
			h[i] = fmt.Sprintf("X-Attack-%05d: v", i)
		}
		return h
	}
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"one header of 17KiB", []string{"X-Big: " + strings.Repeat("b", 17<<10)}},
		{"one header of 256KiB", []string{"X-Big: " + strings.Repeat("b", 256<<10)}},
		{"1000 small headers (about 18KiB)", manyHeaders(1000)},
		{"20000 small headers", manyHeaders(20000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := b.requests.Load()
			status, body, err := atkRawRequest(t, hp, atkUpgradeRequest(hp, "/echo", tc.extra...))
			if status != 431 {
				t.Errorf("status %d (err %v, body %q), want 431", status, err, tail(body, 200))
			}
			if got := b.requests.Load(); got != base {
				t.Errorf("the backend got %d requests, want none", got-base)
			}
		})
	}
	t.Run("control: 8KiB of headers passes", func(t *testing.T) {
		base := b.requests.Load()
		status, body, err := atkRawRequest(t, hp, atkUpgradeRequest(hp, "/echo", "X-Big: "+strings.Repeat("b", 8<<10)))
		if status != 101 {
			t.Errorf("status %d (err %v, body %q), want 101", status, err, tail(body, 200))
		}
		if got := b.requests.Load(); got != base+1 {
			t.Errorf("the backend got %d requests, want 1", got-base)
		}
	})
	atkHealthy(t, g, nil, "oversized headers", true)
}

// TestAttackTrickledFragments opens messages that never end, one small continuation frame every
// 200 ms: each is closed 1008 "message timeout" at --message-timeout (the deadline runs from the
// first frame, not the last), the backend gets 1001, and the gate's memory stays bounded.
func TestAttackTrickledFragments(t *testing.T) {
	t.Parallel()
	b := newAtkBackend(t)
	g := atkGate(t, b.URL, "--message-timeout", "1s")
	hp := atkHostPort(g)
	neighbour := dial(t, g.URL+"/echo", nil)
	atkEcho(t, neighbour, "before the trickle")
	before := atkRSS(t, g.Cmd.Process.Pid)
	peak := atkRSSWatch(t, g)

	const attackers = 8
	type result struct {
		code   int
		reason string
		frames int64
	}
	results := make(chan result, attackers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var conns []*rawConn
	defer wg.Wait()
	defer func() {
		close(stop)
		for _, c := range conns {
			c.Close()
		}
	}()
	for range attackers {
		rc, resp := rawDial(t, hp, "/echo", nil)
		if resp.StatusCode != 101 {
			t.Fatalf("handshake: status %d, want 101", resp.StatusCode)
		}
		conns = append(conns, rc)
		_ = rc.SetDeadline(time.Now().Add(15 * time.Second))
		var sent atomic.Int64
		wg.Add(2)
		go func() {
			defer wg.Done()
			if rc.writeFrame(false, 0x1, []byte("the start of a message that never ends")) != nil {
				return
			}
			sent.Add(1)
			tk := time.NewTicker(200 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tk.C:
				}
				if rc.writeFrame(false, 0x0, []byte("...")) != nil {
					return
				}
				sent.Add(1)
			}
		}()
		go func() {
			defer wg.Done()
			code, reason := rc.readCloseCode()
			results <- result{code: code, reason: reason, frames: sent.Load()}
		}()
	}

	for i := range attackers {
		atkEcho(t, neighbour, "during the trickle "+strconv.Itoa(i))
		r := <-results
		if r.code != 1008 || r.reason != "message timeout" {
			t.Errorf("attacker %d: close %d %q after %d frames, want 1008 \"message timeout\" (-1: no close frame within 15 s)", i, r.code, r.reason, r.frames)
		}
		if r.frames < 2 {
			t.Errorf("attacker %d: closed after %d frames, before any continuation frame went out", i, r.frames)
		}
	}
	for i := range attackers {
		if ce := b.nextClose(t); ce.Code != websocket.StatusGoingAway {
			t.Errorf("backend connection %d: close %d %q, want 1001", i, ce.Code, ce.Reason)
		}
	}
	if grew := peak() - before; grew > atkMemCapKiB {
		t.Errorf("the gate's RSS grew by %d KiB during the trickle, want at most %d KiB", grew, atkMemCapKiB)
	} else {
		t.Logf("the gate's RSS grew by %d KiB during the trickle", grew)
	}
	atkHealthy(t, g, neighbour, "the trickled fragments", true)
}

// TestAttackPingFlood sends 200 pings at once against the default --control-frame-rate (50/1s):
// the flooder is closed 1008 while a neighbouring connection keeps echoing.
func TestAttackPingFlood(t *testing.T) {
	t.Parallel()
	b := newAtkBackend(t)
	g := atkGate(t, b.URL)
	hp := atkHostPort(g)
	neighbour := dial(t, g.URL+"/echo", nil)
	atkEcho(t, neighbour, "before the flood")

	stop := make(chan struct{})
	type loopResult struct {
		ok  int
		err error
	}
	loop := make(chan loopResult, 1)
	var echoed atomic.Int64
	go func() {
		ok, err := atkEchoLoop(neighbour, stop, &echoed)
		loop <- loopResult{ok, err}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			<-loop
		}
	}()

	rc, resp := rawDial(t, hp, "/echo", nil)
	if resp.StatusCode != 101 {
		t.Fatalf("handshake: status %d, want 101", resp.StatusCode)
	}
	waitFor(t, "the neighbour's first echo", func() bool { return echoed.Load() > 0 })
	var flood bytes.Buffer
	for i := range 200 {
		flood.Write(encodeRawFrame(0x89, true, []byte("flood-"+strconv.Itoa(i))))
	}
	if _, err := rc.Write(flood.Bytes()); err != nil {
		t.Logf("writing the flood: %v (the gate may have closed first)", err)
	}
	pongs, code, reason := 0, -1, ""
	for {
		f, err := rc.readFrame()
		if err != nil {
			reason = err.Error()
			break
		}
		if f.opcode == 0xA {
			if want := "flood-" + strconv.Itoa(pongs); string(f.payload) != want {
				t.Errorf("pong %d carries %q, want %q", pongs, f.payload, want)
			}
			pongs++
			continue
		}
		if f.opcode == 0x8 {
			code = 1005
			if len(f.payload) >= 2 {
				code, reason = int(f.payload[0])<<8|int(f.payload[1]), string(f.payload[2:])
			}
			break
		}
	}
	// The neighbour's loop spans the flood: it echoed before it and echoes after the close.
	atClose := echoed.Load()
	waitFor(t, "a neighbour echo after the flooder's close", func() bool {
		select {
		case lr := <-loop:
			loop <- lr // ended early: reported below
			return true
		default:
		}
		return echoed.Load() > atClose
	})
	close(stop)
	lr := <-loop
	if lr.ok < 2 {
		t.Errorf("the neighbour echoed %d times across the flood, want at least one before and one after", lr.ok)
	}
	if code != 1008 {
		t.Errorf("the flooder got close %d %q, want 1008 (-1: no close frame)", code, reason)
	}
	if pongs > 50 {
		t.Errorf("the flooder got %d pongs back, want at most the 50 pings the rate allows", pongs)
	}
	t.Logf("the flooder got %d pongs, then close %d %q; the neighbour echoed %d times meanwhile", pongs, code, reason, lr.ok)
	if lr.err != nil {
		t.Errorf("the neighbour's echo failed during the flood after %d successes: %v", lr.ok, lr.err)
	}
	if ce := b.nextClose(t); ce.Code != websocket.StatusGoingAway {
		t.Errorf("the flooder's backend connection got close %d %q, want 1001", ce.Code, ce.Reason)
	}
	atkHealthy(t, g, neighbour, "the ping flood", true)
}

// TestAttackSlowReader stops reading while the backend streams 256 KiB messages: the gate stops
// reading the backend (whose writes block), holds bounded memory, drops the client after
// --write-timeout and sends the backend 1001.
func TestAttackSlowReader(t *testing.T) {
	t.Parallel()
	b := newAtkBackend(t)
	g := atkGate(t, b.URL, "--write-timeout", "1s")
	hp := atkHostPort(g)
	neighbour := dial(t, g.URL+"/echo", nil)
	atkEcho(t, neighbour, "before the slow reader")
	active := func() float64 { return g.Metric(t, "holo_ws_connections_active", nil) }
	waitFor(t, "the neighbour to be counted", func() bool { return active() == 1 })
	before := atkRSS(t, g.Cmd.Process.Pid)
	peak := atkRSSWatch(t, g)

	rc, resp := rawDial(t, hp, "/stream?size=262144", nil)
	if resp.StatusCode != 101 {
		t.Fatalf("handshake: status %d, want 101", resp.StatusCode)
	}
	// From here on nothing reads rc.
	start := time.Now()
	var timeline []string
	sampleStop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-sampleStop:
				return
			case <-tk.C:
				timeline = append(timeline, fmt.Sprintf("%v:%dKiB", time.Since(start).Round(10*time.Millisecond), b.streamed.Load()>>10))
			}
		}
	}()
	waitFor(t, "the backend to start streaming", func() bool { return b.streamed.Load() > 0 })
	atkEcho(t, neighbour, "while the backend is blocked on the slow reader")
	// The gate's decision reaches the backend first (1001); the connection is released when
	// both sides are closed.
	if ce := b.nextClose(t); ce.Code != websocket.StatusGoingAway {
		t.Errorf("the streaming backend connection got close %d %q, want 1001", ce.Code, ce.Reason)
	}
	told := time.Duration(b.streamCloseAt.Load() - start.UnixNano())
	atkWaitFor(t, 15*time.Second, "the gate to drop the slow reader (--write-timeout 1s)", func() bool { return active() == 1 })
	dropped := time.Since(start)
	close(sampleStop)
	<-sampled
	t.Logf("what the backend had written, by time since the handshake: %s", strings.Join(timeline, " "))
	streamed := b.streamed.Load()
	if streamed >= 64<<20 {
		t.Errorf("the backend wrote %d MiB to a client that read nothing, want under 64 MiB (no backpressure)", streamed>>20)
	}
	grew := peak() - before
	if grew > atkMemCapKiB {
		t.Errorf("the gate's RSS grew by %d KiB while the client did not read, want at most %d KiB", grew, atkMemCapKiB)
	}
	t.Logf("the backend got 1001 after %v; the connection was released after %v; the backend wrote %d KiB in all; the gate's RSS grew by %d KiB; closes: gate/1001 %v, client/1006 %v",
		told.Round(time.Millisecond), dropped.Round(time.Millisecond), streamed>>10, grew,
		g.Metric(t, "holo_ws_closes_total", map[string]string{"initiator": "gate", "code": "1001"}),
		g.Metric(t, "holo_ws_closes_total", map[string]string{"initiator": "client", "code": "1006"}))
	_ = rc.Close()
	atkHealthy(t, g, neighbour, "the slow reader", true)
}

// TestAttackDeadPeer holds two raw clients with --ping-interval 200ms: one never reads or sends
// and is closed 1001 "ping timeout" after about two intervals; the other only answers the gate's
// pings and stays connected.
func TestAttackDeadPeer(t *testing.T) {
	t.Parallel()
	b := newAtkBackend(t)
	g := atkGate(t, b.URL, "--ping-interval", "200ms")
	hp := atkHostPort(g)
	gate1001 := map[string]string{"initiator": "gate", "code": "1001"}
	closesBefore := g.Metric(t, "holo_ws_closes_total", gate1001)
	active := func() float64 { return g.Metric(t, "holo_ws_connections_active", nil) }

	dead, resp := rawDial(t, hp, "/echo", nil)
	if resp.StatusCode != 101 {
		t.Fatalf("dead client handshake: status %d, want 101", resp.StatusCode)
	}
	live, resp := rawDial(t, hp, "/echo", nil)
	if resp.StatusCode != 101 {
		t.Fatalf("live client handshake: status %d, want 101", resp.StatusCode)
	}
	_ = live.SetDeadline(time.Time{})
	var pings atomic.Int64
	var badPing atomic.Value
	liveEnded := make(chan string, 1)
	go func() {
		for {
			f, err := live.readFrame()
			if err != nil {
				liveEnded <- err.Error()
				return
			}
			switch f.opcode {
			case 0x9:
				if string(f.payload) != "wsgate-keepalive" {
					badPing.Store(string(f.payload))
				}
				pings.Add(1)
				if err := live.writeFrame(true, 0xA, f.payload); err != nil {
					liveEnded <- err.Error()
					return
				}
			case 0x8:
				liveEnded <- fmt.Sprintf("close frame %q", f.payload)
				return
			}
		}
	}()
	defer func() {
		_ = live.Close()
		<-liveEnded
	}()

	start := time.Now()
	waitFor(t, "both clients to be counted", func() bool { return active() == 2 })
	// The gate's decision reaches the backend at once; the client's socket is released once
	// the client answered the close frame or the close timeout (5s) passed: it never answers.
	if ce := b.nextClose(t); ce.Code != websocket.StatusGoingAway {
		t.Errorf("the silent client's backend connection got close %d %q, want 1001", ce.Code, ce.Reason)
	}
	told := time.Since(start)
	atkWaitFor(t, 15*time.Second, "the gate to release the silent client", func() bool { return active() == 1 })
	t.Logf("the backend got 1001 %v after the handshakes; the silent client was released after %v",
		told.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if got := g.Metric(t, "holo_ws_closes_total", gate1001); got != closesBefore+1 {
		t.Errorf("holo_ws_closes_total{initiator=gate,code=1001} = %v, want %v", got, closesBefore+1)
	}

	// The client that answers pings outlives several more intervals.
	p0 := pings.Load()
	waitFor(t, "four more keepalive pings to the live client", func() bool { return pings.Load() >= p0+4 })
	select {
	case why := <-liveEnded:
		liveEnded <- why
		t.Fatalf("the client that answers pings was dropped: %s", why)
	default:
	}
	if n := active(); n != 1 {
		t.Errorf("holo_ws_connections_active = %v, want 1 (the live client)", n)
	}
	if v := badPing.Load(); v != nil {
		t.Errorf("a keepalive ping carried %q, want \"wsgate-keepalive\"", v)
	}

	_ = dead.SetDeadline(time.Now().Add(waitLimit))
	if code, reason := dead.readCloseCode(); code != 1001 || reason != "ping timeout" {
		t.Errorf("the silent client got close %d %q, want 1001 \"ping timeout\"", code, reason)
	}
	atkHealthy(t, g, nil, "the dead peer", true)
}

// TestAttackMaxConns holds --max-conns 2 connections: the third handshake gets 503 before any
// upstream dial, and once one closes a new one succeeds.
func TestAttackMaxConns(t *testing.T) {
	t.Parallel()
	b := newAtkBackend(t)
	g := atkGate(t, b.URL, "--max-conns", "2")
	hp := atkHostPort(g)
	c1 := dial(t, g.URL+"/echo", nil)
	c2 := dial(t, g.URL+"/echo", nil)
	atkEcho(t, c1, "one")
	atkEcho(t, c2, "two")
	base := b.requests.Load()

	tryDial := func() (*websocket.Conn, int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, g.URL+"/echo", nil)
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		if c != nil {
			t.Cleanup(func() { c.CloseNow() })
		}
		return c, status, err
	}
	if _, status, err := tryDial(); status != 503 {
		t.Fatalf("third connection: status %d (err %v), want 503", status, err)
	}
	if status, body, err := atkRawRequest(t, hp, atkUpgradeRequest(hp, "/echo")); status != 503 {
		t.Errorf("third connection, raw: status %d (err %v, body %q), want 503", status, err, body)
	}
	if got := b.requests.Load(); got != base {
		t.Errorf("the backend got %d requests over capacity, want none", got-base)
	}
	if got := g.Metric(t, "holo_ws_connections_total", map[string]string{"result": "over_capacity"}); got < 2 {
		t.Errorf("holo_ws_connections_total{result=over_capacity} = %v, want >= 2", got)
	}
	atkEcho(t, c1, "one, still")

	if err := c1.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("closing the first connection: %v", err)
	}
	var c3 *websocket.Conn
	var last string
	waitFor(t, "a new connection once one closed", func() bool {
		c, status, err := tryDial()
		if err != nil {
			last = fmt.Sprintf("status %d: %v", status, err)
			if status != 503 {
				t.Fatalf("a connection after one closed: %s, want 101 (or 503 until the slot is released)", last)
			}
			return false
		}
		c3 = c
		return true
	})
	atkEcho(t, c3, "three")
	atkEcho(t, c2, "two, still")
	if _, status, err := tryDial(); status != 503 {
		t.Errorf("a connection over capacity again: status %d (err %v), want 503", status, err)
	}
}

// TestAttackBackendFaults runs one gate in front of a backend that hangs at the handshake, resets
// mid-stream, and finally refuses connections; after each fault the gate is alive and an
// established neighbour echoes.
func TestAttackBackendFaults(t *testing.T) {
	t.Parallel()
	b := newAtkBackend(t)
	// --handshake-timeout stays at 10s, so a 504 well before it is the upstream dial timeout's.
	g := atkGate(t, b.URL, "--upstream-dial-timeout", "500ms")
	neighbour := dial(t, g.URL+"/echo", nil)
	atkEcho(t, neighbour, "before the faults")

	t.Run("hangs at handshake", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		start := time.Now()
		c, resp, err := websocket.Dial(ctx, g.URL+"/hang", nil)
		took := time.Since(start)
		if c != nil {
			c.CloseNow()
		}
		if resp == nil || resp.StatusCode != 504 {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Fatalf("status %d (err %v) after %v, want 504", status, err, took)
		}
		if took > 5*time.Second {
			t.Errorf("504 after %v: that is --handshake-timeout (10s), not --upstream-dial-timeout (500ms)", took)
		}
		if got := g.Metric(t, "holo_ws_connections_total", map[string]string{"result": "upstream_timeout"}); got != 1 {
			t.Errorf("holo_ws_connections_total{result=upstream_timeout} = %v, want 1", got)
		}
		atkHealthy(t, g, neighbour, "a hanging backend", true)
	})

	t.Run("reset mid-stream", func(t *testing.T) {
		c := dial(t, g.URL+"/reset", nil)
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		for i := range 3 {
			_, p, err := c.Read(ctx)
			if want := "tick-" + strconv.Itoa(i); err != nil || string(p) != want {
				t.Fatalf("message %d: %q, %v; want %q", i, p, err, want)
			}
		}
		if err := c.Write(ctx, websocket.MessageText, []byte("go")); err != nil {
			t.Fatal(err)
		}
		if ce := readClose(t, c); ce.Code != websocket.StatusBadGateway {
			t.Errorf("client got close %d %q, want 1014", ce.Code, ce.Reason)
		}
		atkHealthy(t, g, neighbour, "a backend reset mid-stream", true)
	})

	for _, tc := range []struct {
		name      string
		len, sent int
		want1014  bool
	}{
		// A small frame cut short never reaches the client in part, so 1014 can follow.
		{"reset mid-frame, 10 of 1000 bytes sent", 1000, 10, true},
		// Part of a large frame may already be on its way to the client: then no close frame
		// can follow, but the connection must still end.
		{"reset mid-frame, 64KiB of 256KiB sent", 256 << 10, 64 << 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, fmt.Sprintf("%s/reset-mid-frame?len=%d&sent=%d", g.URL, tc.len, tc.sent), nil)
			c.SetReadLimit(1 << 20)
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			if _, p, err := c.Read(ctx); err != nil || string(p) != "tick-0" {
				t.Fatalf("first message: %q, %v; want tick-0", p, err)
			}
			if err := c.Write(ctx, websocket.MessageText, []byte("go")); err != nil {
				t.Fatal(err)
			}
			_, p, err := c.Read(ctx)
			if err == nil {
				t.Fatalf("got a %d-byte message after the backend reset mid-frame", len(p))
			}
			if ctx.Err() != nil {
				t.Fatalf("the client's connection did not end within %v of the backend's reset: %v", waitLimit, err)
			}
			var ce websocket.CloseError
			gotClose := errors.As(err, &ce)
			if tc.want1014 && (!gotClose || ce.Code != websocket.StatusBadGateway) {
				t.Errorf("the client's connection ended with %v, want close 1014", err)
			}
			if gotClose && ce.Code != websocket.StatusBadGateway {
				t.Errorf("the client got close %d %q, want 1014 (or no close frame after a partial frame)", ce.Code, ce.Reason)
			}
			t.Logf("the client's connection ended: %v", err)
			atkHealthy(t, g, neighbour, "a backend reset mid-frame", true)
		})
	}

	t.Run("refused", func(t *testing.T) {
		b.refuse()
		base := g.Metric(t, "holo_ws_connections_total", map[string]string{"result": "upstream_error"})
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, g.URL+"/echo", nil)
		if c != nil {
			c.CloseNow()
		}
		if resp == nil || resp.StatusCode != 502 {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Fatalf("status %d (err %v), want 502", status, err)
		}
		if got := g.Metric(t, "holo_ws_connections_total", map[string]string{"result": "upstream_error"}); got != base+1 {
			t.Errorf("holo_ws_connections_total{result=upstream_error} = %v, want %v", got, base+1)
		}
		// The backend takes no new connection, so only the established neighbour can show the
		// gate still relays.
		atkHealthy(t, g, neighbour, "a refusing backend", false)
	})
}
