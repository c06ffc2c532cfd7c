package limit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testTimeout is the Redis deadline of the tests that do not test it: the
// race detector on a small machine makes 50ms too tight.
const testTimeout = 2 * time.Second

func redisHarness(url string) *harness {
	return &harness{store: "redis", limiter: func(t *testing.T, r Rules) (*Limiter, func(time.Duration)) {
		l := newLimiter(t, Config{Rules: r, RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout})
		if !l.RedisUp() {
			t.Fatal("redis not up after New")
		}
		return l, time.Sleep
	}}
}

func TestRedisSemantics(t *testing.T) {
	s := startRedis(t)
	runSemantics(t, redisHarness(s.url()))
}

func TestRedisExact(t *testing.T) {
	s := startRedis(t)
	testExact(t, s.url())
}

func TestRedisRefund(t *testing.T) {
	s := startRedis(t)
	testRefund(t, s.url(), s.cli)
}

// TestRedisRefusalWithoutBlockWritesNothing: under rules without a block,
// every message over the limit is refused, and such a refusal must not
// write to Redis (each write is replicated, and a Redis out of memory
// refuses it): takeScript counts first only when every rule blocks. With a
// block, the refusal writes the block and nothing else until it ends.
func TestRedisRefusalWithoutBlockWritesNothing(t *testing.T) {
	s := startRedis(t)
	dirty := func() string {
		for line := range strings.Lines(s.cli("info", "persistence")) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "rdb_changes_since_last_save:"); ok {
				return v
			}
		}
		t.Fatal("no rdb_changes_since_last_save in INFO persistence")
		return ""
	}
	for _, block := range []time.Duration{0, time.Minute} {
		l := newLimiter(t, Config{Rules: Rules{UserMessages: rate(2, time.Hour, block), IPMessages: rate(1000, time.Hour, block)},
			RedisURL: s.url(), KeyPrefix: keyPrefix(t) + block.String(), Timeout: testTimeout})
		ctx := context.Background()
		for i := range 2 {
			if d := l.Message(ctx, "alice", "192.0.2.1"); !d.Allowed || d.Fallback {
				t.Fatalf("block %v, message %d: %+v", block, i+1, d)
			}
		}
		if d := l.Message(ctx, "alice", "192.0.2.1"); d.Allowed || d.Fallback {
			t.Fatalf("block %v, message 3: %+v, want refused by Redis", block, d)
		}
		before := dirty()
		for i := range 5 {
			if d := l.Message(ctx, "alice", "192.0.2.1"); d.Allowed || d.Fallback {
				t.Fatalf("block %v, message %d: %+v, want refused by Redis", block, i+4, d)
			}
		}
		if after := dirty(); after != before {
			t.Fatalf("block %v: 5 refusals changed %s keys, then %s, want none", block, before, after)
		}
	}
}

// TestRedisPartialGrant: a batch that one rule grants in part counts only
// what it granted against the other rule too, with and without blocks
// (takeScript's two ways of counting).
func TestRedisPartialGrant(t *testing.T) {
	s := startRedis(t)
	for _, block := range []time.Duration{0, time.Minute} {
		l := newLimiter(t, Config{Rules: Rules{UserMessages: rate(3, time.Hour, block), IPMessages: rate(5, time.Hour, block)},
			RedisURL: s.url(), KeyPrefix: keyPrefix(t) + block.String(), Timeout: testTimeout})
		ctx := context.Background()
		for _, c := range []struct {
			user    string
			n, want int
		}{{"alice", 5, 3}, {"bob", 4, 2}, {"carol", 1, 0}} {
			if d := l.Messages(ctx, c.user, "192.0.2.1", c.n); d.Granted != c.want || d.Fallback {
				t.Fatalf("block %v, %s asks %d: %+v, want %d granted by Redis", block, c.user, c.n, d, c.want)
			}
		}
	}
}

// testExact runs 1,000 attempts from 4 goroutines on each of 2 Limiters
// sharing one Redis against a 100/10s rule, half of them asked about in
// batches: exactly 100 pass.
func testExact(t *testing.T, url string) {
	rules := Rules{
		UserMessages: rate(100, 10*time.Second, 5*time.Second),
		IPMessages:   rate(1_000_000, 10*time.Second, 0),
	}
	cfg := Config{Rules: rules, RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout}
	ls := []*Limiter{newLimiter(t, cfg), newLimiter(t, cfg)}
	const attempts, workers = 1000, 4
	var allowed, fallbacks atomic.Int64
	var wg sync.WaitGroup
	for i := range len(ls) * workers {
		wg.Go(func() {
			l := ls[i%len(ls)]
			// Half the workers ask about batches of 1 to 5 messages.
			for j, left := 0, attempts/(len(ls)*workers); left > 0; j++ {
				n := 1
				if i%2 == 1 {
					n = min(left, 1+j%5)
				}
				d := l.Messages(context.Background(), "user", fmt.Sprint("10.0.0.", j%7), n)
				if d.Fallback {
					fallbacks.Add(1)
				}
				allowed.Add(int64(d.Granted))
				left -= max(d.Granted, 1)
			}
		})
	}
	wg.Wait()
	if allowed.Load() != 100 || fallbacks.Load() != 0 {
		t.Fatalf("%d allowed, %d fallbacks of %d attempts; want 100 allowed, no fallback",
			allowed.Load(), fallbacks.Load(), attempts)
	}
}

// testRefund reads the counters with redis-cli: a message refused by the IP
// rule leaves the user counter unchanged.
func testRefund(t *testing.T, url string, cli func(...string) string) {
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: url, KeyPrefix: p, Timeout: testTimeout, Rules: Rules{
		UserMessages: rate(5, 10*time.Second, time.Second),
		IPMessages:   rate(3, 10*time.Second, 0),
	}})
	ctx := context.Background()
	for i := range 8 {
		d := l.Message(ctx, "u", "a")
		if d.Allowed != (i < 3) || d.Store != "redis" {
			t.Fatalf("message %d: %+v", i+1, d)
		}
	}
	if got := cli("get", p+":um:{u}"); got != "3" {
		t.Fatalf("user counter %q, want 3", got)
	}
	if got := cli("get", p+":im:{a}"); got != "3" {
		t.Fatalf("ip counter %q, want 3", got)
	}
	if got := cli("exists", p+":um:{u}:blk"); got != "0" {
		t.Fatalf("user block key exists: %q", got)
	}
	// The other way round: refused by the user rule on a fresh IP.
	for i := range 4 {
		d := l.Message(ctx, "u", "b")
		if d.Allowed != (i < 2) {
			t.Fatalf("message %d from b: %+v", i+1, d)
		}
	}
	if got := cli("get", p+":im:{b}"); got != "2" {
		t.Fatalf("ip counter of b %q, want 2", got)
	}
	if got := cli("pttl", p+":um:{u}:blk"); got == "-2" {
		t.Fatal("user not blocked")
	}
}

// TestRedisRoundTrips counts the commands Redis serves per decision.
func TestRedisRoundTrips(t *testing.T) {
	s := startRedis(t)
	prefix := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: prefix, Timeout: testTimeout, Rules: Rules{
		UserMessages: rate(100, 10*time.Second, 3*time.Second),
		IPMessages:   rate(1000, 10*time.Second, 3*time.Second),
		UserConns:    rate(1000, 10*time.Second, 0),
		IPConns:      rate(1000, 10*time.Second, 0),
	}})
	ctx := context.Background()
	measure := func(name string, n int, f func(i int) Decision) (total, evals float64) {
		t.Helper()
		mon := startMonitor(t, s)
		for i := range n {
			if d := f(i); d.Store != "redis" || d.Fallback {
				t.Fatalf("%s %d: %+v", name, i, d)
			}
		}
		cmds := mon.stop()
		for _, c := range cmds {
			if strings.HasPrefix(c, "EVAL") {
				evals++
			}
		}
		total, evals = float64(len(cmds))/float64(n), evals/float64(n)
		t.Logf("%s: %.2f commands from the client (%.2f EVAL*) per decision", name, total, evals)
		return total, evals
	}
	// The first call of the counting script loads it (EVALSHA, NOSCRIPT,
	// EVAL).
	measure("first message", 1, func(int) Decision { return l.Message(ctx, "u", "a") })
	l.Handshake(ctx, "u", "a")
	l.Handshake(ctx, "u", "b")
	if total, evals := measure("allowed message", 50, func(int) Decision { return l.Message(ctx, "u", "a") }); total != 1 || evals != 1 {
		t.Errorf("allowed message: %.2f commands, %.2f EVAL*; want 1 and 1", total, evals)
	}
	if total, _ := measure("allowed handshake", 20, func(int) Decision { return l.Handshake(ctx, "u", "a") }); total != 1 {
		t.Errorf("allowed handshake: %.2f commands, want 1", total)
	}
	for l.Message(ctx, "u", "a").Allowed {
	}
	// A message whose refusal closes its stream is refused by the counting
	// script, which counts nothing while the block lasts.
	closing := ClosesOnRefusal(ctx)
	if total, evals := measure("blocked message, closing", 20, func(int) Decision {
		d := l.Message(closing, "u", "a")
		if d.Allowed || !d.Blocked || d.RetryAfter <= 0 || d.RetryAfter > 3*time.Second {
			t.Fatalf("blocked message: %+v", d)
		}
		return d
	}); total != 1 || evals != 1 {
		t.Errorf("blocked message, closing: %.2f commands, %.2f EVAL*; want 1 and 1", total, evals)
	}
	if got := s.cli("exists", prefix+":um:{u}"); got != "0" {
		t.Fatalf("the blocked user's counter exists (%q): a blocked message counted", got)
	}
	// Other messages (HTTP requests) and handshakes read the blocks through
	// the client-side cache. Redis invalidates the cached "not blocked"
	// with a push that may land after the reply to the write; until it does
	// the counting script refuses by itself. Then one read caches the
	// block, and a client that keeps asking costs no round trip.
	time.Sleep(50 * time.Millisecond)
	l.Message(ctx, "u", "a")
	l.Handshake(ctx, "u", "b")
	if total, _ := measure("blocked message", 100, func(int) Decision {
		d := l.Message(ctx, "u", "a")
		if d.Allowed || !d.Blocked || d.RetryAfter <= 0 || d.RetryAfter > 3*time.Second {
			t.Fatalf("blocked message: %+v", d)
		}
		return d
	}); total != 0 {
		t.Errorf("blocked message: %.2f commands, want 0", total)
	}
	if total, _ := measure("blocked handshake", 20, func(int) Decision {
		d := l.Handshake(ctx, "u", "b")
		if d.Allowed || !d.Blocked {
			t.Fatalf("blocked handshake: %+v", d)
		}
		return d
	}); total != 0 {
		t.Errorf("blocked handshake: %.2f commands, want 0", total)
	}
}

func TestRedisFailureModes(t *testing.T) {
	s := startRedis(t)
	rules := Rules{UserMessages: rate(2, 10*time.Second, time.Second)}
	ls := map[FailureMode]*Limiter{}
	for _, m := range []FailureMode{FailLocal, FailOpen, FailClosed} {
		ls[m] = newLimiter(t, Config{Rules: rules, RedisURL: s.url(), KeyPrefix: keyPrefix(t) + m.String(),
			FailureMode: m, Timeout: testTimeout})
	}
	ctx := context.Background()
	for m, l := range ls {
		if d := l.Message(ctx, "u", "a"); !d.Allowed || d.Store != "redis" || !l.RedisUp() || l.StoreName() != "redis" {
			t.Fatalf("%v before the outage: %+v, RedisUp %v", m, d, l.RedisUp())
		}
	}
	s.stop()

	d := ls[FailLocal].Message(ctx, "u", "a")
	if !d.Allowed || !d.Fallback || d.Err == nil || d.Store != "memory" {
		t.Fatalf("local, 1st: %+v", d)
	}
	ls[FailLocal].Message(ctx, "u", "a")
	d = ls[FailLocal].Message(ctx, "u", "a")
	if d.Allowed || !d.Fallback || d.Scope != ScopeUser || d.RetryAfter != time.Second || d.Store != "memory" {
		t.Fatalf("local, 3rd: %+v, want refused by the memory store", d)
	}
	for range 3 {
		d = ls[FailOpen].Message(ctx, "u", "a")
		if !d.Allowed || !d.Fallback || d.Err == nil {
			t.Fatalf("open: %+v", d)
		}
	}
	d = ls[FailClosed].Message(ctx, "u", "a")
	want := Decision{Scope: ScopeUser, Kind: KindMessage, RetryAfter: time.Second, Fallback: true}
	if d.Err == nil {
		t.Fatalf("closed: %+v, want an Err", d)
	}
	if d.Err = nil; d != want {
		t.Fatalf("closed: %+v, want %+v", d, want)
	}
	d = ls[FailClosed].Handshake(ctx, "u", "a")
	if d.Allowed || d.Kind != KindConnection || !d.Fallback {
		t.Fatalf("closed handshake: %+v", d)
	}
	for m, l := range ls {
		for range failAfter { // failed calls in a row mark the node down
			l.Message(ctx, "v", "b")
		}
		if l.RedisUp() {
			t.Fatalf("%v: RedisUp with Redis down", m)
		}
		if d := l.Message(ctx, "v", "b"); !d.Fallback || !errors.Is(d.Err, errRedisDown) {
			t.Fatalf("%v: later decision while down: %+v, want errRedisDown", m, d)
		}
	}

	s.start()
	for m, l := range ls {
		waitUp(t, l)
		// rueidis keeps more than one connection to a standalone Redis: one
		// that stayed idle fails its first call after the restart once
		// (EOF) before it is replaced.
		waitFor(t, m.String()+": a decision by redis after the restart", func() bool {
			d := l.Message(ctx, "w", "c")
			return d.Allowed && !d.Fallback && d.Store == "redis"
		})
	}
}

// waitUp waits (bounded) until l sees Redis again.
func waitUp(t *testing.T, l *Limiter) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !l.RedisUp() {
		if time.Now().After(deadline) {
			t.Fatal("RedisUp still false 10s after Redis came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRedisDownAtStart(t *testing.T) {
	if _, err := os.Stat(redisServerBin); err != nil {
		t.Skip(err)
	}
	port := freePort(t)
	url := fmt.Sprintf("redis://127.0.0.1:%d", port)
	l := newLimiter(t, Config{RedisURL: url, Timeout: testTimeout, KeyPrefix: keyPrefix(t),
		Rules: Rules{UserMessages: rate(5, 10*time.Second, 0)}})
	if l.RedisUp() || l.StoreName() != "redis" {
		t.Fatalf("RedisUp %v StoreName %q with nothing listening", l.RedisUp(), l.StoreName())
	}
	if d := l.Message(context.Background(), "u", "a"); !d.Allowed || !d.Fallback || d.Store != "memory" {
		t.Fatalf("degraded: %+v", d)
	}
	s := &redisServer{tb: t, port: port}
	s.start()
	t.Cleanup(s.stop)
	waitUp(t, l)
	if d := l.Message(context.Background(), "u", "a"); !d.Allowed || d.Fallback || d.Store != "redis" {
		t.Fatalf("after Redis came up: %+v", d)
	}
}

func TestRedisTimeout(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: 50 * time.Millisecond,
		FailureMode: FailOpen, Rules: Rules{UserMessages: rate(5, 10*time.Second, 0)}})
	ctx := context.Background()
	l.Message(ctx, "u", "a")
	s.pause()
	start := time.Now()
	d := l.Message(ctx, "u", "a")
	took := time.Since(start)
	s.resume()
	if !d.Allowed || !d.Fallback || !errors.Is(d.Err, context.DeadlineExceeded) {
		t.Fatalf("blackholed: %+v", d)
	}
	if took > time.Second {
		t.Fatalf("blackholed decision took %v, want about the 50ms timeout", took)
	}
	t.Logf("blackholed decision took %v", took)
	waitUp(t, l)
	if d := l.Message(ctx, "u", "a"); d.Fallback {
		t.Fatalf("after resume: %+v", d)
	}
}

func TestRedisCallerCancel(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout,
		Rules: Rules{UserMessages: rate(5, 10*time.Second, 0)}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if d := l.Message(ctx, "u", "a"); !d.Fallback {
		t.Fatalf("canceled caller: %+v", d)
	}
	if !l.RedisUp() {
		t.Fatal("a canceled caller marked Redis down")
	}
}

// TestRedisHandshakeBlockCheck: a handshake checks the blocks through the
// client-side cache, as messages do: a block set by another replica
// invalidates the cached "not blocked", the next handshake reads the block
// without running the counting script, and the ones after it refuse
// without a round trip until the block ends.
func TestRedisHandshakeBlockCheck(t *testing.T) {
	s := startRedis(t)
	cfg := Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout, Rules: Rules{
		UserMessages: rate(2, 10*time.Second, 400*ms),
		UserConns:    rate(1000, 10*time.Second, 0),
	}}
	a, b := newLimiter(t, cfg), newLimiter(t, cfg)
	ctx := context.Background()
	h := &harness{store: "redis"}
	h.handshakes(t, b, 1, "u", "x") // b has seen "u" unblocked
	h.allow(t, a, 2, "u", "x")
	h.deny(t, a, "u", "x", ScopeUser, KindMessage, 400*ms) // a blocks "u"
	count := func(f func()) (int, int) { return countCommands(t, s, f) }
	// The counting script refuses until the invalidation of b's cached
	// "not blocked" arrives; then one read caches the block.
	waitFor(t, "b refuses the handshake from the cache", func() bool {
		n, _ := count(func() { h.check(t, b.Handshake(ctx, "u", "y"), ScopeUser, KindMessage, 400*ms) })
		return n == 0
	})
	if n, _ := count(func() {
		for range 10 {
			h.check(t, b.Handshake(ctx, "u", "y"), ScopeUser, KindMessage, 400*ms)
		}
	}); n != 0 {
		t.Fatalf("handshakes of a known block: %d commands, want 0", n)
	}
	time.Sleep(450 * ms)
	if _, evals := count(func() { h.handshakes(t, b, 1, "u", "y") }); evals != 1 {
		t.Fatalf("the handshake after the block: %d scripts, want 1 (the counting script)", evals)
	}
}
