package proxy

import (
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/policy"
)

// The gate's own rules on a client's frames, each a named step of the
// client direction: the message limits, the message timeout, the
// control-frame rate and the answers to the gate's keepalive pings.

// maxDecide bounds how many buffered messages one limiter call decides.
const maxDecide = 64

// verdict is what the limits decided for a client message.
type verdict uint8

const (
	relayed verdict = iota // the message goes upstream
	dropped                // the message is skipped; the connection stays (a rule's drop action)
	refused                // the pair ends (the limit's close, or a deny)
)

// limited decides the client message whose first header, h, was just read.
// When it is refused, it ends the pair with the 429 frame and close 4008,
// after the upstream has answered; when a rule drops it, the 429 frame is
// sent as a notice and the connection stays. Messages are decided ahead: when none
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
func (d *direction) limited(h ws.Header) verdict {
	pr := d.pr
	sio := pr.info.sio
	if sio && pr.info.freeControl(h, d.r.Peek()) {
		return relayed
	}
	var cr *connRules
	if pr.info.rules != nil {
		cr = pr.info.rules
		if cr.current(pr.p.cfg.Rules); cr.adm.Denied {
			pr.end(&deniedEnding)
			return refused
		}
	}
	if d.granted > 0 {
		d.granted--
		return relayed
	}
	n := 1
	perMessage := cr != nil && cr.perMessage()
	if buf := d.r.Peek(); h.Length < int64(len(buf)) && !perMessage {
		if sio {
			n += countSocketIOMessages(buf[h.Length:], maxDecide-1)
		} else {
			n += frames.CountMessages(buf[h.Length:], maxDecide-1)
		}
	}
	var dec limit.Decision
	if cr == nil {
		if pr.info.limits == nil {
			// Made at the first message: a connection that never sends
			// one does not carry it.
			pr.info.limits = pr.p.cfg.Limiter.Client(pr.info.userKey, pr.info.ipKey)
		}
		var now bool
		if dec, now = pr.p.flagMessagesNow(pr.info.limits, n); !now {
			d.yield() // the decision may wait for Redis
			dec = pr.p.flagMessages(pr.p.relayCtx, pr.info.limits, n)
		}
	} else {
		a := ask{n: n, class: -1, bytes: h.Length, from: d}
		if perMessage {
			a.class, a.also = d.classOf(h, cr.pol)
		}
		cr.class, cr.also = a.class, a.also
		if sio && (cr.countsBytes || cr.scan != nil) {
			cr.nsp = frameNamespace(h, d.r.Peek())
		}
		dec = pr.p.decideRules(pr.p.relayCtx, cr, a)
	}
	enforced := pr.p.enforce(dec, cr.tierName())
	if !dec.Allowed {
		pr.refused(dec)
	}
	if !enforced {
		// Under --shadow a refusal lets this one message pass; the next
		// one is decided again.
		d.granted = int32(max(dec.Granted, 1) - 1)
		return relayed
	}
	text := limitBody(dec)
	if sio {
		text = pr.p.sioEvent(frameNamespace(h, d.r.Peek()), dec)
	}
	// A compressed message can be dropped: the gate negotiates
	// client_no_context_takeover, so no later message is inflated with
	// its bytes. A socket.io packet with binary attachments cannot: the
	// app would read the packets around it as garbage.
	if r := cr.ruleOf(dec); r != nil && r.Action == policy.Drop && !(sio && withAttachments(h, d.r.Peek())) && !cr.dropped(r, time.Now()) {
		pr.notify(text)
		return dropped
	}
	pr.end(limitEnding(text))
	return refused
}

// limitedMore charges the later frame h of a client message to the byte
// rules that cover the message. Half a message cannot be taken back: over
// a budget, the pair ends as under a close action, whatever the rule's.
func (d *direction) limitedMore(h ws.Header) bool {
	cr := d.pr.info.rules
	if h.Length == 0 || cr == nil || !cr.countsBytes {
		return false
	}
	return d.limitedPart(ask{more: true, n: 1, class: cr.class, also: cr.also, bytes: h.Length})
}

// reclassed charges the client message being relayed to the rules of the
// class the app sees in it, once its scan has settled (or the message
// ends), when that is another class than its first bytes showed (a member
// further on, or named again), and reports whether that refused it. It is
// asked before the bytes that settled it go upstream: an app that acts on a
// JSON object at its closing brace (Go's json.Decoder on a streamed
// message) has not seen it, and one that waits for the message's last
// frame has not either. A refusal ends the pair as a later frame's does.
func (d *direction) reclassed() bool {
	cr := d.pr.info.rules
	class, also, ok := cr.scan.Class()
	cr.endScan()
	if !ok {
		return false
	}
	shown := cr.class
	// Its later frames count toward the byte rules of what it is.
	cr.class, cr.also = class, also
	if !cr.chargesMore(class, also, shown) {
		return false
	}
	return d.limitedPart(ask{n: 1, class: class, also: also, bytes: d.s.MessageSize(), reclassed: true, shown: shown})
}

// limitedPart decides a, asked when part of a client message has gone
// upstream. Half a message cannot be taken back: a refusal ends the pair
// as under a close action, whatever the rule's.
func (d *direction) limitedPart(a ask) bool {
	pr := d.pr
	cr := pr.info.rules
	a.from = d
	dec := pr.p.decideRules(pr.p.relayCtx, cr, a)
	if !dec.Allowed {
		pr.refused(dec)
	}
	if !pr.p.enforce(dec, cr.tier) {
		return false
	}
	text := limitBody(dec)
	if pr.info.sio {
		text = pr.p.sioEvent(cr.nsp, dec)
	}
	pr.end(limitEnding(text))
	return true
}

// limitEnding is the ending of a pair by a limit's close: the 429 text,
// then 4008 to both sides, after the upstream has answered.
func limitEnding(text []byte) *ending {
	return &ending{
		initiator:     byGate,
		afterUpstream: true,
		clientText:    text,
		clientCode:    frames.StatusRateLimited,
		clientReason:  "Rate limit",
		upCode:        frames.StatusRateLimited,
		upReason:      "Rate limit",
	}
}

// notify publishes text for the client, sent by the direction to the
// client at its next message boundary; a notice not sent yet is replaced.
func (pr *pair) notify(text []byte) {
	pr.info.notice.Store(&text)
	pr.p.wake(&pr.fromUpstream)
}

// sendNotice writes the notice published for the client, if any, between
// two messages to the client: none is being read from the upstream, nor
// open in the gate's compression (as writeClose's text).
func (d *direction) sendNotice() {
	info := d.pr.info
	if info.notice.Load() == nil || d.s.InMessage() || d.inDeflate || d.attachments > 0 {
		return
	}
	text := info.notice.Swap(nil)
	if text == nil || d.dst().closeSent || d.dst().broken || d.flush() != nil {
		return
	}
	if err := frames.WriteFrame((*sink)(d), ws.OpText, *text, false); err != nil {
		d.broke()
	}
}

// timeMessage starts MessageTimeout's clock for a client message that
// starts with h and has not arrived whole.
func (d *direction) timeMessage(h ws.Header) {
	t := d.pr.p.cfg.MessageTimeout
	if t <= 0 || h.Fin && int64(d.r.Buffered()) >= h.Length || d.msgDeadline.Load() != 0 {
		// Not timed, whole already, or timed since classification
		// waited for its first bytes.
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

// yield hands what is left of the lead's batch to other workers before a
// decision that may wait for Redis: the connections behind d in the batch
// would otherwise wait for d's round trip, one after another, where spread
// over workers their decisions go to Redis together (netpoll.Poller.Yield).
func (d *direction) yield() {
	if p := d.pr.p; p.remoteLimits && p.pl != nil {
		p.pl.Yield(&d.desc)
	}
}
