package limit

import (
	"context"
	"testing"
	"time"
)

func benchRules() Rules {
	return Rules{
		UserMessages: rate(1<<30, time.Hour, 5*time.Second),
		IPMessages:   rate(1<<30, time.Hour, 5*time.Second),
	}
}

// blockedRules returns rules under which the benchmark's user is blocked after 2 messages.
func blockedRules() Rules {
	return Rules{
		UserMessages: rate(1, time.Hour, time.Hour),
		IPMessages:   rate(1<<30, time.Hour, time.Hour),
	}
}

func benchDecisions(b *testing.B, l *Limiter, wantAllowed bool) {
	ctx := context.Background()
	l.Message(ctx, "user", "10.0.0.7")
	l.Message(ctx, "user", "10.0.0.7")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if d := l.Message(ctx, "user", "10.0.0.7"); d.Allowed != wantAllowed || d.Fallback {
			b.Fatalf("decision %+v", d)
		}
	}
}

func BenchmarkMemoryMessage(b *testing.B) {
	b.Run("allowed", func(b *testing.B) {
		benchDecisions(b, newLimiter(b, Config{Rules: benchRules()}), true)
	})
	b.Run("blocked", func(b *testing.B) {
		benchDecisions(b, newLimiter(b, Config{Rules: blockedRules()}), false)
	})
}

func BenchmarkRedisMessage(b *testing.B) {
	s := startRedis(b)
	b.Run("allowed", func(b *testing.B) {
		benchDecisions(b, newLimiter(b, Config{RedisURL: s.url(), KeyPrefix: "bench-a", Rules: benchRules(), Timeout: time.Second}), true)
	})
	b.Run("blocked", func(b *testing.B) {
		benchDecisions(b, newLimiter(b, Config{RedisURL: s.url(), KeyPrefix: "bench-b", Rules: blockedRules(), Timeout: time.Second}), false)
	})
}
