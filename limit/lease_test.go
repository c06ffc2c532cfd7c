package limit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func leaseHarness(url string, size int) *harness {
	return &harness{store: "redis", limiter: func(t *testing.T, r Rules) (*Limiter, func(time.Duration)) {
		l := newLimiter(t, Config{Rules: r, RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout,
			Mode: ModeLease, LeaseSize: size})
		if !l.RedisUp() || l.lease == nil {
			t.Fatal("redis not up after New, or not in lease mode")
		}
		return l, time.Sleep
	}}
}

// TestLeaseSemantics runs the exact-mode cases in lease mode: with one
// replica, leasing changes no decision.
func TestLeaseSemantics(t *testing.T) {
	s := startRedis(t)
	for _, size := range []int{0, 1, 2, 7} {
		t.Run(fmt.Sprint("size ", size), func(t *testing.T) { runSemantics(t, leaseHarness(s.url(), size)) })
	}
}

func TestParseMode(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Mode
		err  bool
	}{{"exact", ModeExact, false}, {" Lease ", ModeLease, false}, {"", 0, true}, {"fast", 0, true}} {
		m, err := ParseMode(c.in)
		if m != c.want || (err != nil) != c.err || (err != nil && !errors.Is(err, ErrBadMode)) {
			t.Errorf("ParseMode(%q) = %v, %v", c.in, m, err)
		}
		if err == nil && m.String() != strings.ToLower(strings.TrimSpace(c.in)) {
			t.Errorf("%v.String() = %q", m, m.String())
		}
	}
	for _, cfg := range []Config{{Mode: 2}, {Mode: -1}} {
		if _, err := New(cfg); !errors.Is(err, ErrBadMode) {
			t.Errorf("New(%+v): %v, want ErrBadMode", cfg, err)
		}
	}
	for _, cfg := range []Config{{LeaseSize: -1}, {IPMaxConns: -1}, {ConnTTL: time.Millisecond}} {
		if _, err := New(cfg); !errors.Is(err, ErrBadConfig) {
			t.Errorf("New(%+v): %v, want ErrBadConfig", cfg, err)
		}
	}
}

// hammer runs workers goroutines on each Limiter, each sending messages of
// user "u" until stop is closed or n messages were sent in all, and returns
// the times at which messages were allowed, sorted.
func hammer(t *testing.T, ls []*Limiter, workers int, n int64, stop <-chan struct{}) []time.Time {
	t.Helper()
	return hammerWith(t, ls, workers, n, stop, func(int, int) int { return 1 }, func(l *Limiter, _ int) Decision {
		d := l.Message(context.Background(), "u", "a")
		if d.Allowed {
			d.Granted = 1
		}
		return d
	})
}

// hammerWith runs workers goroutines on each Limiter until stop is closed
// or attempts messages were asked about in all: the j-th call of the w-th
// goroutine asks size(w, j) of them, decide makes it. It fails the test on
// a decision not taken by Redis, and returns the times at which messages
// were granted (one per message), sorted.
func hammerWith(t *testing.T, ls []*Limiter, workers int, attempts int64, stop <-chan struct{},
	size func(w, j int) int, decide func(l *Limiter, n int) Decision) []time.Time {
	t.Helper()
	var (
		mu      sync.Mutex
		allowed []time.Time
		sent    atomic.Int64
		bad     atomic.Value
		wg      sync.WaitGroup
	)
	for w := range len(ls) * workers {
		wg.Go(func() {
			l := ls[w%len(ls)]
			for j := 0; ; j++ {
				n := size(w, j)
				if sent.Add(int64(n)) > attempts {
					return
				}
				select {
				case <-stop:
					return
				default:
				}
				d := decide(l, n)
				if d.Fallback || d.Store != storeRedis {
					bad.Store(d)
					return
				}
				now := time.Now()
				mu.Lock()
				for range d.Granted {
					allowed = append(allowed, now)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if d := bad.Load(); d != nil {
		t.Fatalf("decision not by redis: %+v", d)
	}
	slices.SortFunc(allowed, func(a, b time.Time) int { return a.Compare(b) })
	return allowed
}

// bursts splits sorted times into runs whose neighbours are at most gap
// apart, and returns the length of each.
func bursts(at []time.Time, gap time.Duration) []int {
	var out []int
	for i := range at {
		if i == 0 || at[i].Sub(at[i-1]) > gap {
			out = append(out, 0)
		}
		out[len(out)-1]++
	}
	return out
}

// testLeaseWindow: two Limiters ("replicas") hammer one key within one
// window. At most N pass, and at least N - LeaseSize (what the other
// replica may hold unused when the key is blocked).
func testLeaseWindow(t *testing.T, url string) {
	const n, size = 1000, 50
	cfg := Config{RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout, Mode: ModeLease, LeaseSize: size,
		Rules: Rules{
			UserMessages: rate(n, time.Minute, time.Minute),
			IPMessages:   rate(10*n, time.Minute, 0),
		}}
	ls := []*Limiter{newLimiter(t, cfg), newLimiter(t, cfg)}
	got := len(hammer(t, ls, 4, 3*n, nil))
	t.Logf("%d of %d allowed over one window with 2 replicas, LeaseSize %d", got, 3*n, size)
	if got > n || got < n-size {
		t.Fatalf("%d allowed, want between %d and %d", got, n-size, n)
	}
}

func TestLeaseWindow(t *testing.T) {
	s := startRedis(t)
	testLeaseWindow(t, s.url())
}

// TestLeaseBlockWindows: two replicas hammer one key across several
// windows that each end with a block. A replica that holds units when
// another one blocks the key must drop them: units of a window are never
// spent in the next one. Allowed messages come in bursts separated by the
// block; each burst is one window and holds at most N.
func TestLeaseBlockWindows(t *testing.T) {
	s := startRedis(t)
	const n, size, block = 200, 40, 500 * ms
	cfg := Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout, Mode: ModeLease, LeaseSize: size,
		Rules: Rules{UserMessages: rate(n, time.Minute, block)}}
	ls := []*Limiter{newLimiter(t, cfg), newLimiter(t, cfg)}
	stop := make(chan struct{})
	timer := time.AfterFunc(1800*ms, func() { close(stop) })
	defer timer.Stop()
	got := bursts(hammer(t, ls, 3, 1<<40, stop), block/2)
	t.Logf("bursts of allowed messages (N=%d, LeaseSize=%d): %v", n, size, got)

	if len(got) < 2 {
		t.Fatalf("%d bursts, want at least 2 windows", len(got))
	}
	for i, b := range got {
		// The last burst may be cut short by stop.
		if low := n - size - size/3; b > n || b < low && i < len(got)-1 {
			t.Fatalf("burst %d: %d allowed, want between %d and %d", i, b, low, n)
		}
	}
}

// TestLeaseDropOnBlock: a replica holding units drops them as soon as
// another replica blocks the key, without a round trip of its own. After
// the block, having seen it, it leases two single units of the next window
// (the announcement of the expired block key's deletion may follow the
// first one's reply), then a full slice.
func TestLeaseDropOnBlock(t *testing.T) {
	s := startRedis(t)
	p := keyPrefix(t)
	cfg := Config{RedisURL: s.url(), KeyPrefix: p, Timeout: testTimeout, Mode: ModeLease, LeaseSize: 10,
		Rules: Rules{UserMessages: rate(30, time.Minute, 300*ms)}}
	a, b := newLimiter(t, cfg), newLimiter(t, cfg)
	ctx := context.Background()
	if d := b.Message(ctx, "u", "x"); !d.Allowed {
		t.Fatalf("b: %+v", d)
	}
	if got := b.lease.held(0, "u"); got != 9 {
		t.Fatalf("b holds %d units, want 9", got)
	}
	for i := range 20 {
		if d := a.Message(ctx, "u", "y"); !d.Allowed {
			t.Fatalf("a, message %d: %+v", i+1, d)
		}
	}
	if d := a.Message(ctx, "u", "y"); d.Allowed || d.RetryAfter != 300*ms {
		t.Fatalf("a, 21st: %+v, want the block", d)
	}
	waitFor(t, "b drops its units", func() bool { return b.lease.held(0, "u") == 0 })
	if d := b.Message(ctx, "u", "x"); d.Allowed {
		t.Fatalf("b during the block: %+v", d)
	}
	time.Sleep(350 * ms)
	if d := b.Message(ctx, "u", "x"); !d.Allowed {
		t.Fatalf("b after the block: %+v", d)
	}
	if got := s.cli("get", p+":um:{u}"); got != "1" {
		t.Fatalf("counter %q after the block, want 1 (a single unit)", got)
	}
	if d := b.Message(ctx, "u", "x"); !d.Allowed {
		t.Fatalf("b after the block, 2nd: %+v", d)
	}
	if got := s.cli("get", p+":um:{u}"); got != "2" {
		t.Fatalf("counter %q after the block, want 2 (a second single unit)", got)
	}
	if d := b.Message(ctx, "u", "x"); !d.Allowed {
		t.Fatalf("b after the block, 3rd: %+v", d)
	}
	if got := s.cli("get", p+":um:{u}"); got != "12" {
		t.Fatalf("counter %q after the block, want 12 (then one slice)", got)
	}
	if got := b.lease.held(0, "u"); got != 9 {
		t.Fatalf("b holds %d units after the block, want 9", got)
	}
}

// waitFor polls cond for up to 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestLeaseRoundTrips counts, with MONITOR, the scripts Redis runs per
// allowed message for one busy key in lease mode. Every EVAL* is at most one
// round trip (a cache miss of both block keys sends two in one).
func TestLeaseRoundTrips(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	measure := func(t *testing.T, rules Rules, size, msgs int) float64 {
		l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout,
			Mode: ModeLease, LeaseSize: size, Rules: rules})
		l.Message(ctx, "u", "a") // the first slices and block checks
		mon := startMonitor(t, s)
		allowed := 0
		for range msgs {
			d := l.Message(ctx, "u", "a")
			if d.Fallback || d.Store != "redis" {
				t.Fatalf("%+v", d)
			}
			if d.Allowed {
				allowed++
			}
		}
		evals := 0
		for _, c := range mon.stop() {
			if strings.HasPrefix(c, "EVAL") {
				evals++
			}
		}
		perMsg := float64(evals) / float64(allowed)
		t.Logf("%d scripts for %d allowed messages (LeaseSize %d/%d): %.4f per allowed message",
			evals, allowed, l.userMsg.lease, l.ipMsg.lease, perMsg)
		return perMsg
	}
	t.Run("busy key", func(t *testing.T) {
		// Default slices (N/10) of rules far above the load: the gate's
		// steady state for one busy identity.
		rules := Rules{
			UserMessages: rate(50_000, 10*time.Second, 5*time.Second),
			IPMessages:   rate(150_000, 10*time.Second, 5*time.Second),
		}
		if got := measure(t, rules, 0, 20_000); got > 0.05 {
			t.Fatalf("%.4f round trips per allowed message, want at most 0.05", got)
		}
	})
	t.Run("default rules", func(t *testing.T) {
		// 100/10s and 300/10s: slices of 10 and 30, so about 1/10 + 1/30
		// per allowed message plus the refusal that blocks.
		rules := Rules{
			UserMessages: rate(100, 10*time.Second, 5*time.Second),
			IPMessages:   rate(300, 10*time.Second, 5*time.Second),
		}
		measure(t, rules, 0, 500)
	})
}

// TestLeaseFallback: a slice is dropped when the connection resets; after
// Redis is back, decisions are Redis's again and the counter holds whole
// slices.
func TestLeaseFallback(t *testing.T) {
	s := startRedis(t)
	p := startProxy(t, s.addr())
	l := newLimiter(t, Config{RedisURL: p.url(), KeyPrefix: keyPrefix(t), Timeout: 100 * ms, Mode: ModeLease,
		LeaseSize: 10, FailureMode: FailOpen, Rules: Rules{UserMessages: rate(100, time.Minute, time.Second)}})
	ctx := context.Background()
	for range 3 {
		if d := l.Message(ctx, "u", "a"); !d.Allowed || d.Fallback {
			t.Fatalf("%+v", d)
		}
	}
	p.reset()
	waitFor(t, "units on hold after the reset", func() bool { return l.lease.held(0, "u") == 0 })
	waitUp(t, l)
	waitFor(t, "a decision by redis", func() bool { return !l.Message(ctx, "u", "a").Fallback })
	// The reset dropped the slice (rueidis reports a closed connection as
	// a flush): the first decision by Redis took a second one, and a call
	// that failed after it reached Redis may have taken a third.
	if got, _ := strconv.Atoi(s.cli("get", keyPrefix(t)+":um:{u}")); got%10 != 0 || got < 20 || got > 30 {
		t.Fatalf("counter %d, want 20 or 30", got)
	}
}

// refillWaiters is how many decisions wait for the refill under way of
// rule r's slice of id, or -1 when none is under way.
func (ls *leases) refillWaiters(r *rule, id string) int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if e := ls.m[memKey{r, id}]; e != nil && e.refill != nil {
		return len(e.refill.waiters)
	}
	return -1
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

// TestLeaseKeepsAnotherDecisionsSlice: two decisions of one user read
// their entries' generations; the user's block key is invalidated (the
// announcement of a block's end); one decision checks again and leases a
// user slice; the other, finding that slice usable and only its IP slice
// spent, must neither lease on its stale check nor drop the slice the
// first one leased: the units are Redis's, counted, and lost if dropped.
func TestLeaseKeepsAnotherDecisionsSlice(t *testing.T) {
	s := startRedis(t)
	cfg := Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout, Mode: ModeLease, LeaseSize: 10,
		Rules: Rules{
			UserMessages: rate(1000, time.Minute, time.Second),
			IPMessages:   rate(1000, time.Minute, time.Second),
		}}
	l := newLimiter(t, cfg)
	ctx := context.Background()
	if d := l.Message(ctx, "u", "192.0.2.1"); !d.Allowed {
		t.Fatalf("first message: %+v", d)
	}
	rs := l.rs.Load()
	cs := [2]counter{{rule: &l.userMsg, id: "u"}, {rule: &l.ipMsg, id: "192.0.2.1"}}
	ls := l.lease
	es, gens := ls.entries(cs) // the second decision's view, before the invalidation
	ls.mu.Lock()
	es[0].gen++ // the announcement of the user's block key
	es[0].left = 0
	es[1].left = 0 // the IP slice spent meanwhile
	ls.mu.Unlock()
	// The first decision: a fresh check, then a user slice.
	if d, err := ls.decide(ctx, rs, [2]counter{cs[0], {rule: &l.ipMsg, id: "192.0.2.2"}}, 1, nil, nil); err != nil || !d.Allowed {
		t.Fatalf("first decision: %+v, %v", d, err)
	}
	if got := ls.held(0, "u"); got != 9 {
		t.Fatalf("user slice after the first decision: %d, want 9", got)
	}
	// The second decision, on its stale generations: it must check again.
	d, again, err := ls.reserve(ctx, rs, cs, es, gens, 1, true)
	if err != nil || !again {
		t.Fatalf("reserve on stale generations: %+v, again %v, %v; want a new block check", d, again, err)
	}
	// Out of checks, it leases the IP slice and keeps the user's.
	d, _, err = ls.reserve(ctx, rs, cs, es, gens, 1, false)
	if err != nil || !d.Allowed {
		t.Fatalf("reserve without checks left: %+v, %v", d, err)
	}
	if got := ls.held(0, "u"); got != 8 {
		t.Fatalf("user slice after the second decision: %d, want 8 (9 less the message)", got)
	}
}

// TestLeaseWaitersAreNotFailures: when a lease outlasts the deadline, the
// decisions that waited for it fall back too, but only the decision that
// called Redis counts against the node: four waiters more must not mark it
// down (three failures in a row do), or one slow lease on a busy key would
// send every decision of the gate to the failure mode until the next probe.
func TestLeaseWaitersAreNotFailures(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: 200 * time.Millisecond,
		Mode: ModeLease, LeaseSize: 1, Rules: Rules{UserMessages: rate(1000, time.Minute, time.Second)}})
	ctx := context.Background()
	if d := l.Message(ctx, "u", "192.0.2.1"); !d.Allowed || d.Fallback {
		t.Fatalf("first message: %+v", d) // its slice of 1 is spent; the block key is cached
	}
	s.pause()
	t.Cleanup(s.resume)
	decide := func(out chan<- Decision) { out <- l.Message(ctx, "u", "192.0.2.1") }
	leaser := make(chan Decision, 1)
	go decide(leaser)
	waitFor(t, "the first decision to lease", func() bool {
		l.lease.mu.Lock()
		defer l.lease.mu.Unlock()
		e := l.lease.m[memKey{&l.userMsg, "u"}]
		return e != nil && e.refill != nil
	})
	waiters := make(chan Decision, 4)
	for range cap(waiters) {
		go decide(waiters)
	}
	if d := <-leaser; !d.Fallback {
		t.Fatalf("the leasing decision with Redis stopped: %+v, want a fallback", d)
	}
	for range cap(waiters) {
		if d := <-waiters; !d.Fallback {
			t.Fatalf("a waiting decision: %+v, want a fallback", d)
		}
	}
	if !l.RedisUp() {
		t.Fatalf("Redis marked down after one slow lease and its waiters: the waiters counted as failures")
	}
}

// TestLeaseServesItsWaiters: decisions that wait for another decision's
// lease of the same key are served from the new slice by that decision,
// before they run. A waiter that runs
// late (the seam woken stands for busy CPUs) must not find its units spent
// by a decision that came after it and have to lease again; here Redis is
// stopped again by then, so a second lease would fall back. A waiter that
// gave up is served nothing: its units stay in the slice.
func TestLeaseServesItsWaiters(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: time.Second,
		Mode: ModeLease, LeaseSize: 3, Rules: Rules{UserMessages: rate(1000, time.Minute, time.Second)}})
	ls := l.lease
	ctx := context.Background()
	// The first slice of 3, spent: the block key is cached, the script loaded.
	for i := range 3 {
		if d := l.Message(ctx, "u", "192.0.2.1"); !d.Allowed || d.Fallback {
			t.Fatalf("message %d: %+v", i+1, d)
		}
	}
	waiters := func() int { return ls.refillWaiters(&l.userMsg, "u") }
	s.pause()
	decide := func(ctx context.Context, out chan<- Decision) { out <- l.Message(ctx, "u", "192.0.2.1") }
	leaser := make(chan Decision, 1)
	go decide(ctx, leaser)
	waitFor(t, "the first decision to lease", func() bool { return waiters() == 0 })
	// One waiter gives up before the slice comes; two wait for it.
	short, cancel := context.WithCancel(ctx)
	gaveUp := make(chan Decision, 1)
	go decide(short, gaveUp)
	waitFor(t, "a waiter", func() bool { return waiters() == 1 })
	cancel()
	if d := <-gaveUp; !d.Fallback {
		t.Fatalf("the waiter that gave up: %+v, want a fallback", d)
	}
	release := make(chan struct{})
	ls.woken = func() { <-release }
	served := make(chan Decision, 2)
	for i := range 2 {
		go decide(ctx, served)
		waitFor(t, "the waiters", func() bool { return waiters() == 2+i })
	}
	s.resume()
	if d := <-leaser; !d.Allowed || d.Fallback {
		t.Fatalf("the leasing decision: %+v", d)
	}
	// The slice of 3 went to the leaser and the two waiters, none to the
	// one that gave up: a decision now leases again.
	if got := ls.held(0, "u"); got != 0 {
		t.Fatalf("%d units left after the leaser and two waiters, want 0", got)
	}
	// A decision that came after the waiters, and ran before them.
	if d := l.Message(ctx, "u", "192.0.2.1"); !d.Allowed || d.Fallback {
		t.Fatalf("a later decision: %+v", d)
	}
	s.pause()
	t.Cleanup(s.resume)
	close(release)
	for range 2 {
		if d := <-served; !d.Allowed || d.Fallback || d.Granted != 1 {
			t.Fatalf("a waiter: %+v, want served by the lease it waited for", d)
		}
	}
	// The later decision's slice, less its own message, is untouched.
	if got := ls.held(0, "u"); got != 2 {
		t.Fatalf("%d units left of the later decision's slice, want 2", got)
	}
}

// TestLeaseWaiterWithADroppedSliceLooksAgain: a decision whose own user
// slice is usable while its client address's slice is being refilled by
// another user's decision waits for that call without a block check of
// its own. When its user slice is dropped meanwhile (a flush here; an
// invalidation of the user's block key alike), the refill does not serve
// it: it takes the full path and leases its user's units again, so no
// message passes on a slice that may have outlived a block.
func TestLeaseWaiterWithADroppedSliceLooksAgain(t *testing.T) {
	s := startRedis(t)
	prefix := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: prefix, Timeout: time.Second, Mode: ModeLease, LeaseSize: 3,
		Rules: Rules{
			UserMessages: rate(1000, time.Minute, time.Second),
			IPMessages:   rate(1000, time.Minute, time.Second),
		}})
	ls := l.lease
	ctx := context.Background()
	const ip = "192.0.2.1"
	// Slices of 3: u and the address leased, then v; the address's spent.
	for _, user := range []string{"u", "v", "u"} {
		if d := l.Message(ctx, user, ip); !d.Allowed || d.Fallback {
			t.Fatalf("%s: %+v", user, d)
		}
	}
	if u, v, a := ls.held(0, "u"), ls.held(0, "v"), ls.held(1, ip); u != 1 || v != 2 || a != 0 {
		t.Fatalf("slices u %d, v %d, address %d; want 1, 2, 0", u, v, a)
	}
	waiters := func() int { return ls.refillWaiters(&l.ipMsg, ip) }
	s.pause()
	t.Cleanup(s.resume)
	decide := func(user string, out chan<- Decision) { out <- l.Message(ctx, user, ip) }
	leaser, waiter := make(chan Decision, 1), make(chan Decision, 1)
	go decide("u", leaser)
	waitFor(t, "u's decision to lease the address's slice", func() bool { return waiters() == 0 })
	go decide("v", waiter)
	waitFor(t, "v's decision to wait for it", func() bool { return waiters() == 1 })
	ls.flush()
	s.resume()
	for _, c := range []chan Decision{leaser, waiter} {
		if d := <-c; !d.Allowed || d.Fallback {
			t.Fatalf("after the flush: %+v", d)
		}
	}
	// v's second lease: 3 + 3 counted in Redis, 2 of the new slice left.
	if got := s.cli("GET", prefix+":um:{v}"); got != "6" {
		t.Fatalf("v's counter in Redis: %q, want 6 (a second lease after the flush)", got)
	}
	if got := ls.held(0, "v"); got != 2 {
		t.Fatalf("v's slice: %d, want 2", got)
	}
}

// TestLeaseRefusalDropsUntrackedSlice: a decision whose user lease is
// refused while its IP lease is granted keeps the IP slice only if the IP
// entry's block key was tracked all along (its gen did not move since the
// decision read it); otherwise the slice could outlive a block it never
// heard of.
func TestLeaseRefusalDropsUntrackedSlice(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: time.Second, Mode: ModeLease, LeaseSize: 10,
		Rules: Rules{
			UserMessages: rate(2, time.Minute, time.Second),
			IPMessages:   rate(1000, time.Minute, time.Second),
		}})
	ctx := context.Background()
	for i := range 2 {
		if d := l.Message(ctx, "u", "192.0.2.1"); !d.Allowed || d.Fallback {
			t.Fatalf("message %d: %+v", i+1, d)
		}
	}
	rs := l.rs.Load()
	cs := [2]counter{{rule: &l.userMsg, id: "u"}, {rule: &l.ipMsg, id: "192.0.2.1"}}
	ls := l.lease
	es, gens := ls.entries(cs)
	ls.mu.Lock()
	es[1].gen++    // the announcement of the IP's block key
	es[1].left = 0 // and its slice spent: the decision leases both
	ls.mu.Unlock()
	d, _, err := ls.reserve(ctx, rs, cs, es, gens, 1, false)
	if err != nil || d.Allowed || d.Scope != ScopeUser {
		t.Fatalf("reserve: %+v, %v; want refused by the user rule", d, err)
	}
	if got := ls.held(1, "192.0.2.1"); got != 0 {
		t.Fatalf("the IP slice leased on a moved generation holds %d units, want 0", got)
	}
}

// A Client keeps pointers to its slices' entries; once a sweep dropped an
// entry, the Client's decisions use the one that replaced it, which every
// other connection of the key shares.
func TestLeaseClientEntries(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: time.Second,
		Mode: ModeLease, LeaseSize: 1, Rules: Rules{UserMessages: rate(1000, time.Minute, 0)}})
	ctx := context.Background()
	old := l.Client("u", "192.0.2.1")
	if d := l.MessagesOf(ctx, old, 1); !d.Allowed || d.Fallback {
		t.Fatalf("first message: %+v", d) // its slice of 1 is spent
	}
	key := memKey{&l.userMsg, "u"}
	l.lease.mu.Lock()
	swept := l.lease.m[key]
	swept.touched = time.Now().Add(-2 * leaseIdle) // idle long enough to go
	l.lease.sweepEvery = 1
	l.lease.mu.Unlock()
	if d := l.Message(ctx, "v", "192.0.2.2"); !d.Allowed || d.Fallback {
		t.Fatalf("another user's message: %+v", d) // and the sweep
	}
	if d := l.MessagesOf(ctx, l.Client("u", "192.0.2.3"), 1); !d.Allowed || d.Fallback {
		t.Fatalf("a new connection's message: %+v", d)
	}
	if d := l.MessagesOf(ctx, old, 1); !d.Allowed || d.Fallback {
		t.Fatalf("the old connection's message: %+v", d)
	}
	l.lease.mu.Lock()
	defer l.lease.mu.Unlock()
	if e := l.lease.m[key]; e == nil || e == swept || old.lease[0] != e {
		t.Fatalf("the old connection keeps entry %p (swept %p), the map holds %p", old.lease[0], swept, e)
	}
}

// TestLeaseMessagesNow: MessagesNow decides only what a lease mode's
// slices hold, and otherwise decides nothing and queues nothing, so that a
// caller that must not wait (the relay's leading worker) can try it first.
func TestLeaseMessagesNow(t *testing.T) {
	s := startRedis(t)
	rules := Rules{UserMessages: rate(1000, time.Minute, time.Second)}
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: time.Second,
		Mode: ModeLease, LeaseSize: 3, Rules: rules})
	ls := l.lease
	ctx := context.Background()
	c := l.Client("u", "192.0.2.1")
	if d, ok := l.MessagesNow(c, 1); ok {
		t.Fatalf("no slice yet: %+v, ok", d)
	}
	if d := l.MessagesOf(ctx, c, 1); !d.Allowed || d.Fallback {
		t.Fatalf("first message: %+v", d)
	}
	if got := ls.held(0, "u"); got != 2 {
		t.Fatalf("%d units left of the first slice, want 2", got)
	}
	if d, ok := l.MessagesNow(c, 1); !ok || !d.Allowed || d.Granted != 1 || d.Fallback || d.Store != storeRedis {
		t.Fatalf("a message the slice holds: %+v, %v", d, ok)
	}
	if d, ok := l.MessagesNow(c, 5); !ok || !d.Allowed || d.Granted != 1 {
		t.Fatalf("five messages, one unit left: %+v, %v; want one granted", d, ok)
	}
	if d, ok := l.MessagesNow(c, 1); ok {
		t.Fatalf("a spent slice: %+v, ok", d)
	}
	// A refill under way: MessagesNow neither waits for it nor joins it.
	waiters := func() int { return ls.refillWaiters(&l.userMsg, "u") }
	s.pause()
	leaser := make(chan Decision, 1)
	go func() { leaser <- l.MessagesOf(ctx, c, 1) }()
	waitFor(t, "a decision to lease", func() bool { return waiters() == 0 })
	if d, ok := l.MessagesNow(c, 1); ok {
		t.Fatalf("during a refill: %+v, ok", d)
	}
	if n := waiters(); n != 0 {
		t.Fatalf("%d waiters queued by MessagesNow, want 0", n)
	}
	s.resume()
	if d := <-leaser; !d.Allowed || d.Fallback {
		t.Fatalf("the leasing decision: %+v", d)
	}
	if d, ok := l.MessagesNow(c, 1); !ok || !d.Allowed {
		t.Fatalf("after the refill: %+v, %v", d, ok)
	}
	// Exact mode and the memory store always call their store.
	for _, cfg := range []Config{{RedisURL: s.url(), KeyPrefix: keyPrefix(t) + "x", Rules: rules}, {Rules: rules}} {
		o := newLimiter(t, cfg)
		oc := o.Client("u", "192.0.2.1")
		for range 2 {
			if d := o.MessagesOf(ctx, oc, 1); !d.Allowed {
				t.Fatalf("%s: %+v", o.StoreName(), d)
			}
			if d, ok := o.MessagesNow(oc, 1); ok {
				t.Fatalf("%s: MessagesNow %+v, ok", o.StoreName(), d)
			}
		}
	}
}

// TestLeaseRenewsAhead: a slice spent below half its size is renewed off
// the decisions' path, so that its decisions keep spending locally; the
// renewal grants what is left of the window and refuses nothing (the
// limit's first message over it does, as without renewals); decisions
// spend the old units while it is under way and wait for it once they are
// gone; and a renewal whose block key was written meanwhile is dropped.
func TestLeaseRenewsAhead(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: 2 * time.Second,
		Mode: ModeLease, LeaseSize: 20, Rules: Rules{UserMessages: rate(50, time.Minute, time.Minute)}})
	ls := l.lease
	ctx := context.Background()
	c := l.Client("u", "192.0.2.1")
	counter, block := keyPrefix(t)+":um:{u}", keyPrefix(t)+":um:{u}:blk"
	renewing := func() bool { return ls.refillWaiters(&l.userMsg, c.user) >= 0 }
	now := func(n int) {
		t.Helper()
		for i := range n {
			if d, ok := l.MessagesNow(c, 1); !ok || !d.Allowed {
				t.Fatalf("message %d of %d from the slice: %+v, %v", i+1, n, d, ok)
			}
		}
	}
	if d := l.MessagesOf(ctx, c, 1); !d.Allowed || d.Fallback {
		t.Fatalf("first message: %+v", d)
	}
	now(9) // 10 left: half the slice
	if renewing() || ls.held(0, "u") != 10 {
		t.Fatalf("renewing %v with %d units left, want no renewal at half the slice", renewing(), ls.held(0, "u"))
	}
	now(1)
	waitFor(t, "the renewal", func() bool { return !renewing() })
	if got, want := ls.held(0, "u"), 9+20; got != want {
		t.Fatalf("%d units held after the renewal, want %d", got, want)
	}
	if got := s.cli("get", counter); got != "40" {
		t.Fatalf("counter %s, want 40", got)
	}
	// The next renewal is granted what the window has left: 10 of 20.
	now(20)
	waitFor(t, "the second renewal", func() bool { return !renewing() })
	if got := ls.held(0, "u"); got != 19 {
		t.Fatalf("%d units held after the second renewal, want 9 + 10", got)
	}
	// The third finds the window spent: no grant, and no block yet; and
	// no other renewal is asked for until a lease of a decision's own.
	now(10)
	waitFor(t, "the third renewal", func() bool { return !renewing() })
	if got := s.cli("exists", block); got != "0" {
		t.Fatal("a renewal blocked the user before any message went over the limit")
	}
	calls := evalshaCalls(t, s)
	for range 9 { // up to the 50th message
		now(1)
		waitFor(t, "no renewal", func() bool { return !renewing() })
	}
	if n := evalshaCalls(t, s) - calls; n != 0 {
		t.Fatalf("%d script calls while the last units of a spent window were spent, want 0", n)
	}
	if d := l.MessagesOf(ctx, c, 1); d.Allowed || !d.Blocked && d.Limit != 50 {
		t.Fatalf("the 51st message: %+v, want refused", d)
	}
	if got := s.cli("exists", block); got != "1" {
		t.Fatal("the 51st message did not block the user")
	}

	// A renewal under way: the old units are spent, then decisions wait
	// for it and are served from it.
	// fresh gives c a new user whose first message leased a slice, 10 of
	// its 20 units left.
	fresh := func(id string) {
		t.Helper()
		c = l.Client(id, "192.0.2.1")
		if d := l.MessagesOf(ctx, c, 1); !d.Allowed || d.Fallback {
			t.Fatalf("%s's first message: %+v", id, d)
		}
		now(9)
	}
	fresh("v")
	s.pause()
	now(1)
	if !renewing() {
		s.resume()
		t.Fatal("no renewal under way at 9 of 20 units left")
	}
	now(9)
	if d, ok := l.MessagesNow(c, 1); ok {
		s.resume()
		t.Fatalf("a spent slice during its renewal: %+v, ok", d)
	}
	// The waiter runs late: others spend the renewal before it looks. It
	// was served when the renewal came (serve), or it would lease again.
	ls.woken = func() {
		ls.mu.Lock()
		ls.m[memKey{&l.userMsg, "v"}].left = 0
		ls.mu.Unlock()
	}
	waiter := make(chan Decision, 1)
	go func() { waiter <- l.MessagesOf(ctx, c, 1) }()
	waitFor(t, "a decision to wait for the renewal", func() bool { return ls.refillWaiters(&l.userMsg, "v") == 1 })
	s.resume()
	if d := <-waiter; !d.Allowed || d.Fallback {
		t.Fatalf("the decision that waited for the renewal: %+v", d)
	}
	ls.woken = nil
	if got := s.cli("get", keyPrefix(t)+":um:{v}"); got != "40" {
		t.Fatalf("v's counter %s, want 40: the waiter was not served from the renewal", got)
	}

	// A renewal whose block key changed meanwhile (gen moved) is dropped.
	fresh("w")
	s.pause()
	now(1)
	ls.mu.Lock()
	e := ls.m[memKey{&l.userMsg, "w"}]
	e.gen++ // as invalidate does
	e.left = 0
	ls.mu.Unlock()
	s.resume()
	waitFor(t, "the renewal", func() bool { return ls.refillWaiters(&l.userMsg, "w") < 0 })
	if got := ls.held(0, "w"); got != 0 {
		t.Fatalf("%d units held from a renewal after an invalidation, want 0", got)
	}
}

// TestLeaseRenewalsTogether: the renewals queued when the renewer looks go
// in one script call, each answered from its own frame, whichever rules
// each renews.
func TestLeaseRenewalsTogether(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: 2 * time.Second,
		Mode: ModeLease, LeaseSize: 20, Rules: Rules{
			UserMessages: rate(1000, time.Minute, time.Minute),
			IPMessages:   rate(30, time.Minute, time.Minute),
		}})
	ls := l.lease
	ctx := context.Background()
	users := []string{"a", "b", "c"}
	for _, u := range users {
		if d := l.Message(ctx, u, "192.0.2.1"); !d.Allowed || d.Fallback {
			t.Fatalf("%s's first message: %+v", u, d)
		}
	}
	// The address's slice of 20 gave the three messages; 10 are left of
	// its window of 30.
	renewalOf := func(u string, ip bool) *renewal {
		cs := [2]counter{{rule: &l.userMsg, id: u}, {rule: &l.ipMsg, id: "192.0.2.1"}}
		rn := &renewal{r: &refill{done: make(chan struct{})}}
		ls.mu.Lock()
		defer ls.mu.Unlock()
		for i, c := range cs {
			if i == 1 && !ip {
				continue
			}
			e := ls.lookup(c)
			rn.cs[i], rn.es[i], rn.gens[i], rn.size[i] = c, e, e.gen, c.rule.lease
			e.refill = rn.r
		}
		return rn
	}
	batch := []*renewal{renewalOf("a", false), renewalOf("b", true), renewalOf("c", false)}
	before := evalshaCalls(t, s)
	l.renewAll(batch)
	if n := evalshaCalls(t, s) - before; n != 1 {
		t.Fatalf("%d script calls for three renewals, want 1", n)
	}
	for _, u := range users {
		if got := ls.held(0, u); got != 19+20 {
			t.Fatalf("%s holds %d units after its renewal, want 39", u, got)
		}
		if ls.refillWaiters(&l.userMsg, u) >= 0 {
			t.Fatalf("%s's renewal still under way", u)
		}
	}
	if got := ls.held(1, "192.0.2.1"); got != 17+10 {
		t.Fatalf("the address holds %d units, want 17 + the 10 its window had left", got)
	}
	for _, rn := range batch {
		select {
		case <-rn.r.done:
		default:
			t.Fatal("a renewal's waiters were not released")
		}
	}
	// A renewal whose slice was dropped while it was queued is not sent.
	rn := renewalOf("a", false)
	ls.mu.Lock()
	rn.es[0].gen++ // as invalidate does
	rn.es[0].left = 0
	ls.mu.Unlock()
	before = evalshaCalls(t, s)
	l.renewAll([]*renewal{rn})
	if n := evalshaCalls(t, s) - before; n != 0 {
		t.Fatalf("%d script calls for a renewal of a dropped slice, want 0", n)
	}
	if ls.held(0, "a") != 0 || ls.refillWaiters(&l.userMsg, "a") >= 0 {
		t.Fatal("a dropped slice's renewal left units or stayed under way")
	}
}

// evalshaCalls returns how many EVALSHA calls s has run.
func evalshaCalls(t *testing.T, s *redisServer) int {
	t.Helper()
	for _, line := range strings.Split(s.cli("info", "commandstats"), "\n") {
		if v, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
			n, _ := strconv.Atoi(strings.SplitN(v, ",", 2)[0])
			return n
		}
	}
	return 0
}

// TestLeaseClusterRenewalsApart: on a Cluster, renewals for a node that
// does not answer hold no renewal for another node, so a key on a healthy
// node whose slice runs out is decided by Redis, not by the failure mode
// after a wait behind them; the same for the two slices of one decision.
func TestLeaseClusterRenewalsApart(t *testing.T) {
	nodes, url := startCluster(t)
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: url, KeyPrefix: p, Timeout: 300 * time.Millisecond,
		Mode: ModeLease, LeaseSize: 20, Rules: Rules{UserMessages: rate(1000, time.Minute, time.Minute)}})
	ctx := context.Background()
	owner := func(id string) int { return slotOwner(t, nodes, p+":um:{"+id+"}") }
	hungNode := owner("a")
	var hung []string
	healthy := ""
	for i := 0; i < 1000 && (len(hung) < 2 || healthy == ""); i++ {
		id := fmt.Sprint("k", i)
		switch o := owner(id); {
		case o == hungNode && len(hung) < 2:
			hung = append(hung, id)
		case o != hungNode && healthy == "":
			healthy = id
		}
	}
	clients := map[string]*Client{}
	spend := func(id string, n int) {
		t.Helper()
		for range n {
			if d, ok := l.MessagesNow(clients[id], 1); !ok || !d.Allowed {
				t.Fatalf("%s: a message from the slice: %+v, %v", id, d, ok)
			}
		}
	}
	for _, id := range append(hung, healthy) {
		clients[id] = l.Client(id, "192.0.2.1")
		if d := l.MessagesOf(ctx, clients[id], 1); !d.Allowed || d.Fallback {
			t.Fatalf("%s's first message: %+v", id, d)
		}
		spend(id, 9) // 10 left: no renewal yet
	}
	nodes[hungNode].pause()
	defer nodes[hungNode].resume()
	for _, id := range append(hung, healthy) {
		spend(id, 1) // each asks for a renewal, the healthy key's last
	}
	spend(healthy, 9)
	if d := l.MessagesOf(ctx, clients[healthy], 1); !d.Allowed || d.Fallback {
		t.Fatalf("a key on a healthy node, behind renewals for a node that does not answer: %+v", d)
	}
	nodes[hungNode].resume()

	// A decision whose user and address slices both go under half asks
	// for two renewals: the address's, on a healthy node, neither waits
	// for the user's nor is lost with it.
	p += ":both"
	l = newLimiter(t, Config{RedisURL: url, KeyPrefix: p, Timeout: 300 * time.Millisecond,
		Mode: ModeLease, LeaseSize: 20, Rules: Rules{
			UserMessages: rate(1000, time.Minute, time.Minute),
			IPMessages:   rate(1000, time.Minute, time.Minute),
		}})
	ip := "10.0.0.1"
	ipKey := p + ":im:{" + ip + "}"
	ipNode := slotOwner(t, nodes, ipKey)
	hungUser, okUser := "", ""
	for i := 0; i < 1000 && (hungUser == "" || okUser == ""); i++ {
		id := fmt.Sprint("k", i)
		switch o := owner(id); {
		case o != ipNode && hungUser == "":
			hungUser = id
		case o == ipNode && okUser == "":
			okUser = id
		}
	}
	for _, id := range []string{hungUser, okUser} {
		clients[id] = l.Client(id, ip)
	}
	if d := l.MessagesOf(ctx, clients[hungUser], 1); !d.Allowed || d.Fallback {
		t.Fatalf("first message: %+v", d)
	}
	spend(hungUser, 9) // 10 left of both slices
	hungNode = owner(hungUser)
	nodes[hungNode].pause()
	defer nodes[hungNode].resume()
	spend(hungUser, 1) // both under half
	if d := l.MessagesOf(ctx, clients[okUser], 1); !d.Allowed || d.Fallback {
		t.Fatalf("the healthy user's first message: %+v", d)
	}
	spend(okUser, 8) // the address's slice spent, unless its renewal came
	if d := l.MessagesOf(ctx, clients[okUser], 1); !d.Allowed || d.Fallback {
		t.Fatalf("a decision whose keys are all on healthy nodes, behind a silent node: %+v", d)
	}
	if got := nodes[ipNode].cli("get", ipKey); got != "40" {
		t.Fatalf("the address's counter %s, want 40: a slice and its renewal", got)
	}
}

// TestLeaseNoRenewalAfterClose: once the renewer has stopped, no renewal is
// asked for, so a decision that finds its slice spent leases (and fails
// with the closed client) instead of waiting its deadline for a renewal
// nobody makes. Slices of a rule without block outlive the client's close.
func TestLeaseNoRenewalAfterClose(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: time.Second,
		Mode: ModeLease, LeaseSize: 20, Rules: Rules{UserMessages: rate(1000, time.Minute, 0)}})
	c := l.Client("u", "192.0.2.1")
	if d := l.MessagesOf(context.Background(), c, 1); !d.Allowed || d.Fallback {
		t.Fatalf("first message: %+v", d)
	}
	for range 10 { // 9 left: under half
		if d, ok := l.MessagesNow(c, 1); !ok || !d.Allowed {
			t.Fatalf("a message from the slice: %+v, %v", d, ok)
		}
	}
	waitFor(t, "the renewal", func() bool { return l.lease.refillWaiters(&l.userMsg, "u") < 0 })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for range 20 { // spends the 29 units, asking for a renewal below 10 as before Close
		if d, ok := l.MessagesNow(c, 1); !ok || !d.Allowed {
			t.Fatalf("a message from the slice after Close: %+v, %v", d, ok)
		}
	}
	if n := l.lease.refillWaiters(&l.userMsg, "u"); n >= 0 {
		t.Fatal("a renewal asked for after Close, which nobody makes")
	}
}
