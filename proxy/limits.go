package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/metrics"
)

// flagHandshake decides a handshake under the flag rules and records how
// long the limiter took, by the store that decided (store="fallback" for
// every fallback: its time is that of the failed or skipped Redis call).
func (p *Proxy) flagHandshake(ctx context.Context, user, ip string) limit.Decision {
	start := time.Now()
	d := p.cfg.Limiter.Handshake(ctx, user, ip)
	p.observe(d, start)
	return d
}

// flagMessages is flagHandshake for n messages of c that arrived together.
func (p *Proxy) flagMessages(ctx context.Context, c *limit.Client, n int) limit.Decision {
	start := time.Now()
	d := p.cfg.Limiter.MessagesOf(ctx, c, n)
	p.observe(d, start)
	return d
}

// flagMessagesNow is flagMessages when the decision asks Redis nothing (a
// lease mode's slices hold the units): now is false, and nothing is
// decided, otherwise.
func (p *Proxy) flagMessagesNow(c *limit.Client, n int) (d limit.Decision, now bool) {
	if p.nowLimits == nil {
		return d, false
	}
	start := time.Now()
	if d, now = p.nowLimits.MessagesNow(c, n); now {
		p.observe(d, start)
	}
	return d, now
}

// observe records how long a limiter call that began at start took, by the
// store that decided.
func (p *Proxy) observe(d limit.Decision, start time.Time) {
	took := time.Since(start).Seconds()
	switch {
	case d.Fallback:
		// The time of a failed or skipped Redis call, whatever decided.
		p.m.LimiterDuration.WithLabelValues("fallback").Observe(took)
	case d.Store == "redis":
		p.durRedis.Observe(took)
	default:
		p.durMemory.Observe(took)
	}
}

// decisionCounters are limiter_decisions_total's series of one cause and
// tier.
type decisionCounters struct{ allowed, limited, shadow prometheus.Counter }

// newDecisionCounters makes the series of tier, by cause: rules, fallback.
func (p *Proxy) newDecisionCounters(tier string) (cs [2]decisionCounters) {
	for i, cause := range []string{metrics.CauseRules, metrics.CauseFallback} {
		cs[i] = decisionCounters{
			allowed: p.m.LimiterDecisions.WithLabelValues(metrics.DecisionAllowed, cause, tier),
			limited: p.m.LimiterDecisions.WithLabelValues(metrics.DecisionLimited, cause, tier),
			shadow:  p.m.LimiterDecisions.WithLabelValues(metrics.DecisionShadow, cause, tier),
		}
	}
	return cs
}

// decisionsOf returns the series of a decision of cause (d.Fallback) for a
// client of tier. Tiers are few, named by the rules file: their series are
// made at first use and kept.
func (p *Proxy) decisionsOf(d limit.Decision, tier string) *decisionCounters {
	cs := &p.decisions
	if tier != "" {
		v, ok := p.tierDecisions.Load(tier)
		if !ok {
			made := p.newDecisionCounters(tier)
			v, _ = p.tierDecisions.LoadOrStore(tier, &made)
		}
		cs = v.(*[2]decisionCounters)
	}
	if d.Fallback {
		return &cs[1]
	}
	return &cs[0]
}

// enforce records a limiter decision in the metrics, allowed or not, under
// the cause that took it (the rules, or the failure mode when Redis failed;
// every fallback also counts in limiter_fallback_total), and reports
// whether the gate refuses the event: never under Config.Shadow, but for
// an operator's hold (limit.HoldRule), which is meant whatever the rules. tier is
// the client's tier under a rules file ("" without).
func (p *Proxy) enforce(d limit.Decision, tier string) bool {
	return p.enforceRule(d, ruleName(d, false), tier)
}

// enforceOpenConn is enforce for a decision of the concurrent-connection
// bound (--ip-max-conns).
func (p *Proxy) enforceOpenConn(d limit.Decision, tier string) bool {
	return p.enforceRule(d, ruleName(d, true), tier)
}

// openConn registers under --ip-max-conns a handshake of the client whose
// IP key is ip, which the rates let through with d, and counts the
// handshake's one decision in the metrics: the registration's when it
// refuses, else d's (already counted when it refused under Shadow). It
// returns the registration's decision, whether the gate refuses the
// handshake, and the registration's release.
func (p *Proxy) openConn(ctx context.Context, ip string, d limit.Decision, tier string) (limit.Decision, bool, func()) {
	od, release := p.cfg.Limiter.OpenConn(ctx, ip)
	if od.Allowed {
		if od.Fallback {
			p.m.LimiterFallback.Inc()
		}
		if d.Allowed {
			p.enforce(d, tier)
		}
		return od, false, release
	}
	if !d.Allowed {
		// The rates refused under Shadow: counted already.
		return od, p.refuses(od), release
	}
	if d.Fallback {
		p.m.LimiterFallback.Inc() // the rates' decision fell back too
	}
	od.Granted = d.Granted
	return od, p.enforceOpenConn(od, tier), release
}

// refuses reports whether the gate refuses an event decided d, as
// enforce does, without counting it.
func (p *Proxy) refuses(d limit.Decision) bool {
	return !d.Allowed && (!p.cfg.Shadow || d.Rule == limit.HoldRule)
}

// enforceRule is enforce with the refusing rule's name for the metrics.
func (p *Proxy) enforceRule(d limit.Decision, rule, tier string) bool {
	c := p.decisionsOf(d, tier)
	if d.Fallback {
		p.m.LimiterFallback.Inc()
	}
	if d.Allowed {
		c.allowed.Add(float64(d.Granted))
		return false
	}
	if p.cfg.Shadow && d.Rule != limit.HoldRule {
		// An operator's block is meant: --shadow spares the rules only.
		c.shadow.Inc()
		return false
	}
	c.limited.Inc()
	p.m.RateLimited.WithLabelValues(d.Scope, d.Kind, rule, tier).Inc()
	return true
}

// limitBody is the JSON a refused client gets, as a text frame or an HTTP
// body: {"code":429,"error":"Rate limit exceeded","scope":"user","retryAfterMs":N}.
func limitBody(d limit.Decision) []byte {
	b := make([]byte, 0, 96)
	b = append(b, `{"code":429,"error":"Rate limit exceeded","scope":"`...)
	b = append(b, d.Scope...)
	if d.Rule != "" {
		// A rules file's rule names are [a-z0-9_.-]: nothing to escape.
		b = append(b, `","rule":"`...)
		b = append(b, d.Rule...)
	}
	b = append(b, `","retryAfterMs":`...)
	b = strconv.AppendInt(b, d.RetryAfter.Milliseconds(), 10)
	return append(b, '}')
}

// refuseUpgrade answers a handshake refused by a limit the way browsers
// can read: 101 with the first subprotocol the client offered, then the
// refusal in the client's protocol, then close 4008. The upstream is never
// dialed. A plain WebSocket client gets the 429 JSON as a text frame; an
// engine.io client opening a session gets a session of the gate's own
// that refuses each socket.io CONNECT (refuseSocketIO); an engine.io
// client upgrading a polling session only gets the close (during the
// upgrade's probe any other packet would be a probe error), and stays on
// polling, where its next message is refused.
func (p *Proxy) refuseUpgrade(w http.ResponseWriter, r *http.Request, offered []string, d limit.Decision, eio eioRequest, isEIO bool) {
	up := ws.HTTPUpgrader{Timeout: p.cfg.HandshakeTimeout}
	if proto := answerProtocol(offered); proto != "" {
		up.Protocol = ws.SelectEqual(proto)
	}
	conn, _, _, err := up.Upgrade(r, w)
	if err != nil {
		if conn != nil {
			_ = conn.Close()
		}
		return
	}
	defer conn.Close()
	deadline := time.Now().Add(p.cfg.CloseTimeout)
	_ = conn.SetDeadline(deadline)
	switch {
	case isEIO && eio.sid == "":
		if !p.refuseSocketIO(conn, d) {
			return
		}
	case isEIO:
		if frames.WriteClose(conn, frames.StatusRateLimited, "Rate limit", false) != nil {
			return
		}
	default:
		if frames.WriteFrame(conn, ws.OpText, limitBody(d), false) != nil ||
			frames.WriteClose(conn, frames.StatusRateLimited, "Rate limit", false) != nil {
			return
		}
	}
	// Wait for the client's close frame (or its leaving) so that closing
	// the socket does not reset what was just sent.
	drainUntilClose(conn)
	p.m.Closes.WithLabelValues(metrics.InitiatorGate, metrics.CodeLabel(int(frames.StatusRateLimited))).Inc()
}

// refuseSocketIO plays an engine.io session of the gate's own on conn: the
// open packet, then a CONNECT_ERROR for each socket.io CONNECT the client
// sends, until the client closes (socket.io-client does once every
// namespace it asked for is refused) or the deadline set on conn passes.
// Then it sends close 4008. It reports whether conn can still take the
// client's close frame.
func (p *Proxy) refuseSocketIO(conn net.Conn, d limit.Decision) bool {
	if frames.WriteFrame(conn, ws.OpText, sioOpen(newConnID()), false) != nil {
		return false
	}
	r := frames.NewReader(conn)
	defer r.ResetSocket(nil, -1)
	var hdr [ws.MaxHeaderSize]byte
	var head [maxNamespace + 8]byte
	for total := int64(0); total < maxDrain; {
		h, err := ws.ReadHeaderBuffer(r, hdr[:])
		if err != nil || h.Length > maxDrain-total {
			break
		}
		total += h.Length
		n := min(h.Length, int64(len(head)))
		if _, err := io.ReadFull(r, head[:n]); err != nil {
			break
		}
		if _, err := io.CopyN(io.Discard, r, h.Length-n); err != nil {
			break
		}
		if h.OpCode == ws.OpClose {
			// The client ends the session: answer its close with ours.
			_ = frames.WriteClose(conn, frames.StatusRateLimited, "Rate limit", false)
			return false
		}
		pkt := head[:n]
		if h.Masked {
			ws.Cipher(pkt, h.Mask, 0)
		}
		if h.OpCode == ws.OpText && len(pkt) >= 2 && pkt[0] == eioMessage && pkt[1] == sioTypeConnect {
			if frames.WriteFrame(conn, ws.OpText, sioConnectError(namespace(pkt), d), false) != nil {
				return false
			}
		}
	}
	// The deadline passed (or the client broke the protocol): close, with
	// a moment for the client's answer.
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	return frames.WriteClose(conn, frames.StatusRateLimited, "Rate limit", false) == nil
}

// drainUntilClose reads and drops frames from c until its close frame, an
// error (the deadline included) or maxDrain bytes.
func drainUntilClose(c net.Conn) {
	r := frames.NewReader(c)
	defer r.ResetSocket(nil, -1)
	var hdr [ws.MaxHeaderSize]byte
	for total := int64(0); total < maxDrain; {
		h, err := ws.ReadHeaderBuffer(r, hdr[:])
		if err != nil || h.OpCode == ws.OpClose || h.Length > maxDrain-total {
			return
		}
		if _, err := io.CopyN(io.Discard, r, h.Length); err != nil {
			return
		}
		total += h.Length
	}
}

// answerProtocol picks what a refused handshake answers: the first
// subprotocol the client offered, so that browsers accept the 101 and read
// the refusal, but never a "bearer.<jwt>" entry, which would echo the token.
func answerProtocol(offered []string) string {
	for _, p := range offered {
		if !strings.HasPrefix(p, "bearer.") {
			return p
		}
	}
	return ""
}

// limitRequest applies the message rules to a pass-through request, one
// message, and answers 429 when it is refused.
func (p *Proxy) limitRequest(w http.ResponseWriter, r *http.Request, cl client) bool {
	cr := p.rulesFor(r, cl, "")
	if cr != nil && cr.adm.Denied {
		p.denied(w, r, cl)
		return true
	}
	if p.cfg.Limiter == nil {
		return false
	}
	d := p.decideRequest(r.Context(), cl, cr, 1)
	refused := p.enforce(d, cr.tierName())
	if !d.Allowed {
		p.logRefusal(d, p.refusalOf(r, cl, "request", "http", ""))
	}
	if refused {
		p.writeLimited(w, r, d)
	}
	return refused
}
