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

// The batchers of a Redis store.
const (
	takeCalls = iota
	chargeCalls
	leaseCalls
)

// holdCalls takes every call slot of one of the batchers of l's Redis
// store, as calls in flight would, so that the calls started next wait in
// a group.
func holdCalls(t *testing.T, l *Limiter, which int) *batcher {
	t.Helper()
	rs := l.rs.Load()
	if rs == nil || rs.takes.alone {
		t.Fatal("no grouping on a standalone Redis")
	}
	b := [...]*batcher{rs.takes, rs.charges, rs.leases}[which]
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
		testGroup(t, s, l, takeCalls, func(user string, n int) Decision { return l.Messages(ctx, user, "a", n) })
	})
	t.Run("charges", func(t *testing.T) {
		l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout})
		chat := polRule("chat", policy.CountMessages, win(5, 10*time.Second), win(100, time.Minute))
		chat.Block = []time.Duration{3 * time.Second}
		testGroup(t, s, l, chargeCalls, func(user string, n int) Decision {
			return l.Charge(ctx, KindMessage, charges(user, chat), n, 10)
		})
	})
}

// TestRedisLeasesGroup: in lease mode, the leases of several users that
// find every call running go in one script call, each answered with its
// own grant: users whose windows hold 0 to 4 units and a fresh one.
func TestRedisLeasesGroup(t *testing.T) {
	s := startRedis(t)
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: p, Timeout: testTimeout, Mode: ModeLease, LeaseSize: 4,
		Rules: Rules{UserMessages: rate(10, 10*time.Second, 0)}})
	ctx := context.Background()
	l.Message(ctx, "warm", "a")
	const users = 6
	for i := range users - 1 { // user i has i units left
		s.cli("set", fmt.Sprintf("%s:um:{u%d}", p, i), fmt.Sprint(10-i), "px", "10000")
	}
	b := holdCalls(t, l, leaseCalls)
	ds := make([]Decision, users)
	var wg sync.WaitGroup
	for i := range ds {
		wg.Go(func() { ds[i] = l.Message(ctx, fmt.Sprint("u", i), "a") })
	}
	waitGroupOf(t, b, users)
	_, evals := countCommands(t, s, func() {
		b.release()
		wg.Wait()
	})
	if evals != 1 {
		t.Errorf("%d script calls for %d waiting leases, want 1", evals, users)
	}
	for i, d := range ds {
		if d.Fallback || d.Allowed != (i > 0) {
			t.Errorf("u%d with %d units left: %+v", i, i, d)
		}
		want := "10" // leased up to the limit
		if i == users-1 {
			want = "4" // a fresh window: one slice
		}
		if got := s.cli("get", fmt.Sprintf("%s:um:{u%d}", p, i)); got != want {
			t.Errorf("u%d's counter holds %s, want %s", i, got, want)
		}
	}
}

// testGroup holds l's calls, starts 8 decisions of one event for one user
// at a limit of 5 and 4 of n events (1 to 4) for 4 others, waits until
// they form a group, and lets it go.
func testGroup(t *testing.T, s *redisServer, l *Limiter, which int, decide func(user string, n int) Decision) {
	decide("warm", 1) // loads the script: the group's call is one EVALSHA
	b := holdCalls(t, l, which)
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
	b := holdCalls(t, l, takeCalls)
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

// TestRedisGroupOutlivesItsLeader: a handshake whose client hung up while
// it led a group still sends it; the others are decided by Redis.
func TestRedisGroupOutlivesItsLeader(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout, Rules: Rules{
		UserMessages: rate(100, 10*time.Second, 0),
	}})
	b := holdCalls(t, l, takeCalls)
	hungUp, hangUp := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.Message(hungUp, "leader", "a") })
	waitGroupOf(t, b, 1)
	var d Decision
	wg.Go(func() { d = l.Message(context.Background(), "member", "a") })
	waitGroupOf(t, b, 2)
	hangUp()
	b.release()
	wg.Wait()
	if d.Fallback || !d.Allowed {
		t.Fatalf("the member of a group whose leader hung up: %+v", d)
	}
}

// TestRedisGroupsAreBounded: the calls beyond groupMax waiting at once
// form the next group.
func TestRedisGroupsAreBounded(t *testing.T) {
	s := startRedis(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout, Rules: Rules{
		UserMessages: rate(100, 10*time.Second, 0),
	}})
	ctx := context.Background()
	l.Message(ctx, "warm", "a")
	b := holdCalls(t, l, takeCalls)
	ds := make([]Decision, groupMax+1)
	var wg sync.WaitGroup
	for i := range groupMax {
		wg.Go(func() { ds[i] = l.Message(ctx, fmt.Sprint("u", i), "a") })
	}
	waitGroupOf(t, b, groupMax)
	b.mu.Lock()
	full := b.next
	b.mu.Unlock()
	wg.Go(func() { ds[groupMax] = l.Message(ctx, "last", "a") })
	waitGroupOf(t, b, 1)
	b.mu.Lock()
	second := b.next
	b.mu.Unlock()
	if second == full || full.members != groupMax {
		t.Fatalf("the full group holds %d calls and is still the one to join", full.members)
	}
	_, evals := countCommands(t, s, func() {
		b.release()
		wg.Wait()
	})
	if evals != 2 {
		t.Errorf("%d script calls for %d waiting takes, want 2", evals, groupMax+1)
	}
	for i, d := range ds {
		if d.Fallback || !d.Allowed {
			t.Fatalf("take %d: %+v", i, d)
		}
	}
}

// TestRedisCallBuffersAreNotShared: the batchers hand the slices of the
// calls they took to the next calls (batcher.buffer). Decisions of many
// users at once, alone and in groups, each count against their own keys
// only: a buffer handed out again while a call still used it would mix
// two users' keys and miscount both.
func TestRedisCallBuffersAreNotShared(t *testing.T) {
	s := startRedis(t)
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: s.url(), KeyPrefix: p, Timeout: 5 * time.Second,
		Rules: Rules{UserMessages: rate(1_000_000, time.Minute, 0)}})
	chat := polRule("chat", policy.CountMessages, win(1_000_000, time.Minute))
	ctx := context.Background()
	const users, each = 16, 150
	var wg sync.WaitGroup
	for u := range users {
		wg.Go(func() {
			user := fmt.Sprint("u", u)
			for i := range each {
				// Flag rules (takes) and a rules file (charges), a
				// different number of events each time.
				if d := l.Messages(ctx, user, "a", 1+i%3); !d.Allowed || d.Fallback {
					t.Errorf("%s: message decision %+v", user, d)
					return
				}
				if d := l.Charge(ctx, KindMessage, charges(user, chat), 1, 10); !d.Allowed || d.Fallback {
					t.Errorf("%s: charge decision %+v", user, d)
					return
				}
			}
		})
	}
	wg.Wait()
	var want int
	for i := range each {
		want += 1 + i%3
	}
	for u := range users {
		if got := s.cli("get", fmt.Sprintf("%s:um:{u%d}", p, u)); got != fmt.Sprint(want) {
			t.Errorf("u%d: message counter %s, want %d", u, got, want)
		}
		if got := s.cli("get", fmt.Sprintf("%s:r:chat:u:60000:{u%d}", p, u)); got != fmt.Sprint(each) {
			t.Errorf("u%d: charge counter %s, want %d", u, got, each)
		}
	}
}
