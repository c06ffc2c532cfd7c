package limit

import (
	"context"
	"sync"
	"time"
)

// minSweepEvery is the fewest calls between two sweeps of the memory store.
const minSweepEvery = 1024

// memKey names a counter without building a string: the rule's key prefix
// and the identity.
type memKey struct {
	rule *rule
	id   string
}

// memEntry is a counter and its block, the two Redis keys of a rule in one.
// Times are offsets from the store's base time, so that an entry is three
// words kept in the map itself: every connected identity holds one.
type memEntry struct {
	n         int
	windowEnd time.Duration // the counter's expiry
	blockEnd  time.Duration // the block key's expiry; zero when never blocked
}

// memory is the in-process store, with the semantics of the Redis scripts.
// A connection rule's entry never has a blockEnd: only message rules block.
// Expired entries are swept lazily: every max(minSweepEvery, len) calls, so
// the sweep costs O(1) per call amortised and the map holds at most a small
// multiple (a decision adds up to two keys) of the keys live since the last
// sweep.
type memory struct {
	now  func() time.Time
	base time.Time // entry times are offsets from it

	mu         sync.Mutex
	m          map[memKey]memEntry
	pol        map[polKey]*polEntry // the rules file's counters (policy.go)
	calls      int                  // since the last sweep
	sweepEvery int
}

func newMemory(now func() time.Time) *memory {
	// The base is an hour back so that no offset is ever zero, which
	// blockEnd uses for "never blocked".
	return &memory{now: now, base: now().Add(-time.Hour), m: make(map[memKey]memEntry), pol: make(map[polKey]*polEntry), sweepEvery: minSweepEvery}
}

// clock returns now as an offset from the base (monotonic when now is).
func (s *memory) clock() time.Duration { return s.now().Sub(s.base) }

func (s *memory) blocked(_ context.Context, cs [2]counter) (left [2]time.Duration, _ error) {
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tick(now)
	for i, c := range cs {
		if !c.blocks() {
			continue
		}
		if e, ok := s.m[memKey{c.rule, c.id}]; ok && e.blockEnd > now {
			left[i] = e.blockEnd - now
		}
	}
	return left, nil
}

func (s *memory) take(_ context.Context, cs [2]count, n int) (out [2]outcome, granted int, _ error) {
	now := s.clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tick(now)
	denied := false
	for i, c := range cs {
		if !c.enabled() && !c.guarded() {
			continue
		}
		if g, ok := s.m[memKey{c.guard, c.id}]; ok && g.blockEnd > now {
			out[i] = outcome{denied: true, blocked: true, retry: g.blockEnd - now}
			denied = true
		}
	}
	if denied {
		return out, 0, nil
	}
	var es [2]memEntry
	granted = n
	for i, c := range cs {
		if !c.enabled() {
			continue
		}
		e := &es[i]
		*e = s.m[memKey{c.rule, c.id}]
		if e.windowEnd <= now {
			e.n, e.windowEnd = 0, now+c.rule.Window
		}
		if e.n < c.rule.Limit {
			granted = min(granted, c.rule.Limit-e.n)
			continue
		}
		denied = true
		if c.rule.Block > 0 {
			// As luaLib's refuse: block the guard, and drop the counter so
			// the budget is full when the block ends. (The counter is
			// written first: a message rule is its own guard.)
			e.n, e.windowEnd = 0, now
			s.m[memKey{c.rule, c.id}] = *e
			gk := memKey{c.guard, c.id}
			g := s.m[gk]
			g.blockEnd = now + c.rule.Block
			s.m[gk] = g
			out[i] = outcome{denied: true, retry: c.rule.Block}
		} else {
			out[i] = outcome{denied: true, retry: e.windowEnd - now}
		}
	}
	if denied {
		return out, 0, nil
	}
	for i, c := range cs {
		if c.enabled() {
			e := es[i]
			e.n += granted
			s.m[memKey{c.rule, c.id}] = e
		}
	}
	return out, granted, nil
}

// tick counts a call and sweeps every sweepEvery calls.
func (s *memory) tick(now time.Duration) {
	if s.calls++; s.calls >= s.sweepEvery {
		s.sweep(now)
	}
}

// sweep drops the entries whose window and block have both ended.
func (s *memory) sweep(now time.Duration) {
	for k, e := range s.m {
		if e.windowEnd <= now && e.blockEnd <= now {
			delete(s.m, k)
		}
	}
	for k, e := range s.pol {
		if e.ended(now) {
			delete(s.pol, k)
		}
	}
	s.calls = 0
	s.sweepEvery = max(minSweepEvery, len(s.m)+len(s.pol))
}
