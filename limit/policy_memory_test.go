package limit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/holo/wsgate/policy"
)

// TestMemoryChargeReload: a key's counters belong to the rule's name and
// key, not to a *policy.Rule, and each window's to its length.
func TestMemoryChargeReload(t *testing.T) {
	h := memoryChargeHarness()
	l, _, _ := h.limiter(t)
	chat := polRule("chat", policy.CountMessages, win(3, 10*time.Second))
	if n, _ := h.takeAll(t, l, charges("k", chat), 0, 2); n != 2 {
		t.Fatalf("%d passed, want 2", n)
	}
	// A reload makes a new rule with the same name and key, and a window
	// more: the 10s window keeps its 2.
	reloaded := polRule("chat", policy.CountMessages, win(3, 10*time.Second), win(100, time.Minute))
	if n, d := h.takeAll(t, l, charges("k", reloaded), 0, 100); n != 1 || d.Limit != 3 {
		t.Fatalf("after the reload: %d passed, %+v; want 1, then the 10s window's refusal", n, d)
	}
	// A tier's limits with the same lengths count on the same windows.
	pro := charges("k", reloaded)
	pro[0].Limits = []policy.Window{win(5, 10*time.Second), win(100, time.Minute)}
	if n, d := h.takeAll(t, l, pro, 0, 100); n != 2 || d.Limit != 5 {
		t.Fatalf("a tier of 5/10s: %d passed, %+v; want 2 more", n, d)
	}
	// Another key kind is another counter.
	byIP := polRule("chat", policy.CountMessages, win(3, 10*time.Second))
	byIP.Key = policy.Key{Kind: policy.KeyIP}
	if n, _ := h.takeAll(t, l, charges("k", byIP), 0, 100); n != 3 {
		t.Fatalf("the rule keyed by IP: %d passed, want a fresh 3", n)
	}
}

// TestMemoryChargeSweeps: a sweep drops the entries whose windows, block
// and strikes have all ended, and keeps strikes that outlive their block.
func TestMemoryChargeSweeps(t *testing.T) {
	c := newClock()
	l := newLimiter(t, Config{Now: c.Now})
	ctx := context.Background()
	msgs := polRule("msgs", policy.CountMessages, win(10, time.Second), win(100, 2*time.Second))
	esc := polRule("esc", policy.CountMessages, win(1, time.Second))
	esc.Block = []time.Duration{time.Second, 5 * time.Second}
	esc.ResetStrikes = 10 * time.Second
	const keys = 5000
	for i := range keys {
		l.Charge(ctx, KindMessage, charges(fmt.Sprint("k", i), msgs), 1, 0)
	}
	if n := l.mem.polLen(); n < keys {
		t.Fatalf("%d entries after %d keys, want at least %d", n, keys, keys)
	}
	for range 2 {
		l.Charge(ctx, KindMessage, charges("striker", esc), 1, 0)
	}
	c.Advance(2 * time.Second) // every window and the block end; the strikes do not
	for range 2 * keys {
		l.Charge(ctx, KindMessage, charges("steady", msgs), 1, 0)
	}
	if n := l.mem.polLen(); n > 2 {
		t.Fatalf("%d entries after the windows ended, want steady's and striker's", n)
	}
	if _, d := memoryChargeHarness().takeAll(t, l, charges("striker", esc), 0, 10); d.RetryAfter != 5*time.Second {
		t.Fatalf("the strike was swept: %+v, want the second step", d)
	}
	c.Advance(5*time.Second + esc.ResetStrikes)
	for range 2 * keys {
		l.Charge(ctx, KindMessage, charges("steady", msgs), 1, 0)
	}
	if n := l.mem.polLen(); n != 1 {
		t.Fatalf("%d entries after the strikes ended, want steady's", n)
	}
}

// polLen returns the number of rules-file entries, for tests.
func (s *memory) polLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pol)
}
