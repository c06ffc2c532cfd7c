package limit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/holo/wsgate/policy"
	"github.com/redis/rueidis"
)

// ErrBadRequest is returned (wrapped) by the admin calls (Inspect, Reset,
// Hold, Revoke, Unrevoke, Publish) for arguments they refuse.
var ErrBadRequest = errors.New("bad admin request")

// HoldRule is the Decision.Rule of a refusal by an operator hold (Hold).
const HoldRule = "admin-hold"

// The names under which Inspect reports the flag rules.
const (
	flagUserMessages   = "user-messages"
	flagIPMessages     = "ip-messages"
	flagUserHandshakes = "user-handshakes"
	flagIPHandshakes   = "ip-handshakes"
)

// KeyRef names the key of one client under the rules of one scope.
type KeyRef struct {
	// Scope is ScopeUser or ScopeIP (the flag rules' scopes, and the rules
	// files' "user" and "ip" keys), or a rules-file key as policy.Key's
	// String gives it: "connection", "claim:<name>", "header:<name>".
	Scope string `json:"scope"`
	// ID is the key's value exactly as the Limiter is asked about it: the
	// user or ip argument of Message, Messages and Handshake, a Charge's
	// Key.
	ID string `json:"id"`
}

// holdKey is a KeyRef parsed, the key of a hold in the local copy: a
// decision looks its keys up without building a string.
type holdKey struct {
	key policy.Key
	id  string
}

var (
	userKey = policy.Key{Kind: policy.KeyUser}
	ipKey   = policy.Key{Kind: policy.KeyIP}
)

// parse validates ref.
func (ref KeyRef) parse() (holdKey, error) {
	k, err := policy.ParseKey(ref.Scope)
	if err != nil {
		return holdKey{}, fmt.Errorf("%w: scope: %v", ErrBadRequest, err)
	}
	if ref.ID == "" {
		return holdKey{}, fmt.Errorf("%w: empty id", ErrBadRequest)
	}
	return holdKey{key: k, id: ref.ID}, nil
}

// holdField and parseHoldField are the hash fields of holds:
// "<scope>|<id>", where a '|' or '%' of the scope is escaped as %7C or %25.
func holdField(k holdKey) string { return joinField(k.key.String(), k.id) }

func parseHoldField(f string) (holdKey, bool) {
	scope, id, ok := splitField(f)
	if !ok || id == "" {
		return holdKey{}, false
	}
	k, err := policy.ParseKey(scope)
	return holdKey{key: k, id: id}, err == nil
}

// KeyState is what Limiter.Inspect reads of one key.
type KeyState struct {
	Scope string `json:"scope"`
	ID    string `json:"id"`
	// Store is "redis" or "memory".
	Store string      `json:"store"`
	Rules []RuleState `json:"rules"`
	// Hold is the operator hold in force, nil when none.
	Hold *HoldState `json:"hold,omitempty"`
}

// RuleState is one rule's state of a key.
type RuleState struct {
	Rule    string        `json:"rule"`
	Windows []WindowState `json:"windows"`
	// BlockLeftMs is the time left of the key's block, 0 when not blocked.
	BlockLeftMs int64 `json:"blockLeftMs"`
	// Strikes counts the key's blocks in a row of an escalating rule; 0
	// for the flag rules.
	Strikes int64 `json:"strikes"`
}

// WindowState is the counter of one window length of a rule.
type WindowState struct {
	PerMs int64 `json:"perMs"`
	// Limit is the rule's own limit of this length, 0 when only tiers
	// have a window of this length; TierLimits are the tiers' limits of
	// this length, by tier.
	Limit      int64            `json:"limit"`
	TierLimits map[string]int64 `json:"tierLimits,omitempty"`
	// Count is what the window has counted (messages, bytes or
	// handshakes), and LeftMs the time until it ends; both 0 when no
	// window is open. For a GCRA rule, Count is how many units the key is
	// ahead of the rate, and LeftMs the time until it no longer is.
	Count  int64 `json:"count"`
	LeftMs int64 `json:"leftMs"`
}

// HoldState is an operator hold in force.
type HoldState struct {
	LeftMs int64  `json:"leftMs"`
	Reason string `json:"reason,omitempty"`
}

// adminRule is a rule whose state of one key Inspect reads and Reset drops:
// a flag rule, or a rules-file rule with every window length its limits
// and its tiers' use.
type adminRule struct {
	flag    *rule
	pol     *policy.Rule
	windows []WindowState // the lengths and limits, counts zero
}

func (r *adminRule) name() string {
	if r.flag != nil {
		return r.flag.name
	}
	return r.pol.Name
}

// interval is the time one unit of window w takes to drain from a GCRA
// rule: by the rule's own limit of that length, else the first tier's.
func (w *WindowState) interval() time.Duration {
	limit := w.Limit
	if limit == 0 && len(w.TierLimits) > 0 {
		limit = w.TierLimits[slices.Min(slices.Collect(maps.Keys(w.TierLimits)))]
	}
	return gcraInterval(policy.Window{Limit: max(limit, 1), Per: time.Duration(w.PerMs) * time.Millisecond})
}

// adminRules returns the rules of k's scope: the enabled flag rules when
// pol is nil, else the rules of pol whose key is k's.
func (l *Limiter) adminRules(k holdKey, pol *policy.Policy) []adminRule {
	var out []adminRule
	if pol == nil {
		for _, r := range []*rule{&l.userMsg, &l.ipMsg, &l.userConn, &l.ipConn} {
			if r.Enabled() && r.scope == k.key.String() {
				out = append(out, adminRule{flag: r, windows: []WindowState{{PerMs: r.Window.Milliseconds(), Limit: int64(r.Limit)}}})
			}
		}
		return out
	}
	for i := range pol.Rules {
		r := &pol.Rules[i]
		if r.Key != k.key {
			continue
		}
		ar := adminRule{pol: r}
		at := func(per time.Duration) *WindowState {
			for j := range ar.windows {
				if ar.windows[j].PerMs == per.Milliseconds() {
					return &ar.windows[j]
				}
			}
			ar.windows = append(ar.windows, WindowState{PerMs: per.Milliseconds()})
			return &ar.windows[len(ar.windows)-1]
		}
		for _, w := range r.Limits {
			at(w.Per).Limit = w.Limit
		}
		for _, t := range slices.Sorted(maps.Keys(r.Tiers)) {
			for _, w := range r.Tiers[t] {
				ws := at(w.Per)
				if ws.TierLimits == nil {
					ws.TierLimits = make(map[string]int64)
				}
				ws.TierLimits[t] = w.Limit
			}
		}
		out = append(out, ar)
	}
	return out
}

// Inspect returns the state of key ref under the rules of its scope: the
// flag rules when pol is nil (user-messages and user-handshakes for
// ScopeUser, ip-messages and ip-handshakes for ScopeIP, those enabled;
// none for another scope), else every rule of pol whose key is ref's
// scope, with a window per length of the rule's limits and its tiers'.
// It reports each window's count and time left, the block left, the
// strikes, and the operator hold in force.
//
// With Redis it reads every key in one pipelined call (rueidis splits it
// by Cluster slot); in ModeLease the count of a leased window (a flag
// message rule's, a rules file's window of messages or bytes) is what
// Redis holds, which includes the units the replicas reserved and have not
// spent yet. The memory store is read under its lock. In the FailLocal
// fallback Inspect still reads Redis, and fails while Redis does.
func (l *Limiter) Inspect(ctx context.Context, ref KeyRef, pol *policy.Policy) (KeyState, error) {
	k, err := ref.parse()
	if err != nil {
		return KeyState{}, err
	}
	rules := l.adminRules(k, pol)
	st := KeyState{Scope: k.key.String(), ID: k.id, Store: l.StoreName(), Rules: make([]RuleState, len(rules))}
	for i := range rules {
		st.Rules[i] = RuleState{Rule: rules[i].name(), Windows: slices.Clone(rules[i].windows)}
	}
	if !l.useRedis {
		now := l.now()
		l.mem.inspect(k, rules, st.Rules)
		if s := l.holds.live(now); s != nil {
			if h, ok := s.get(k, now); ok {
				st.Hold = &HoldState{LeftMs: ceilMs(h.until.Sub(now)), Reason: h.reason}
			}
		}
		return st, nil
	}
	rs, err := l.redis()
	if err != nil {
		return KeyState{}, fmt.Errorf("inspect: %w", err)
	}
	ctx, cancel := l.adminContext(ctx)
	defer cancel()
	if err := l.inspectRedis(ctx, rs.client, k, rules, &st); err != nil {
		return KeyState{}, fmt.Errorf("inspect: %w", err)
	}
	return st, nil
}

// inspect fills out with the memory store's state of k under rules.
func (s *memory) inspect(k holdKey, rules []adminRule, out []RuleState) {
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range rules {
		o := &out[i]
		if r.flag != nil {
			e := s.m[memKey{r.flag, safeID(k.id)}]
			if e == nil {
				continue
			}
			if e.windowEnd > now {
				o.Windows[0].Count, o.Windows[0].LeftMs = int64(e.n), ceilMs(e.windowEnd-now)
			}
			if e.blockEnd > now {
				o.BlockLeftMs = ceilMs(e.blockEnd - now)
			}
			continue
		}
		e := s.pol[polKey{rule: r.pol.Name, kind: r.pol.Key, id: k.id}]
		if e == nil {
			continue
		}
		if e.blockEnd > now {
			o.BlockLeftMs = ceilMs(e.blockEnd - now)
		}
		if e.strikesEnd > now {
			o.Strikes = int64(e.strikes)
		}
		for j := range o.Windows {
			w := &o.Windows[j]
			pw := e.counter(policy.Window{Per: time.Duration(w.PerMs) * time.Millisecond})
			if pw.end <= now {
				continue
			}
			w.LeftMs = ceilMs(pw.end - now)
			if r.pol.Algorithm == policy.GCRA {
				w.Count = gcraAhead(pw.end-now, w.interval())
			} else {
				w.Count = pw.n
			}
		}
	}
}

// inspectRedis fills st from Redis: per flag rule its counter's GET and
// PTTL and its block key's PTTL; per rules-file rule its block key's PTTL,
// its strikes and each window's GET and PTTL; and the hold's field.
func (l *Limiter) inspectRedis(ctx context.Context, c rueidis.Client, k holdKey, rules []adminRule, st *KeyState) error {
	id := safeID(k.id)
	var cmds rueidis.Commands
	get := func(key string) { cmds = append(cmds, c.B().Get().Key(key).Build()) }
	pttl := func(key string) { cmds = append(cmds, c.B().Pttl().Key(key).Build()) }
	for _, r := range rules {
		if r.flag != nil {
			get(r.flag.key(id))
			pttl(r.flag.key(id))
			pttl(r.flag.blockKey(id))
			continue
		}
		base, tag := keyBase(l.prefix, &Charge{Rule: r.pol}), "{"+id+"}"
		pttl(base + tag + ":blk")
		get(base + tag + ":str")
		for _, w := range r.windows {
			ctr := base + strconv.FormatInt(w.PerMs, 10) + ":" + tag
			get(ctr)
			pttl(ctr)
		}
	}
	cmds = append(cmds, c.B().Hget().Key(l.holds.hash).Field(holdField(k)).Build())
	res := c.DoMulti(ctx, cmds...)
	for _, r := range res {
		if err := r.Error(); err != nil && !rueidis.IsRedisNil(err) {
			return err
		}
	}
	// Answers in the order sent: an int of a GET that holds none (an
	// absent key, a GCRA value) is 0, a PTTL of an absent key is 0.
	next := func() rueidis.RedisResult { r := res[0]; res = res[1:]; return r }
	num := func() int64 { n, _ := next().AsInt64(); return n }
	ms := func() int64 { return max(num(), 0) }
	for i, r := range rules {
		o := &st.Rules[i]
		if r.flag != nil {
			o.Windows[0].Count, o.Windows[0].LeftMs = num(), ms()
			o.BlockLeftMs = ms()
			continue
		}
		o.BlockLeftMs = ms()
		o.Strikes = num()
		for j := range o.Windows {
			w := &o.Windows[j]
			n, left := num(), ms()
			w.LeftMs = left
			if r.pol.Algorithm == policy.GCRA {
				w.Count = gcraAhead(time.Duration(left)*time.Millisecond, w.interval())
			} else if left > 0 {
				w.Count = n
			}
		}
	}
	if v, err := next().ToString(); err == nil {
		var rv recordValue
		if json.Unmarshal([]byte(v), &rv) == nil {
			if left := time.UnixMilli(rv.UntilMs).Sub(l.now()); left > 0 {
				st.Hold = &HoldState{LeftMs: ceilMs(left), Reason: rv.Reason}
			}
		}
	}
	return nil
}

// gcraAhead is how many units of interval a GCRA window whose arrival time
// is left ahead of now holds.
func gcraAhead(left, interval time.Duration) int64 {
	return int64((left + interval - 1) / interval)
}

// ceilMs is d in whole milliseconds, rounded up: a time left is never
// reported as 0 while it lasts.
func ceilMs(d time.Duration) int64 { return int64((d + time.Millisecond - 1) / time.Millisecond) }

// Reset drops the state of key ref under the rules Inspect reports (pol
// nil: the flag rules): every counter, block and strikes, so that the
// key's next event starts a full budget; and it lifts the key's hold. This
// replica also drops its ModeLease slices of the key and the key's state
// in its FailLocal fallback, and once Reset returns its cached block
// checks of the key no longer refuse (it waits up to 100ms for Redis's
// invalidations). It publishes an EventReset, on which every other replica
// lifts the hold and drops its slices and fallback state of the key, under
// every rule (see Event); their cached block checks drop with Redis's
// invalidations.
func (l *Limiter) Reset(ctx context.Context, ref KeyRef, pol *policy.Policy) error {
	k, err := ref.parse()
	if err != nil {
		return err
	}
	rules := l.adminRules(k, pol)
	if l.useRedis {
		rs, err := l.redis()
		if err != nil {
			return fmt.Errorf("reset: %w", err)
		}
		ctx, cancel := l.adminContext(ctx)
		defer cancel()
		c, id := rs.client, safeID(k.id)
		var keys, blocks []string
		for _, r := range rules {
			if r.flag != nil {
				keys = append(keys, r.flag.key(id), r.flag.blockKey(id))
				if r.flag.kind == KindMessage {
					blocks = append(blocks, r.flag.blockKey(id))
				}
				continue
			}
			base, tag := keyBase(l.prefix, &Charge{Rule: r.pol}), "{"+id+"}"
			keys = append(keys, base+tag+":blk", base+tag+":str")
			blocks = append(blocks, base+tag+":blk")
			for _, w := range r.windows {
				keys = append(keys, base+strconv.FormatInt(w.PerMs, 10)+":"+tag)
			}
		}
		cmds := rueidis.Commands{c.B().Hdel().Key(l.holds.hash).Field(holdField(k)).Build()}
		if len(keys) > 0 {
			// The keys share their {id} hash tag: one DEL.
			cmds = append(cmds, c.B().Del().Key(keys...).Build())
		}
		for _, r := range c.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return fmt.Errorf("reset: %w", err)
			}
		}
		waitUncached(ctx, c, blocks)
	}
	l.holds.set(k, record{}, true, l.now())
	l.mem.resetRules(k, rules)
	if l.lease != nil {
		l.lease.drop(k)
	}
	l.announceChange(ctx, Event{Type: EventReset, Scope: k.key.String(), ID: k.id})
	return nil
}

// uncachedWait bounds how long Reset waits for the invalidations of the
// block keys it deleted.
const uncachedWait = 100 * time.Millisecond

// waitUncached waits, up to uncachedWait, until the cached block checks of
// blocks (block keys just deleted) find no block: Redis pushes their
// invalidation on the connection that cached them, which rueidis reads
// on its own goroutine, so a decision right after the DEL could still be
// refused from the cache. A block set again meanwhile ends the wait.
func waitUncached(ctx context.Context, c rueidis.Client, blocks []string) {
	if len(blocks) == 0 {
		return
	}
	deadline := time.Now().Add(uncachedWait)
	for {
		// Built anew each time: rueidis recycles a command once sent.
		reads := make([]rueidis.CacheableTTL, len(blocks))
		for i, k := range blocks {
			reads[i] = rueidis.CT(c.B().Pttl().Key(k).Cache(), blockCacheTTL)
		}
		cached := false
		for _, r := range c.DoMultiCache(ctx, reads...) {
			if left, _, err := remainingBlock(r); err == nil && left > 0 && r.IsCacheHit() {
				cached = true
			}
		}
		if !cached || time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// resetKey drops the state of k under every rule from the memory store:
// what a replica does with the FailLocal fallback on another's EventReset,
// which does not say which rules it reset.
func (s *memory) resetKey(k holdKey) {
	id, scope := safeID(k.id), k.key.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	for mk := range s.m {
		if mk.id == id && mk.rule.scope == scope {
			s.remove(mk)
		}
	}
	for pk := range s.pol {
		if pk.kind == k.key && pk.id == k.id {
			delete(s.pol, pk)
		}
	}
}

// resetRules drops the state of k under rules from the memory store.
func (s *memory) resetRules(k holdKey, rules []adminRule) {
	id := safeID(k.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rules {
		if r.flag != nil {
			s.remove(memKey{r.flag, id})
		} else {
			delete(s.pol, polKey{rule: r.pol.Name, kind: r.pol.Key, id: k.id})
		}
	}
}

// drop drops the slices of k: of the flag message rule of k's scope, and
// of every rules-file rule keyed by k's kind.
func (ls *leases) drop(k holdKey) {
	id, scope := safeID(k.id), k.key.String()
	ls.mu.Lock()
	for _, r := range ls.rules {
		if r.scope == scope {
			if e := ls.m[memKey{r, id}]; e != nil {
				e.left = 0
				e.gen++ // a lease in flight keeps only what its decision spends
			}
		}
	}
	ls.mu.Unlock()
	ls.pol.drop(k)
}

// Hold refuses every decision that involves key ref, on every replica, for
// d: Message, Messages and Handshake whose user (ScopeUser) or ip
// (ScopeIP) argument is ref.ID, and Charge when one of its charges has a
// rule keyed by ref.Scope and Key ref.ID. A held refusal is a Decision as
// a block's: not Allowed, Blocked, Scope ref.Scope, the Kind of the call,
// Rule HoldRule, RetryAfter the time left of the hold (the longer one when
// both the user and the ip are held). A new Hold of a held key replaces its
// end and reason; Reset lifts it. Hold returns once the hold is stored (in
// Redis, and in this Limiter's copy): this replica refuses at once, the
// others when its EventHold reaches them, within a second at worst (see
// Event). The hold ends by the clock of Config.Now on each replica.
func (l *Limiter) Hold(ctx context.Context, ref KeyRef, d time.Duration, reason string) error {
	k, err := ref.parse()
	if err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("%w: hold duration %v", ErrBadRequest, d)
	}
	now := l.now()
	e := record{until: time.UnixMilli(now.Add(d).UnixMilli()), reason: reason}
	if err := storeRecord(ctx, l, &l.holds, k, e, false); err != nil {
		return fmt.Errorf("hold: %w", err)
	}
	l.holds.set(k, e, false, now)
	l.announceChange(ctx, Event{Type: EventHold, Scope: k.key.String(), ID: k.id, Reason: reason, Until: e.until})
	return nil
}

// storeRecord writes k's record to Redis (no-op on the memory store); on
// success the caller sets it in r.
func storeRecord[K comparable](ctx context.Context, l *Limiter, r *records[K], k K, e record, del bool) error {
	if !l.useRedis {
		return nil
	}
	rs, err := l.redis()
	if err != nil {
		return err
	}
	ctx, cancel := l.adminContext(ctx)
	defer cancel()
	r.begin(k)
	if err := r.write(ctx, rs.client, k, e, del); err != nil {
		r.abort(k)
		return err
	}
	return nil
}

// Holding reports whether an operator's hold may be in force: one atomic
// load. Held is worth calling only when it is true.
func (l *Limiter) Holding() bool { return l.holds.cur.Load() != nil }

// Held is the refusal of a decision of kind about the client whose user
// key is user and ip key is ip by a hold of either, whatever rules the
// decision would consult: a rules file's caller asks it first, so that a
// held user is refused even by a message that no rule keyed by user
// counts. Message, Messages and Handshake ask it themselves.
func (l *Limiter) Held(kind, user, ip string) (Decision, bool) {
	if !l.Holding() {
		return Decision{}, false
	}
	return l.heldMessage(kind, user, ip)
}

// heldMessage is the refusal of a message or handshake (kind) of user from
// ip by a hold, if one holds either. The caller checked that the Limiter
// knows a hold.
func (l *Limiter) heldMessage(kind, user, ip string) (Decision, bool) {
	now := l.now()
	s := l.holds.live(now)
	if s == nil {
		return Decision{}, false
	}
	u, uHeld := s.get(holdKey{userKey, user}, now)
	i, ipHeld := s.get(holdKey{ipKey, ip}, now)
	switch {
	case uHeld && ipHeld:
		until := u.until
		if i.until.After(until) {
			until = i.until
		}
		return l.heldRefusal(ScopeUser, kind, until, now), true
	case uHeld:
		return l.heldRefusal(ScopeUser, kind, u.until, now), true
	case ipHeld:
		return l.heldRefusal(ScopeIP, kind, i.until, now), true
	}
	return Decision{}, false
}

// heldCharge is the refusal of a Charge by a hold of the key of one of
// charges, the first in their order. The caller checked that the Limiter
// knows a hold.
func (l *Limiter) heldCharge(kind string, charges []Charge) (Decision, bool) {
	now := l.now()
	s := l.holds.live(now)
	if s == nil {
		return Decision{}, false
	}
	for i := range charges {
		c := &charges[i]
		if h, ok := s.get(holdKey{c.Rule.Key, c.Key}, now); ok {
			return l.heldRefusal(c.Rule.Key.String(), kind, h.until, now), true
		}
	}
	return Decision{}, false
}

func (l *Limiter) heldRefusal(scope, kind string, until, now time.Time) Decision {
	return Decision{Scope: scope, Kind: kind, RetryAfter: until.Sub(now), Blocked: true, Rule: HoldRule, Store: l.StoreName()}
}

// redis returns the Redis store, or errRedisDown before the first
// connection.
func (l *Limiter) redis() (*redisStore, error) {
	if rs := l.rs.Load(); rs != nil {
		return rs, nil
	}
	return nil, errRedisDown
}

// adminContext bounds an admin call's Redis calls: Config.Timeout, which
// is meant for decisions, but at least a second.
func (l *Limiter) adminContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, max(l.timeout, time.Second))
}
