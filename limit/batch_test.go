package limit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/holo/wsgate/policy"
)

// holdCalls takes every call slot of the batcher that l's Redis store
// uses for takes (or for charges), as calls in flight would, so that the
// calls started next wait in a group.
func holdCalls(t *testing.T, l *Limiter, charges bool) *batcher {
	t.Helper()
	rs := l.rs.Load()
	if rs == nil || rs.takes == nil {
		t.Fatal("no batcher on a standalone Redis")
	}
	b := rs.takes
	if charges {
		b = rs.charges
	}
	for range cap(b.slots) {
		b.slots <- struct{}{}
	}
	return b
}

// release frees the slots that holdCalls took.
func (b *batcher) release() {
	for range cap(b.slots) {
		<-b.slots
	}
}

// waitGroupOf waits until the waiting group holds n calls.
func waitGroupOf(t *testing.T, b *batcher, n int) {
	t.Helper()
	for range 500 {
		b.mu.Lock()
		got := 0
		if b.next != nil {
			got = b.next.members
		}
		b.mu.Unlock()
		if got == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the waiting group never held %d calls", n)
}

// TestRedisCallsGroup: calls that find every call running go in one
// script call when a call returns, each decided as if alone and in order:
// a user at its limit inside the group is refused after exactly its
// limit, and each call gets its own answer. Flag rules (takes) and a rules
// file's (charges) alike.
func TestRedisCallsGroup(t *testing.T) {
	s := startRedis(t)
	ctx := context.Background()
	t.Run("takes", func(t *testing.T) {
		l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout, Rules: Rules{
			UserMessages: rate(5, 10*time.Second, 3*time.Second),
			IPMessages:   rate(1000, 10*time.Second, 0),
		}})
		testGroup(t, s, l, false, func(user string, n int) Decision { return l.Messages(ctx, user, "a", n) })
	})
	t.Run("charges", func(t *testing.T) {
		l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout})
		chat := polRule("chat", policy.CountMessages, win(5, 10*time.Second), win(100, time.Minute))
		chat.Block = []time.Duration{3 * time.Second}
		testGroup(t, s, l, true, func(user string, n int) Decision {
			return l.Charge(ctx, KindMessage, charges(user, chat), n, 10)
		})
	})
}

// testGroup holds l's calls, starts 8 decisions of one event for one user
// at a limit of 5 and 4 of n events (1 to 4) for 4 others, waits until
// they form a group, and lets it go.
func testGroup(t *testing.T, s *redisServer, l *Limiter, charges bool, decide func(user string, n int) Decision) {
	decide("warm", 1) // loads the script: the group's call is one EVALSHA
	b := holdCalls(t, l, charges)
	const same, others = 8, 4
	type answer struct {
		user string
		n    int
		d    Decision
	}
	answers := make(chan answer, same+others)
	var wg sync.WaitGroup
	for i := range same + others {
		user, n := "same", 1
		if i >= same {
			n = i - same + 1
			user = fmt.Sprint("user", n)
		}
		wg.Go(func() { answers <- answer{user, n, decide(user, n)} })
	}
	waitGroupOf(t, b, same+others)
	_, evals := countCommands(t, s, func() {
		b.release()
		wg.Wait()
	})
	close(answers)
	if evals != 1 {
		t.Errorf("%d script calls for %d waiting decisions, want 1", evals, same+others)
	}
	allowed := 0
	for a := range answers {
		if a.d.Fallback {
			t.Fatalf("%s: decided without Redis: %v", a.user, a.d.Err)
		}
		switch {
		case a.user == "same" && a.d.Allowed:
			allowed++
		case a.user == "same":
			if a.d.RetryAfter <= 0 || a.d.RetryAfter > 10*time.Second {
				t.Errorf("same: refused with retry %v", a.d.RetryAfter)
			}
		case !a.d.Allowed || a.d.Granted != a.n:
			t.Errorf("%s asked for %d: allowed %v, granted %d; want all", a.user, a.n, a.d.Allowed, a.d.Granted)
		}
	}
	if allowed != 5 {
		t.Errorf("same user: %d of %d allowed at a limit of 5, want 5", allowed, same)
	}
}

// TestRedisGroupLeaderTimesOut: a group whose leader's deadline passes
// before a call is free fails with it, and leaves no group behind: the
// next take goes at once.
func TestRedisGroupLeaderTimesOut(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: 200 * time.Millisecond, Rules: Rules{
		UserMessages: rate(100, 10*time.Second, 0),
	}})
	ctx := context.Background()
	b := holdCalls(t, l, false)
	var wg sync.WaitGroup
	ds := make([]Decision, 3)
	for i := range ds {
		wg.Go(func() { ds[i] = l.Message(ctx, fmt.Sprint("u", i), "a") })
	}
	wg.Wait()
	for i, d := range ds {
		if !d.Fallback || !errors.Is(d.Err, context.DeadlineExceeded) {
			t.Errorf("take %d: fallback %v, err %v; want a fallback on the deadline", i, d.Fallback, d.Err)
		}
	}
	b.mu.Lock()
	left := b.next
	b.mu.Unlock()
	if left != nil {
		t.Fatal("a group was left waiting")
	}
	b.release()
	if d := l.Message(ctx, "after", "a"); d.Fallback || !d.Allowed {
		t.Fatalf("a take after the timeout: %+v", d)
	}
}
