package proxy

import (
	"context"
	"net/http"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/metrics"
	"github.com/holo/wsgate/policy"
)

// The rules file (Config.Rules): a connection is admitted under the policy
// in force at its handshake (deny, allow, tier, the rules that apply and
// their keys); each message is classified from its first bytes (and
// followed further when those cannot tell) and charged to the message
// rules that cover its class. When the policy in force
// changes, an open connection is admitted again at its next message.

// classifyBytes bounds the first bytes of a message that classification
// reads, unmasked on the stack: its first frame's, waited for when they
// did not come with the header.
const classifyBytes = 512

// connRules is a connection's (or a request's) place in the policy. Its
// client is set at the handshake and never changes: RulesChanged reads it
// from another goroutine. Everything else (the policy and admission in
// force, the tier, the scratch, the drop counts, the log throttle) belongs
// to the direction from the client, the only one that decides the
// connection's messages.
type connRules struct {
	pol    *policy.Policy
	client policy.Client
	adm    policy.Admission
	tier   string

	charges []limit.Charge // scratch of one decision
	// keys keeps, for a WebSocket pair's connection (keepKeys), the Redis
	// keys of each rule in adm.Messages between its messages; made at its
	// first message, dropped when a reload admits the connection again.
	keys     []limit.ChargeKeys
	keepKeys bool
	// countsBytes: a message rule that applies counts bytes.
	countsBytes bool
	// class is the class of the client message being read (its later
	// frames are charged to the byte rules that cover it), and nsp its
	// socket.io namespace, kept under byte rules or a scan only: a refusal
	// after the first frame goes to the namespace the message was sent in.
	class int
	also  uint64 // the classes it may also be (ask.also)
	nsp   string
	// scan follows the client message being read when its first bytes
	// could not settle its class (nil otherwise, and once the scan has
	// settled it): forwardScanned.
	scan *policy.ClassScan
	// quietUntil is when the next shadow refusal may be logged (unix
	// nanoseconds).
	quietUntil int64
	// drops counts, per rule that drops, the drops in its first window,
	// for close-after.
	drops dropCounts
}

// dropCounts are a connection's drops by rule, each in the rule's first
// window, for close-after.
type dropCounts map[string]*dropCount

type dropCount struct {
	n     int
	until time.Time
}

// add records a drop by rule r, which has a close-after, of a client of
// tier, and reports whether it is the one that closes the connection, and
// when r's count ends: the first window of the limits that applied.
func (dc dropCounts) add(r *policy.Rule, tier string, now time.Time) (closes bool, until time.Time) {
	c := dc[r.Name]
	if c == nil || !now.Before(c.until) {
		c = &dropCount{until: now.Add(r.LimitsFor(tier)[0].Per)}
		dc[r.Name] = c
	}
	c.n++
	return c.n >= r.CloseAfter, c.until
}

// rulesFor admits a request under the policy in force; nil without a
// rules file.
func (p *Proxy) rulesFor(r *http.Request, cl client, connID string) *connRules {
	if p.cfg.Rules == nil {
		return nil
	}
	cr := &connRules{client: policy.Client{
		Path: r.URL.Path, IP: cl.ip, IPKey: cl.ipKey, User: cl.userKey, Subject: cl.identity.Subject,
		Claims: cl.identity.Claims, Conn: connID,
	}}
	pol := p.cfg.Rules.Load()
	cr.client.Header = neededHeaders(pol, r.Header)
	cr.admit(pol)
	return cr
}

// tierName is the client's tier, "" without a rules file or a tier.
func (cr *connRules) tierName() string {
	if cr == nil {
		return ""
	}
	return cr.tier
}

// decideHandshake decides a handshake (or an engine.io session open) under
// the rules file when there is one, else under the flag rules.
func (p *Proxy) decideHandshake(ctx context.Context, cl client, cr *connRules) limit.Decision {
	if cr == nil {
		return p.flagHandshake(ctx, cl.userKey, cl.ipKey)
	}
	return p.decideRules(ctx, cr, ask{handshake: true, n: 1, class: -1})
}

// decideRequest decides n messages of a plain HTTP request or a polling
// POST: under the rules file, each message as one of no class, with no
// byte count.
func (p *Proxy) decideRequest(ctx context.Context, cl client, cr *connRules, n int) limit.Decision {
	if cr == nil {
		return p.flagMessages(ctx, p.cfg.Limiter.Client(cl.userKey, cl.ipKey), n)
	}
	return p.decideRules(ctx, cr, ask{n: n, class: -1})
}

// denied answers a client on the deny list.
func (p *Proxy) denied(w http.ResponseWriter, r *http.Request, cl client) {
	p.allowCORS(w, r)
	p.refuse(w, http.StatusForbidden, "forbidden", metrics.ResultForbidden)
	p.log.Info("denied", "client_ip", cl.ip.String(), "identity", cl.userKey, "path", r.URL.Path)
}

// neededHeaders keeps the request headers the policy's rules key by: an
// open connection holds them, not the whole request. A rule keyed by a
// header that a reload adds therefore applies to the connections opened
// after the reload; the open ones have no value for its key.
func neededHeaders(pol *policy.Policy, h http.Header) http.Header {
	var out http.Header
	for i := range pol.Rules {
		if k := pol.Rules[i].Key; k.Kind == policy.KeyHeader {
			if v := h.Get(k.Name); v != "" {
				if out == nil {
					out = http.Header{}
				}
				out.Set(k.Name, v)
			}
		}
	}
	return out
}

// admit applies pol to the connection.
func (cr *connRules) admit(pol *policy.Policy) {
	cr.pol = pol
	cr.adm = pol.Admit(&cr.client)
	cr.keys = nil
	cr.tier = ""
	if cr.adm.Tier != nil {
		cr.tier = cr.adm.Tier.Name
	}
	cr.countsBytes = false
	for i := range cr.adm.Messages {
		if cr.adm.Messages[i].Rule.Count == policy.CountBytes {
			cr.countsBytes = true
		}
	}
}

// current admits the connection again when the policy in force changed.
func (cr *connRules) current(live *policy.Live) {
	if pol := live.Load(); pol != cr.pol {
		cr.admit(pol)
	}
}

// perMessage reports whether each message must be decided on its own:
// the policy has classes or counts bytes, so messages differ in what they
// cost.
func (cr *connRules) perMessage() bool {
	return len(cr.pol.Classes) > 0 || cr.countsBytes
}

// ask is one decision under the rules file: a handshake, or n messages of
// class (an index into the policy's classes, -1 for none) whose first has
// bytes of payload, or (more) a later frame of a message, with bytes of
// payload, which only byte rules count.
type ask struct {
	handshake bool
	more      bool
	n         int
	class     int
	// also: the classes some parser may see the message as besides class
	// (a bit per index; policy.ClassScan.Class), whose rules count it too.
	also  uint64
	bytes int64
	// reclassed: a message charged as of class shown at its first bytes
	// whose bytes turned out to be of class (and also); only the rules
	// that cover those and not shown are charged.
	reclassed bool
	shown     int
	// from is the direction that asks for a relayed message, nil
	// otherwise: before a decision that may wait for Redis it yields its
	// worker's batch (direction.yield).
	from *direction
}

// decideRules decides a under cr's admission: the enforced rules in one
// limiter call, then the shadow rules in another, whose refusals are only
// counted and logged. An exempt client is allowed without a call.
func (p *Proxy) decideRules(ctx context.Context, cr *connRules, a ask) limit.Decision {
	kind := limit.KindMessage
	if a.handshake {
		kind = limit.KindConnection
	}
	if p.cfg.Limiter.Holding() {
		// An operator's hold of the client's user or IP refuses whatever
		// rules apply, an exempt client's too. (Asked first: the IP's
		// string is made only while a hold is in force.)
		if d, held := p.cfg.Limiter.Held(kind, cr.client.User, cr.client.IP.String()); held {
			return d
		}
	}
	if cr.adm.Exempt() {
		return limit.Decision{Allowed: true, Kind: kind, Granted: a.n}
	}
	d := p.charge(ctx, cr, a, kind, false)
	// The shadow rules are charged what the enforced ones granted, so that
	// they count what reaches the app. A refused message is charged to no
	// rule, shadow rules included: they see the traffic the enforced rules
	// let through, as they would once enforced in their place.
	if d.Allowed && cr.hasShadow(a) {
		sa := a
		sa.n = max(d.Granted, 1)
		if s := p.charge(ctx, cr, sa, kind, true); !s.Allowed {
			p.shadowRefused(cr, s)
		}
	}
	return d
}

// charge makes one limiter call for the enforced (or the shadow) rules
// that apply to a.
func (p *Proxy) charge(ctx context.Context, cr *connRules, a ask, kind string, shadow bool) limit.Decision {
	cs := cr.charges[:0]
	add := func(ap *policy.Applied, guard bool, keys *limit.ChargeKeys) {
		cs = append(cs, limit.Charge{Rule: ap.Rule, Limits: ap.Limits, Key: ap.Key, GuardOnly: guard, Keys: keys})
	}
	if a.handshake {
		for i := range cr.adm.Handshake {
			if ap := &cr.adm.Handshake[i]; ap.Rule.Shadow == shadow {
				add(ap, false, nil)
			}
		}
		// A block of a message rule over every message refuses the key's
		// handshakes too, as the flag rules' blocks always did.
		for i := range cr.adm.Messages {
			if ap := &cr.adm.Messages[i]; ap.Rule.Shadow == shadow && ap.Rule.Class == "" && len(ap.Rule.Block) > 0 {
				add(ap, true, nil)
			}
		}
	} else {
		if cr.keepKeys && cr.keys == nil {
			cr.keys = make([]limit.ChargeKeys, len(cr.adm.Messages))
		}
		for i := range cr.adm.Messages {
			ap := &cr.adm.Messages[i]
			covers := ap.Covers(cr.pol, a.class) || ap.CoversAny(cr.pol, a.also)
			if ap.Rule.Shadow == shadow && covers && (!a.more || ap.Rule.Count == policy.CountBytes) &&
				!(a.reclassed && ap.Covers(cr.pol, a.shown)) {
				var keys *limit.ChargeKeys
				if cr.keys != nil {
					keys = &cr.keys[i]
				}
				add(ap, false, keys)
			}
		}
	}
	cr.charges = cs
	if len(cs) == 0 {
		return limit.Decision{Allowed: true, Kind: kind, Granted: a.n}
	}
	start := time.Now()
	if a.from != nil {
		if p.nowLimits != nil {
			if d, now := p.nowLimits.ChargeNow(kind, cs, a.n, a.bytes); now {
				p.observe(d, start)
				return d
			}
		}
		a.from.yield() // the decision may wait for Redis
	}
	d := p.cfg.Limiter.Charge(ctx, kind, cs, a.n, a.bytes)
	p.observe(d, start)
	return d
}

// hasShadow reports whether a shadow rule takes part in deciding a: for a
// handshake, a shadow handshake rule or the block of a shadow message rule
// (charge's guards).
func (cr *connRules) hasShadow(a ask) bool {
	for i := range cr.adm.Messages {
		if r := cr.adm.Messages[i].Rule; r.Shadow && (!a.handshake || r.Class == "" && len(r.Block) > 0) {
			return true
		}
	}
	if a.handshake {
		for i := range cr.adm.Handshake {
			if cr.adm.Handshake[i].Rule.Shadow {
				return true
			}
		}
	}
	return false
}

// shadowRefused counts every refusal of a shadow rule and logs one line
// per block (or second) and connection.
func (p *Proxy) shadowRefused(cr *connRules, d limit.Decision) {
	p.decisionsOf(d, cr.tier).shadow.Inc()
	p.m.RateLimited.WithLabelValues(d.Scope, d.Kind, d.Rule, cr.tier).Inc()
	now := time.Now().UnixNano()
	if now < cr.quietUntil {
		return
	}
	cr.quietUntil = now + max(d.RetryAfter, time.Second).Nanoseconds()
	p.log.Info("rate limited", "rule", d.Rule, "scope", d.Scope, "kind", d.Kind, "shadow", true,
		"client_ip", cr.client.IP.String(), "identity", cr.client.User, "path", cr.client.Path,
		"retry_after_ms", d.RetryAfter.Milliseconds())
}

// ruleOf returns the rule of the policy in force that refused d, or nil.
func (cr *connRules) ruleOf(d limit.Decision) *policy.Rule {
	if cr == nil || d.Rule == "" {
		return nil
	}
	return cr.pol.Rule(d.Rule)
}

// classOf returns the class of the message whose first header, h, was
// just read, and the classes it may also be (policy.ClassScan.Class), from
// the first classifyBytes of its first frame: -1 when the policy has no
// classes, and for a binary message on a socket.io connection (an
// attachment: its event was classified). A binary message is classified as
// a text one is: apps often parse either as JSON. The bytes a client split
// from the header are waited for, as relaying the frame would wait for
// them. When those bytes cannot settle the class, it is a first guess and a
// scan follows the message (forwardScanned).
func (d *direction) classOf(h ws.Header, pol *policy.Policy) (class int, also uint64) {
	if len(pol.Classes) == 0 || h.OpCode == ws.OpBinary && d.pr.info.sio {
		return -1, 0
	}
	want := min(int64(classifyBytes), h.Length)
	if int64(d.r.Buffered()) < want {
		// The wait is the message's: its timeout runs from here. What
		// was batched goes out first, as before any wait. An error ends
		// the wait; the relay meets it again when it reads or writes.
		d.timeMessage(h)
		for err := d.flush(); err == nil && int64(d.r.Buffered()) < want; {
			err = d.r.ReadMore()
		}
	}
	var buf, plain [classifyBytes]byte
	n := copy(buf[:want], d.r.Peek())
	if h.Masked {
		ws.Cipher(buf[:n], h.Mask, 0)
	}
	head := buf[:n]
	whole := h.Fin && h.Length <= classifyBytes
	if h.Rsv1() {
		k, all := inflateHead(head, plain[:], whole)
		head, whole = plain[:k], all
	}
	cr := d.pr.info.rules
	if whole || cr.adm.Exempt() {
		return pol.ClassOf(head)
	}
	if pol.NeedsClassScan(head) {
		// A first guess: the scan settles the class as the message passes.
		cr.startScan(pol)
		return pol.Classify(head), 0
	}
	class, also = pol.ClassOf(head)
	if class >= 0 && pol.Classes[class].Unlimited {
		// Free only if nothing follows the object: the scan sees the rest.
		cr.startScan(pol)
	}
	return class, also
}

// startScan follows the client message whose class its first bytes could
// not settle: the class the app sees may be named further on.
func (cr *connRules) startScan(pol *policy.Policy) {
	if cr.scan == nil {
		cr.scan = policy.NewClassScan(pol)
		return
	}
	cr.scan.Start(pol)
}

// chargesMore reports whether a rule that applies covers class (or a class
// of also) and not shown: what a message charged as of class shown owes
// when its bytes show class.
func (cr *connRules) chargesMore(class int, also uint64, shown int) bool {
	for i := range cr.adm.Messages {
		ap := &cr.adm.Messages[i]
		if (ap.Covers(cr.pol, class) || ap.CoversAny(cr.pol, also)) && !ap.Covers(cr.pol, shown) {
			return true
		}
	}
	return false
}

// endScan stops following the message (cr may be nil: no rules file).
func (cr *connRules) endScan() {
	if cr != nil && cr.scan != nil {
		cr.scan.Release()
		cr.scan = nil
	}
}

// dropped records a drop of a message by rule r and reports whether it is
// the one that closes the connection (close-after).
func (cr *connRules) dropped(r *policy.Rule, now time.Time) bool {
	if r.CloseAfter == 0 {
		return false
	}
	if cr.drops == nil {
		cr.drops = make(dropCounts)
	}
	closes, _ := cr.drops.add(r, cr.tier, now)
	return closes
}

// RulesChanged acts on a new policy in force at once where waiting for a
// connection's next message would not do: it closes the open connections
// whose client the new deny list names (1008), and returns how many. Every
// other connection is admitted again at its next message.
func (p *Proxy) RulesChanged(pol *policy.Policy) int {
	if pol.Deny.Empty() {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for pr := range p.pairs {
		// A connection's client is set at its handshake and never changes.
		if pr.info.rules == nil || pr.life.load() != phaseOpen {
			continue
		}
		if cr := pr.info.rules; pol.Deny.Has(cr.client.IP, cr.client.Subject) {
			pr.end(&deniedEnding)
			n++
		}
	}
	return n
}
