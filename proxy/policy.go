package proxy

import (
	"context"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/frames"
)

// The gate's own rules on a client's frames, each a named step of the
// client direction: the message limits, the message timeout, the
// control-frame rate and the answers to the gate's keepalive pings.

// maxDecide bounds how many buffered messages one limiter call decides.
const maxDecide = 64

// limited decides the client message whose first header, h, was just read
// and, when it is refused, ends the pair with the 429 frame and close 4008,
// after the upstream has answered. Messages are decided ahead: when none
// is granted yet, one limiter call decides this message and every message
// whose header is already buffered behind it (they have all arrived; the
// call counts and refuses them as one call per message would at this
// moment), and the ones granted pass without a call, even if a block starts
// before they are relayed. Units granted to messages that never get
// relayed, because the connection ends first, stay spent.
//
// On an engine.io connection the refusal is the socket.io event of
// Config.SocketIOEvent in the refused message's namespace, and engine.io's
// control packets (pings, pongs, noops) are not messages: they pass
// without a decision, within the connection's allowance (freeControl).
func (d *direction) limited(h ws.Header) bool {
	pr := d.pr
	sio := pr.info != nil && pr.info.sio
	if sio && pr.info.freeControl(h, d.r.Peek()) {
		return false
	}
	if d.granted > 0 {
		d.granted--
		return false
	}
	n := 1
	if buf := d.r.Peek(); h.Length < int64(len(buf)) {
		if sio {
			n += countSocketIOMessages(buf[h.Length:], maxDecide-1)
		} else {
			n += frames.CountMessages(buf[h.Length:], maxDecide-1)
		}
	}
	dec := pr.p.decide(context.Background(), false, pr.userKey, pr.ipKey, n)
	refused := pr.p.enforce(dec)
	if !dec.Allowed {
		pr.refused(dec)
	}
	if !refused {
		// Under --shadow a refusal lets this one message pass; the next
		// one is decided again.
		d.granted = int32(max(dec.Granted, 1) - 1)
		return false
	}
	text := limitBody(dec)
	if sio {
		text = pr.p.sioEvent(frameNamespace(h, d.r.Peek()), dec)
	}
	pr.end(&ending{
		initiator:     byGate,
		afterUpstream: true,
		clientText:    text,
		clientCode:    frames.StatusRateLimited,
		clientReason:  "Rate limit",
		upCode:        frames.StatusRateLimited,
		upReason:      "Rate limit",
	})
	return true
}

// timeMessage starts MessageTimeout's clock for a client message that
// starts with h and has not arrived whole.
func (d *direction) timeMessage(h ws.Header) {
	t := d.pr.p.cfg.MessageTimeout
	if t <= 0 || h.Fin && int64(d.r.Buffered()) >= h.Length {
		return
	}
	d.msgDeadline.Store(time.Now().Add(t).UnixNano())
}

// messageDone stops the message clock once the message has been relayed.
func (d *direction) messageDone() {
	if d.msgDeadline.Load() != 0 {
		d.msgDeadline.Store(0)
	}
}

// gatePing is the payload of the gate's own pings; a client's pong that
// carries it answers the gate and is not forwarded.
var gatePing = []byte("wsgate-keepalive")

// ping writes the gate's keepalive ping to the client.
func (d *direction) ping() {
	if d.dst().closeSent || d.dst().broken || d.flush() != nil {
		return
	}
	if err := frames.WriteFrame((*sink)(d), ws.OpPing, gatePing, false); err != nil {
		d.broke()
	}
}

// clientControl applies the control-frame rate to a client's control frame
// and consumes a pong that answers the gate's own ping. It reports whether
// the frame was consumed (or refused).
func (d *direction) clientControl(h ws.Header) (bool, error) {
	cfg := &d.pr.p.cfg
	if rule := cfg.ControlFrameRate; rule.Enabled() {
		now := time.Now().UnixNano()
		if time.Duration(now-d.ctlStart) >= rule.Window {
			d.ctlStart, d.ctlCount = now, 0
		}
		d.ctlCount++
		if int(d.ctlCount) > rule.Limit {
			d.pr.end(&controlRateEnding)
			return true, d.skip()
		}
	}
	if h.OpCode != ws.OpPong || h.Length != int64(len(gatePing)) || cfg.PingInterval <= 0 {
		return false, nil
	}
	if err := d.flush(); err != nil {
		return false, err
	}
	var buf [ws.MaxControlFramePayloadSize]byte
	p, err := d.s.ReadControl(&d.r, h, buf[:])
	if err != nil {
		return true, err
	}
	if string(p) == string(gatePing) {
		d.consumed.Add(int64(ws.HeaderSize(h)) + h.Length)
		return true, nil
	}
	// A pong to an upstream ping that happens to have the same length.
	if err := frames.WriteFrame((*sink)(d), ws.OpPong, p, true); err != nil {
		d.broke()
		return true, &frames.WriteError{Err: err}
	}
	return true, nil
}
