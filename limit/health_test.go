package limit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// proxiedLimiter returns a FailClosed Limiter of cfg's Mode and LeaseSize,
// with a user message rule of 1000 a minute and the fault Timeout, on a
// Redis behind a fault proxy, after a first message of user u from a that
// Redis decided.
func proxiedLimiter(t *testing.T, cfg Config) (*Limiter, *faultProxy) {
	t.Helper()
	s := startRedis(t)
	p := startProxy(t, s.addr())
	l := newLimiter(t, Config{RedisURL: p.url(), KeyPrefix: keyPrefix(t), Timeout: faultTimeout, FailureMode: FailClosed,
		Mode: cfg.Mode, LeaseSize: cfg.LeaseSize, Rules: Rules{UserMessages: rate(1000, time.Minute, time.Second)}})
	if d := l.Message(context.Background(), "u", "a"); !d.Allowed || d.Fallback {
		t.Fatalf("the first message, before any fault: %+v", d)
	}
	return l, p
}

// TestRedisOneSlowReply: one reply slower than the Timeout sends that
// decision to the failure mode and no other; failAfter consecutive failures
// mark Redis down, and then decisions fall back without trying it.
func TestRedisOneSlowReply(t *testing.T) {
	l, p := proxiedLimiter(t, Config{})
	ctx := context.Background()
	p.setLatency(3 * faultTimeout)
	if d := l.Message(ctx, "u", "a"); !d.Fallback || errors.Is(d.Err, errRedisDown) {
		t.Fatalf("the slow decision: %+v, want a fallback after trying Redis", d)
	}
	p.setLatency(0)
	waitFor(t, "the late reply to pass the proxy", func() bool { return p.inFlight() == 0 })
	if d := l.Message(ctx, "u", "a"); !d.Allowed || d.Fallback {
		t.Fatalf("the decision after one slow reply: %+v, want Redis's", d)
	}
	if !l.RedisUp() {
		t.Fatal("one slow reply marked Redis down")
	}

	p.setLatency(3 * faultTimeout)
	for i := range failAfter {
		if d := l.Message(ctx, "u", "a"); !d.Fallback || errors.Is(d.Err, errRedisDown) {
			t.Fatalf("slow decision %d: %+v, want a fallback after trying Redis", i+1, d)
		}
	}
	if l.RedisUp() {
		t.Fatalf("RedisUp after %d slow replies in a row", failAfter)
	}
	if d := l.Message(ctx, "u", "a"); !d.Fallback || !errors.Is(d.Err, errRedisDown) {
		t.Fatalf("a decision while marked down: %+v, want errRedisDown", d)
	}
	// Still slower than the Timeout: the probes (every probeEvery) get
	// their PONG, too late for a decision, and leave it down.
	for end := time.Now().Add(3*probeEvery + probeEvery/2); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if l.RedisUp() {
			t.Fatal("a probe marked Redis up while it answers slower than the Timeout")
		}
	}
	p.setLatency(0)
	waitUp(t, l)
	waitFor(t, "a decision by redis", func() bool { return !l.Message(ctx, "u", "a").Fallback })
}

// TestRedisOneStallCountsOnce: decisions caught together in one stall fail
// together and count as one failure, however many they are: a busy gate's
// concurrent timeouts do not mark down a node that answers the next call.
func TestRedisOneStallCountsOnce(t *testing.T) {
	l, p := proxiedLimiter(t, Config{})
	ctx := context.Background()
	p.setLatency(3 * faultTimeout)
	const caught = 2 * failAfter
	out := make(chan Decision, caught)
	for range caught {
		go func() { out <- l.Message(ctx, "u", "a") }()
	}
	for range caught {
		if d := <-out; !d.Fallback || errors.Is(d.Err, errRedisDown) {
			t.Fatalf("a decision in the stall: %+v, want a fallback after trying Redis", d)
		}
	}
	if !l.RedisUp() {
		t.Fatalf("one stall of %d concurrent decisions marked Redis down", caught)
	}
	if l.rs.Load().health.single.lastFail.Load() == 0 {
		t.Fatal("the stall's failures were not counted at all")
	}
	p.setLatency(0)
	waitFor(t, "the late replies to pass the proxy", func() bool { return p.inFlight() == 0 })
	if d := l.Message(ctx, "u", "a"); !d.Allowed || d.Fallback {
		t.Fatalf("the decision after the stall: %+v, want Redis's", d)
	}
}

// TestRedisLocalDecisionsKeepTheStreak: in lease mode most decisions spend
// a local slice and ask Redis nothing; they say nothing about the node, so
// they do not clear its failures: three leases in a row that Redis does not
// answer mark it down, however many local decisions come between them.
func TestRedisLocalDecisionsKeepTheStreak(t *testing.T) {
	l, p := proxiedLimiter(t, Config{Mode: ModeLease, LeaseSize: 100}) // u now has a slice
	ctx := context.Background()
	p.setBlackhole(true)
	t.Cleanup(func() { p.setBlackhole(false) })
	for i := range failAfter {
		if i > 0 {
			if d := l.Message(ctx, "u", "a"); !d.Allowed || d.Fallback {
				t.Fatalf("u's message %d, from its slice: %+v", i, d)
			}
		}
		if d := l.Message(ctx, fmt.Sprint("v", i), "a"); !d.Fallback || errors.Is(d.Err, errRedisDown) {
			t.Fatalf("v%d's first message with Redis silent: %+v, want a fallback after trying Redis", i, d)
		}
	}
	if l.RedisUp() {
		t.Fatalf("RedisUp after %d leases in a row that Redis did not answer", failAfter)
	}
}

// TestClusterNodeDown kills one master of a 3-master Cluster that serves
// the slots it still has (cluster-require-full-coverage no): a user whose
// keys live on a live master is decided by Redis, one whose keys lived on
// the dead master by the failure mode, and the Limiter still reports Redis
// up.
func TestClusterNodeDown(t *testing.T) {
	nodes, url := startCluster(t, "--cluster-require-full-coverage", "no")
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: url, KeyPrefix: p, Timeout: faultTimeout, FailureMode: FailClosed,
		Rules: Rules{UserMessages: rate(1000, time.Minute, time.Second), UserConns: rate(1000, time.Minute, 0)}})
	// A user on the master to be killed (node 2), one on another.
	var live, dead string
	for i := 0; live == "" || dead == ""; i++ {
		u := fmt.Sprint("user", i)
		switch slotOwner(t, nodes, p+":um:{"+u+"}") {
		case 2:
			dead = u
		case 0:
			live = u
		}
	}
	ctx := context.Background()
	for _, u := range []string{live, dead} {
		if d := l.Message(ctx, u, "a"); !d.Allowed || d.Fallback {
			t.Fatalf("%s before the kill: %+v", u, d)
		}
	}
	nodes[2].stop()
	deadline := time.Now().Add(1500 * ms)
	byRedis, fallbacks := 0, 0
	for time.Now().Before(deadline) {
		if d := l.Message(ctx, live, "a"); !d.Allowed || d.Fallback {
			t.Fatalf("%s (live master) after the kill: %+v, want Redis's decision", live, d)
		}
		if d := l.Handshake(ctx, live, "b"); !d.Allowed || d.Fallback {
			t.Fatalf("%s's handshake after the kill: %+v, want Redis's decision", live, d)
		}
		byRedis++
		if d := l.Message(ctx, dead, "a"); d.Fallback {
			fallbacks++
		} else {
			t.Fatalf("%s (dead master) after the kill: %+v, want a fallback", dead, d)
		}
		if !l.RedisUp() {
			t.Fatal("RedisUp false with two of three masters alive")
		}
		time.Sleep(20 * ms)
	}
	t.Logf("%d decisions of the live user by redis, %d of the dead one by the failure mode", byRedis, fallbacks)
}
