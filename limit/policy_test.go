package limit

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holo/wsgate/policy"
)

// polRule is a rules-file rule for the tests.
func polRule(name string, count policy.Count, limits ...policy.Window) *policy.Rule {
	return &policy.Rule{Name: name, Count: count, Limits: limits}
}

func win(n int64, per time.Duration) policy.Window { return policy.Window{Limit: n, Per: per} }

// charges applies rules to key k with their own limits.
func charges(k string, rules ...*policy.Rule) []Charge {
	cs := make([]Charge, len(rules))
	for i, r := range rules {
		cs[i] = Charge{Rule: r, Limits: r.Limits, Key: k}
	}
	return cs
}

// chargeHarness runs the Charge cases on one store: the memory store on a
// virtual clock, or Redis in real time.
type chargeHarness struct {
	store string
	// limiter returns a new Limiter with keys of its own, its clock, and
	// the function that lets time pass for it.
	limiter func(t *testing.T) (l *Limiter, now func() time.Time, advance func(time.Duration))
	// slack is how much shorter than the virtual clock's a RetryAfter may
	// be, and real says a rate may be off by one event: in real time, time
	// passes between the events of a case. Zero on the virtual clock, where
	// every retry and rate is exact.
	slack time.Duration
	real  bool
	// keep passes each charge's position a ChargeKeys of the Limiter's
	// (kept), as the proxy does for a connection's rules.
	keep bool
	kept sync.Map // *Limiter → *[8]ChargeKeys
}

func memoryChargeHarness() *chargeHarness {
	return &chargeHarness{store: storeMemory, limiter: func(t *testing.T) (*Limiter, func() time.Time, func(time.Duration)) {
		c := newClock()
		return newLimiter(t, Config{Now: c.Now}), c.Now, c.Advance
	}}
}

// charge asks about n events and wants the decision from h's store.
func (h *chargeHarness) charge(t *testing.T, l *Limiter, kind string, cs []Charge, n int, bytes int64) Decision {
	t.Helper()
	if h.keep {
		v, _ := h.kept.LoadOrStore(l, new([8]ChargeKeys))
		cs = slices.Clone(cs)
		for i := range cs {
			cs[i].Keys = &v.(*[8]ChargeKeys)[i]
		}
	}
	d := l.Charge(context.Background(), kind, cs, n, bytes)
	if d.Store != h.store || d.Fallback {
		t.Fatalf("decision %+v, want one by the %s store", d, h.store)
	}
	if d.Allowed != (d.Granted > 0) || d.Granted > n {
		t.Fatalf("decision %+v of %d events: Granted out of range", d, n)
	}
	return d
}

// takeAll charges one message at a time until a refusal and returns how
// many passed and the refusal.
func (h *chargeHarness) takeAll(t *testing.T, l *Limiter, cs []Charge, bytes int64, max int) (int, Decision) {
	t.Helper()
	for i := range max {
		if d := h.charge(t, l, KindMessage, cs, 1, bytes); !d.Allowed {
			return i, d
		}
	}
	return max, Decision{}
}

// retry wants the RetryAfter of refusal d to be want on the virtual clock,
// in (want-slack, want] in real time.
func (h *chargeHarness) retry(t *testing.T, what string, d Decision, want time.Duration) {
	t.Helper()
	if d.RetryAfter <= 0 || d.RetryAfter > want || d.RetryAfter < want-h.slack {
		t.Fatalf("%s: RetryAfter %v, want %v (less up to %v)", what, d.RetryAfter, want, h.slack)
	}
}

// chargeCases are the semantics of Charge, run on every store. Durations
// are tens to hundreds of ms so that Redis runs them in real time.
var chargeCases = []struct {
	name string
	run  func(t *testing.T, h *chargeHarness)
}{
	{"multi window", func(t *testing.T, h *chargeHarness) {
		l, _, advance := h.limiter(t)
		chat := polRule("chat", policy.CountMessages, win(5, 200*ms), win(8, 2*time.Second))
		cs := charges("alice", chat)
		n, d := h.takeAll(t, l, cs, 0, 100)
		if n != 5 || d.Rule != "chat" || d.Scope != "user" || d.Kind != KindMessage || d.Limit != 5 || d.Blocked {
			t.Fatalf("first window: %d passed, refusal %+v", n, d)
		}
		h.retry(t, "first window", d, 200*ms)
		advance(200 * ms)
		// The long window has 3 left: it refuses the 4th, its retry is the
		// long window's rest.
		n, d = h.takeAll(t, l, cs, 0, 100)
		if n != 3 || d.Limit != 8 {
			t.Fatalf("second window: %d passed, refusal %+v", n, d)
		}
		h.retry(t, "second window", d, 1800*ms)
		// Another key is not touched.
		if n, _ := h.takeAll(t, l, charges("bob", chat), 0, 100); n != 5 {
			t.Fatalf("bob: %d passed", n)
		}
	}},
	{"batch and refusal counts nothing", func(t *testing.T, h *chargeHarness) {
		l, _, _ := h.limiter(t)
		a := polRule("a", policy.CountMessages, win(10, 10*time.Second))
		b := polRule("b", policy.CountMessages, win(4, 10*time.Second))
		cs := charges("k", a, b)
		if d := h.charge(t, l, KindMessage, cs, 6, 0); !d.Allowed || d.Granted != 4 || d.Kind != KindMessage {
			t.Fatalf("batch of 6 under 10 and 4: %+v", d)
		}
		if d := h.charge(t, l, KindMessage, cs, 1, 0); d.Allowed || d.Rule != "b" {
			t.Fatalf("5th: %+v", d)
		}
		// b's refusals left a untouched: 6 more pass a alone.
		if n, _ := h.takeAll(t, l, charges("k", a), 0, 100); n != 6 {
			t.Fatalf("a alone: %d passed, want 6", n)
		}
	}},
	{"bytes", func(t *testing.T, h *chargeHarness) {
		l, _, advance := h.limiter(t)
		r := polRule("ip-bytes", policy.CountBytes, win(1000, 500*ms))
		r.Key = policy.Key{Kind: policy.KeyIP}
		cs := charges("192.0.2.1", r)
		n, d := h.takeAll(t, l, cs, 300, 100)
		if n != 3 || d.Scope != "ip" || d.Limit != 1000 {
			t.Fatalf("300 B messages under 1000 B: %d passed, %+v", n, d)
		}
		h.retry(t, "over the byte limit", d, 500*ms)
		// 100 B still fit; a message larger than the limit never does.
		if d := h.charge(t, l, KindMessage, cs, 1, 100); !d.Allowed {
			t.Fatalf("100 B: %+v", d)
		}
		advance(500 * ms)
		d = h.charge(t, l, KindMessage, cs, 1, 1001)
		if d.Allowed {
			t.Fatal("a message over the byte limit passed")
		}
		h.retry(t, "a message over the byte limit", d, 500*ms)
		if d := h.charge(t, l, KindMessage, cs, 1, 1000); !d.Allowed {
			t.Fatalf("a message of exactly the limit: %+v", d)
		}
	}},
	// A GCRA rule holds its sustained rate, not only its burst: after the
	// burst, one event passes per interval.
	{"gcra", func(t *testing.T, h *chargeHarness) {
		l, now, advance := h.limiter(t)
		const interval = 100 * ms
		r := polRule("smooth", policy.CountMessages, win(10, time.Second))
		r.Algorithm, r.Burst = policy.GCRA, 3
		cs := charges("k", r)
		n, d := h.takeAll(t, l, cs, 0, 100)
		if n != 3 || d.Limit != 10 || d.Blocked {
			t.Fatalf("burst: %d passed, %+v", n, d)
		}
		h.retry(t, "after the burst", d, interval)
		start, passed := now(), 0
		for range 50 { // an attempt per 10ms
			advance(10 * ms)
			if h.charge(t, l, KindMessage, cs, 1, 0).Allowed {
				passed++
			}
		}
		want := int(now().Sub(start) / interval)
		// In real time a busy machine may space the attempts wider than
		// the interval, so fewer pass; more than the rate never may.
		if passed != want && (!h.real || passed < want/2 || passed > want+1) {
			t.Fatalf("%d passed in %v at 100 attempts per second, want the rate's %d", passed, now().Sub(start), want)
		}
		// Quiet for the burst's length, the burst is back.
		advance(3 * interval)
		if n, _ := h.takeAll(t, l, cs, 0, 100); n != 3 {
			t.Fatalf("after a rest: %d passed, want the burst 3", n)
		}
	}},
	{"gcra refusal counts nothing", func(t *testing.T, h *chargeHarness) {
		l, _, _ := h.limiter(t)
		fixed := polRule("fixed", policy.CountMessages, win(10, 10*time.Second))
		smooth := polRule("smooth", policy.CountMessages, win(1, time.Second))
		smooth.Algorithm, smooth.Burst = policy.GCRA, 2
		n, d := h.takeAll(t, l, charges("k", fixed, smooth), 0, 100)
		if n != 2 || d.Rule != "smooth" {
			t.Fatalf("%d passed, %+v; want the burst 2, then smooth's refusal", n, d)
		}
		h.retry(t, "smooth", d, time.Second)
		if n, _ := h.takeAll(t, l, charges("k", fixed), 0, 100); n != 8 {
			t.Fatalf("fixed alone: %d passed, want 8", n)
		}
	}},
	{"escalating block", func(t *testing.T, h *chargeHarness) {
		l, _, advance := h.limiter(t)
		r := polRule("esc", policy.CountMessages, win(2, 10*time.Second))
		r.Block = []time.Duration{300 * ms, 600 * ms, 1200 * ms}
		r.ResetStrikes = 1500 * ms
		cs := charges("k", r)
		for i, want := range []time.Duration{300 * ms, 600 * ms, 1200 * ms, 1200 * ms} {
			n, d := h.takeAll(t, l, cs, 0, 100)
			if n != 2 || d.RetryAfter != want || d.Blocked || d.Limit != 2 {
				t.Fatalf("strike %d: %d passed, %+v; want block %v", i+1, n, d, want)
			}
			advance(want / 2)
			d = h.charge(t, l, KindMessage, cs, 1, 0)
			if d.Allowed || !d.Blocked || d.Rule != "esc" {
				t.Fatalf("strike %d, mid-block: %+v", i+1, d)
			}
			h.retry(t, "mid-block", d, want/2)
			advance(want / 2) // the block ends with a full budget
		}
		advance(r.ResetStrikes) // quiet: strikes forgotten
		if _, d := h.takeAll(t, l, cs, 0, 100); d.RetryAfter != 300*ms {
			t.Fatalf("after the quiet: %+v, want the first step again", d)
		}
	}},
	{"block drops every window", func(t *testing.T, h *chargeHarness) {
		l, _, advance := h.limiter(t)
		r := polRule("two", policy.CountMessages, win(3, 2*time.Second), win(5, 20*time.Second))
		r.Block = []time.Duration{100 * ms}
		cs := charges("k", r)
		if n, d := h.takeAll(t, l, cs, 0, 100); n != 3 || d.Limit != 3 || d.RetryAfter != 100*ms {
			t.Fatalf("%d passed, %+v", n, d)
		}
		advance(100 * ms)
		// Had the long window kept its 3, it would refuse the 3rd.
		if n, d := h.takeAll(t, l, cs, 0, 100); n != 3 || d.Limit != 3 {
			t.Fatalf("after the block: %d passed, %+v; want the full budget", n, d)
		}
	}},
	{"guard only", func(t *testing.T, h *chargeHarness) {
		l, _, _ := h.limiter(t)
		msgs := polRule("user-messages", policy.CountMessages, win(1, time.Minute))
		msgs.Block = []time.Duration{5 * time.Second}
		joins := polRule("joins", policy.CountHandshakes, win(100, time.Minute))
		h.takeAll(t, l, charges("u", msgs), 0, 10)
		hs := []Charge{{Rule: joins, Limits: joins.Limits, Key: "u"}, {Rule: msgs, Limits: msgs.Limits, Key: "u", GuardOnly: true}}
		d := h.charge(t, l, KindConnection, hs, 1, 0)
		if d.Allowed || !d.Blocked || d.Rule != "user-messages" || d.Kind != KindMessage || d.Limit != 0 {
			t.Fatalf("handshake of a blocked user: %+v", d)
		}
		// A guard never counts: another user's handshakes pass while the
		// guard rule's budget is 1.
		hs[0].Key, hs[1].Key = "v", "v"
		for range 3 {
			if d := h.charge(t, l, KindConnection, hs, 1, 0); !d.Allowed || d.Kind != KindConnection {
				t.Fatalf("handshake of v: %+v", d)
			}
		}
	}},
	// Key values and claim names that cannot go into a hash tag as they
	// are: each is a key of its own all the same.
	{"unsafe keys", func(t *testing.T, h *chargeHarness) {
		l, _, _ := h.limiter(t)
		r := polRule("org", policy.CountMessages, win(2, 10*time.Second))
		r.Key = policy.Key{Kind: policy.KeyClaim, Name: "{org}"}
		for _, k := range []string{"{a}", "a", "", "sha256:a", strings.Repeat("x", 200)} {
			if n, d := h.takeAll(t, l, charges(k, r), 0, 10); n != 2 || d.Scope != "claim:{org}" {
				t.Fatalf("key %q: %d passed, %+v", k, n, d)
			}
		}
	}},
}

// runChargeCases runs chargeCases in parallel: each has a Limiter and
// keys of its own.
func runChargeCases(t *testing.T, h *chargeHarness) {
	for _, c := range chargeCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, h)
		})
	}
}

func TestChargeMemory(t *testing.T) {
	runChargeCases(t, memoryChargeHarness())
}
