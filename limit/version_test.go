package limit

import (
	"context"
	"testing"
	"time"
)

// TestRedisWithoutEvalRO runs the limiter on a Redis that lacks EVAL_RO
// (renamed away, as on Redis 6.2, which has no EVAL_RO): Redis decides,
// with blocks read through the client-side cache.
func TestRedisWithoutEvalRO(t *testing.T) {
	s := startRedis(t, "--rename-command", "EVAL_RO", "")
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout, Rules: Rules{
		UserMessages: rate(3, 10*time.Second, time.Second),
		IPMessages:   rate(100, 10*time.Second, time.Second),
		UserConns:    rate(100, 10*time.Second, 0),
	}})
	h := &harness{store: "redis"}
	h.handshakes(t, l, 1, "u", "a")
	h.allow(t, l, 3, "u", "a")
	h.deny(t, l, "u", "a", ScopeUser, KindMessage, time.Second)
	h.check(t, l.Handshake(context.Background(), "u", "b"), ScopeUser, KindMessage, time.Second)
}

func TestParseVersion(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		info string
		want [2]int
		ok   bool
	}{
		{"# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n", [2]int{7, 0}, true},
		{"# Server\r\nredis_version:6.2.14\r\n", [2]int{6, 2}, true},
		{"redis_version:6.0.9\n", [2]int{6, 0}, true},
		{"redis_version:seven\n", [2]int{}, false},
		{"# Server\r\nvalkey_version:8.0.1\r\n", [2]int{}, false},
	} {
		if v, ok := parseVersion(c.info); ok != c.ok || (ok && v != c.want) {
			t.Errorf("parseVersion(%q) = %v, %v; want %v, %v", c.info, v, ok, c.want, c.ok)
		}
	}
}
