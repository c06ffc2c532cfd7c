package limit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// leaseSrc reserves units of one or two rules' window budgets. KEYS holds
// (counter, block key) pairs and ARGV (limit, window ms, block ms, lease)
// quadruples. It returns (granted, ms) pairs: granted > 0 units with the
// window's remaining life, or 0 with the retry of a refusal. A rule whose
// window has no unit left refuses as takeSrc does: it blocks itself and
// drops its counter, or, without block, answers the window's remaining life.
// Each rule is decided on its own: a grant is this replica's to spend later,
// so one rule refusing leaves nothing to refund on the other.
const leaseSrc = `
local res = {}
for i = 1, #KEYS / 2 do
  local c, bk = KEYS[2*i-1], KEYS[2*i]
  local limit, window = tonumber(ARGV[4*i-3]), ARGV[4*i-2]
  local block, want = tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])
  local b = redis.call('PTTL', bk)
  if b > 0 then
    res[2*i-1] = 0; res[2*i] = b
  else
    local used = tonumber(redis.call('GET', c) or '0')
    if used >= limit then
      res[2*i-1] = 0
      if block > 0 then
        redis.call('SET', bk, '1', 'PX', block)
        redis.call('DEL', c)
        res[2*i] = block
      else
        local t = redis.call('PTTL', c)
        if t < 0 then
          redis.call('PEXPIRE', c, window)
          t = tonumber(window)
        end
        res[2*i] = t
      end
    else
      local n = math.min(want, limit - used)
      redis.call('INCRBY', c, n)
      local t = redis.call('PTTL', c)
      if t < 0 then
        redis.call('PEXPIRE', c, window)
        t = tonumber(window)
      end
      res[2*i-1] = n; res[2*i] = t
    end
  end
end
return res
`

var (
	leaseScript = rueidis.NewLuaScript(leaseSrc)
	leaseSHA    = sha1Hex(leaseSrc)
)

// errLeaseLost is the error of a decision whose slices were invalidated
// again and again while it tried to take one.
var errLeaseLost = errors.New("lease invalidated while taking it")

// grant is leaseSrc's answer for one rule.
type grant struct {
	n   int           // units reserved; 0 means refused
	ttl time.Duration // the window's remaining life, or the refusal's retry
}

// lease reserves units for the counters of cs marked in need, in one round
// trip: one script over both keys on a standalone Redis, two pipelined on a
// Cluster, where the keys live in different slots.
func (s *redisStore) lease(ctx context.Context, cs [2]counter, need [2]bool) (g [2]grant, err error) {
	var idx []int
	var keys, args []string
	for i, k := range cs {
		if need[i] {
			r := k.rule
			idx = append(idx, i)
			keys = append(keys, k.key(), k.blockKey())
			args = append(args, r.limit, r.window, r.block, r.lease)
		}
	}
	switch {
	case len(idx) == 0:
		return g, nil
	case len(idx) == 1 || !s.cluster:
		var out [2]grant
		if err := parseLease(leaseScript.Exec(ctx, s.client, keys, args), out[:len(idx)]); err != nil {
			return g, err
		}
		for j, i := range idx {
			g[i] = out[j]
		}
		return g, nil
	}
	rs := evalshaMulti(ctx, s.client, leaseSrc, leaseSHA, [][]string{keys[:2], keys[2:]}, [][]string{args[:4], args[4:]})
	// A grant whose sibling failed stays reserved and unused: it lapses
	// with its window, which errs on the side of refusing.
	for j, i := range idx {
		if err := parseLease(rs[j], g[i:i+1]); err != nil {
			return g, err
		}
	}
	return g, nil
}

// evalshaMulti pipelines one EVALSHA of src per (keys, args) and resends
// with EVAL only the commands that got NOSCRIPT. (rueidis's Lua.ExecMulti
// would send SCRIPT LOAD to every node on every call.)
func evalshaMulti(ctx context.Context, c rueidis.Client, src, sha string, keys, args [][]string) []rueidis.RedisResult {
	cmds := make(rueidis.Commands, len(keys))
	for i := range keys {
		cmds[i] = c.B().Evalsha().Sha1(sha).Numkeys(int64(len(keys[i]))).Key(keys[i]...).Arg(args[i]...).Build()
	}
	rs := c.DoMulti(ctx, cmds...)
	for i, r := range rs {
		if re, ok := rueidis.IsRedisErr(r.Error()); ok && re.IsNoScript() {
			rs[i] = c.Do(ctx, c.B().Eval().Script(src).Numkeys(int64(len(keys[i]))).Key(keys[i]...).Arg(args[i]...).Build())
		}
	}
	return rs
}

// parseLease reads leaseSrc's (granted, ms) pairs into out.
func parseLease(r rueidis.RedisResult, out []grant) error {
	vs, err := r.AsIntSlice()
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	if len(vs) != 2*len(out) {
		return fmt.Errorf("lease: script returned %d values, want %d", len(vs), 2*len(out))
	}
	for i := range out {
		out[i] = grant{n: int(vs[2*i]), ttl: time.Duration(vs[2*i+1]) * time.Millisecond}
	}
	return nil
}

// leaseEntry is this Limiter's slice of one key's window budget.
type leaseEntry struct {
	left int
	// expires is when the window the units came from ends at the latest,
	// on this process's monotonic clock.
	expires time.Time
	// gen counts the invalidations of the key's block key (and flushes).
	gen uint64
	// pending marks units that Redis stopped vouching for at pendingSince:
	// the key's block key was invalidated after the grant, or during the
	// call that reserved them. An invalidation only says the block key
	// changed: a block started (the units must go), or a block that had
	// ended was deleted (they are good). The second is common: a lease
	// script touching an expired block key deletes it, and Redis 7 sends
	// that push to the caller right after the script's reply. Either way
	// Redis no longer tracks the key for us. A read of the block key sent
	// after pendingSince and answered within Block/2 of it settles it: a
	// block that started before pendingSince is then still on.
	pending      bool
	pendingSince time.Time
	// refill is non-nil while a call reserves units for the key, and
	// closed when it returns: one call at a time, the others wait.
	refill chan struct{}
	// touched is when a decision last looked the entry up.
	touched time.Time
}

func (e *leaseEntry) usable(now time.Time) bool {
	return e.left > 0 && !e.pending && now.Before(e.expires)
}

// leases holds a Limiter's slices in ModeLease.
//
// Why the slices are safe to keep: a block ends a window early (the script
// drops the counter), so a slice must not outlive a block it has not seen.
// Before reserving, a decision reads the block key through the client-side
// cache, so Redis tracks that key for this client, and from then on any
// write to it (the block) reaches invalidate, on the same connection as the
// lease reply, before any later reply. A changed gen therefore means "a
// block may have happened since": the slice is dropped.
type leases struct {
	rules [2]*rule // the message rules, to read the keys in invalidations

	mu         sync.Mutex
	m          map[memKey]*leaseEntry
	calls      int
	sweepEvery int
}

func newLeases(user, ip *rule) *leases {
	return &leases{rules: [2]*rule{user, ip}, m: make(map[memKey]*leaseEntry), sweepEvery: minSweepEvery}
}

// windowMargin is how much earlier than Redis said a slice stops being
// used: Redis answers whole milliseconds, and the two clocks may advance at
// slightly different rates.
func windowMargin(ttl time.Duration) time.Duration { return time.Millisecond + ttl/1000 }

// decide decides up to n messages from the slices, reserving more when one
// is spent: as many as the slices hold, or one when a slice had to be
// reserved. Refusals come from Redis: the cached block check, or the
// script finding the window's budget spent.
func (ls *leases) decide(ctx context.Context, rs *redisStore, cs [2]counter, n int) (Decision, error) {
	if g := ls.spend(cs, n); g > 0 {
		return Decision{Allowed: true, Kind: KindMessage, Granted: g}, nil
	}
	for range 3 {
		d, retry, err := ls.try(ctx, rs, cs, n)
		if err != nil || !retry {
			return d, err
		}
		if d.Allowed {
			// Spent from a grant now pending: verify the rest at once,
			// while a block could not yet have come and gone.
			ls.verify(ctx, rs, cs)
			return d, nil
		}
	}
	return Decision{}, errLeaseLost
}

// spend is decide's fast path: when every enabled counter of cs has a
// usable slice, it spends up to n units from them, without a block check,
// and returns how many (0: take the full path). That is safe because a
// usable slice implies Redis tracks its block key for this client: the
// key was read through the cache before the slice was reserved, and the
// first write to it since (a block) comes as an invalidation that puts the
// slice on hold, or as a flush when the connection is lost. The block
// check is then made by the full path, before anything else is spent.
func (ls *leases) spend(cs [2]counter, n int) int {
	now := time.Now()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var es [2]*leaseEntry
	for i, c := range cs {
		if !c.enabled() {
			continue
		}
		e := ls.m[memKey{c.rule, c.id}]
		if e == nil || e.refill != nil || !e.usable(now) {
			return 0
		}
		es[i] = e
	}
	if es[0] == nil && es[1] == nil {
		return 0
	}
	ls.tick(now)
	for _, e := range es {
		if e != nil {
			e.touched = now
		}
	}
	return spendFrom(es, n)
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
	for _, e := range es {
		if e != nil {
			e.left -= g
		}
	}
	return g
}

// verify reads the block keys again (through the cache, so Redis tracks
// them) and makes the pending units usable when no block is found and no
// invalidation came meanwhile. A failure leaves them pending; they lapse.
func (ls *leases) verify(ctx context.Context, rs *redisStore, cs [2]counter) {
	es, gens := ls.entries(cs)
	left, err := rs.blocked(ctx, cs)
	if err != nil {
		return
	}
	ls.settle(cs, es, gens, left)
}

// pend puts e's units on hold since now, or since the earlier time they
// already were: a read that settles them must come after the latest
// invalidation (gens) and within Block/2 of the first.
func (e *leaseEntry) pend(now time.Time) {
	if e.left > 0 && !e.pending {
		e.pending, e.pendingSince = true, now
	}
}

// entries returns the entries of the enabled counters of cs, created when
// missing, and their generations.
func (ls *leases) entries(cs [2]counter) (es [2]*leaseEntry, gens [2]uint64) {
	now := time.Now()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.tick(now)
	for i, c := range cs {
		if c.enabled() {
			k := memKey{c.rule, c.id}
			e := ls.m[k]
			if e == nil {
				e = &leaseEntry{}
				ls.m[k] = e
			}
			e.touched = now
			es[i], gens[i] = e, e.gen
		}
	}
	return es, gens
}

// settle applies a block check read after gens were taken: a blocked key
// loses its units; pending units of a key seen unblocked, with no
// invalidation since gens, become usable.
func (ls *leases) settle(cs [2]counter, es [2]*leaseEntry, gens [2]uint64, left [2]time.Duration) {
	now := time.Now()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for i, e := range es {
		switch {
		case e == nil:
		case left[i] > 0:
			e.left, e.pending = 0, false
		case !e.pending || e.gen != gens[i]:
		case now.Sub(e.pendingSince) < cs[i].rule.Block/2:
			e.pending = false
		default:
			e.left, e.pending = 0, false
		}
	}
}

// try is one attempt of decide. It asks for a retry when a slice it was
// taking was invalidated meanwhile: the block keys must be read (and so
// tracked) again before a slice can be kept.
func (ls *leases) try(ctx context.Context, rs *redisStore, cs [2]counter, n int) (_ Decision, retry bool, _ error) {
	es, gens := ls.entries(cs)
	if es[0] == nil && es[1] == nil {
		return Decision{Allowed: true, Kind: KindMessage, Granted: n}, false, nil
	}
	left, err := rs.blocked(ctx, cs)
	if err != nil {
		return Decision{}, false, err
	}
	ls.settle(cs, es, gens, left)
	if d, refused := verdict(KindMessage, cs, left[0] > 0, left[1] > 0, left[0], left[1]); refused {
		return d, false, nil
	}

	for {
		ls.mu.Lock()
		now := time.Now()
		var need [2]bool
		var wait chan struct{}
		for i, e := range es {
			switch {
			case e == nil || e.usable(now):
			case e.refill != nil:
				wait = e.refill
			case e.pending && e.left > 0 && now.Before(e.expires):
				// Verified by the next attempt's block check.
				ls.mu.Unlock()
				return Decision{}, true, nil
			default:
				need[i] = true
			}
		}
		if wait != nil {
			ls.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return Decision{}, false, ctx.Err()
			}
		}
		if !need[0] && !need[1] {
			g := spendFrom(es, n)
			ls.mu.Unlock()
			return Decision{Allowed: true, Kind: KindMessage, Granted: g}, false, nil
		}
		done := make(chan struct{})
		for i, e := range es {
			if need[i] {
				e.left, e.pending, e.refill = 0, false, done
			}
		}
		ls.mu.Unlock()

		sent := time.Now()
		g, err := rs.lease(ctx, cs, need)

		ls.mu.Lock()
		for i, e := range es {
			if need[i] {
				e.refill = nil
			}
		}
		close(done)
		if err != nil {
			ls.mu.Unlock()
			return Decision{}, false, err
		}
		// Spending one unit on this message is always right: Redis
		// reserved it in the window that is current now. The others are
		// kept for later messages only if the key's block key was tracked
		// all along (else pending), and not on an entry swept meanwhile.
		orphan := func(i int) bool {
			c := cs[i]
			return ls.m[memKey{c.rule, c.id}] != es[i]
		}
		lost := false
		var deny [2]bool
		var retry [2]time.Duration
		for i := range need {
			if need[i] && g[i].n == 0 {
				deny[i], retry[i] = true, g[i].ttl
			}
		}
		now = time.Now()
		spend := !deny[0] && !deny[1]
		for i, e := range es {
			if e != nil && !need[i] && !e.usable(now) {
				spend = false // another message took the last unit meanwhile
			}
		}
		for i, e := range es {
			if !need[i] || deny[i] {
				continue
			}
			e.left, e.expires = g[i].n, sent.Add(g[i].ttl-windowMargin(g[i].ttl))
			if spend {
				e.left--
			}
			if e.gen != gens[i] && cs[i].rule.Block > 0 {
				e.pending, e.pendingSince, lost = true, sent, true
			}
			if orphan(i) {
				e.left = 0
			}
		}
		if spend {
			for i, e := range es {
				if e != nil && !need[i] {
					e.left--
				}
			}
		}
		ls.mu.Unlock()
		if d, refused := verdict(KindMessage, cs, deny[0], deny[1], retry[0], retry[1]); refused {
			return d, false, nil
		}
		if spend {
			return Decision{Allowed: true, Kind: KindMessage, Granted: 1}, lost, nil
		}
		if ctx.Err() != nil {
			return Decision{}, false, ctx.Err()
		}
		if lost || gens != [2]uint64{genOf(es[0]), genOf(es[1])} {
			return Decision{}, true, nil
		}
	}
}

func genOf(e *leaseEntry) uint64 {
	if e == nil {
		return 0
	}
	return e.gen
}

// invalidate is the rueidis OnInvalidations callback: the slices of the
// keys whose block key changed are put on hold, and on a flush (nil), which
// rueidis also reports when a connection closes, every slice that needs
// tracking.
func (ls *leases) invalidate(keys []rueidis.RedisMessage) {
	if keys == nil {
		ls.flush()
		return
	}
	now := time.Now()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, m := range keys {
		k, err := m.ToString()
		if err != nil {
			continue
		}
		k, ok := strings.CutSuffix(k, "}:blk")
		if !ok {
			continue
		}
		for _, r := range ls.rules {
			if id, ok := strings.CutPrefix(k, r.prefix); ok {
				if e := ls.m[memKey{r, id}]; e != nil {
					e.pend(now)
					e.gen++
				}
			}
		}
	}
}

// flush puts on hold every slice of a rule that blocks: Redis may have
// stopped tracking their block keys (a connection closed, a call failed).
// The slices of a rule without block need no tracking: its windows end only
// with their TTL.
func (ls *leases) flush() {
	now := time.Now()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for k, e := range ls.m {
		if k.rule.Block > 0 {
			e.pend(now)
			e.gen++
		}
	}
}

// leaseIdle is how long an entry with nothing usable stays after its last
// decision: far longer than a decision can take, so no decision in flight
// loses the entry it reserves units for.
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
			delete(ls.m, k)
		}
	}
	ls.calls = 0
	ls.sweepEvery = max(minSweepEvery, len(ls.m))
}

// held returns the units this Limiter holds for the message rule i (0 user,
// 1 IP) of id, for tests.
func (ls *leases) held(i int, id string) int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if e := ls.m[memKey{ls.rules[i], id}]; e != nil && e.usable(time.Now()) {
		return e.left
	}
	return 0
}
