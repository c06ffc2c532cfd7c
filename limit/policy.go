package limit

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/holo/wsgate/policy"
)

// Charge is one rule's part in a decision of a rules file's policy: the
// rule, the limits that apply to this client (its tier's), and the value of
// the key it counts under.
type Charge struct {
	Rule   *policy.Rule
	Limits []policy.Window
	Key    string
	// GuardOnly: only the rule's block is checked, nothing is counted (a
	// handshake of a key that a message rule blocks).
	GuardOnly bool
	// Keys, when not nil, keeps the charge's Redis keys for the next
	// decision of the same connection (ChargeKeys).
	Keys *ChargeKeys
}

// keyTag is a key kind inside a Redis key. A claim's name may hold '{' or
// '}', which would move the key's Cluster hash tag: such a name is hashed
// (safeID).
func keyTag(k policy.Key) string {
	switch k.Kind {
	case policy.KeyIP:
		return "ip"
	case policy.KeyConnection:
		return "c"
	case policy.KeyClaim:
		return "cl." + safeID(k.Name)
	case policy.KeyHeader:
		return "h." + k.Name
	}
	return "u"
}

// Charge decides n (>= 1) events of a rules file's policy against every
// charge at once: the first Decision.Granted of them pass and count against
// every window of every charge, or the first is refused by the first charge
// (in the policy's order) that refuses it and nothing is counted. A
// message rule counts 1 per event, or bytes per event when it counts
// bytes (a caller with a byte rule asks about one message at a time). A
// refusal blocks the refusing rule's key when the rule blocks, for the
// next step of its ladder, and the key's budget is full again when the
// block ends. The Decision names the refusing rule in Rule and its key kind
// in Scope. While an operator holds the key of a charge (Hold), the events
// are refused by the hold, before any store is asked.
//
// With a RedisURL, Redis decides: the charges' block keys are read through
// the client-side cache (a blocked key costs no round trip; skipped as
// ClosesOnRefusal says for a message whose every rule closes), then one
// script decides every charge atomically, whatever the number of rules and
// windows, on keys "<prefix>:r:<rule>:<key kind>:...{<key>}" (keysOf).
// On a Cluster, charges whose keys live in different slots are decided one
// event at a time, one script per slot, and a refusal takes back what the
// others counted.
//
// In ModeLease, the charges of rules that count messages or bytes, in
// fixed or GCRA windows, are decided from this Limiter's slices of each
// window's budget (see the package doc): while every window of every
// charge has slice left, with no round trip. Otherwise the same script,
// after the block check, takes a slice for each window that needs one,
// counts the exact charges (handshake rules), and decides the event
// exactly when a window has no event left in Redis; the slices are spent
// only when the whole decision allows. Granted may then be fewer than the
// slices and Redis together would allow: the caller asks again for the
// rest, as always. The refusals are the exact path's, except that a key
// may be refused while other replicas still hold units of its window, at
// most a slice each per window, and that a GCRA window may pass a slice
// more per other replica in a burst (package doc).
//
// Failures are handled as for Messages: a failed or timed-out call is
// decided by the FailureMode (FailLocal by the memory store), for the
// first event only; failAfter failed decisions in a row mark a node down
// and its keys fall back at once. A FailClosed refusal names the first
// charge's rule.
func (l *Limiter) Charge(ctx context.Context, kind string, charges []Charge, n int, bytes int64) Decision {
	if l.Holding() {
		if d, held := l.heldCharge(kind, charges); held {
			return d
		}
	}
	n = max(n, 1)
	if !l.useRedis {
		d := l.mem.charge(charges, n, bytes, kind)
		d.Store = storeMemory
		return d
	}
	if len(charges) == 0 {
		return Decision{Allowed: true, Kind: kind, Granted: n, Store: storeRedis}
	}
	if l.lease != nil {
		if g := l.lease.pol.spend(charges, n, bytes); g > 0 {
			return Decision{Allowed: true, Kind: kind, Granted: g, Store: storeRedis}
		}
	}
	rs := l.rs.Load()
	if rs == nil {
		return l.chargeFallback(kind, charges, n, bytes, errRedisDown)
	}
	ids := make([]string, len(charges))
	var nodes []*node // distinct
	for i := range charges {
		ids[i] = charges[i].id()
		nd := rs.health.of(ids[i])
		if nd.isDown() {
			return l.chargeFallback(kind, charges, n, bytes, errRedisDown)
		}
		if !slices.Contains(nodes, nd) {
			nodes = append(nodes, nd)
		}
	}
	rctx, cancel, start := l.deadlines.context(ctx)
	var d Decision
	var failed []bool
	var err error
	if l.lease != nil && anyLeasable(charges) {
		d, failed, err = l.lease.pol.charge(rctx, rs, kind, charges, ids, n, bytes)
	} else {
		d, failed, err = rs.charge(rctx, l.prefix, kind, charges, ids, n, bytes, closesOnRefusal(ctx))
	}
	cancel()
	if err != nil {
		// Not Redis's fault: a caller that gave up, or a decision that
		// waited for another's lease (errWaited).
		if ctx.Err() == nil && !errors.Is(err, errWaited) {
			for _, nd := range nodes {
				// One failure per node and decision, however many of
				// its charges failed.
				hit := failed == nil
				for i := range charges {
					hit = hit || failed[i] && rs.health.of(ids[i]) == nd
				}
				if hit && rs.health.failed(nd, start, err) && l.lease != nil {
					// As in decide: no lease slice outlives a node whose
					// connection may have stopped tracking block keys.
					l.lease.flush()
				}
			}
		}
		// The call may have run in Redis: the failure mode decides the
		// first event only, and Redis the rest when asked again.
		return l.chargeFallback(kind, charges, 1, bytes, err)
	}
	if d.answered {
		for _, nd := range nodes {
			rs.health.ok(nd)
		}
		d.answered = false // callers compare Decisions
	}
	d.Store = storeRedis
	return d
}

// chargeFallback decides n events of charges (at least one) by the
// FailureMode.
func (l *Limiter) chargeFallback(kind string, charges []Charge, n int, bytes int64, err error) Decision {
	var d Decision
	switch l.mode {
	case FailOpen:
		d = Decision{Allowed: true, Kind: kind, Granted: n}
	case FailClosed:
		// Under the first rule, so that the refusal has a rule's action.
		c := &charges[0]
		d = Decision{Scope: c.Rule.Key.String(), Kind: kind, RetryAfter: closedRetry, Rule: c.Rule.Name}
	default:
		d = l.mem.charge(charges, n, bytes, kind)
		d.Store = storeMemory
	}
	d.Fallback = true
	d.Err = err
	return d
}

// policyRefusal is the Decision of a refusal by charge c.
func policyRefusal(c *Charge, kind string, blocked bool, retry time.Duration, limit int64) Decision {
	k := KindMessage
	if c.Rule.Handshakes() {
		k = KindConnection
	}
	return Decision{Scope: c.Rule.Key.String(), Kind: k, Rule: c.Rule.Name, RetryAfter: retry, Blocked: blocked, Limit: int(limit)}
}

// cost is what one event costs charge c.
func cost(c *Charge, bytes int64) int64 {
	if c.Rule.Count == policy.CountBytes {
		return bytes
	}
	return 1
}

// polKey names the memory entry of a key value under a rule: by the rule's
// name and key, as its Redis keys do, so that the entry outlives a reload
// that keeps both (a reload makes new *policy.Rule values).
type polKey struct {
	rule string
	kind policy.Key
	id   string
}

func polKeyOf(c *Charge) polKey {
	return polKey{rule: c.Rule.Name, kind: c.Rule.Key, id: c.Key}
}

// polEntry is what a rule keeps for one key value, all of its Redis keys in
// one: the block, the strikes, and a counter per window.
type polEntry struct {
	blockEnd   time.Duration
	strikesEnd time.Duration // when the strikes are forgotten
	strikes    int
	// windows holds a counter per window length the key was charged
	// under, in no order: a tier or a reload may change the rule's
	// windows, and a window of an unchanged length keeps its count.
	windows []polWindow
}

// polWindow is a window's counter. Fixed: n units until end. GCRA: the
// theoretical arrival time tat, which is also its end. An ended counter is
// worth its zero value.
type polWindow struct {
	per time.Duration
	n   int64
	end time.Duration
	tat time.Duration
}

// window returns the index of e's counter of windows of length per, or -1.
// A nil e has none.
func (e *polEntry) window(per time.Duration) int {
	if e == nil {
		return -1
	}
	for i := range e.windows {
		if e.windows[i].per == per {
			return i
		}
	}
	return -1
}

// counter returns e's counter of window w, the zero counter if none.
func (e *polEntry) counter(w policy.Window) polWindow {
	if i := e.window(w.Per); i >= 0 {
		return e.windows[i]
	}
	return polWindow{per: w.Per}
}

// ended reports whether nothing of e is in force any more: it is worth
// no entry.
func (e *polEntry) ended(now time.Duration) bool {
	if e.blockEnd > now || e.strikesEnd > now {
		return false
	}
	for i := range e.windows {
		if e.windows[i].end > now {
			return false
		}
	}
	return true
}

// charge is Limiter.Charge on the memory store. Each charge's entry is
// looked up once and written in place only once every window allowed (or
// by a refusal), under the store's lock. Invariant: no two charges of a
// call share an entry (a policy's rule names are unique, and a call names
// each rule once), so what the check read is what the spend updates.
func (s *memory) charge(charges []Charge, n int, bytes int64, kind string) Decision {
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tick(now)
	var buf [8]*polEntry
	es := buf[:0] // es[i] is charges[i]'s entry, nil when it has none
	for i := range charges {
		c := &charges[i]
		e := s.pol[polKeyOf(c)]
		// A rule without a block is never blocked (on Redis a block left
		// by an earlier version of the rule lasts until it expires).
		if e != nil && len(c.Rule.Block) > 0 && e.blockEnd > now {
			return policyRefusal(c, kind, true, e.blockEnd-now, 0)
		}
		es = append(es, e)
	}
	granted := int64(n)
	for i := range charges {
		c := &charges[i]
		if c.GuardOnly {
			continue
		}
		unit := cost(c, bytes)
		for _, w := range c.Limits {
			pw := es[i].counter(w)
			left := left(c, w, pw, unit, now)
			if left <= 0 {
				return s.refuse(c, es[i], w, pw, unit, kind, now)
			}
			granted = min(granted, left)
		}
	}
	for i := range charges {
		c := &charges[i]
		if c.GuardOnly {
			continue
		}
		e := es[i]
		if e == nil {
			e = &polEntry{windows: make([]polWindow, 0, len(c.Limits))}
			s.pol[polKeyOf(c)] = e
		}
		units := granted * cost(c, bytes)
		for _, w := range c.Limits {
			j := e.window(w.Per)
			if j < 0 {
				j = len(e.windows)
				e.windows = append(e.windows, polWindow{per: w.Per})
			}
			e.windows[j] = spend(c, w, e.windows[j], units, now)
		}
	}
	return Decision{Allowed: true, Kind: kind, Granted: int(granted)}
}

// left returns how many events of unit cost window w, whose counter is pw,
// still allows.
func left(c *Charge, w policy.Window, pw polWindow, unit int64, now time.Duration) int64 {
	if unit == 0 {
		return 1 << 31
	}
	if c.Rule.Algorithm == policy.GCRA {
		interval := gcraInterval(w)
		burst := gcraBurst(c.Rule, w)
		tat := max(pw.tat, now)
		// An event of unit cost may pass while tat + unit*interval stays
		// within burst*interval of now.
		room := now + time.Duration(burst)*interval - tat
		return int64(room / (time.Duration(unit) * interval))
	}
	if pw.end <= now {
		pw.n = 0
	}
	return (w.Limit - pw.n) / unit
}

// spend returns window w's counter pw after units were counted.
func spend(c *Charge, w policy.Window, pw polWindow, units int64, now time.Duration) polWindow {
	if c.Rule.Algorithm == policy.GCRA {
		pw.tat = max(pw.tat, now) + time.Duration(units)*gcraInterval(w)
		pw.end = pw.tat
	} else {
		if pw.end <= now {
			pw.n, pw.end = 0, now+w.Per
		}
		pw.n += units
	}
	return pw
}

// refuse applies a refusal of charge c, whose entry is e (nil for none), by
// window w, whose counter is pw: with a block, the key is blocked for its
// ladder's next step and every window's counter is dropped, so the budget
// is full when the block ends; without, the retry is the time until w
// allows an event again.
func (s *memory) refuse(c *Charge, e *polEntry, w policy.Window, pw polWindow, unit int64, kind string, now time.Duration) Decision {
	if len(c.Rule.Block) == 0 {
		retry := pw.end - now
		if pw.end <= now {
			// Not open: an event larger than the whole limit. The
			// window it would open is the retry, as luaLib's life says.
			retry = w.Per
		}
		if c.Rule.Algorithm == policy.GCRA {
			// The time until tat + unit*interval is within burst*interval
			// of now again.
			retry = max(pw.tat, now) + time.Duration(unit-gcraBurst(c.Rule, w))*gcraInterval(w) - now
			retry = max(retry, time.Millisecond)
		}
		return policyRefusal(c, kind, false, retry, w.Limit)
	}
	if e == nil {
		e = &polEntry{}
		s.pol[polKeyOf(c)] = e
	}
	if e.strikesEnd <= now {
		e.strikes = 0
	}
	block := c.Rule.Block[min(e.strikes, len(c.Rule.Block)-1)]
	e.strikes++
	e.blockEnd = now + block
	e.strikesEnd = e.blockEnd + c.Rule.ResetStrikes
	for _, ow := range c.Limits {
		if j := e.window(ow.Per); j >= 0 {
			e.windows[j] = polWindow{per: ow.Per}
		}
	}
	return policyRefusal(c, kind, false, block, w.Limit)
}

// gcraInterval is the time one unit takes to drain from window w.
func gcraInterval(w policy.Window) time.Duration {
	return max(w.Per/time.Duration(w.Limit), 1)
}

// gcraBurst is how many units of window w may pass at once.
func gcraBurst(r *policy.Rule, w policy.Window) int64 {
	if r.Burst > 0 {
		return r.Burst
	}
	return w.Limit
}
