package limit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"
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

// TestClusterNodeUpAgain stalls the master of a user's keys until the
// Limiter marks it down, resumes it, and waits for the probe to mark it up:
// the probe must find the node among the client's connections by the name
// rueidis gives it. A master whose CLUSTER SLOTS endpoint is unknown (behind
// a load balancer: cluster-preferred-endpoint-type unknown-endpoint) is
// named by rueidis after the address it asked, with the port the map gives.
func TestClusterNodeUpAgain(t *testing.T) {
	for _, endpoint := range []string{"ip", "unknown-endpoint"} {
		t.Run(endpoint, func(t *testing.T) {
			nodes, url := startCluster(t, "--cluster-preferred-endpoint-type", endpoint)
			p := keyPrefix(t)
			l := newLimiter(t, Config{RedisURL: url, KeyPrefix: p, Timeout: faultTimeout, FailureMode: FailClosed,
				Rules: Rules{UserMessages: rate(1000, time.Minute, time.Second)}})
			ctx := context.Background()
			if d := l.Message(ctx, "u", "a"); !d.Allowed || d.Fallback {
				t.Fatalf("before the stall: %+v", d)
			}
			owner := nodes[slotOwner(t, nodes, p+":um:{u}")]
			owner.pause()
			for range failAfter {
				if d := l.Message(ctx, "u", "a"); !d.Fallback {
					owner.resume()
					t.Fatalf("while the master is stalled: %+v, want a fallback", d)
				}
			}
			owner.resume()
			if d := l.Message(ctx, "u", "a"); !d.Fallback {
				t.Fatalf("just after the stall: %+v, want the node still marked down", d)
			}
			waitFor(t, "a decision by Redis after the master resumed", func() bool {
				d := l.Message(ctx, "u", "a")
				return d.Allowed && !d.Fallback
			})
		})
	}
}

// TestNodeAddr checks the names health gives masters against the names
// rueidis gives its connections (net.JoinHostPort of the endpoint and port):
// an IPv6 master named "::1:7000" was never found, so never probed, and a
// node marked down stayed down.
func TestNodeAddr(t *testing.T) {
	for _, c := range []struct {
		host string
		port int64
		want string
	}{
		{"10.0.0.5", 7000, "10.0.0.5:7000"},
		{"::1", 7000, "[::1]:7000"},
		{"fd00::5", 6379, "[fd00::5]:6379"},
		{"redis-0.redis", 6379, "redis-0.redis:6379"},
		{"", 7001, ":7001"},
	} {
		if got := nodeAddr(c.host, c.port); got != c.want {
			t.Errorf("nodeAddr(%q, %d) = %q, want %q", c.host, c.port, got, c.want)
		}
	}
	a, b := rueidis.Client(nil), rueidis.Client(nil)
	var x, y rueidis.Client = &struct{ rueidis.Client }{a}, &struct{ rueidis.Client }{b}
	clients := map[string]rueidis.Client{"lb:7000": x, "lb:17000": y}
	if byPort(clients, ":7000") != x {
		t.Error("byPort(:7000) did not find lb:7000 (or took lb:17000)")
	}
	if byPort(clients, ":7002") != nil {
		t.Error("byPort found a port no node has")
	}
	clients["other:7000"] = y
	if byPort(clients, ":7000") != nil {
		t.Error("byPort chose one of two nodes on the same port")
	}
}
