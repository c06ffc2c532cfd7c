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
// Times are offsets from the store's base time. The map holds a pointer to
// each, so that a decision finds an entry once and changes it in place, and
// a connection's Client keeps pointers to its own (a slot): with thousands
// of connected identities, hashing a key three times per counter and
// decision, and the cache misses of each probe, were most of a decision's
// cost. gone marks an entry that left the map (swept or reset): a slot that
// holds it looks the key up again.
type memEntry struct {
	n         int
	windowEnd time.Duration // the counter's expiry
	blockEnd  time.Duration // the block key's expiry; zero when never blocked
	gone      bool
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
	m          map[memKey]*memEntry
	pol        map[polKey]*polEntry // the rules file's counters (policy.go)
	calls      int                  // since the last sweep
	sweepEvery int
}

func newMemory(now func() time.Time) *memory {
	// The base is an hour back so that no offset is ever zero, which
	// blockEnd uses for "never blocked".
	return &memory{now: now, base: now().Add(-time.Hour), m: make(map[memKey]*memEntry), pol: make(map[polKey]*polEntry), sweepEvery: minSweepEvery}
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
		if e := s.lookup(c.rule, c.id, c.mem); e != nil && e.blockEnd > now {
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
	var es [2]*memEntry // the counters' entries; nil while absent
	denied := false
	for i, c := range cs {
		if c.enabled() {
			es[i] = s.lookup(c.rule, c.id, c.mem)
		}
		if !c.enabled() && !c.guarded() {
			continue
		}
		g := es[i] // a message rule is its own guard
		if c.guard != c.rule {
			g = s.lookup(c.guard, c.id, nil)
		}
		if g != nil && g.blockEnd > now {
			out[i] = outcome{denied: true, blocked: true, retry: g.blockEnd - now}
			denied = true
		}
	}
	if denied {
		return out, 0, nil
	}
	granted = n
	for i, c := range cs {
		if !c.enabled() {
			continue
		}
		e := es[i]
		n, windowEnd := 0, now+c.rule.Window
		if e != nil && e.windowEnd > now {
			n, windowEnd = e.n, e.windowEnd
		}
		if n < c.rule.Limit {
			granted = min(granted, c.rule.Limit-n)
			continue
		}
		denied = true
		if c.rule.Block > 0 {
			// As luaLib's refuse: block the guard, and drop the counter so
			// the budget is full when the block ends. (A message rule is
			// its own guard.)
			e.n, e.windowEnd = 0, now
			g := s.entry(c.guard, c.id, nil)
			g.blockEnd = now + c.rule.Block
			out[i] = outcome{denied: true, retry: c.rule.Block}
		} else {
			out[i] = outcome{denied: true, retry: windowEnd - now}
		}
	}
	if denied {
		return out, 0, nil
	}
	for i, c := range cs {
		if !c.enabled() {
			continue
		}
		e := es[i]
		if e == nil {
			e = s.entry(c.rule, c.id, c.mem)
		}
		if e.windowEnd <= now {
			e.n, e.windowEnd = 0, now+c.rule.Window
		}
		e.n += granted
	}
	return out, granted, nil
}

// lookup returns the entry of rule r and id, or nil. slot, when not nil,
// is a connection's pointer to that entry: used while the entry is in the
// map, and set to what the map holds otherwise.
func (s *memory) lookup(r *rule, id string, slot **memEntry) *memEntry {
	if slot != nil {
		if e := *slot; e != nil && !e.gone {
			return e
		}
	}
	e := s.m[memKey{r, id}]
	if slot != nil {
		*slot = e
	}
	return e
}

// entry is lookup that adds the entry when it is absent.
func (s *memory) entry(r *rule, id string, slot **memEntry) *memEntry {
	if e := s.lookup(r, id, slot); e != nil {
		return e
	}
	e := new(memEntry)
	s.m[memKey{r, id}] = e
	if slot != nil {
		*slot = e
	}
	return e
}

// remove drops the entry of k from the map.
func (s *memory) remove(k memKey) {
	if e := s.m[k]; e != nil {
		e.gone = true
		delete(s.m, k)
	}
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
			e.gone = true
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
