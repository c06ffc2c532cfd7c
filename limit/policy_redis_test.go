package limit

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holo/wsgate/policy"
)

// redisChargeHarness runs the Charge cases on the Redis at url, in real
// time: a RetryAfter may be short by the time its events took.
func redisChargeHarness(url string) *chargeHarness {
	return &chargeHarness{store: storeRedis, slack: 100 * ms, real: true,
		limiter: func(t *testing.T) (*Limiter, func() time.Time, func(time.Duration)) {
			l := newLimiter(t, Config{RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout})
			if !l.RedisUp() {
				t.Fatal("redis not up after New")
			}
			// A millisecond more, for Redis's expiries in whole ms.
			return l, time.Now, func(d time.Duration) { time.Sleep(d + ms) }
		}}
}

func TestChargeRedis(t *testing.T) {
	s := startRedis(t)
	t.Run("semantics", func(t *testing.T) { runChargeCases(t, redisChargeHarness(s.url())) })
	t.Run("semantics with kept keys", func(t *testing.T) {
		h := redisChargeHarness(s.url())
		h.keep = true
		runChargeCases(t, h)
	})
	t.Run("keys", func(t *testing.T) { testChargeKeys(t, s) })
	t.Run("window of the other algorithm", func(t *testing.T) { testChargeOtherAlgorithm(t, s) })
	t.Run("shared", func(t *testing.T) { testChargeShared(t, s.url(), ModeExact, charges("user", sharedRules()...)) })
	// Without a block, every unit the replicas lease is spent: exactly N.
	t.Run("shared lease mode", func(t *testing.T) { testChargeShared(t, s.url(), ModeLease, charges("user", sharedRules()...)) })
	t.Run("round trips", func(t *testing.T) { testChargeRoundTrips(t, s) })
}

// testChargeKeys reads a charge's keys with redis-cli: their names, what
// they hold, and that a refusal writes nothing but the block.
func testChargeKeys(t *testing.T, s *redisServer) {
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: p, Timeout: testTimeout})
	chat := polRule("chat", policy.CountMessages, win(3, 10*time.Second), win(100, time.Minute))
	chat.Block = []time.Duration{time.Minute}
	bytes := polRule("ip-bytes", policy.CountBytes, win(100_000, 100*time.Second))
	bytes.Key, bytes.Algorithm = policy.Key{Kind: policy.KeyIP}, policy.GCRA
	cs := []Charge{{Rule: chat, Limits: chat.Limits, Key: "alice"}, {Rule: bytes, Limits: bytes.Limits, Key: "192.0.2.1"}}
	h := redisChargeHarness(s.url())
	charge := func(n, want int) Decision {
		t.Helper()
		d := h.charge(t, l, KindMessage, cs, n, 100)
		if d.Granted != want {
			t.Fatalf("%d events: %+v, want %d granted", n, d, want)
		}
		return d
	}
	charge(2, 2)
	chatKey := func(suffix string) string { return p + ":r:chat:u:" + suffix }
	ipKey := p + ":r:ip-bytes:ip:100000:{192.0.2.1}"
	for _, k := range []string{chatKey("10000:{alice}"), chatKey("60000:{alice}")} {
		if got := s.cli("get", k); got != "2" {
			t.Fatalf("%s = %q, want 2", k, got)
		}
	}
	if ttl, _ := strconv.Atoi(s.cli("pttl", chatKey("10000:{alice}"))); ttl <= 5000 || ttl > 10000 {
		t.Fatalf("the 10s window's PTTL %d", ttl)
	}
	// 200 B at 1 B/ms: about 200 units ahead of the rate, for about 200ms.
	units, _, _ := strings.Cut(s.cli("get", ipKey), " ")
	if u, err := strconv.ParseFloat(units, 64); err != nil || u <= 150 || u > 200 {
		t.Fatalf("%s holds %q units ahead, want about 200", ipKey, units)
	}
	charge(2, 1) // chat's 10s window has 1 left
	before := s.cli("get", ipKey)
	if d := charge(1, 0); d.Rule != "chat" || d.RetryAfter != time.Minute {
		t.Fatalf("4th: %+v", d)
	}
	if got := s.cli("get", ipKey); got != before {
		t.Fatalf("the refusal by chat wrote the byte rule's window: %q, then %q", before, got)
	}
	if got := s.cli("exists", chatKey("10000:{alice}"), chatKey("60000:{alice}")); got != "0" {
		t.Fatalf("chat's windows after its block: %s exist, want none", got)
	}
	if got := s.cli("get", chatKey("{alice}:str")); got != "1" {
		t.Fatalf("strikes %q, want 1", got)
	}
	if ttl, _ := strconv.Atoi(s.cli("pttl", chatKey("{alice}:blk"))); ttl <= 50_000 {
		t.Fatalf("block key PTTL %d, want about a minute", ttl)
	}
}

// testChargeOtherAlgorithm: a reload that turns a GCRA rule into a fixed
// window one finds the rule's windows holding GCRA values ("<units> <µs>"),
// which the fixed window counts as not open, and the other way round.
func testChargeOtherAlgorithm(t *testing.T, s *redisServer) {
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: p, Timeout: testTimeout})
	h := redisChargeHarness(s.url())
	fixed := polRule("chat", policy.CountMessages, win(3, 10*time.Second))
	smooth := polRule("chat", policy.CountMessages, win(3, 10*time.Second))
	smooth.Algorithm = policy.GCRA
	key := p + ":r:chat:u:10000:{alice}"
	s.cli("set", key, "2.5 1700000000000000", "px", "60000")
	if d := h.charge(t, l, KindMessage, charges("alice", fixed), 2, 0); d.Granted != 2 {
		t.Fatalf("fixed window over a GCRA value: %+v, want 2 granted", d)
	}
	if got := s.cli("get", key); got != "2" {
		t.Fatalf("%s = %q, want 2", key, got)
	}
	if ttl, _ := strconv.Atoi(s.cli("pttl", key)); ttl <= 5000 || ttl > 10000 {
		t.Fatalf("the window's PTTL %d, want its own 10s", ttl)
	}
	if d := h.charge(t, l, KindMessage, charges("alice", smooth), 3, 0); d.Granted != 3 {
		t.Fatalf("GCRA over a fixed window's count: %+v, want its burst of 3", d)
	}
}

// sharedRules are a rule of 100 events in two windows, and a GCRA rule
// that never refuses.
func sharedRules() []*policy.Rule {
	chat := polRule("chat", policy.CountMessages, win(100, 10*time.Second), win(1000, time.Minute))
	smooth := polRule("smooth", policy.CountMessages, win(1_000_000, time.Second))
	smooth.Algorithm = policy.GCRA
	return []*policy.Rule{chat, smooth}
}

// testChargeShared runs 1,000 attempts from 4 goroutines on each of 2
// Limiters in mode sharing one Redis, half of them asked about in batches,
// against cs, whose rules allow 100: exactly 100 pass in exact mode.
func testChargeShared(t *testing.T, url string, mode Mode, cs []Charge) {
	cfg := Config{RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout, Mode: mode}
	ls := []*Limiter{newLimiter(t, cfg), newLimiter(t, cfg)}
	const attempts, workers = 1000, 4
	var allowed, fallbacks atomic.Int64
	var wg sync.WaitGroup
	for i := range len(ls) * workers {
		wg.Go(func() {
			l := ls[i%len(ls)]
			for j, left := 0, attempts/(len(ls)*workers); left > 0; j++ {
				n := 1
				if i%2 == 1 {
					n = min(left, 1+j%5)
				}
				d := l.Charge(context.Background(), KindMessage, cs, n, 0)
				if d.Fallback {
					fallbacks.Add(1)
				}
				allowed.Add(int64(d.Granted))
				left -= max(d.Granted, 1)
			}
		})
	}
	wg.Wait()
	// Exact mode passes exactly 100. Lease mode never passes more, and may
	// pass less: units of a slice the other replica holds when its workers
	// stop, or of a slice dropped on the way, are lost (at most a slice, a
	// tenth of 100, per replica).
	low := int64(100)
	if mode == ModeLease {
		low = 100 - int64(len(ls))*10
	}
	if a := allowed.Load(); a > 100 || a < low || fallbacks.Load() != 0 {
		t.Fatalf("%d allowed, %d fallbacks of %d attempts; want %d to 100 allowed, no fallback",
			a, fallbacks.Load(), attempts, low)
	}
}

// testChargeRoundTrips counts the commands Redis serves per decision: one
// script whatever the number of rules and windows, and none for a key
// whose block is known, unless its refusal closes the connection.
func testChargeRoundTrips(t *testing.T, s *redisServer) {
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout})
	chat := polRule("chat", policy.CountMessages, win(25, 10*time.Second), win(1000, time.Minute))
	chat.Block = []time.Duration{time.Minute}
	ipMsgs := polRule("ip-messages", policy.CountMessages, win(1000, 10*time.Second), win(10_000, time.Minute))
	ipMsgs.Key, ipMsgs.Block = policy.Key{Kind: policy.KeyIP}, []time.Duration{time.Minute}
	smooth := polRule("smooth", policy.CountMessages, win(1000, time.Second))
	smooth.Algorithm = policy.GCRA
	cs := append(charges("u", chat, smooth), Charge{Rule: ipMsgs, Limits: ipMsgs.Limits, Key: "192.0.2.1"})
	h := redisChargeHarness(s.url())
	count := func(f func()) (int, int) { return countCommands(t, s, f) }
	h.charge(t, l, KindMessage, cs, 1, 0) // reads the blocks into the cache
	const allowed = 20
	if cmds, evals := count(func() {
		for range allowed {
			if d := h.charge(t, l, KindMessage, cs, 1, 0); !d.Allowed {
				t.Fatalf("refused: %+v", d)
			}
		}
	}); cmds != allowed || evals != allowed {
		t.Fatalf("%d allowed decisions of 3 rules and 6 windows: %d commands, %d scripts; want one script each", allowed, cmds, evals)
	}
	for h.charge(t, l, KindMessage, cs, 1, 0).Allowed {
	}
	// Every rule closes the stream at a refusal, and the caller says so: a
	// blocked message goes to the script, which refuses it.
	closing := ClosesOnRefusal(context.Background())
	blockedBy := func(ctx context.Context) func() {
		return func() {
			if d := l.Charge(ctx, KindMessage, cs, 1, 0); d.Allowed || !d.Blocked || d.Rule != "chat" || d.Fallback {
				t.Fatalf("blocked: %+v", d)
			}
		}
	}
	if cmds, evals := count(func() {
		for range 5 {
			blockedBy(closing)()
		}
	}); cmds != 5 || evals != 5 {
		t.Fatalf("5 blocked messages under rules that close: %d commands, %d scripts; want one script each", cmds, evals)
	}
	// A rule that drops, or a shadow rule, keeps the stream: the blocked
	// messages read the block through the cache, as do those of a caller
	// whose refusals do not close (an HTTP request).
	chat.Action = policy.Drop
	waitFor(t, "a refusal from the cache, a rule that drops", func() bool { n, _ := count(blockedBy(closing)); return n == 0 })
	chat.Action, chat.Shadow = policy.Close, true
	waitFor(t, "a refusal from the cache, a shadow rule", func() bool { n, _ := count(blockedBy(closing)); return n == 0 })
	chat.Shadow = false
	if cmds, _ := count(blockedBy(closing)); cmds != 1 {
		t.Fatalf("a blocked message under rules that close: %d commands, want one script", cmds)
	}
	// The script refuses until the invalidation of the cached "not
	// blocked" arrives; then one read caches the block.
	waitFor(t, "a refusal from the cache", func() bool {
		n, _ := count(func() {
			if d := h.charge(t, l, KindMessage, cs, 1, 0); d.Allowed || !d.Blocked || d.Rule != "chat" {
				t.Fatalf("blocked: %+v", d)
			}
		})
		return n == 0
	})
	// Ten handshakes of the blocked key cost nothing. (Retried: on a busy
	// machine a command of rueidis's own may land inside the window.)
	waitFor(t, "ten decisions of a known block without a command", func() bool {
		n, _ := count(func() {
			for range 10 {
				if d := h.charge(t, l, KindConnection, cs[:1], 1, 0); !d.Blocked {
					t.Fatalf("blocked: %+v", d)
				}
			}
		})
		return n == 0
	})
}

// TestChargeRedisFailure: a Redis that hangs or is down sends Charge to the
// failure mode, and failAfter failed decisions mark it down.
func TestChargeRedisFailure(t *testing.T) {
	s := startRedis(t)
	chat := polRule("chat", policy.CountMessages, win(2, 10*time.Second))
	chat.Block = []time.Duration{time.Second}
	cs := charges("u", chat)
	ctx := context.Background()
	ls := map[FailureMode]*Limiter{}
	for _, m := range []FailureMode{FailLocal, FailOpen, FailClosed} {
		// rueidis retries a cached read on a refused connection until the
		// deadline: a short Timeout keeps the outage short.
		ls[m] = newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t) + m.String(), FailureMode: m, Timeout: 300 * ms})
		if d := ls[m].Charge(ctx, KindMessage, cs, 1, 0); !d.Allowed || d.Fallback || d.Store != storeRedis {
			t.Fatalf("%v before the outage: %+v", m, d)
		}
	}
	slow := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t) + "slow", FailureMode: FailOpen, Timeout: 50 * ms})
	slow.Charge(ctx, KindMessage, cs, 1, 0)
	s.pause()
	start := time.Now()
	d := slow.Charge(ctx, KindMessage, cs, 3, 0)
	took := time.Since(start)
	s.resume()
	if !d.Allowed || d.Granted != 1 || !d.Fallback || !errors.Is(d.Err, context.DeadlineExceeded) || took > time.Second {
		t.Fatalf("hung Redis: %+v after %v, want the first event allowed by FailOpen after the 50ms timeout", d, took)
	}

	s.stop()
	d = ls[FailLocal].Charge(ctx, KindMessage, cs, 3, 0)
	if !d.Allowed || d.Granted != 1 || !d.Fallback || d.Err == nil || d.Store != storeMemory {
		t.Fatalf("local, 1st: %+v, want the first event allowed by the memory store", d)
	}
	ls[FailLocal].Charge(ctx, KindMessage, cs, 1, 0)
	d = ls[FailLocal].Charge(ctx, KindMessage, cs, 1, 0)
	if d.Allowed || !d.Fallback || d.Rule != "chat" || d.RetryAfter != time.Second || d.Store != storeMemory {
		t.Fatalf("local, 3rd: %+v, want refused by the memory store", d)
	}
	if d := ls[FailOpen].Charge(ctx, KindMessage, cs, 3, 0); !d.Allowed || d.Granted != 1 || !d.Fallback || d.Err == nil {
		t.Fatalf("open: %+v", d)
	}
	d = ls[FailClosed].Charge(ctx, KindConnection, cs, 1, 0)
	want := Decision{Scope: "user", Kind: KindConnection, RetryAfter: closedRetry, Rule: "chat", Fallback: true}
	if d.Err == nil {
		t.Fatalf("closed: %+v, want an Err", d)
	}
	if d.Err = nil; d != want {
		t.Fatalf("closed: %+v, want %+v", d, want)
	}
	for m, l := range ls {
		for range failAfter { // failed decisions in a row mark the node down
			l.Charge(ctx, KindMessage, charges("v", chat, chat), 1, 0)
		}
		if l.RedisUp() {
			t.Fatalf("%v: RedisUp with Redis down", m)
		}
		d := l.Charge(ctx, KindMessage, charges("w", chat), 2, 0)
		if !d.Fallback || !errors.Is(d.Err, errRedisDown) || m == FailOpen && d.Granted != 2 {
			t.Fatalf("%v: a decision while down: %+v, want errRedisDown, n decided when no call was made", m, d)
		}
	}

	s.start()
	l := ls[FailLocal]
	waitUp(t, l)
	waitFor(t, "a decision by redis after the restart", func() bool {
		d := l.Charge(ctx, KindMessage, charges("x", chat), 1, 0)
		return d.Allowed && !d.Fallback && d.Store == storeRedis
	})
}

// TestChargeRedisOneFailure: a failed decision of several charges on one
// node is one failure of that node (of the failAfter that mark it down),
// not one per charge.
func TestChargeRedisOneFailure(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: 300 * ms})
	rules := sharedRules()
	cs := append(charges("u", rules...), charges("192.0.2.1", rules...)...)
	ctx := context.Background()
	if d := l.Charge(ctx, KindMessage, cs, 1, 0); !d.Allowed || d.Fallback {
		t.Fatalf("before the outage: %+v", d)
	}
	s.stop()
	if d := l.Charge(ctx, KindMessage, cs, 1, 0); !d.Fallback || d.Err == nil || errors.Is(d.Err, errRedisDown) {
		t.Fatalf("with Redis stopped: %+v, want a failed call", d)
	}
	if n := l.rs.Load().health.single.fails.Load(); n != 1 {
		t.Fatalf("%d failures recorded for one decision of 4 charges on one node, want 1", n)
	}
}

// TestChargeCluster runs Charge on a 3-master Redis Cluster: the cases
// (each charge's keys in one slot), and charges whose keys live in
// different slots, decided one script per slot with refunds.
func TestChargeCluster(t *testing.T) {
	nodes, url := startCluster(t)
	cli := func(args ...string) string {
		return nodes[0].cli(append([]string{"-c"}, args...)...)
	}
	if cli("cluster", "keyslot", "{u}") == cli("cluster", "keyslot", "{192.0.2.1}") {
		t.Fatal("the user and the IP keys share a slot")
	}
	t.Run("semantics", func(t *testing.T) { runChargeCases(t, redisChargeHarness(url)) })
	user := polRule("user-messages", policy.CountMessages, win(1000, 10*time.Second))
	ip := polRule("ip-messages", policy.CountMessages, win(50, 10*time.Second))
	ip.Key = policy.Key{Kind: policy.KeyIP}
	cs := []Charge{{Rule: user, Limits: user.Limits, Key: "u"}, {Rule: ip, Limits: ip.Limits, Key: "192.0.2.1"}}
	t.Run("shared", func(t *testing.T) {
		ip := *ip
		ip.Limits = []policy.Window{win(100, 10*time.Second)}
		cs := []Charge{cs[0], {Rule: &ip, Limits: ip.Limits, Key: cs[1].Key}}
		testChargeShared(t, url, ModeExact, cs)
		// The IP rule refused 900 events: the user's counter holds the 100
		// that passed.
		if got := cli("get", keyPrefix(t)+":r:user-messages:u:10000:{u}"); got != "100" {
			t.Fatalf("the user's counter %q after 100 events passed, want 100", got)
		}
	})
	t.Run("lease semantics", func(t *testing.T) { runChargeCases(t, leaseChargeHarness(url, 3)) })
	t.Run("lease replicas", func(t *testing.T) { testChargeLeaseReplicas(t, url, cli) })
	t.Run("lease shared", func(t *testing.T) {
		ip := *ip
		ip.Limits = []policy.Window{win(100, 10*time.Second)}
		testChargeShared(t, url, ModeLease, []Charge{cs[0], {Rule: &ip, Limits: ip.Limits, Key: cs[1].Key}})
	})
	for _, mode := range []Mode{ModeExact, ModeLease} {
		t.Run("refund "+mode.String(), func(t *testing.T) { testChargeClusterRefund(t, url, cli, mode, cs[1]) })
	}
	t.Run("blocked in another slot", func(t *testing.T) {
		l := newLimiter(t, Config{RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout})
		msgs := polRule("ip-messages", policy.CountMessages, win(1, 10*time.Second))
		msgs.Key, msgs.Block = policy.Key{Kind: policy.KeyIP}, []time.Duration{time.Minute}
		joins := polRule("joins", policy.CountHandshakes, win(100, 10*time.Second))
		h := redisChargeHarness(url)
		h.takeAll(t, l, charges("192.0.2.1", msgs), 0, 10)
		hs := []Charge{{Rule: joins, Limits: joins.Limits, Key: "u"}, {Rule: msgs, Limits: msgs.Limits, Key: "192.0.2.1", GuardOnly: true}}
		for i := range 3 {
			if d := h.charge(t, l, KindConnection, hs, 1, 0); !d.Blocked || d.Rule != "ip-messages" {
				t.Fatalf("handshake %d: %+v, want refused by the IP's block", i+1, d)
			}
		}
		// The first may have been counted in the joins' slot, before the
		// invalidation of the cached "not blocked" arrived: then refunded.
		if got := cli("get", keyPrefix(t)+":r:joins:u:10000:{u}"); got != "" && got != "0" {
			t.Fatalf("refused handshakes counted: the joins counter holds %q", got)
		}
	})
}

// testChargeClusterRefund: a GCRA rule on the user's slot and a fixed rule
// of 50 on the IP's (ip): once the IP rule refuses, nothing more passes.
// In ModeExact the event the user's slot counted is taken back, so the
// GCRA window holds the 50 that passed; in ModeLease both rules are
// leased, and the GCRA window holds the one slice its events came from
// (a tenth of its 1000), which the refusals leave alone.
func testChargeClusterRefund(t *testing.T, url string, cli func(...string) string, mode Mode, ip Charge) {
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: url, KeyPrefix: p, Timeout: testTimeout, Mode: mode})
	smooth := polRule("smooth", policy.CountMessages, win(1000, 1000*time.Second)) // 1 per second
	smooth.Algorithm = policy.GCRA
	cs := []Charge{{Rule: smooth, Limits: smooth.Limits, Key: "u"}, ip}
	h := redisChargeHarness(url)
	passed := 0
	for i := range 60 {
		d := h.charge(t, l, KindMessage, cs, 3, 0)
		passed += d.Granted
		if d.Allowed != (passed <= 50 && d.Granted > 0) || mode == ModeExact && d.Allowed && d.Granted != 1 ||
			!d.Allowed && d.Rule != "ip-messages" {
			t.Fatalf("event %d: %+v after %d passed, want 50 allowed (one at a time in exact mode), then refused by ip-messages", i+1, d, passed)
		}
	}
	if passed != 50 {
		t.Fatalf("%d passed, want 50", passed)
	}
	want := 50.0
	if mode == ModeLease {
		want = 100
	}
	units, _, _ := strings.Cut(cli("get", p+":r:smooth:u:1000000:{u}"), " ")
	if u, err := strconv.ParseFloat(units, 64); err != nil || u <= want-1 || u > want {
		t.Fatalf("the GCRA window holds %q units ahead, want %v (less their drain)", units, want)
	}
	if got := cli("get", p+":r:ip-messages:ip:10000:{192.0.2.1}"); got != "50" {
		t.Fatalf("the IP counter %q, want 50", got)
	}
}

// TestChargeKeys pins the key layout that keysOf cuts from one string, and
// that blockKeyOf agrees with it.
func TestChargeKeys(t *testing.T) {
	chat := polRule("chat", policy.CountMessages, win(100, 10*time.Second), win(1000, time.Hour))
	tenant := polRule("tenant", policy.CountMessages, win(5, time.Second))
	tenant.Key = policy.Key{Kind: policy.KeyClaim, Name: "org"}
	for _, tc := range []struct {
		c    Charge
		id   string
		want []string
	}{
		{Charge{Rule: chat, Limits: chat.Limits}, "u1", []string{
			"p:r:chat:u:{u1}:blk", "p:r:chat:u:{u1}:str", "p:r:chat:u:10000:{u1}", "p:r:chat:u:3600000:{u1}"}},
		{Charge{Rule: chat, Limits: chat.Limits[:1], GuardOnly: true}, "u1", []string{
			"p:r:chat:u:{u1}:blk", "p:r:chat:u:{u1}:str"}},
		{Charge{Rule: tenant, Limits: tenant.Limits}, "acme", []string{
			"p:r:tenant:cl.org:{acme}:blk", "p:r:tenant:cl.org:{acme}:str", "p:r:tenant:cl.org:1000:{acme}"}},
	} {
		got := keysOf([]string{"before"}, "p", &tc.c, tc.id)
		if !slices.Equal(got, append([]string{"before"}, tc.want...)) {
			t.Errorf("keysOf(%s, %q) = %q, want %q after \"before\"", tc.c.Rule.Name, tc.id, got, tc.want)
		}
		if b := blockKeyOf("p", &tc.c, tc.id); b != tc.want[0] {
			t.Errorf("blockKeyOf(%s, %q) = %q, want %q", tc.c.Rule.Name, tc.id, b, tc.want[0])
		}
	}
}

// TestChargeKeysKept: a ChargeKeys hands back the keys keysOf builds for
// the charge it is given, without building them again while the charge is
// the same, and builds them anew for another key value, rule, prefix,
// window or guard.
func TestChargeKeysKept(t *testing.T) {
	chat := polRule("chat", policy.CountMessages, win(100, 10*time.Second), win(1000, time.Hour))
	reloaded := polRule("chat", policy.CountMessages, win(100, 10*time.Second), win(1000, time.Hour))
	tier := []policy.Window{win(100, 10*time.Second), win(5000, 24*time.Hour)}
	var kept ChargeKeys
	for _, tc := range []struct {
		prefix string
		c      Charge
	}{
		{"p", Charge{Rule: chat, Limits: chat.Limits, Key: "u1"}},
		{"p", Charge{Rule: chat, Limits: chat.Limits, Key: "u1"}},
		{"p", Charge{Rule: chat, Limits: chat.Limits, Key: "u2"}},
		{"p", Charge{Rule: chat, Limits: chat.Limits, Key: strings.Repeat("x", maxIDLen+1)}},
		{"p", Charge{Rule: reloaded, Limits: reloaded.Limits, Key: "u2"}},
		{"q", Charge{Rule: reloaded, Limits: reloaded.Limits, Key: "u2"}},
		{"q", Charge{Rule: reloaded, Limits: tier, Key: "u2"}},
		{"q", Charge{Rule: reloaded, Limits: tier[:1], Key: "u2"}},
		{"q", Charge{Rule: reloaded, Limits: tier[:1], Key: "u2", GuardOnly: true}},
	} {
		c := tc.c
		c.Keys = &kept
		id := c.id()
		if want := safeID(c.Key); id != want {
			t.Fatalf("id of %q = %q, want %q", c.Key, id, want)
		}
		want := keysOf([]string{"before"}, tc.prefix, &c, id)
		if got := c.appendKeys([]string{"before"}, tc.prefix, id); !slices.Equal(got, want) {
			t.Fatalf("%s %q under %q: kept keys %q, want %q", c.Rule.Name, c.Key, tc.prefix, got, want)
		}
		buf := make([]string, 0, 8)
		if allocs := testing.AllocsPerRun(10, func() { buf = c.appendKeys(buf[:0], tc.prefix, c.id()) }); allocs != 0 {
			t.Fatalf("%s %q again: %v allocations, want the kept keys", c.Rule.Name, c.Key, allocs)
		}
	}
}

// TestDecimal: the cached decimal strings are those of strconv, also for
// numbers that share a slot of the table and replace each other.
func TestDecimal(t *testing.T) {
	vs := []int64{-1, 0, 99, 100, 10000, 3600000, 1 << 40}
	// Two numbers of one slot: v and v plus the slot count's multiple that
	// lands there again (found by search, bounded).
	slotOf := func(v int64) uint64 { return uint64(v) * 0x9e3779b97f4a7c15 >> 58 }
	for v := int64(101); v < 1_000_000; v++ {
		if slotOf(v) == slotOf(100) {
			vs = append(vs, v)
			break
		}
	}
	for range 3 {
		for _, v := range vs {
			if got, want := decimal(v), strconv.FormatInt(v, 10); got != want {
				t.Fatalf("decimal(%d) = %q, want %q", v, got, want)
			}
		}
	}
}
