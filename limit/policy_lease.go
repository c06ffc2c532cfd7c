package limit

import (
	"context"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/holo/wsgate/policy"
)

// leasable reports whether charge c is decided from slices in ModeLease: a
// rule that counts messages or bytes, in fixed or GCRA windows. Handshake
// rules and guards are counted exactly.
func leasable(c *Charge) bool {
	return !c.GuardOnly && c.Rule.Count != policy.CountHandshakes && len(c.Limits) > 0
}

// anyLeasable reports whether a charge of cs is leasable.
func anyLeasable(cs []Charge) bool {
	for i := range cs {
		if leasable(&cs[i]) {
			return true
		}
	}
	return false
}

// polLeaseKey names the slices of one rule's key value. It holds the
// *policy.Rule: a reload makes new rules, so its decisions start new
// slices, and the old rule's are dropped (polLeases.entries).
type polLeaseKey struct {
	rule *policy.Rule
	key  string // Charge.Key as given
}

// polLease is this Limiter's slices of one rule's key value, one per window
// (length and limit: a tier's limits are slices of their own) it was
// charged under.
type polLease struct {
	id       polLeaseKey
	blockKey string // the rule's block key of the key value, in Redis
	// gen counts the drops of the slices: invalidations of blockKey,
	// flushes, resets.
	gen uint64
	// small counts the leases that take only what their decision spends,
	// after this Limiter read blockKey while it existed: its deletion at
	// expiry is announced too, and when this Limiter's own access deleted
	// it, right after that access's reply, which may come after the next
	// lease was sent (see leases). Two such leases, each by a decision
	// that waits for the one before, leave the announcement behind.
	small int
	// refill is non-nil while a call reserves units for a window of the
	// entry, and closed when it returns: one call at a time, the others
	// wait, so that the entry holds at most a slice per window.
	refill  chan struct{}
	touched time.Time // when a decision last looked the entry up
	slices  []*polSlice
}

// maxSlices is how many windows an entry keeps before it reuses the slot
// of one whose window ended.
const maxSlices = 8

// polSlice is this Limiter's slice of one window's budget.
//
// A GCRA window's slice is units that the script charged to the window's
// TAT (theoretical arrival time) when it reserved them, out of what the
// burst allowed then: spending them can never pass more than the rate over
// time. Spent later than their place in the TAT, they could pass above the
// burst (the exact path would have let the TAT fall back to the present
// meanwhile, and charged them from there), so the slice keeps tat, the TAT
// the exact path would have after this Limiter's events, and end, the TAT
// that Redis holds for them; the next reservation of the window moves the
// TAT in Redis by the difference (correction) before it decides. With one
// replica, Redis then holds what the exact path would, and every event
// spent from a slice is one that the exact path would allow (the slice
// was within the burst when reserved, and its units are charged from tat
// on): leasing changes no decision. Other replicas see this Limiter's
// lateness only at its next reservation: at most a slice.
type polSlice struct {
	per   time.Duration
	limit int64
	left  int64 // units
	// expires is when the window the units came from ends at the latest,
	// on this process's monotonic clock; zero when dropped. A GCRA slice
	// expires at the later of the TAT's lead when reserved and the
	// window's length: its units were charged when reserved, so a longer
	// life adds no event, only lateness that correction accounts for, and
	// it lets a key far below its rate, whose TAT leads by a few intervals
	// at most, spend its slice without a round trip.
	expires time.Time
	// epoch counts the grants stored and the drops: units claimed by a
	// decision go back to the slice only when it has not changed since.
	epoch uint64

	// GCRA only: perUnit is a unit's interval in ns; tat and end are as
	// above, zero when dropped or sent as a correction.
	gcra     bool
	perUnit  float64
	tat, end time.Time
}

// take spends units of s at now: a GCRA slice charges them from its tat,
// or from now if the TAT has fallen back to the present, as the exact path
// does.
func (s *polSlice) take(now time.Time, units int64) {
	s.left -= units
	if s.gcra && units > 0 {
		s.tat = later(s.tat, now).Add(s.interval(units))
	}
}

// give gives back units that take spent.
func (s *polSlice) give(units int64) {
	s.left += units
	if s.gcra && !s.tat.IsZero() {
		s.tat = s.tat.Add(-s.interval(units))
	}
}

// interval is the time units take to drain from a GCRA window, rounded up.
func (s *polSlice) interval(units int64) time.Duration {
	return time.Duration(math.Ceil(float64(units) * s.perUnit))
}

// correction returns the units by which the next reservation moves the
// window's TAT in Redis, as of now, and forgets them: positive when this
// Limiter spent units after the TAT had fallen back to the present,
// negative for the units of the slice that were neither spent nor
// drained (those above both tat and now, below end). Zero for a fixed
// window and a dropped slice.
func (s *polSlice) correction(now time.Time) float64 {
	if !s.gcra || s.end.IsZero() {
		return 0
	}
	d := later(s.tat, now).Sub(later(s.end, now))
	s.tat, s.end = time.Time{}, time.Time{}
	return float64(d) / s.perUnit
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// usable reports whether the slice may decide an event of unit cost.
func (s *polSlice) usable(now time.Time, unit int64) bool {
	return now.Before(s.expires) && s.left >= unit
}

func (s *polSlice) drop() {
	s.left, s.expires = 0, time.Time{}
	s.tat, s.end = time.Time{}, time.Time{}
	s.epoch++
}

// find returns the slice of window w, or nil.
func (e *polLease) find(w policy.Window) *polSlice {
	for _, s := range e.slices {
		if s.per == w.Per && s.limit == w.Limit {
			return s
		}
	}
	return nil
}

// slice returns the slice of window w of rule r, made when missing.
func (e *polLease) slice(r *policy.Rule, w policy.Window, now time.Time) *polSlice {
	if s := e.find(w); s != nil {
		return s
	}
	fresh := polSlice{per: w.Per, limit: w.Limit, gcra: r.Algorithm == policy.GCRA,
		perUnit: float64(w.Per) / float64(max(w.Limit, 1))}
	if len(e.slices) >= maxSlices {
		for _, s := range e.slices {
			if !now.Before(s.expires) {
				// A claim on it (whose window ended meanwhile) must not
				// come back to another window.
				fresh.epoch = s.epoch + 1
				*s = fresh
				return s
			}
		}
	}
	s := &fresh
	e.slices = append(e.slices, s)
	return s
}

func (e *polLease) drop() {
	e.gen++
	for _, s := range e.slices {
		s.drop()
	}
}

// usable reports whether a slice of e may still decide something.
func (e *polLease) usable(now time.Time) bool {
	for _, s := range e.slices {
		if now.Before(s.expires) {
			return true
		}
	}
	return false
}

// polLeases holds a Limiter's slices of a rules file's charges in
// ModeLease, under the invariant of leases: a slice of a rule with a block
// is kept only if its block key was tracked by Redis for this client from
// a check that found no block until the script that granted it ran, so
// that a block set afterwards drops it (invalidate) before any later
// decision. A slice of a rule without block needs no tracking: its window
// ends only with its TTL, or by Reset, which drops the slices of its key on
// every replica.
//
// A decision that goes to Redis claims what it needs of the slices it
// holds before the call (so no other decision spends them meanwhile), and
// after the reply spends what the script granted and gives back the rest,
// unless the slice was dropped or renewed since. An event is spent from a
// claim taken while its slice was usable and the script found no block
// after it, so it passed before any block that drops the slice later.
//
// A block's end is announced too (Redis deletes the expired block key at
// its next access, or in its expiry cycle, and tells the clients that
// track it), and that announcement drops any slice taken before it. Three
// things keep the first slices of the next window: the script refuses a
// lease while the block key exists, PTTL 0 included; after this Limiter saw
// the block, its next two leases take only what their decision spends
// (polLease.small); and a decision whose entries' gen moved before it
// leases checks the blocks again (charge).
type polLeases struct {
	prefix string // of the Redis keys
	size   int64  // Config.LeaseSize

	// beforeCall, when set by a test, runs before a decision's script is
	// sent, after its block check.
	beforeCall func()

	mu         sync.Mutex
	m          map[polLeaseKey]*polLease
	byBlock    map[string]*polLease // by blockKey: what an invalidation names
	calls      int
	sweepEvery int
}

func (pl *polLeases) init(prefix string, size int) {
	pl.prefix, pl.size = prefix, int64(size)
	pl.m = make(map[polLeaseKey]*polLease)
	pl.byBlock = make(map[string]*polLease)
	pl.sweepEvery = minSweepEvery
}

// units is how many units one lease of window w of charge c reserves: the
// Config.LeaseSize of a message rule, else a tenth of the window's limit,
// at least 1 and at most the limit (a GCRA window's burst). (A byte rule's
// slice is always a tenth of its byte limit; the script reserves at least
// what the decision spends, and at most what the window allows then.)
func (pl *polLeases) units(c *Charge, w policy.Window) int64 {
	size := max(1, w.Limit/10)
	if pl.size > 0 && c.Rule.Count == policy.CountMessages {
		size = pl.size
	}
	most := w.Limit
	if c.Rule.Algorithm == policy.GCRA {
		most = gcraBurst(c.Rule, w)
	}
	return max(1, min(size, most))
}

// spendSlot is a slice the fast path spends from, and the cost of an event.
type spendSlot struct {
	s    *polSlice
	unit int64
}

// spend is Charge's fast path in ModeLease: when every charge is leasable
// and every window of every charge has a usable slice, it spends up to n
// events from them, without a block check, and returns how many (0: take
// the full path). That is safe by polLeases' invariant. It allocates
// nothing.
func (pl *polLeases) spend(cs []Charge, n int, bytes int64) int {
	now := time.Now()
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var buf [16]spendSlot
	ss := buf[:0]
	g := int64(n)
	for i := range cs {
		c := &cs[i]
		if !leasable(c) {
			return 0
		}
		e := pl.m[polLeaseKey{c.Rule, c.Key}]
		if e == nil || e.refill != nil {
			return 0
		}
		unit := cost(c, bytes)
		for _, w := range c.Limits {
			s := e.find(w)
			if s == nil || !s.usable(now, unit) {
				return 0
			}
			if unit > 0 {
				g = min(g, s.left/unit)
			}
			ss = append(ss, spendSlot{s, unit})
		}
		e.touched = now
	}
	pl.tick(now)
	for _, x := range ss {
		x.s.take(now, g*x.unit)
	}
	return int(g)
}

// entries returns the entries of the leasable charges of cs (whose key
// values in Redis are ids), made when missing, nil for the others, and
// their generations. A new entry of a block key that an entry of another
// *policy.Rule holds (a reload) replaces it and drops its slices. An entry
// is swept only after leaseIdle without a decision, far longer than a
// decision may take, so the entries outlive the decision that looked them
// up.
func (pl *polLeases) entries(cs []Charge, ids []string) (es []*polLease, gens []uint64) {
	now := time.Now()
	es, gens = make([]*polLease, len(cs)), make([]uint64, len(cs))
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.tick(now)
	for i := range cs {
		c := &cs[i]
		if !leasable(c) {
			continue
		}
		k := polLeaseKey{c.Rule, c.Key}
		e := pl.m[k]
		if e == nil {
			bk := blockKeyOf(pl.prefix, c, ids[i])
			if old := pl.byBlock[bk]; old != nil {
				old.drop()
				delete(pl.m, old.id)
			}
			e = &polLease{id: k, blockKey: bk}
			pl.m[k] = e
			pl.byBlock[bk] = e
		}
		e.touched = now
		es[i], gens[i] = e, e.gen
	}
	return es, gens
}

// leaseWin is one window of a leasable charge in a decision that goes to
// Redis.
type leaseWin struct {
	e    *polLease
	s    *polSlice
	unit int64 // what one event costs
	// lease is chargeScript's lease argument: -1 when the window is decided
	// from claim, else the units to reserve.
	lease int64
	claim int64
	epoch uint64 // s.epoch when claimed
}

// leasePlan is what a decision that goes to Redis takes from the slices and
// asks of the script.
type leasePlan struct {
	lease [][]int64 // chargeScript's lease arguments, by charge; nil: exact
	// back holds the GCRA windows' corrections, by charge, as lease does.
	back  [][]float64
	wins  []leaseWin
	n     int  // events the claims allow, at most those asked about
	exact bool // some charge is counted exactly
	// reserve is true when some window needs a new slice; done is then
	// the entries' refill.
	reserve bool
	done    chan struct{}
}

// plan claims the slices of the charges' windows that can decide an event,
// up to n events' worth, and marks the others to be leased, with their
// entries' refill. It returns instead the refill to wait for when a call
// reserves units for one of the entries, or, when recheck is true and an
// entry's gen moved since gens, neither (nil, nil): the block check must be
// made again, or the slices this decision would lease could not be kept.
func (pl *polLeases) plan(cs []Charge, es []*polLease, gens []uint64, n int, bytes int64, recheck bool) (*leasePlan, chan struct{}) {
	now := time.Now()
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for i, e := range es {
		switch {
		case e == nil:
		case e.refill != nil:
			return nil, e.refill
		case recheck && e.gen != gens[i]:
			return nil, nil
		}
	}
	p := &leasePlan{lease: make([][]int64, len(cs)), back: make([][]float64, len(cs))}
	bound := int64(n)
	for i := range cs {
		c, e := &cs[i], es[i]
		if e == nil {
			p.exact = true
			continue
		}
		unit := cost(c, bytes)
		p.lease[i] = make([]int64, len(c.Limits))
		p.back[i] = make([]float64, len(c.Limits))
		for j, w := range c.Limits {
			s := e.slice(c.Rule, w, now)
			x := leaseWin{e: e, s: s, unit: unit, epoch: s.epoch}
			if s.usable(now, unit) {
				x.lease = -1
				if unit > 0 {
					x.claim = min(s.left, int64(n)*unit)
					bound = min(bound, x.claim/unit)
				}
				s.take(now, x.claim)
			} else {
				// Sent once: if the call fails, the correction is lost
				// with the slice.
				p.back[i][j] = s.correction(now)
				x.lease = pl.units(c, w)
				if e.small > 0 {
					// The block key's deletion may drop the slice at once.
					x.lease = 1
				}
				p.reserve = true
			}
			p.lease[i][j] = x.lease
			p.wins = append(p.wins, x)
		}
	}
	p.n = int(bound)
	if !p.reserve && !p.exact {
		// Slices renewed by a call this decision waited for.
		settle(p, p.n)
		return p, nil
	}
	if p.reserve {
		p.done = make(chan struct{})
		for _, x := range p.wins {
			if x.lease > 0 {
				x.e.refill = p.done
			}
		}
	}
	return p, nil
}

// settle spends granted events from the claims of p and gives back the
// rest to slices that were neither dropped nor renewed since. pl.mu is
// held.
func settle(p *leasePlan, granted int) {
	for _, x := range p.wins {
		if x.lease >= 0 {
			continue
		}
		if rest := x.claim - int64(granted)*x.unit; rest > 0 && x.s.epoch == x.epoch {
			x.s.give(rest)
		}
	}
}

// charge decides n events of cs (key values ids, at least one charge
// leasable) in ModeLease when the fast path could not: a cached block
// check, then one chargeScript call (one per slot group on a Cluster, for
// the groups with something to reserve or count) that reserves the missing
// slices, counts the exact charges, and decides exactly, blocks and
// strikes included, when a window has no event left in Redis. With an
// error, failed says which charges' calls failed (nil: all of them).
func (pl *polLeases) charge(ctx context.Context, rs *redisStore, kind string, cs []Charge, ids []string, n int, bytes int64) (Decision, []bool, error) {
check:
	for checks := 1; ; checks++ {
		es, gens := pl.entries(cs, ids)
		seen := make([]bool, len(cs))
		first, left, failed, err := rs.chargeBlocked(ctx, pl.prefix, cs, ids, seen)
		if err != nil {
			return Decision{}, failed, err
		}
		pl.mu.Lock()
		for i, e := range es {
			if e != nil && seen[i] {
				e.small = afterBlock
			}
		}
		pl.mu.Unlock()
		if first >= 0 {
			return policyRefusal(&cs[first], kind, true, left, 0), nil, nil
		}
		for {
			// An invalidation since the entries' gens were read (the
			// announced deletion of a block key that expired, most often,
			// while this decision waited for another's lease) means Redis
			// may no longer track the block key: checked again, the slices
			// leased next are kept.
			p, wait := pl.plan(cs, es, gens, n, bytes, checks < maxChecks)
			switch {
			case wait != nil:
				select {
				case <-wait:
					continue
				case <-ctx.Done():
					return Decision{}, nil, waitedErr(ctx)
				}
			case p == nil:
				continue check
			case !p.reserve && !p.exact:
				return Decision{Allowed: true, Kind: kind, Granted: p.n}, nil, nil
			}
			d, failed, err := pl.run(ctx, rs, kind, cs, ids, es, gens, p, bytes)
			d.answered = err == nil
			return d, failed, err
		}
	}
}

// maxChecks bounds the block checks of one decision (see charge).
const maxChecks = 3

// afterBlock is how many leases take only what their decision spends after
// a block was seen (polLease.small).
const afterBlock = 2

// run makes the calls of plan p and applies their answers: the slices
// reserved are stored (kept beyond what this decision spends only when
// their entry's gen did not move since gens, read before the block
// check), the claims are spent or given back, and on a Cluster the exact
// charges of groups that counted are refunded when another group refused
// or failed.
func (pl *polLeases) run(ctx context.Context, rs *redisStore, kind string, cs []Charge, ids []string, es []*polLease, gens []uint64, p *leasePlan, bytes int64) (Decision, []bool, error) {
	groups := rs.slotGroups(ids)
	n := p.n
	if len(groups) > 1 {
		// As in chargeSlots: each group decides on its own, one event.
		n = 1
	}
	// needs reports whether charge i has something for the script to do.
	needs := func(i int) bool {
		if es[i] == nil {
			return true
		}
		for _, l := range p.lease[i] {
			if l > 0 {
				return true
			}
		}
		return false
	}
	var calls []call
	var called [][]int
	for _, g := range groups {
		for _, i := range g {
			if needs(i) {
				calls = append(calls, chargeCall(call{}, pl.prefix, cs, ids, g, n, bytes, p.lease, p.back))
				called = append(called, g)
				break
			}
		}
	}
	if pl.beforeCall != nil {
		pl.beforeCall()
	}
	sent := time.Now()
	res := chargeScript.exec(ctx, rs.client, calls...)

	var failed []bool
	var err error
	refusal, out := -1, chargeResult{}
	outs := make([]chargeResult, len(calls))
	ok := make([]bool, len(calls))
	granted := n
	for g, r := range res {
		leases := 0
		for _, i := range called[g] {
			for _, l := range p.lease[i] {
				if l > 0 {
					leases++
				}
			}
		}
		vals, e := unframe(r)
		o, e := parseCharge(vals, e, leases)
		switch {
		case e != nil:
			if failed == nil {
				failed, err = make([]bool, len(cs)), e
			}
			for _, i := range called[g] {
				failed[i] = true
			}
		case o.refused == 0:
			outs[g], ok[g] = o, true
			granted = min(granted, o.granted)
		default:
			i := called[g][o.refused-1]
			if refusal < 0 || o.blocked && !out.blocked || o.blocked == out.blocked && i < refusal {
				refusal, out = i, o
			}
		}
	}
	if refusal >= 0 || err != nil {
		granted = 0
	}

	pl.mu.Lock()
	for _, x := range p.wins {
		if x.e.refill == p.done {
			x.e.refill = nil
		}
	}
	if p.done != nil {
		close(p.done)
	}
	// The slices reserved by the groups that granted are this Limiter's,
	// whatever the others answered.
	for g, o := range outs {
		if !ok[g] {
			continue
		}
		leased := o.leased
		for _, i := range called[g] {
			if es[i] == nil {
				continue
			}
			if slices.ContainsFunc(p.lease[i], func(l int64) bool { return l > 0 }) {
				es[i].small = max(es[i].small-1, 0)
			}
			for j := range p.lease[i] {
				if p.lease[i][j] <= 0 {
					continue
				}
				x := p.win(i, j, cs)
				units := leased[0]
				s := x.s
				var carry int64
				if !s.gcra && s.epoch == x.epoch && sent.Before(s.expires) {
					// A fixed window's units left over, fewer than an
					// event costs: Redis counted them with their slice, in
					// this window, so they stay this Limiter's. (A GCRA
					// slice's go back as the correction.)
					carry = max(s.left, 0)
				}
				s.epoch++
				s.left = carry + units - int64(granted)*x.unit
				if s.gcra {
					// leased[1] is the TAT's lead after the reservation,
					// in µs: the unspent units are its last.
					lead := time.Duration(leased[1]) * time.Microsecond
					s.end = sent.Add(lead)
					s.tat = s.end.Add(-s.interval(s.left))
					s.expires = sent.Add(max(lead, s.per))
				} else {
					ttl := time.Duration(leased[1]) * time.Millisecond
					s.expires = sent.Add(ttl - windowMargin(ttl))
				}
				leased = leased[2:]
				if x.e.gen != gens[i] {
					// Not tracked all along: only this decision spends it.
					s.left, s.expires = 0, time.Time{}
					s.tat, s.end = time.Time{}, time.Time{}
				}
			}
		}
	}
	if refusal >= 0 && len(cs[refusal].Rule.Block) > 0 && es[refusal] != nil {
		es[refusal].small = afterBlock
	}
	settle(p, granted)
	pl.mu.Unlock()

	if len(calls) > 1 && (refusal >= 0 || err != nil) {
		pl.refund(ctx, rs, cs, ids, es, called, ok, bytes, &failed, &err)
	}
	if err != nil {
		return Decision{}, failed, err
	}
	if refusal >= 0 {
		return policyRefusal(&cs[refusal], kind, out.blocked, out.retry, out.limit), nil, nil
	}
	return Decision{Allowed: true, Kind: kind, Granted: granted}, nil, nil
}

// win returns the leaseWin of window j of charge i: p.wins lists the
// windows of the leasable charges in order.
func (p *leasePlan) win(i, j int, cs []Charge) *leaseWin {
	k := 0
	for c := range i {
		if p.lease[c] != nil {
			k += len(cs[c].Limits)
		}
	}
	return &p.wins[k+j]
}

// refund takes back the event that the exact charges of the groups that
// granted counted, when another group refused or failed; a failed refund
// fails its charges.
func (pl *polLeases) refund(ctx context.Context, rs *redisStore, cs []Charge, ids []string, es []*polLease, called [][]int, ok []bool, bytes int64, failed *[]bool, err *error) {
	var back []call
	var of []int
	for g, granted := range ok {
		if !granted {
			continue
		}
		var exact []int
		for _, i := range called[g] {
			if es[i] == nil {
				exact = append(exact, i)
			}
		}
		if k, counts := refundCall(pl.prefix, cs, ids, exact, bytes); counts {
			back, of = append(back, k), append(of, g)
		}
	}
	if len(back) == 0 {
		return
	}
	for j, r := range chargeRefundScript.exec(ctx, rs.client, back...) {
		if e := r.Error(); e != nil {
			if *failed == nil {
				*failed, *err = make([]bool, len(cs)), e
			}
			for _, i := range called[of[j]] {
				(*failed)[i] = true
			}
		}
	}
}

// invalidate drops the slices of the entries whose block key is among
// keys.
func (pl *polLeases) invalidate(keys []string) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, k := range keys {
		if e := pl.byBlock[k]; e != nil {
			e.drop()
		}
	}
}

// flush drops the slices of every rule that blocks: Redis may have stopped
// tracking their block keys (a connection closed, a node failed). The
// slices of a rule without block need no tracking (polLeases), and
// dropping them would lose units Redis has already counted.
func (pl *polLeases) flush() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, e := range pl.m {
		if len(e.id.rule.Block) > 0 {
			e.drop()
		}
	}
}

// drop drops the slices of every rule keyed by k's kind for k's value.
func (pl *polLeases) drop(k holdKey) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for id, e := range pl.m {
		if id.rule.Key == k.key && id.key == k.id {
			e.drop()
		}
	}
}

// tick counts a decision and every sweepEvery decisions drops the entries
// with nothing usable, no call in flight and no decision for leaseIdle.
func (pl *polLeases) tick(now time.Time) {
	if pl.calls++; pl.calls < pl.sweepEvery {
		return
	}
	for k, e := range pl.m {
		if e.refill == nil && !e.usable(now) && now.Sub(e.touched) > leaseIdle {
			delete(pl.m, k)
			if pl.byBlock[e.blockKey] == e {
				delete(pl.byBlock, e.blockKey)
			}
		}
	}
	pl.calls = 0
	pl.sweepEvery = max(minSweepEvery, len(pl.m))
}
