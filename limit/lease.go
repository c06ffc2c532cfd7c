package limit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// grant is leaseScript's answer for one rule.
type grant struct {
	n       int           // units reserved; 0 means refused
	blocked bool          // refused by the rule's block key, not by its window
	ttl     time.Duration // the window's remaining life, or the refusal's retry
}

// lease reserves units for the counters of cs with size[i] > 0 (how many
// to ask for), in one round trip: one script over both keys on a standalone
// Redis, two pipelined on a Cluster, where the keys live in different
// slots. A grant whose sibling failed on a Cluster stays reserved and
// unused: it lapses with its window, which errs on the side of refusing.
// A renewal (leases.ahead) is granted what is left of a window without a
// refusal when nothing is.
func (s *redisStore) lease(ctx context.Context, cs [2]counter, size [2]int, renew bool) (g [2]grant, err error) {
	idx := leased(size)
	switch {
	case len(idx) == 0:
		return g, nil
	case len(idx) == 1 || !s.cluster:
		k := leaseOf(s.leases.buffer(), cs, size, idx, renew)
		vals, err := s.leases.do(ctx, s.client, k)
		return grantsOf(vals, err, idx)
	}
	calls := make([]call, len(idx))
	for j, i := range idx {
		calls[j] = leaseOf(call{}, cs, size, []int{i}, renew)
	}
	var errs [2]error
	for j, r := range leaseScript.exec(ctx, s.client, calls...) {
		vals, err := unframe(r)
		errs[idx[j]] = parseLease(vals, err, g[idx[j]:idx[j]+1])
	}
	return g, failure(errs)
}

// leased returns the rules (0 user, 1 IP) with units to lease in size.
func leased(size [2]int) (idx []int) {
	for i := range size {
		if size[i] > 0 {
			idx = append(idx, i)
		}
	}
	return idx
}

// grantsOf reads one leaseScript call's answer (vals, or its error err)
// for the rules idx into grants indexed by rule.
func grantsOf(vals []int64, err error, idx []int) (g [2]grant, _ error) {
	var out [2]grant
	if err := parseLease(vals, err, out[:len(idx)]); err != nil {
		return g, err
	}
	for j, i := range idx {
		g[i] = out[j]
	}
	return g, nil
}

// leaseOf appends to k (empty, maybe with room: batcher.buffer) the
// leaseScript call reserving size[i] units of cs[i], i in idx, for a
// renewal when renew is set (negative units).
func leaseOf(k call, cs [2]counter, size [2]int, idx []int, renew bool) call {
	k.args = append(k.args, strconv.Itoa(len(idx)))
	for _, i := range idx {
		c, r, units := cs[i], cs[i].rule, size[i]
		if renew {
			units = -units
		}
		k.keys = append(k.keys, c.key(), c.blockKey())
		k.args = append(k.args, r.limit, r.window, r.block, strconv.Itoa(units))
	}
	return k
}

// parseLease reads one call's (granted, ms) pairs from leaseScript into
// out; err is the error of the call.
func parseLease(vs []int64, err error, out []grant) error {
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	if len(vs) != 2*len(out) {
		return fmt.Errorf("lease: script returned %d values, want %d", len(vs), 2*len(out))
	}
	for i := range out {
		n := int(vs[2*i])
		out[i] = grant{n: max(n, 0), blocked: n < 0, ttl: time.Duration(vs[2*i+1]) * time.Millisecond}
	}
	return nil
}

// leaseEntry is this Limiter's slice of one key's window budget.
type leaseEntry struct {
	left int
	// expires is when the window the units came from ends at the latest,
	// on this process's monotonic clock.
	expires time.Time
	// gen counts the invalidations of the key's block key and the flushes.
	gen uint64
	// small counts the leases that take a single unit, after this Limiter
	// read the key's block key while it existed (see leases).
	small int
	// refill is non-nil while a call reserves units for the key: one call
	// at a time, the others wait for it.
	refill *refill
	// dry is set by a renewal that brought nothing (the window spent in
	// Redis, or a failed call): no renewal is asked for again until a
	// decision's own lease stores a grant, or every spend below half the
	// slice would send one.
	dry bool
	// touched is when a decision last looked the entry up.
	touched time.Time
	// gone marks an entry swept from the map: a Client's slot that holds
	// it looks the key up again (as memEntry's).
	gone bool
}

func (e *leaseEntry) usable(now time.Time) bool {
	return e.left > 0 && now.Before(e.expires)
}

// usable reports whether every slice of es (nil: a rule not in use) can be
// spent from now.
func usable(es [2]*leaseEntry, now time.Time) bool {
	return (es[0] == nil || es[0].usable(now)) && (es[1] == nil || es[1].usable(now))
}

// refill is a lease call under way, and the decisions waiting for it in the
// order they came. When the call succeeds, the decision that made it serves
// them from the new slices (serve) before it releases leases.mu, which the
// woken waiters need to look, so a waiter is decided at the moment the
// slices arrive, not when it next runs: with many waiters on
// one hot key (a shared client address) and busy CPUs, a waiter that ran
// late used to find the slice spent again by decisions that came after it,
// and ran out of time waiting for the next one.
type refill struct {
	done    chan struct{}
	waiters []*waiter
}

// waiter is a decision waiting for a refill: n messages over the slices
// es. Under leases.mu, serve sets granted, and gone is set once the waiter
// was served or stopped waiting, so that nothing is served to it after.
type waiter struct {
	es      [2]*leaseEntry
	n       int
	granted int
	gone    bool
}

// serve spends the slices of each waiter of r in turn, as long as all of
// its slices are usable. ls.mu is held.
func (r *refill) serve(now time.Time) {
	for _, w := range r.waiters {
		if !w.gone && usable(w.es, now) {
			w.granted, w.gone = spendFrom(w.es, w.n), true
		}
	}
}

// leases holds a Limiter's slices in ModeLease.
//
// A block ends a window early (the script drops the counter), so a slice
// must not outlive a block it has not seen. The invariant that ensures it:
// a slice is kept only if its key's block key was tracked by Redis for this
// client from a check that found no block until the lease script ran, so
// that any block set after the script reaches invalidate, on the same
// connection as the lease reply, and drops the slice. A decision therefore
// notes the key's gen before it checks the block key (through the cache,
// which makes Redis track it, or from a cached entry, which Redis still
// tracks), and keeps the units of the grant beyond its own messages only if
// gen has not moved by the time the grant is stored; otherwise it spends
// what it needs and drops the rest, and the next message checks and leases
// again.
//
// A block key that Redis deletes because it expired is announced too, and
// that announcement drops any slice taken before it: without care, the
// first slices of every window after a block would be counted in Redis and
// lost here. Three things keep them, as for a rules file's charges
// (polLeases): the lease script refuses while the block key exists, PTTL 0
// included (a key with under a millisecond left, whose deletion is yet to
// be announced); after this Limiter read a key's block key while it
// existed, its next two leases take one unit each (small: the deletion,
// when this client's own access made it, is announced right after that
// access's reply, which may come after the next lease was sent), whose
// loss costs nothing; and a decision that finds its entries' gen moved
// before it leases (the announcement came while it waited for another
// decision's lease) checks the blocks again, so that Redis tracks the block
// key for the lease it sends.
type leases struct {
	rules [2]*rule // the message rules, to read the keys in invalidations

	pol polLeases // a rules file's (policy_lease.go)

	mu         sync.Mutex
	m          map[memKey]*leaseEntry
	calls      int
	sweepEvery int

	// renewals is the renewer's queue (ahead); nil: no renewal ahead (no
	// Redis, or the renewer stopped at Close, which sets it under mu).
	renewals chan *renewal

	// woken, a test seam (nil otherwise), runs when a decision stopped
	// waiting for a refill, before it looks whether it was served: it
	// stands for a waiter that runs late.
	woken func()
}

// newLeases returns the leases of the flag message rules user and ip, and
// of a rules file's charges on keys starting with prefix, LeaseSize size.
func newLeases(user, ip *rule, prefix string, size int) *leases {
	ls := &leases{rules: [2]*rule{user, ip}, m: make(map[memKey]*leaseEntry), sweepEvery: minSweepEvery}
	ls.pol.init(prefix, size)
	return ls
}

// windowMargin is how much earlier than Redis said a slice stops being
// used: Redis answers whole milliseconds, and the two clocks may advance at
// slightly different rates.
func windowMargin(ttl time.Duration) time.Duration { return time.Millisecond + ttl/1000 }

// decide decides up to n messages that spend could not grant from the
// slices, reserving more: as many as the slices hold, or as the new grant
// allows. w, when spend queued it, waits for refill r first. Refusals come
// from Redis: the cached block check, or the script finding the window's
// budget spent.
func (ls *leases) decide(ctx context.Context, rs *redisStore, cs [2]counter, n int, r *refill, w *waiter) (Decision, error) {
	if w != nil {
		g, err := ls.await(ctx, r, w)
		if err != nil {
			return Decision{}, err
		}
		if g > 0 {
			return Decision{Allowed: true, Kind: KindMessage, Granted: g}, nil
		}
	}
check:
	for checks := 1; ; checks++ {
		es, gens := ls.entries(cs)
		if es[0] == nil && es[1] == nil {
			return Decision{Allowed: true, Kind: KindMessage, Granted: n}, nil
		}
		left, seen, err := rs.blocks(ctx, cs)
		if err != nil {
			return Decision{}, err
		}
		ls.mu.Lock()
		for i, e := range es {
			if e != nil && seen[i] {
				e.small = afterBlock
			}
		}
		ls.mu.Unlock()
		if d, refused := verdict(KindMessage, blockCounts(cs), blockOutcomes(left)); refused {
			return d, nil
		}
		d, again, err := ls.reserve(ctx, rs, cs, es, gens, n, checks < maxChecks)
		if again {
			continue check
		}
		d.answered = err == nil
		return d, err
	}
}

// reserve is decide after its block check: it spends from the slices, or
// leases what they miss, waiting for a lease under way of another decision.
// With recheck allowed, it returns again instead of leasing when a
// blocking rule's entry was invalidated since gens were read.
func (ls *leases) reserve(ctx context.Context, rs *redisStore, cs [2]counter, es [2]*leaseEntry, gens [2]uint64, n int, recheck bool) (_ Decision, again bool, _ error) {
	for {
		ls.mu.Lock()
		now := time.Now()
		var size [2]int
		var wait *refill
		moved := false
		for i, e := range es {
			switch {
			case e == nil || e.usable(now):
			case e.refill != nil:
				wait = e.refill
			case e.small > 0:
				size[i] = 1
			default:
				size[i] = cs[i].rule.lease
			}
			if e != nil && e.gen != gens[i] && cs[i].rule.Block > 0 {
				// As in polLeases.plan: any of the decision's entries.
				moved = true
			}
		}
		if wait != nil {
			w := &waiter{es: es, n: n}
			wait.waiters = append(wait.waiters, w)
			ls.mu.Unlock()
			switch g, err := ls.await(ctx, wait, w); {
			case err != nil:
				return Decision{}, false, err
			case g > 0:
				return Decision{Allowed: true, Kind: KindMessage, Granted: g}, false, nil
			}
			continue
		}
		if size == [2]int{} {
			g := spendFrom(es, n)
			ls.mu.Unlock()
			return Decision{Allowed: true, Kind: KindMessage, Granted: g}, false, nil
		}
		if moved && recheck {
			ls.mu.Unlock()
			return Decision{}, true, nil
		}
		r := &refill{done: make(chan struct{})}
		for i, e := range es {
			if size[i] > 0 {
				e.left, e.refill = 0, r
			}
		}
		ls.mu.Unlock()

		sent := time.Now()
		g, err := rs.lease(ctx, cs, size, false)

		ls.mu.Lock()
		for i, e := range es {
			if size[i] > 0 {
				e.refill = nil
			}
		}
		close(r.done) // the waiters run once ls.mu is free
		if err != nil {
			ls.mu.Unlock()
			return Decision{}, false, err
		}
		var out [2]outcome
		for i, e := range es {
			if size[i] == 0 {
				continue
			}
			if g[i].n == 0 {
				out[i] = outcome{denied: true, blocked: g[i].blocked, retry: g[i].ttl}
				if cs[i].rule.Block > 0 {
					e.small = afterBlock
				}
				continue
			}
			e.left, e.expires = g[i].n, sent.Add(g[i].ttl-windowMargin(g[i].ttl))
			e.small = max(e.small-1, 0)
			e.dry = false
		}
		// untracked drops what is left of this decision's leases whose
		// block key Redis may not have tracked all along (their gen
		// moved): the next message leases again. Only this decision's: a
		// slice another decision leased was checked by that decision, and
		// a later invalidation dropped it already.
		untracked := func() {
			for i, e := range es {
				if e != nil && size[i] > 0 && e.gen != gens[i] && cs[i].rule.Block > 0 {
					e.left = 0
				}
			}
		}
		if d, refused := verdict(KindMessage, blockCounts(cs), out); refused {
			untracked()
			ls.mu.Unlock()
			return d, false, nil
		}
		// The units granted now are Redis's for the window that is
		// current: this decision may spend them whatever came since. A
		// slice not renewed here may have been spent or expired meanwhile.
		granted := 0
		now = time.Now()
		if usable(es, now) {
			granted = spendFrom(es, n)
		}
		untracked()
		r.serve(now)
		ls.mu.Unlock()
		if granted > 0 {
			return Decision{Allowed: true, Kind: KindMessage, Granted: granted}, false, nil
		}
		if ctx.Err() != nil {
			return Decision{}, false, ctx.Err()
		}
	}
}

// errWaited marks a decision that ran out of time waiting for another
// decision's lease of the same key: that decision's own call counts for
// the node's health (failAfter), the ones that waited for it do not, or
// one slow lease with many waiters would mark the node down at once.
var errWaited = errors.New("waited for another decision's lease")

// waitedErr is the error of a decision whose ctx ended while it waited
// for another decision's lease.
func waitedErr(ctx context.Context) error {
	return fmt.Errorf("%w: %w", errWaited, ctx.Err())
}

// spend is Limiter.decide's fast path: when every enabled counter of cs has a
// usable slice, it spends up to n units from them, without a block check,
// and returns how many (0: take the full path). That is safe by the
// invariant of leases: a usable slice is dropped by the first write to its
// block key since it was granted.
//
// When the slices it misses are being refilled, by one call under way, it
// queues w (with wait; without, it returns 0 and queues nothing) to be
// served by that call (r) instead, again without a block
// check: the decision that made the call checked the missing slices'
// block keys, its lease script refuses while one exists, and serve gives
// w units only while w's other slices are still usable. A shared client
// address's slice is refilled while most of its messages arrive; this
// spares each of them a block check. w not served (the call failed or was
// refused, or a slice was dropped meanwhile) takes the full path.
// Limiter.decide calls it before it makes the deadline of a call, which
// most decisions never need.
func (ls *leases) spend(cs [2]counter, n int, wait bool) (_ int, r *refill, w *waiter) {
	now := time.Now()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var es [2]*leaseEntry
	for i, c := range cs {
		if !c.enabled() {
			continue
		}
		e := ls.lookup(c)
		switch {
		case e == nil:
			return 0, nil, nil
		case e.usable(now):
			// Spent even while a renewal is under way.
		case e.refill != nil && wait && (r == nil || r == e.refill):
			r = e.refill
		default:
			return 0, nil, nil
		}
		es[i] = e
	}
	if es[0] == nil && es[1] == nil {
		return 0, nil, nil
	}
	ls.tick(now)
	for _, e := range es {
		if e != nil {
			e.touched = now
		}
	}
	if r != nil {
		w = &waiter{es: es, n: n}
		r.waiters = append(r.waiters, w)
		return 0, r, w
	}
	g := spendFrom(es, n)
	ls.ahead(cs, es)
	return g, nil, nil
}

// renewMin is the smallest slice renewed ahead: a smaller one is a key
// with a small budget (LeaseSize defaults to a tenth of the limit), which
// a second slice held would take a large part of, and whose messages are
// too few to queue behind its refills.
const renewMin = 16

// renewal is a lease for a slice still in use, made by the renewer
// (Limiter.renewSlices) off the decisions' path. A busy key's slice (a
// shared client address's) runs out many times a second; every decision
// that finds it spent waits for the refill, and the relay hands the rest of
// its batch to other workers meanwhile. A slice that a spend takes below
// half its size is therefore renewed while its last units are spent, and
// the renewal's units join the slice.
//
// The renewal needs no block check: the slice was usable when it was
// asked for, so its block key was tracked from the check that preceded
// its grant, and any write to the block key since reaches
// invalidate before the renewal's reply, moving gen, which drops the
// grant (renewed). Its script grants what is left of the window and
// refuses nothing: no message has gone over the limit yet, and the first
// that does takes the full path, whose lease refuses and blocks. While it
// is under way the entry's refill is its r, so that no other call leases
// it and the decisions that find the slice spent wait for it (spend,
// reserve) as for any refill. Its arrays are indexed by rule, as a
// decision's, with only the renewed rule's set (renewAll and renewed take
// either).
type renewal struct {
	r    *refill
	cs   [2]counter // the keys, without a Client's pointers
	es   [2]*leaseEntry
	gens [2]uint64
	size [2]int
}

// ahead asks the renewer for the renewal of each slice of es that is below
// half its size, when none is under way for it: a renewal of its own for
// each slice, so that one key's call (a Cluster node that does not answer)
// never holds another's. A renewer that is behind (its queue full) or
// stopped is not waited for: the slices run out and a decision leases
// them. ls.mu is held.
func (ls *leases) ahead(cs [2]counter, es [2]*leaseEntry) {
	for i, e := range es {
		size := cs[i].rule.lease
		if ls.renewals == nil || e == nil || e.refill != nil || e.small > 0 || e.dry || size < renewMin || 2*e.left >= size {
			continue
		}
		rn := &renewal{r: &refill{done: make(chan struct{})}}
		rn.cs[i] = counter{rule: cs[i].rule, id: cs[i].id, blk: cs[i].blk}
		rn.es[i], rn.gens[i], rn.size[i] = e, e.gen, size
		select {
		case ls.renewals <- rn:
			e.refill = rn.r
		default:
			return
		}
	}
}

// renewQueue bounds the renewals asked for and not yet made.
const renewQueue = 64

// renewSlices makes the renewals that decisions ask for (leases.ahead)
// until Close: what is queued when it looks, in one call (renewAll). At
// Close it stops taking renewals, and those still queued end unmade: their
// waiters take the full path, which fails once the client is closed.
func (l *Limiter) renewSlices() {
	defer l.wg.Done()
	ls := l.lease
	queue := ls.renewals
	var batch []*renewal
	for {
		select {
		case rn := <-queue:
			batch = append(batch[:0], rn)
		more:
			for len(batch) < groupMax {
				select {
				case rn := <-queue:
					batch = append(batch, rn)
				default:
					break more
				}
			}
			l.renewAll(batch)
			clear(batch)
		case <-l.stop:
			ls.mu.Lock()
			ls.renewals = nil // ahead asks for none from now on
			ls.mu.Unlock()
			for {
				select {
				case rn := <-queue:
					ls.renewed(rn, [2]grant{}, errRedisDown, time.Time{})
				default:
					return
				}
			}
		}
	}
}

// renewAll makes the renewals of batch: in one leaseScript call on a
// standalone Redis, which the next renewals wait for; on a Cluster, where
// their keys are in different slots, each in a call of its own, on a
// goroutine of its own that the renewer does not wait for, so that a node
// that does not answer holds only its own renewals. The renewals of a busy
// gate come faster than one call at a time answers: at 500 busy
// connections, each with a user slice to renew, the shared address's
// renewal queued behind theirs and its slice ran out. A renewal whose slices were dropped while it was queued
// (gen moved), or whose node is marked down, is not sent. A failure is not
// counted against the node: a decision that needs the slice leases it, and
// its call counts.
func (l *Limiter) renewAll(batch []*renewal) {
	rs := l.rs.Load()
	send := batch[:0:0]
	down := func(rn *renewal) bool {
		for i, e := range rn.es {
			if e != nil && rs.health.of(rn.cs[i].id).isDown() {
				return true
			}
		}
		return false
	}
	for _, rn := range batch {
		switch {
		case rs == nil || down(rn):
			l.lease.renewed(rn, [2]grant{}, errRedisDown, time.Time{})
		case l.lease.stale(rn):
			l.lease.renewed(rn, [2]grant{}, errStale, time.Time{})
		default:
			send = append(send, rn)
		}
	}
	if len(send) == 0 {
		return
	}
	sent := time.Now()
	if rs.cluster {
		for _, rn := range send {
			l.wg.Add(1) // the renewer's own count keeps it above zero
			go func() {
				defer l.wg.Done()
				ctx, cancel := context.WithTimeout(l.bg, l.timeout)
				g, err := rs.lease(ctx, rn.cs, rn.size, true)
				cancel()
				l.lease.renewed(rn, g, err, sent)
			}()
		}
		return
	}
	ctx, cancel := context.WithTimeout(l.bg, l.timeout)
	defer cancel()
	var k call
	for _, rn := range send {
		k = leaseOf(k, rn.cs, rn.size, leased(rn.size), true)
	}
	parts, err := unframed(leaseScript.one(ctx, rs.client, k), len(send))
	for j, rn := range send {
		var vals []int64
		if err == nil {
			vals = parts[j]
		}
		g, err := grantsOf(vals, err, leased(rn.size))
		l.lease.renewed(rn, g, err, sent)
	}
}

// errStale is the error of a renewal whose slices were dropped while it
// was queued.
var errStale = errors.New("renewal of a dropped slice")

// stale reports whether a slice of rn was dropped (an invalidation, a
// flush, a reset) since rn was asked for: its grant would be dropped too.
func (ls *leases) stale(rn *renewal) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for i, e := range rn.es {
		if e != nil && e.gen != rn.gens[i] {
			return true
		}
	}
	return false
}

// renewed stores the grants g of renewal rn (err: its call's error, sent:
// when it was sent) and serves the decisions that waited for it. Units of
// the window a slice is from join it; units of a new window (the old one
// ended while the call was under way) replace it.
func (ls *leases) renewed(rn *renewal, g [2]grant, err error, sent time.Time) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	now := time.Now()
	for i, e := range rn.es {
		if e == nil {
			continue
		}
		e.refill = nil
		if e.gen != rn.gens[i] {
			continue
		}
		if err != nil || g[i].n == 0 {
			e.dry = true
			continue
		}
		expires := sent.Add(g[i].ttl - windowMargin(g[i].ttl))
		if now.Before(e.expires) && expires.Before(e.expires.Add(rn.cs[i].rule.Window/2)) {
			e.left += g[i].n
		} else {
			e.left, e.expires = g[i].n, expires
		}
	}
	close(rn.r.done)
	rn.r.serve(now)
}

// lookup returns the entry of c, or nil. c's slot, when it has one, holds
// a Client's pointer to the entry: used while the entry is in the map, set
// to what the map holds otherwise. ls.mu is held.
func (ls *leases) lookup(c counter) *leaseEntry {
	if c.lease != nil {
		if e := *c.lease; e != nil && !e.gone {
			return e
		}
	}
	e := ls.m[memKey{c.rule, c.id}]
	if c.lease != nil {
		*c.lease = e
	}
	return e
}

// await waits for refill r to serve w, or for ctx to end, and returns the
// units w was granted: 0 with a nil error means w was not served, and its
// decision looks again.
func (ls *leases) await(ctx context.Context, r *refill, w *waiter) (int, error) {
	select {
	case <-r.done:
	case <-ctx.Done():
	}
	if ls.woken != nil {
		ls.woken()
	}
	ls.mu.Lock()
	g := w.granted
	w.gone = true
	ls.mu.Unlock()
	switch {
	case g > 0:
		// Served even if ctx ended since: the units are spent.
		return g, nil
	case ctx.Err() != nil:
		return 0, waitedErr(ctx)
	}
	return 0, nil
}

// spendFrom takes up to n units from every slice of es (nil: a rule not in
// use) and returns how many: as many as the smallest one holds. ls.mu is
// held.
func spendFrom(es [2]*leaseEntry, n int) int {
	g := n
	for _, e := range es {
		if e != nil {
			g = min(g, e.left)
		}
	}
	g = max(g, 0)
	for _, e := range es {
		if e != nil {
			e.left -= g
		}
	}
	return g
}

// entries returns the entries of the enabled counters of cs, created when
// missing, and their generations. An entry is swept only after leaseIdle
// without a decision, far longer than a decision may take, so the entries
// outlive the decision that looked them up.
func (ls *leases) entries(cs [2]counter) (es [2]*leaseEntry, gens [2]uint64) {
	now := time.Now()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.tick(now)
	for i, c := range cs {
		if c.enabled() {
			e := ls.lookup(c)
			if e == nil {
				e = &leaseEntry{}
				ls.m[memKey{c.rule, c.id}] = e
				if c.lease != nil {
					*c.lease = e
				}
			}
			e.touched = now
			es[i], gens[i] = e, e.gen
		}
	}
	return es, gens
}

// invalidate is the rueidis OnInvalidations callback, called in order with
// the replies of the connection that carried the push: the slices of the
// keys whose block key changed are dropped, and on a flush (nil), which
// rueidis also reports when a connection closes, every slice that needs
// tracking.
func (ls *leases) invalidate(keys []rueidis.RedisMessage) {
	if keys == nil {
		ls.flush()
		return
	}
	blocks := make([]string, 0, len(keys))
	for _, m := range keys {
		if k, err := m.ToString(); err == nil && strings.HasSuffix(k, "}:blk") {
			blocks = append(blocks, k)
		}
	}
	ls.mu.Lock()
	for _, k := range blocks {
		k = strings.TrimSuffix(k, "}:blk")
		for _, r := range ls.rules {
			if id, ok := strings.CutPrefix(k, r.prefix); ok {
				if e := ls.m[memKey{r, id}]; e != nil {
					e.left = 0
					e.gen++
				}
			}
		}
	}
	ls.mu.Unlock()
	ls.pol.invalidate(blocks)
}

// flush drops every slice of a rule that blocks, a flag rule or a rules
// file's: Redis may have stopped tracking their block keys (a connection
// closed, a node failed). The slices of a rule without block need no
// tracking: its windows end only with their TTL.
func (ls *leases) flush() {
	ls.mu.Lock()
	for k, e := range ls.m {
		if k.rule.Block > 0 {
			e.left = 0
			e.gen++
		}
	}
	ls.mu.Unlock()
	ls.pol.flush()
}

// leaseIdle is how long an entry with nothing usable stays after its last
// decision.
const leaseIdle = time.Minute

// tick counts a decision and every sweepEvery decisions drops the entries
// with nothing usable, no call in flight and no decision for leaseIdle, as
// the memory store does.
func (ls *leases) tick(now time.Time) {
	if ls.calls++; ls.calls < ls.sweepEvery {
		return
	}
	for k, e := range ls.m {
		if e.refill == nil && !e.usable(now) && now.Sub(e.touched) > leaseIdle {
			e.gone = true
			delete(ls.m, k)
		}
	}
	ls.calls = 0
	ls.sweepEvery = max(minSweepEvery, len(ls.m))
}
