package limit

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable clock for the memory store.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness runs the same semantics cases on the memory and the Redis store.
type harness struct {
	// limiter returns a new Limiter with rules and keys of its own, and the
	// function that lets time pass for it.
	limiter func(t *testing.T, r Rules) (*Limiter, func(time.Duration))
	store   string
}

func memoryHarness() *harness {
	return &harness{store: "memory", limiter: func(t *testing.T, r Rules) (*Limiter, func(time.Duration)) {
		c := newClock()
		l := newLimiter(t, Config{Rules: r, Now: c.Now})
		return l, c.Advance
	}}
}

func newLimiter(tb testing.TB, cfg Config) *Limiter {
	tb.Helper()
	l, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// keyPrefix returns a key prefix unique to the test.
func keyPrefix(t *testing.T) string {
	return "t:" + strings.NewReplacer("/", ":", " ", "_").Replace(t.Name())
}

func rate(limit int, window, block time.Duration) Rule {
	return Rule{Limit: limit, Window: window, Block: block}
}

const ms = time.Millisecond

var semanticsCases = []struct {
	name string
	run  func(t *testing.T, h *harness)
}{
	{"block after limit", func(t *testing.T, h *harness) {
		l, advance := h.limiter(t, Rules{UserMessages: rate(100, 10*time.Second, 300*ms)})
		for range 2 {
			h.allow(t, l, 100, "u", "ip")
			d := h.deny(t, l, "u", "ip", ScopeUser, KindMessage, 300*ms)
			advance(100 * ms)
			h.deny(t, l, "u", "ip", ScopeUser, KindMessage, min(d.RetryAfter, 200*ms))
			advance(250 * ms)
			// The block is over and the budget is full again.
		}
		h.allow(t, l, 1, "other", "ip")
	}},
	{"window resets without block", func(t *testing.T, h *harness) {
		l, advance := h.limiter(t, Rules{UserMessages: rate(3, 400*ms, 0)})
		h.allow(t, l, 3, "u", "ip")
		h.deny(t, l, "u", "ip", ScopeUser, KindMessage, 400*ms)
		h.deny(t, l, "u", "ip", ScopeUser, KindMessage, 400*ms)
		advance(450 * ms)
		h.allow(t, l, 3, "u", "ip")
		h.deny(t, l, "u", "ip", ScopeUser, KindMessage, 400*ms)
	}},
	{"refund", func(t *testing.T, h *harness) {
		l, _ := h.limiter(t, Rules{
			UserMessages: rate(5, 10*time.Second, time.Second),
			IPMessages:   rate(3, 10*time.Second, 0),
		})
		h.allow(t, l, 3, "u", "a")
		for range 10 {
			h.deny(t, l, "u", "a", ScopeIP, KindMessage, 10*time.Second)
		}
		// The ten refusals did not count against the user: 3 + 2 = 5.
		h.allow(t, l, 2, "u", "b")
		h.deny(t, l, "u", "b", ScopeUser, KindMessage, time.Second)
	}},
	{"both refuse: user", func(t *testing.T, h *harness) {
		l, _ := h.limiter(t, Rules{
			UserMessages: rate(2, 10*time.Second, 0),
			IPMessages:   rate(2, 10*time.Second, 0),
		})
		h.allow(t, l, 2, "u", "a")
		h.deny(t, l, "u", "a", ScopeUser, KindMessage, 10*time.Second)
	}},
	{"disabled rules", func(t *testing.T, h *harness) {
		l, _ := h.limiter(t, Rules{})
		h.allow(t, l, 500, "u", "a")
		for range 100 {
			if d := l.Handshake(context.Background(), "u", "a"); !d.Allowed {
				t.Fatalf("handshake refused: %+v", d)
			}
		}
	}},
	{"one rule disabled", func(t *testing.T, h *harness) {
		l, _ := h.limiter(t, Rules{IPMessages: rate(2, 10*time.Second, 200*ms)})
		h.allow(t, l, 2, "u", "a")
		h.deny(t, l, "v", "a", ScopeIP, KindMessage, 200*ms)
		h.allow(t, l, 2, "u", "b")
	}},
	{"connection rules", func(t *testing.T, h *harness) {
		l, _ := h.limiter(t, Rules{
			UserConns: rate(2, 10*time.Second, 0),
			IPConns:   rate(3, 10*time.Second, 0),
		})
		h.handshakes(t, l, 2, "u", "a")
		d := l.Handshake(context.Background(), "u", "a")
		h.check(t, d, ScopeUser, KindConnection, 10*time.Second)
		if d.Blocked || d.Limit != 2 {
			t.Fatalf("handshake over the connection rule: %+v, want not Blocked, Limit 2", d)
		}
		h.handshakes(t, l, 1, "v", "a") // the refusal did not count on the IP
		d = l.Handshake(context.Background(), "w", "a")
		h.check(t, d, ScopeIP, KindConnection, 10*time.Second)
		h.allow(t, l, 10, "u", "a") // connection rules do not limit messages
	}},
	{"block refuses handshakes", func(t *testing.T, h *harness) {
		l, advance := h.limiter(t, Rules{
			UserMessages: rate(1, 10*time.Second, 300*ms),
			IPMessages:   rate(3, 10*time.Second, 300*ms),
			UserConns:    rate(100, 10*time.Second, 0),
		})
		h.allow(t, l, 1, "u", "a")
		h.deny(t, l, "u", "a", ScopeUser, KindMessage, 300*ms)
		// A handshake refused by a block is the blocking message rule's
		// refusal, not a connection rule's.
		d := l.Handshake(context.Background(), "u", "b")
		h.check(t, d, ScopeUser, KindMessage, 300*ms)
		if !d.Blocked || d.Limit != 1 {
			t.Fatalf("handshake refused by the block: %+v, want Blocked with the message rule's Limit 1", d)
		}
		h.handshakes(t, l, 1, "v", "a")
		h.allow(t, l, 1, "v", "a")
		h.allow(t, l, 1, "w", "a")
		h.deny(t, l, "x", "a", ScopeIP, KindMessage, 300*ms)
		h.check(t, l.Handshake(context.Background(), "y", "a"), ScopeIP, KindMessage, 300*ms)
		advance(350 * ms)
		h.handshakes(t, l, 1, "u", "a")
		h.allow(t, l, 1, "u", "a")
	}},
	{"batches", func(t *testing.T, h *harness) {
		l, _ := h.limiter(t, Rules{
			UserMessages: rate(10, 10*time.Second, 300*ms),
			IPMessages:   rate(7, 10*time.Second, 0),
		})
		h.batch(t, l, 4, 4, "u", "a")
		// The IP rule has 3 left: the 4th of this batch is refused, and
		// not counted against the user.
		h.check(t, h.batch(t, l, 5, 3, "u", "a"), ScopeIP, KindMessage, 10*time.Second)
		// The user has 3 left: the 4th blocks it.
		h.check(t, h.batch(t, l, 5, 3, "u", "b"), ScopeUser, KindMessage, 300*ms)
		h.check(t, h.batch(t, l, 8, 0, "u", "c"), ScopeUser, KindMessage, 300*ms)
		// The refused batch counted nothing on the IP either.
		h.check(t, h.batch(t, l, 10, 7, "v", "c"), ScopeIP, KindMessage, 10*time.Second)
	}},
}

func runSemantics(t *testing.T, h *harness) {
	for _, c := range semanticsCases {
		t.Run(c.name, func(t *testing.T) { c.run(t, h) })
	}
}

func (h *harness) allow(t *testing.T, l *Limiter, n int, user, ip string) {
	t.Helper()
	for i := range n {
		d := l.Message(context.Background(), user, ip)
		if !d.Allowed || d.Kind != KindMessage || d.Store != h.store || d.Fallback {
			t.Fatalf("message %d of %s/%s: %+v, want allowed by %s", i+1, user, ip, d, h.store)
		}
	}
}

// batch asks about n messages, and again about the rest while fewer were
// granted, until all passed or one was refused, as a connection does: with
// MessagesOf, its Client made once (allow asks Message, which makes one
// each time). want is how many must pass; it returns the refusal, if any.
func (h *harness) batch(t *testing.T, l *Limiter, n, want int, user, ip string) Decision {
	t.Helper()
	passed := 0
	c := l.Client(user, ip)
	for passed < n {
		d := l.MessagesOf(context.Background(), c, n-passed)
		if !d.Allowed {
			if d.Granted != 0 {
				t.Fatalf("refusal with Granted %d", d.Granted)
			}
			if passed != want {
				t.Fatalf("%d of %d messages of %s/%s passed, want %d", passed, n, user, ip, want)
			}
			return d
		}
		if d.Granted < 1 || d.Granted > n-passed || d.Store != h.store || d.Fallback {
			t.Fatalf("batch of %d: %+v, want 1..%d granted by %s", n-passed, d, n-passed, h.store)
		}
		passed += d.Granted
	}
	if passed != want {
		t.Fatalf("all %d messages of %s/%s passed, want %d", n, user, ip, want)
	}
	return Decision{Allowed: true}
}

func (h *harness) handshakes(t *testing.T, l *Limiter, n int, user, ip string) {
	t.Helper()
	for i := range n {
		d := l.Handshake(context.Background(), user, ip)
		if !d.Allowed || d.Kind != KindConnection || d.Store != h.store || d.Fallback {
			t.Fatalf("handshake %d of %s/%s: %+v, want allowed by %s", i+1, user, ip, d, h.store)
		}
	}
}

func (h *harness) deny(t *testing.T, l *Limiter, user, ip, scope, kind string, retry time.Duration) Decision {
	t.Helper()
	d := l.Message(context.Background(), user, ip)
	h.check(t, d, scope, kind, retry)
	return d
}

// check wants a refusal; retry is the upper bound of RetryAfter, and the
// memory store must hit it exactly unless time passed since the event that
// set it (then any positive value up to it will do).
func (h *harness) check(t *testing.T, d Decision, scope, kind string, retry time.Duration) {
	t.Helper()
	if d.Allowed || d.Scope != scope || d.Kind != kind || d.Store != h.store || d.Fallback {
		t.Fatalf("decision %+v, want refused by %s with scope %s, kind %s", d, h.store, scope, kind)
	}
	if d.RetryAfter <= 0 || d.RetryAfter > retry {
		t.Fatalf("RetryAfter %v, want in (0, %v]", d.RetryAfter, retry)
	}
}

func TestMemorySemantics(t *testing.T) {
	runSemantics(t, memoryHarness())
}

func TestMemoryExactRetry(t *testing.T) {
	c := newClock()
	l := newLimiter(t, Config{Now: c.Now, Rules: Rules{
		UserMessages: rate(100, 10*time.Second, 5*time.Second),
		IPMessages:   rate(1000, 10*time.Second, 0),
	}})
	ctx := context.Background()
	for i := range 100 {
		if d := l.Message(ctx, "u", "a"); !d.Allowed {
			t.Fatalf("message %d refused: %+v", i+1, d)
		}
	}
	want := Decision{Scope: ScopeUser, Kind: KindMessage, RetryAfter: 5 * time.Second, Store: "memory", Limit: 100}
	if d := l.Message(ctx, "u", "a"); d != want {
		t.Fatalf("101st: %+v, want %+v", d, want)
	}
	c.Advance(4 * time.Second)
	want.RetryAfter, want.Blocked = time.Second, true
	if d := l.Message(ctx, "u", "a"); d != want {
		t.Fatalf("while blocked: %+v, want %+v", d, want)
	}
	c.Advance(time.Second)
	for i := range 100 {
		if d := l.Message(ctx, "u", "a"); !d.Allowed {
			t.Fatalf("after the block, message %d refused: %+v", i+1, d)
		}
	}
	// Without block the refusal waits for the window: 10s from its first event.
	l2 := newLimiter(t, Config{Now: c.Now, Rules: Rules{IPMessages: rate(2, 10*time.Second, 0)}})
	l2.Message(ctx, "u", "a")
	c.Advance(3 * time.Second)
	l2.Message(ctx, "u", "a")
	want = Decision{Scope: ScopeIP, Kind: KindMessage, RetryAfter: 7 * time.Second, Store: "memory", Limit: 2}
	if d := l2.Message(ctx, "u", "a"); d != want {
		t.Fatalf("over a rule without block: %+v, want %+v", d, want)
	}
}

func TestMemorySweeps(t *testing.T) {
	c := newClock()
	l := newLimiter(t, Config{Now: c.Now, Rules: Rules{
		UserMessages: rate(10, time.Second, 0),
		IPMessages:   rate(10, time.Second, 2*time.Second),
	}})
	ctx := context.Background()
	const keys = 5000
	for i := range keys {
		l.Message(ctx, fmt.Sprint("u", i), fmt.Sprint("ip", i))
	}
	if n := l.mem.len(); n < keys {
		t.Fatalf("%d entries after %d identities, want at least %d", n, keys, keys)
	}
	// A blocked key outlives its window; it must survive a sweep.
	for range 11 {
		l.Message(ctx, "blocked", "blocked-ip")
	}
	c.Advance(1500 * ms)
	for range 2 * keys {
		l.Message(ctx, "steady", "steady-ip")
	}
	if n := l.mem.len(); n > 4 {
		t.Fatalf("%d entries after the windows ended, want at most 4", n)
	}
	if d := l.Message(ctx, "x", "blocked-ip"); d.Allowed || d.Scope != ScopeIP {
		t.Fatalf("the block was swept: %+v", d)
	}
}

func TestMemoryNoRedis(t *testing.T) {
	l := newLimiter(t, Config{})
	if l.StoreName() != "memory" || l.RedisUp() {
		t.Fatalf("StoreName %q RedisUp %v", l.StoreName(), l.RedisUp())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// len returns the number of entries, for tests.
func (s *memory) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// A Client keeps pointers to the memory store's entries of its user and
// address; an entry that left the map must not be counted on any more.
func TestMemoryClientEntries(t *testing.T) {
	ctx := context.Background()
	t.Run("swept", func(t *testing.T) {
		c := newClock()
		l := newLimiter(t, Config{Now: c.Now, Rules: Rules{UserMessages: rate(3, time.Second, 0)}})
		old := l.Client("u", "a")
		if d := l.MessagesOf(ctx, old, 1); !d.Allowed {
			t.Fatalf("first message refused: %+v", d)
		}
		c.Advance(1500 * ms)
		swept := old.mem[0]
		for i := range minSweepEvery {
			l.Message(ctx, fmt.Sprint("other", i), "b") // calls enough for a sweep
		}
		if swept == nil || !swept.gone {
			t.Fatal("the user's entry was not swept")
		}
		// The user's entry of old's window is gone; a new connection of
		// the same user starts the new window, and old counts in it.
		if d := l.MessagesOf(ctx, l.Client("u", "c"), 2); !d.Allowed {
			t.Fatalf("new connection refused: %+v", d)
		}
		if d := l.MessagesOf(ctx, old, 1); !d.Allowed {
			t.Fatalf("third message of the window refused: %+v", d)
		}
		if d := l.MessagesOf(ctx, old, 1); d.Allowed || d.Scope != ScopeUser {
			t.Fatalf("fourth message of the window: %+v, want refused for the user", d)
		}
	})
	t.Run("reset", func(t *testing.T) {
		l := newLimiter(t, Config{Rules: Rules{UserMessages: rate(3, time.Hour, 0)}})
		cl := l.Client("u", "a")
		if d := l.MessagesOf(ctx, cl, 3); !d.Allowed {
			t.Fatalf("three messages refused: %+v", d)
		}
		if d := l.MessagesOf(ctx, cl, 1); d.Allowed {
			t.Fatalf("fourth message allowed: %+v", d)
		}
		if err := l.Reset(ctx, KeyRef{Scope: ScopeUser, ID: "u"}, nil); err != nil {
			t.Fatal(err)
		}
		if d := l.MessagesOf(ctx, cl, 3); !d.Allowed {
			t.Fatalf("after the reset: %+v, want allowed", d)
		}
		if d := l.MessagesOf(ctx, l.Client("u", "b"), 1); d.Allowed {
			t.Fatalf("a fourth message after the reset, on another connection: %+v, want refused", d)
		}
	})
	t.Run("reset lifts a block", func(t *testing.T) {
		l := newLimiter(t, Config{Rules: Rules{UserMessages: rate(2, time.Hour, time.Hour)}})
		cl := l.Client("u", "a")
		if d := l.MessagesOf(ctx, cl, 2); !d.Allowed {
			t.Fatalf("two messages refused: %+v", d)
		}
		if d := l.MessagesOf(ctx, cl, 1); d.Allowed {
			t.Fatalf("third message allowed: %+v", d)
		}
		if d := l.MessagesOf(ctx, cl, 1); d.Allowed || !d.Blocked {
			t.Fatalf("during the block: %+v, want blocked", d)
		}
		if err := l.Reset(ctx, KeyRef{Scope: ScopeUser, ID: "u"}, nil); err != nil {
			t.Fatal(err)
		}
		if d := l.MessagesOf(ctx, cl, 2); !d.Allowed {
			t.Fatalf("after the reset: %+v, want allowed", d)
		}
	})
}

// TestMessageDecisionsDoNotAllocate: a flag-rule decision on the memory
// store allocates nothing, through a Client or without one (a Client's
// pointers to its entries must not move a Messages call's to the heap).
func TestMessageDecisionsDoNotAllocate(t *testing.T) {
	l := newLimiter(t, Config{Rules: Rules{UserMessages: rate(1<<30, time.Hour, time.Second), IPMessages: rate(1<<30, time.Hour, 0)}})
	ctx := context.Background()
	c := l.Client("u", "a")
	l.MessagesOf(ctx, c, 1)
	for name, decide := range map[string]func() Decision{
		"MessagesOf": func() Decision { return l.MessagesOf(ctx, c, 1) },
		"Message":    func() Decision { return l.Message(ctx, "u", "a") },
	} {
		if n := testing.AllocsPerRun(1000, func() {
			if d := decide(); !d.Allowed {
				t.Fatalf("%s: %+v", name, d)
			}
		}); n != 0 {
			t.Errorf("%s: %.1f allocations per decision, want 0", name, n)
		}
	}
}
