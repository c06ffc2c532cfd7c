package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/metrics"
)

// pair is one proxied connection: the client's and the upstream's. Each
// direction is run by a goroutine while it has bytes to relay and parks in
// the poller when it has none (park.go); whichever direction finds the
// first fault decides how the pair ends (end), and both then drain their
// source until the peer's close frame so that a close frame is never lost
// to a TCP reset.
type pair struct {
	p        *Proxy
	client   peerConn
	upstream peerConn

	fromClient   direction // client → upstream
	fromUpstream direction // upstream → client

	live      atomic.Int32 // directions not finished yet
	ended     atomic.Bool
	mu        sync.Mutex // guards initiator
	initiator string
	lastSeen  atomic.Int64 // unix nanoseconds of the last frame either way
	lastPing  atomic.Int64 // unix nanoseconds of the last frame from the client
	closing   atomic.Bool  // a close frame has passed
	deflating bool         // permessage-deflate negotiated with the client
	pingSent  atomic.Int64 // unix nanoseconds of the gate's last ping
	release   func()       // frees the client's slot of the concurrent-connection bound

	start          int64 // unix nanoseconds
	clientIP       netip.Addr
	path           string
	userKey, ipKey string
	protocol       string
	expiry         int64 // unix nanoseconds: the client's token's exp; zero without one
}

// peerConn is one side's connection with the lock that orders the frames
// written to it: forwarded frames and the gate's own close frames.
type peerConn struct {
	net.Conn
	mu        sync.Mutex    // held while a frame is written
	masked    bool          // frames to this peer are masked (it is the upstream)
	closeSent bool          // guarded by mu: a close frame went out
	closeCode ws.StatusCode // guarded by mu: the code it carried
	broken    bool          // guarded by mu: a frame was cut short
}

// acquire takes c.mu, giving up at deadline (zero: never). Only the gate's
// own close and ping frames wait with a deadline, so polling is cheap
// enough there and keeps the lock a plain mutex on the per-frame path.
func (c *peerConn) acquire(deadline time.Time) bool {
	if deadline.IsZero() {
		c.mu.Lock()
		return true
	}
	for !c.mu.TryLock() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

func (c *peerConn) release() { c.mu.Unlock() }

// States of a direction.
const (
	running int32 = iota // a goroutine owns the direction
	parked               // waiting for readiness in the poller; nobody owns it
)

// direction is the state of one relay direction. Its fields are ordered
// to keep it small: every proxied connection holds two.
type direction struct {
	pair     *pair
	state    atomic.Int32
	fd       int32  // of src, for the poller; -1 when it cannot be polled
	id       uint64 // poller registration, guarded by the poller's lock
	r        frames.Reader
	s        frames.Stream
	src, dst *peerConn
	client   bool  // reads the client
	timed    bool  // a message is open under MessageTimeout's deadline
	active   bool  // relayed a frame since it last waited idle
	ctlCount int32 // control frames in the window of ControlFrameRate
	granted  int32 // messages the limiter has granted ahead (limited)

	messages, bytes int64
	out             batch // frames for dst not written yet
	ctlStart        int64 // unix nanoseconds: window of ControlFrameRate
}

func newPair(p *Proxy, client, upstream net.Conn) *pair {
	pr := &pair{
		p:        p,
		client:   peerConn{Conn: client},
		upstream: peerConn{Conn: upstream, masked: true},
		start:    time.Now().UnixNano(),
	}
	pr.fromClient = direction{
		pair:   pr,
		fd:     int32(connFd(client)),
		s:      frames.Stream{From: frames.Client, MaxMessageBytes: p.cfg.MaxMessageBytes},
		src:    &pr.client,
		dst:    &pr.upstream,
		client: true,
	}
	pr.fromClient.r.Reset(client)
	pr.fromUpstream = direction{
		pair: pr,
		fd:   int32(connFd(upstream)),
		s:    frames.Stream{From: frames.Server, MaxMessageBytes: p.cfg.MaxMessageBytes},
		src:  &pr.upstream,
		dst:  &pr.client,
	}
	pr.fromUpstream.r.Reset(upstream)
	return pr
}

// run starts both directions. It returns as soon as both have parked or
// ended; the last direction to end releases the pair (finish).
func (pr *pair) run() {
	p := pr.p
	p.m.ConnectionsActive.Inc()
	pr.touch(nil)
	pr.live.Store(2)
	pr.pingSent.Store(time.Now().UnixNano())
	go pr.serve(&pr.fromUpstream, false)
	pr.serve(&pr.fromClient, false)
}

// finish releases a pair whose two directions have ended.
func (pr *pair) finish() {
	p := pr.p
	if pl := p.poller(); pl != nil {
		pl.forget(&pr.fromClient)
		pl.forget(&pr.fromUpstream)
	}
	pr.closeConns()
	if pr.release != nil {
		pr.release()
	}
	pr.fromClient.r.Release()
	pr.fromUpstream.r.Release()
	pr.fromClient.out.release()
	pr.fromUpstream.out.release()
	p.m.ConnectionsActive.Dec()
	p.conns.Add(-1)
	pr.report()
	p.untrack(pr)
}

var (
	errLimited = errors.New("rate limited")
	errDrained = errors.New("drained")
	errParked  = errors.New("parked")
)

// serve runs direction d until it parks (nothing left to read: the poller
// hands it to a new goroutine when bytes arrive) or ends.
//
// woke says the poller saw bytes arrive: the first frame is read before the
// direction may park again.
func (pr *pair) serve(d *direction, woke bool) {
	err := pr.relay(d, woke)
	if errors.Is(err, errParked) {
		return
	}
	pr.stop(d, err)
	if pr.live.Add(-1) == 0 {
		pr.finish()
	}
}

// stop handles the end of direction d's relay: after a close frame passed,
// the other side gets CloseTimeout to answer; after a fault, the pair ends.
func (pr *pair) stop(d *direction, err error) {
	switch {
	case err == nil:
		pr.closing.Store(true)
		_ = d.dst.SetReadDeadline(time.Now().Add(pr.p.cfg.CloseTimeout))
		pr.wake(pr.other(d))
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

func (pr *pair) other(d *direction) *direction {
	if d == &pr.fromClient {
		return &pr.fromUpstream
	}
	return &pr.fromClient
}

// relay is the loop of one direction: read a header, check it, decide on a
// new message, forward the frame. It returns nil once it has forwarded a
// close frame.
func (pr *pair) relay(d *direction, woke bool) error {
	for {
		// A frame read from a new read of the connection refreshes the
		// pair's clock; the frames that came with it in the same read do not
		// need to (a clock read per frame was 2% of the relay's CPU).
		fresh := d.r.Buffered() == 0
		if !woke {
			parked, err := pr.idleWait(d)
			if parked {
				return errParked
			}
			if err != nil {
				return err
			}
		}
		woke = false
		h, err := d.s.Next(&d.r)
		if err != nil {
			// Frames batched before the failure are delivered first.
			if ferr := pr.flush(d); ferr != nil {
				return ferr
			}
			return err
		}
		if fresh {
			pr.touch(d)
		}
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
			if d.client && pr.p.cfg.Limiter != nil && pr.limited(d, h) {
				return pr.drainFrame(d, h)
			}
			d.messages++
			pr.p.countMessage(d.client)
		}
		if !h.OpCode.IsControl() {
			d.bytes += h.Length
			pr.p.countBytes(d.client, h.Length)
		}
		whole := false // the frame's message has been relayed to its end
		if frames.StartsMessage(h) && (d.s.Compressed() || !d.client && pr.deflating) {
			if d.client {
				err = pr.inflate(d, h)
			} else {
				err = pr.deflate(d, h)
			}
			whole = true
		} else {
			err = pr.forward(d, h)
		}
		d.r.Release()
		if errors.Is(err, errCloseInMessage) {
			return nil
		}
		if err != nil {
			return err
		}
		d.active = true
		if d.timed && (whole || h.Fin && !h.OpCode.IsControl()) {
			d.timed = false
			if !pr.closing.Load() {
				_ = d.src.SetReadDeadline(time.Time{})
			}
		}
		if h.OpCode == ws.OpClose {
			return nil
		}
	}
}

// forward writes one frame under the destination's lock.
func (pr *pair) forward(d *direction, h ws.Header) error {
	if h.OpCode == ws.OpClose {
		// Before the frame leaves: the peer's answer can come back on the
		// other direction before this one would get to it afterwards.
		pr.setInitiator(d)
	}
	// A small frame whose payload is already here joins the batch while
	// more input is buffered: a burst of frames costs one write call.
	if h.OpCode != ws.OpClose && int64(d.r.Buffered()) >= h.Length && h.Length+ws.MaxHeaderSize <= int64(batchSize-d.out.n) {
		if _, err := d.s.Forward(&d.out, &d.r, h); err != nil {
			_ = pr.flush(d)
			return err
		}
		if d.r.Buffered() >= ws.MaxHeaderSize {
			// The next header is here: reading it cannot block.
			return nil
		}
		return pr.flush(d)
	}
	if err := pr.flush(d); err != nil {
		return err
	}
	d.dst.acquire(time.Time{})
	defer d.dst.release()
	if d.dst.closeSent || d.dst.broken {
		// The gate has closed that side meanwhile: the frame has nowhere
		// to go.
		return errDrained
	}
	pr.writeDeadline(d)
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

// maxDecide bounds how many buffered messages one limiter call decides.
const maxDecide = 64

// limited decides the client message whose first header, h, was just read
// and, when it is refused, ends the pair with the 429 frame and close 4008.
// Messages are decided ahead: when none is granted yet, one limiter call
// decides this message and every message whose header is already buffered
// behind it (they have all arrived; the call counts and refuses them as
// one call per message would at this moment), and the ones granted pass
// without a call, even if a block starts before they are relayed. A burst
// costs one Redis round trip instead of one per message. Units granted to
// messages that never get relayed, because the connection ends first,
// stay spent.
func (pr *pair) limited(d *direction, h ws.Header) bool {
	if d.granted > 0 {
		d.granted--
		return false
	}
	n := 1
	if buf := d.r.Peek(); h.Length < int64(len(buf)) {
		n += frames.CountMessages(buf[h.Length:], maxDecide-1)
	}
	dec := pr.p.decide(context.Background(), false, pr.userKey, pr.ipKey, n)
	if !pr.p.enforce(dec) {
		// Under --shadow a refusal lets this one message pass; the next
		// one is decided again.
		d.granted = int32(max(dec.Granted, 1) - 1)
		return false
	}
	// The messages allowed before this one go first.
	_ = pr.flush(&pr.fromClient)
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
	case errors.As(err, &we) && isTimeout(we.Err):
		// --write-timeout: the client stopped reading.
		return ending{initiator: metrics.InitiatorGate, upCode: ws.StatusGoingAway, upReason: "client too slow"}
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
	} else {
		// The client is gone (or too slow to take a close frame): nothing
		// will answer, so there is nothing to wait for.
		pr.client.hangUp()
	}
	if e.upCode != 0 {
		pr.upstream.sendClose(nil, e.upCode, e.upReason, deadline)
	} else {
		pr.upstream.hangUp()
	}
	_ = pr.client.SetReadDeadline(deadline)
	_ = pr.upstream.SetReadDeadline(deadline)
	pr.wake(&pr.fromClient)
	pr.wake(&pr.fromUpstream)
}

// hangUp ends c at once: the peer sees the connection end (FIN), writes
// fail, and reads return what was already received, then EOF (drain reads
// at most maxDrain of it). A socket is shut down rather than closed, so that its
// descriptor number stays taken until finish has taken it out of the
// poller: closed earlier, the number could be handed to a new connection
// whose parked socket finish would then unregister instead.
func (c *peerConn) hangUp() {
	if s, ok := c.Conn.(interface {
		CloseRead() error
		CloseWrite() error
	}); ok {
		_ = s.CloseWrite()
		_ = s.CloseRead()
		return
	}
	// Not a socket the poller can hold (connFd needs syscall.Conn, which
	// these wrappers do not have).
	_ = c.Conn.Close()
}

func (c *peerConn) sendClose(text []byte, code ws.StatusCode, reason string, deadline time.Time) {
	if !c.acquire(deadline) {
		return
	}
	defer c.release()
	if c.broken {
		// A frame was cut short: no close frame can follow it, and the
		// peer's answer would never come. End the connection now.
		c.hangUp()
		return
	}
	if c.closeSent {
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

// drainFrame drains d after the header h was read while the pair ends:
// nothing more is relayed.
func (pr *pair) drainFrame(d *direction, h ws.Header) error {
	if h.OpCode != ws.OpClose {
		pr.drain(d)
	}
	return errDrained
}

// drain reads and discards frames from d's source until its close frame,
// an error, maxDrain bytes or the deadline end sets. Reading the peer's
// last frames before closing keeps the kernel from answering them with a
// reset that would destroy the close frame the gate just sent.
func (pr *pair) drain(d *direction) {
	// First the rest of the frame whose header was the last one read
	// (refused, or found in violation): its payload is not a header.
	total := d.s.Unread()
	if total < 0 || total > maxDrain {
		return
	}
	if _, err := io.CopyN(io.Discard, &d.r, total); err != nil {
		return
	}
	var hdr [ws.MaxHeaderSize]byte
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
		now := time.Now().UnixNano()
		if time.Duration(now-d.ctlStart) >= rule.Window {
			d.ctlStart, d.ctlCount = now, 0
		}
		d.ctlCount++
		if int(d.ctlCount) > rule.Limit {
			_ = pr.flush(d)
			pr.end(ending{initiator: metrics.InitiatorGate,
				clientCode: ws.StatusPolicyViolation, clientReason: "too many control frames",
				upCode: ws.StatusGoingAway, upReason: "client error"})
			return false, pr.drainFrame(d, h)
		}
	}
	if h.OpCode != ws.OpPong || h.Length != int64(len(gatePing)) || pr.p.cfg.PingInterval <= 0 {
		return false, nil
	}
	if err := pr.flush(d); err != nil {
		return false, err
	}
	var buf [ws.MaxControlFramePayloadSize]byte
	p, err := d.s.ReadControl(&d.r, h, buf[:])
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

// sendPing writes the gate's keepalive ping to the client.
func (pr *pair) sendPing() {
	deadline := time.Now().Add(pr.p.cfg.PingInterval)
	if !pr.client.acquire(deadline) {
		return
	}
	defer pr.client.release()
	if pr.client.closeSent || pr.client.broken || pr.ended.Load() {
		return
	}
	_ = pr.client.SetWriteDeadline(deadline)
	if err := frames.WriteFrame(pr.client.Conn, ws.OpPing, gatePing, false); err != nil {
		pr.client.broken = true
		return
	}
	if pr.p.cfg.WriteTimeout <= 0 {
		_ = pr.client.SetWriteDeadline(time.Time{})
	}
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
		"client_ip", pr.clientIP.String(),
		"identity", pr.userKey,
		"path", pr.path,
		"protocol", pr.protocol,
		"duration_ms", time.Since(time.Unix(0, pr.start)).Milliseconds(),
		"messages_in", pr.fromClient.messages,
		"messages_out", pr.fromUpstream.messages,
		"bytes_in", pr.fromClient.bytes,
		"bytes_out", pr.fromUpstream.bytes,
		"close_code", code,
		"initiator", initiator,
	)
}
