package limit

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holo/wsgate/policy"
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

// benchDecisions decides one message at a time as a connection does:
// with its Client, made once.
func benchDecisions(b *testing.B, l *Limiter, wantAllowed bool) {
	ctx := context.Background()
	l.Message(ctx, "user", "10.0.0.7")
	l.Message(ctx, "user", "10.0.0.7")
	c := l.Client("user", "10.0.0.7")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if d := l.MessagesOf(ctx, c, 1); d.Allowed != wantAllowed || d.Fallback {
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

// BenchmarkMemoryCharge decides one message against rules of a rules file
// on the memory store: the two of the flag rules' shape, and six, to set
// against BenchmarkMemoryMessage.
func BenchmarkMemoryCharge(b *testing.B) {
	big := func(name string, key policy.KeyKind, count policy.Count) *policy.Rule {
		r := polRule(name, count, win(1<<40, time.Hour))
		r.Key = policy.Key{Kind: key}
		return r
	}
	user, ip := big("user-messages", policy.KeyUser, policy.CountMessages), big("ip-messages", policy.KeyIP, policy.CountMessages)
	six := []*policy.Rule{user, ip,
		big("chat", policy.KeyUser, policy.CountMessages), big("ip-bytes", policy.KeyIP, policy.CountBytes),
		big("conn", policy.KeyConnection, policy.CountMessages), big("tenant", policy.KeyClaim, policy.CountMessages)}
	for _, tc := range []struct {
		name  string
		rules []*policy.Rule
	}{{"two", six[:2]}, {"six", six}} {
		b.Run(tc.name, func(b *testing.B) {
			l := newLimiter(b, Config{})
			cs := charges("user", tc.rules...)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if d := l.Charge(ctx, KindMessage, cs, 1, 64); !d.Allowed {
					b.Fatalf("decision %+v", d)
				}
			}
		})
	}
}

// BenchmarkRedisCharge decides one message of 64 bytes against six rules of
// a rules file (sixRules) on a real Redis, and reports the commands Redis
// served per message (MONITOR): exact mode, one script each; lease mode
// with slices of 10 messages; and lease mode with the default slices (a
// tenth of limits far above the load), where the decisions are the local
// path's. The charges keep their keys (Charge.Keys), as a connection's do.
func BenchmarkRedisCharge(b *testing.B) {
	s := startRedis(b)
	for _, c := range []struct {
		name string
		mode Mode
		size int
	}{{"exact", ModeExact, 0}, {"lease slice 10", ModeLease, 10}, {"lease", ModeLease, 0}} {
		b.Run(c.name, func(b *testing.B) {
			l := newLimiter(b, Config{RedisURL: s.url(), KeyPrefix: "bench-charge-" + strings.ReplaceAll(c.name, " ", "-"),
				Timeout: time.Second, Mode: c.mode, LeaseSize: c.size})
			cs := sixRules(1 << 40)
			kept := make([]ChargeKeys, len(cs))
			for i := range cs {
				cs[i].Keys = &kept[i]
			}
			ctx := context.Background()
			l.Charge(ctx, KindMessage, cs, 1, 64)
			ops := 0
			cmds := benchCommands(b, s, func() {
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if d := l.Charge(ctx, KindMessage, cs, 1, 64); !d.Allowed || d.Fallback {
						b.Fatalf("decision %+v", d)
					}
					ops++
				}
				b.StopTimer()
			})
			b.ReportMetric(float64(cmds)/float64(ops), "round-trips/op")
		})
	}
}

// BenchmarkMemoryMessageUsers decides one message at a time for each of
// many connected users in turn, as a busy gate does: the store's entries
// then no longer sit in the processor's caches.
func BenchmarkMemoryMessageUsers(b *testing.B) {
	benchUsers(b, func(b *testing.B, n int) *Limiter { return newLimiter(b, Config{Rules: benchRules()}) })
}

// BenchmarkLeaseMessageUsers is BenchmarkMemoryMessageUsers in lease mode,
// with limits far above the load: the decisions are the local path's.
func BenchmarkLeaseMessageUsers(b *testing.B) {
	s := startRedis(b)
	benchUsers(b, func(b *testing.B, n int) *Limiter {
		return newLimiter(b, Config{RedisURL: s.url(), KeyPrefix: "bench-users-" + strconv.Itoa(n), Rules: benchRules(),
			Timeout: time.Second, Mode: ModeLease})
	})
}

// benchUsers decides messages of 50 and of 8,000 users in turn, on the
// Limiter newL makes for each.
func benchUsers(b *testing.B, newL func(b *testing.B, users int) *Limiter) {
	for _, n := range []int{50, 8000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			l := newL(b, n)
			ctx := context.Background()
			cs := make([]*Client, n)
			for i := range cs {
				cs[i] = l.Client("user-"+strconv.Itoa(i), "10.0.0.7")
				l.MessagesOf(ctx, cs[i], 1)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if d := l.MessagesOf(ctx, cs[i], 1); !d.Allowed || d.Fallback {
					b.Fatalf("decision %+v", d)
				}
				if i++; i == n {
					i = 0
				}
			}
		})
	}
}
