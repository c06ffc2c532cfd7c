package limit

import (
	"context"
	"testing"
	"time"
)

// TestRedisBlocksKeepTheirScope: when both rules refuse one message, the
// user and the IP are blocked for their own durations, and a handshake is
// refused by each block only while that block lasts.
func TestRedisBlocksKeepTheirScope(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout, Rules: Rules{
		UserMessages: rate(1, 10*time.Second, 300*ms),
		IPMessages:   rate(1, 10*time.Second, 3*time.Second),
		UserConns:    rate(100, 10*time.Second, 0),
	}})
	ctx := context.Background()
	h := &harness{store: "redis"}
	h.allow(t, l, 1, "u", "a")
	h.deny(t, l, "u", "a", ScopeUser, KindMessage, 3*time.Second) // both refuse: the longer retry
	time.Sleep(350 * ms)
	h.handshakes(t, l, 1, "u", "b") // the user's block is over
	h.check(t, l.Handshake(ctx, "v", "a"), ScopeIP, KindMessage, 3*time.Second)
}

// TestRedisUnblockReachesHandshakes: an operator's DEL of a block key lifts
// the block for handshakes on every replica, the one that set the block and
// one that learnt of it from a refused handshake.
func TestRedisUnblockReachesHandshakes(t *testing.T) {
	s := startRedis(t)
	p := keyPrefix(t)
	cfg := Config{RedisURL: s.url(), KeyPrefix: p, Timeout: testTimeout, Rules: Rules{
		UserMessages: rate(1, 10*time.Second, time.Minute),
		UserConns:    rate(100, 10*time.Second, 0),
	}}
	a, b := newLimiter(t, cfg), newLimiter(t, cfg)
	ctx := context.Background()
	h := &harness{store: "redis"}
	h.allow(t, a, 1, "u", "x")
	h.deny(t, a, "u", "x", ScopeUser, KindMessage, time.Minute)
	h.check(t, a.Handshake(ctx, "u", "y"), ScopeUser, KindMessage, time.Minute)
	h.check(t, b.Handshake(ctx, "u", "y"), ScopeUser, KindMessage, time.Minute)
	if got := s.cli("del", p+":um:{u}:blk"); got != "1" {
		t.Fatalf("DEL of the block key: %s", got)
	}
	for name, l := range map[string]*Limiter{"a": a, "b": b} {
		waitFor(t, name+" serves the handshake after the DEL", func() bool {
			d := l.Handshake(ctx, "u", "y")
			return d.Allowed && !d.Fallback
		})
	}
	h.allow(t, b, 1, "u", "y")
}
