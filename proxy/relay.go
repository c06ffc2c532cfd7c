package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/metrics"
)

// pair is one proxied connection: the client's and the upstream's. Each
// direction runs one goroutine; whichever finds the first fault decides how
// the pair ends (end), and both then drain their source until the peer's
// close frame so that a close frame is never lost to a TCP reset.
type pair struct {
	p        *Proxy
	client   peerConn
	upstream peerConn

	fromClient   direction // client → upstream, run by the handler's goroutine
	fromUpstream direction // upstream → client

	ended     atomic.Bool
	mu        sync.Mutex // guards initiator and the timers
	initiator string
	lastSeen  atomic.Int64 // unix nanoseconds of the last frame either way
	lastPing  atomic.Int64 // unix nanoseconds of the last frame from the client
	closing   atomic.Bool  // a close frame has passed
	idle      *time.Timer
	keepalive *time.Timer

	start          time.Time
	clientIP, path string
	userKey, ipKey string
	protocol       string
	expiry         time.Time // of the client's token; zero without one
	expire         *time.Timer
	upstreamDone   chan struct{}
}

// peerConn is one side's connection with the lock that orders the frames
// written to it: forwarded frames and the gate's own close frames.
type peerConn struct {
	net.Conn
	lock      chan struct{} // held while a frame is written
	masked    bool          // frames to this peer are masked (it is the upstream)
	closeSent bool          // guarded by lock: a close frame went out
	closeCode ws.StatusCode // guarded by lock: the code it carried
	broken    bool          // guarded by lock: a frame was cut short
}

func (c *peerConn) acquire(deadline time.Time) bool {
	select {
	case c.lock <- struct{}{}:
		return true
	default:
	}
	if deadline.IsZero() {
		c.lock <- struct{}{}
		return true
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case c.lock <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

func (c *peerConn) release() { <-c.lock }

// direction is the state of one relay direction.
type direction struct {
	r        frames.Reader
	s        frames.Stream
	src, dst *peerConn
	client   bool // reads the client

	messages, bytes int64
	msgCounter      prometheus.Counter
	byteCounter     prometheus.Counter

	timed    bool      // a message is open under MessageTimeout's deadline
	ctlStart time.Time // window of ControlFrameRate
	ctlCount int
	ctl      [ws.MaxControlFramePayloadSize]byte
}

func newPair(p *Proxy, client, upstream net.Conn) *pair {
	pr := &pair{
		p:            p,
		client:       peerConn{Conn: client, lock: make(chan struct{}, 1)},
		upstream:     peerConn{Conn: upstream, lock: make(chan struct{}, 1), masked: true},
		start:        time.Now(),
		upstreamDone: make(chan struct{}),
	}
	pr.fromClient = direction{
		s:           frames.Stream{From: frames.Client, MaxMessageBytes: p.cfg.MaxMessageBytes},
		src:         &pr.client,
		dst:         &pr.upstream,
		client:      true,
		msgCounter:  p.msgsIn,
		byteCounter: p.bytesIn,
	}
	pr.fromClient.r.Reset(client)
	pr.fromUpstream = direction{
		s:           frames.Stream{From: frames.Server, MaxMessageBytes: p.cfg.MaxMessageBytes},
		src:         &pr.upstream,
		dst:         &pr.client,
		msgCounter:  p.msgsOut,
		byteCounter: p.bytesOut,
	}
	pr.fromUpstream.r.Reset(upstream)
	return pr
}

// run relays until both directions have ended, then releases everything.
func (pr *pair) run() {
	p := pr.p
	p.m.ConnectionsActive.Inc()
	pr.touch(nil)
	// The timers' callbacks read these fields under pr.mu.
	pr.mu.Lock()
	if p.cfg.IdleTimeout > 0 {
		pr.idle = time.AfterFunc(p.cfg.IdleTimeout, pr.checkIdle)
	}
	if p.cfg.PingInterval > 0 {
		pr.keepalive = time.AfterFunc(p.cfg.PingInterval, pr.ping)
	}
	pr.mu.Unlock()
	if p.cfg.CloseOnTokenExpiry && !pr.expiry.IsZero() {
		pr.expire = time.AfterFunc(time.Until(pr.expiry), func() {
			pr.end(ending{initiator: metrics.InitiatorGate,
				clientCode: ws.StatusPolicyViolation, clientReason: "token expired",
				upCode: ws.StatusGoingAway, upReason: "token expired"})
		})
	}
	go pr.runUpstream()
	pr.runDirection(&pr.fromClient)
	<-pr.upstreamDone
	pr.mu.Lock()
	for _, t := range []*time.Timer{pr.idle, pr.expire, pr.keepalive} {
		if t != nil {
			t.Stop()
		}
	}
	pr.mu.Unlock()
	pr.closeConns()
	pr.fromClient.r.Release()
	pr.fromUpstream.r.Release()
	p.m.ConnectionsActive.Dec()
	pr.report()
	p.untrack(pr)
}

func (pr *pair) runUpstream() {
	defer close(pr.upstreamDone)
	pr.runDirection(&pr.fromUpstream)
}

var (
	errLimited = errors.New("rate limited")
	errDrained = errors.New("drained")
)

// runDirection relays one direction and, when it fails, ends the pair.
func (pr *pair) runDirection(d *direction) {
	err := pr.relay(d)
	switch {
	case err == nil:
		// A close frame passed: the other side has CloseTimeout to answer.
		pr.closing.Store(true)
		_ = d.dst.SetReadDeadline(time.Now().Add(pr.p.cfg.CloseTimeout))
	case errors.Is(err, errDrained), errors.Is(err, errLimited):
	case pr.ended.Load():
		// The connection was closed or its deadline passed because the
		// pair is ending.
	default:
		pr.end(pr.classify(d, err))
		var ce *frames.CloseError
		if errors.As(err, &ce) {
			pr.drain(d)
		}
	}
}

// relay is the loop of one direction: read a header, check it, decide on a
// new message, forward the frame. It returns nil once it has forwarded a
// close frame.
func (pr *pair) relay(d *direction) error {
	for {
		h, err := d.s.Next(&d.r)
		if err != nil {
			return err
		}
		pr.touch(d)
		if pr.ended.Load() {
			return pr.drainFrame(d, h)
		}
		if d.client {
			if h.OpCode.IsControl() {
				if consumed, err := pr.clientControl(d, h); consumed || err != nil {
					if err != nil {
						return err
					}
					continue
				}
			} else if t := pr.p.cfg.MessageTimeout; t > 0 && frames.StartsMessage(h) &&
				!(h.Fin && int64(d.r.Buffered()) >= h.Length) {
				// The message is still on its way: all of it must arrive
				// within MessageTimeout.
				_ = d.src.SetReadDeadline(time.Now().Add(t))
				d.timed = true
			}
		}
		if frames.StartsMessage(h) {
			if d.client && pr.p.cfg.Limiter != nil && pr.limited() {
				return pr.drainFrame(d, h)
			}
			d.messages++
			d.msgCounter.Inc()
		}
		if !h.OpCode.IsControl() {
			d.bytes += h.Length
			d.byteCounter.Add(float64(h.Length))
		}
		err = pr.forward(d, h)
		d.r.Release()
		if err != nil {
			return err
		}
		if d.timed && h.Fin && !h.OpCode.IsControl() {
			d.timed = false
			if !pr.closing.Load() {
				_ = d.src.SetReadDeadline(time.Time{})
			}
		}
		if h.OpCode == ws.OpClose {
			pr.setInitiator(d)
			return nil
		}
	}
}

// forward writes one frame under the destination's lock.
func (pr *pair) forward(d *direction, h ws.Header) error {
	d.dst.acquire(time.Time{})
	defer d.dst.release()
	if d.dst.closeSent || d.dst.broken {
		// The gate has closed that side meanwhile: the frame has nowhere
		// to go.
		return errDrained
	}
	if t := pr.p.cfg.WriteTimeout; t > 0 && !d.client {
		// A client that stops reading holds this direction (the upstream
		// is not read meanwhile) for at most WriteTimeout.
		_ = d.dst.SetWriteDeadline(time.Now().Add(t))
	}
	c, err := d.s.Forward(d.dst.Conn, &d.r, h)
	if d.s.MidFrame() {
		d.dst.broken = true
	}
	if err == nil && h.OpCode == ws.OpClose {
		d.dst.closeSent = true
		d.dst.closeCode = c.Code
	}
	return err
}

// limited asks the limiter about a new client message and, when it is
// refused, ends the pair with the 429 frame and close 4008.
func (pr *pair) limited() bool {
	dec := pr.p.decide(context.Background(), false, pr.userKey, pr.ipKey)
	if !pr.p.enforce(dec) {
		return false
	}
	pr.end(ending{
		initiator:    metrics.InitiatorGate,
		clientText:   limitBody(dec),
		clientCode:   frames.StatusRateLimited,
		clientReason: "Rate limit",
		upCode:       frames.StatusRateLimited,
		upReason:     "Rate limit",
	})
	return true
}

// ending says how a pair ends: what each side is told (code 0: nothing,
// that side is gone) and who caused it.
type ending struct {
	initiator    string
	clientText   []byte // a text frame sent to the client before its close frame
	clientCode   ws.StatusCode
	clientReason string
	upCode       ws.StatusCode
	upReason     string
}

// classify maps the error that stopped direction d to how the pair ends
// (DESIGN.md, "Client-facing behaviour").
func (pr *pair) classify(d *direction, err error) ending {
	var ce *frames.CloseError
	var we *frames.WriteError
	switch {
	case d.client && errors.As(err, &ce):
		return ending{initiator: metrics.InitiatorGate, clientCode: ce.Code, clientReason: ce.Reason,
			upCode: ws.StatusGoingAway, upReason: "client error"}
	case d.client && d.timed && isTimeout(err):
		return ending{initiator: metrics.InitiatorGate, clientCode: ws.StatusPolicyViolation, clientReason: "message timeout",
			upCode: ws.StatusGoingAway, upReason: "client error"}
	case d.client && errors.As(err, &we):
		return ending{initiator: metrics.InitiatorUpstream, clientCode: frames.StatusBadGateway, clientReason: "upstream went away"}
	case d.client:
		return ending{initiator: metrics.InitiatorClient, upCode: ws.StatusGoingAway, upReason: "client went away"}
	case errors.As(err, &ce):
		return ending{initiator: metrics.InitiatorUpstream, clientCode: frames.StatusBadGateway, clientReason: "upstream protocol error",
			upCode: ws.StatusProtocolError, upReason: ce.Reason}
	case errors.As(err, &we):
		return ending{initiator: metrics.InitiatorClient, upCode: ws.StatusGoingAway, upReason: "client went away"}
	default:
		return ending{initiator: metrics.InitiatorUpstream, clientCode: frames.StatusBadGateway, clientReason: "upstream went away"}
	}
}

// end ends the pair once: it sends each side the frames e gives it (unless
// a close frame already went there) and bounds the time both directions
// may spend draining. The connections are closed by run when both
// directions have returned.
func (pr *pair) end(e ending) {
	if !pr.ended.CompareAndSwap(false, true) {
		return
	}
	pr.mu.Lock()
	if pr.initiator == "" {
		pr.initiator = e.initiator
	}
	pr.mu.Unlock()
	deadline := time.Now().Add(pr.p.cfg.CloseTimeout)
	// A writer stuck on a peer that does not read gives up by the deadline.
	_ = pr.client.SetWriteDeadline(deadline)
	_ = pr.upstream.SetWriteDeadline(deadline)
	if e.clientCode != 0 {
		pr.client.sendClose(e.clientText, e.clientCode, e.clientReason, deadline)
	}
	if e.upCode != 0 {
		pr.upstream.sendClose(nil, e.upCode, e.upReason, deadline)
	}
	_ = pr.client.SetReadDeadline(deadline)
	_ = pr.upstream.SetReadDeadline(deadline)
}

func (c *peerConn) sendClose(text []byte, code ws.StatusCode, reason string, deadline time.Time) {
	if !c.acquire(deadline) {
		return
	}
	defer c.release()
	if c.closeSent || c.broken {
		return
	}
	if text != nil {
		if err := frames.WriteFrame(c.Conn, ws.OpText, text, c.masked); err != nil {
			c.broken = true
			return
		}
	}
	if err := frames.WriteClose(c.Conn, code, reason, c.masked); err != nil {
		c.broken = true
		return
	}
	c.closeSent = true
	c.closeCode = code
}

// maxDrain bounds what the gate reads and discards from a side after the
// pair ended, while it waits for that side's close frame.
const maxDrain = 1 << 20

// drainFrame discards the payload of h, whose header was read after the pair
// ended, then drains the rest.
func (pr *pair) drainFrame(d *direction, h ws.Header) error {
	if h.OpCode == ws.OpClose {
		return errDrained
	}
	if h.Length > maxDrain {
		return errDrained
	}
	if _, err := io.CopyN(io.Discard, &d.r, h.Length); err != nil {
		return errDrained
	}
	pr.drain(d)
	return errDrained
}

// drain reads and discards frames from d's source until its close frame,
// an error, maxDrain bytes or the deadline end sets. Reading the peer's
// last frames before closing keeps the kernel from answering them with a
// reset that would destroy the close frame the gate just sent.
func (pr *pair) drain(d *direction) {
	var hdr [ws.MaxHeaderSize]byte
	var total int64
	for total < maxDrain {
		h, err := ws.ReadHeaderBuffer(&d.r, hdr[:])
		if err != nil || h.OpCode == ws.OpClose || h.Length > maxDrain-total {
			return
		}
		if _, err := io.CopyN(io.Discard, &d.r, h.Length); err != nil {
			return
		}
		total += h.Length
	}
}

func (pr *pair) setInitiator(d *direction) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.initiator != "" {
		return
	}
	if d.client {
		pr.initiator = metrics.InitiatorClient
	} else {
		pr.initiator = metrics.InitiatorUpstream
	}
}

func (pr *pair) touch(d *direction) {
	now := time.Now().UnixNano()
	pr.lastSeen.Store(now)
	if d == nil || d.client {
		pr.lastPing.Store(now)
	}
}

// gatePing is the payload of the gate's own pings; a client's pong that
// carries it answers the gate and is not forwarded.
var gatePing = []byte("wsgate-keepalive")

// clientControl applies the control-frame rate to a client's control frame
// and consumes a pong that answers the gate's own ping. It reports whether
// the frame was consumed.
func (pr *pair) clientControl(d *direction, h ws.Header) (bool, error) {
	if rule := pr.p.cfg.ControlFrameRate; rule.Enabled() {
		now := time.Now()
		if now.Sub(d.ctlStart) >= rule.Window {
			d.ctlStart, d.ctlCount = now, 0
		}
		d.ctlCount++
		if d.ctlCount > rule.Limit {
			pr.end(ending{initiator: metrics.InitiatorGate,
				clientCode: ws.StatusPolicyViolation, clientReason: "too many control frames",
				upCode: ws.StatusGoingAway, upReason: "client error"})
			return false, pr.drainFrame(d, h)
		}
	}
	if h.OpCode != ws.OpPong || h.Length != int64(len(gatePing)) || pr.p.cfg.PingInterval <= 0 {
		return false, nil
	}
	p, err := d.s.ReadControl(&d.r, h, d.ctl[:])
	if err != nil {
		return false, err
	}
	if string(p) == string(gatePing) {
		return true, nil
	}
	// A pong to an upstream ping that happens to have the same length.
	d.dst.acquire(time.Time{})
	defer d.dst.release()
	if d.dst.closeSent || d.dst.broken {
		return true, nil
	}
	if err := frames.WriteFrame(d.dst.Conn, ws.OpPong, p, true); err != nil {
		return true, &frames.WriteError{Err: err}
	}
	return true, nil
}

// ping runs every PingInterval: a client silent for two intervals is gone;
// otherwise it gets the gate's ping.
func (pr *pair) ping() {
	interval := pr.p.cfg.PingInterval
	if time.Since(time.Unix(0, pr.lastPing.Load())) > 2*interval {
		pr.end(ending{initiator: metrics.InitiatorGate,
			clientCode: ws.StatusGoingAway, clientReason: "ping timeout",
			upCode: ws.StatusGoingAway, upReason: "client went away"})
		return
	}
	deadline := time.Now().Add(interval)
	if pr.client.acquire(deadline) {
		if !pr.client.closeSent && !pr.client.broken && !pr.ended.Load() {
			_ = pr.client.SetWriteDeadline(deadline)
			if err := frames.WriteFrame(pr.client.Conn, ws.OpPing, gatePing, false); err != nil {
				pr.client.broken = true
			}
		}
		pr.client.release()
	}
	pr.mu.Lock()
	if !pr.ended.Load() {
		pr.keepalive.Reset(interval)
	}
	pr.mu.Unlock()
}

// checkIdle runs on the idle timer: it ends the pair when no frame has
// passed for IdleTimeout, or sets the timer for when that can happen.
func (pr *pair) checkIdle() {
	idle := pr.p.cfg.IdleTimeout
	since := time.Since(time.Unix(0, pr.lastSeen.Load()))
	if since < idle {
		pr.mu.Lock()
		pr.idle.Reset(idle - since)
		pr.mu.Unlock()
		return
	}
	pr.end(ending{initiator: metrics.InitiatorGate,
		clientCode: ws.StatusGoingAway, clientReason: "idle timeout",
		upCode: ws.StatusGoingAway, upReason: "idle timeout"})
}

func (pr *pair) closeConns() {
	_ = pr.client.Close()
	_ = pr.upstream.Close()
}

// report counts the finished pair and writes its access log line.
func (pr *pair) report() {
	code := 1006
	if pr.client.closeSent {
		code = int(pr.client.closeCode)
	}
	pr.mu.Lock()
	initiator := pr.initiator
	pr.mu.Unlock()
	if initiator == "" {
		initiator = metrics.InitiatorGate
	}
	pr.p.m.Closes.WithLabelValues(initiator, metrics.CodeLabel(code)).Inc()
	pr.p.log.Info("connection closed",
		"client_ip", pr.clientIP,
		"identity", pr.userKey,
		"path", pr.path,
		"protocol", pr.protocol,
		"duration_ms", time.Since(pr.start).Milliseconds(),
		"messages_in", pr.fromClient.messages,
		"messages_out", pr.fromUpstream.messages,
		"bytes_in", pr.fromClient.bytes,
		"bytes_out", pr.fromUpstream.bytes,
		"close_code", code,
		"initiator", initiator,
	)
}
