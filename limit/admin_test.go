package limit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holo/wsgate/policy"
)

// adminHarness runs the admin cases on one store: the memory store on a
// virtual clock, or Redis in real time.
type adminHarness struct {
	store string
	// limiter returns a new Limiter with cfg (its store's fields set) and
	// the function that lets time pass for it.
	limiter func(t *testing.T, cfg Config) (*Limiter, func(time.Duration))
	// slack is how much shorter than on the virtual clock a time left may
	// be: time passes between the events of a case in real time.
	slack time.Duration
}

func memoryAdminHarness() *adminHarness {
	return &adminHarness{store: storeMemory, limiter: func(t *testing.T, cfg Config) (*Limiter, func(time.Duration)) {
		c := newClock()
		cfg.Now = c.Now
		return newLimiter(t, cfg), c.Advance
	}}
}

func redisAdminHarness(url string) *adminHarness {
	return &adminHarness{store: storeRedis, slack: 150 * ms, limiter: func(t *testing.T, cfg Config) (*Limiter, func(time.Duration)) {
		cfg.RedisURL, cfg.KeyPrefix, cfg.Timeout = url, keyPrefix(t), testTimeout
		l := newLimiter(t, cfg)
		if !l.RedisUp() {
			t.Fatal("redis not up after New")
		}
		// A millisecond more, for Redis's expiries in whole ms.
		return l, func(d time.Duration) { time.Sleep(d + ms) }
	}}
}

// left wants the time left ms to be want on the virtual clock, in
// (want-slack, want] in real time.
func (h *adminHarness) left(t *testing.T, what string, ms int64, want time.Duration) {
	t.Helper()
	got := time.Duration(ms) * time.Millisecond
	if got > want || got <= want-h.slack-time.Millisecond || (h.slack == 0 && got != want) {
		t.Fatalf("%s: %v left, want %v (less up to %v)", what, got, want, h.slack)
	}
}

// held wants d to be a refusal by a hold of scope, for a call of kind,
// with retry left.
func (h *adminHarness) held(t *testing.T, what string, d Decision, scope, kind string, retry time.Duration) {
	t.Helper()
	if d.Allowed || !d.Blocked || d.Rule != HoldRule || d.Scope != scope || d.Kind != kind || d.Store != h.store || d.Granted != 0 {
		t.Fatalf("%s: %+v, want a refusal by a hold of %s, kind %s, by the %s store", what, d, scope, kind, h.store)
	}
	h.left(t, what+": RetryAfter", d.RetryAfter.Milliseconds(), retry)
}

func inspect(t *testing.T, l *Limiter, ref KeyRef, pol *policy.Policy) KeyState {
	t.Helper()
	st, err := l.Inspect(context.Background(), ref, pol)
	if err != nil {
		t.Fatalf("inspect %+v: %v", ref, err)
	}
	return st
}

// ruleState returns the state of the rule named name in st.
func ruleState(t *testing.T, st KeyState, name string) RuleState {
	t.Helper()
	for _, r := range st.Rules {
		if r.Rule == name {
			return r
		}
	}
	t.Fatalf("no rule %s in %+v", name, st)
	return RuleState{}
}

// eventLog collects the events a handler is given.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func (e *eventLog) add(ev Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *eventLog) all() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.evs...)
}

// wait returns the first event that match accepts, within bound.
func (e *eventLog) wait(t *testing.T, what string, bound time.Duration, match func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		for _, ev := range e.all() {
			if match(ev) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; events %+v", what, bound, e.all())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// within polls cond until it holds, for at most bound.
func within(t *testing.T, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// adminPolicy is a rules file with a user rule of two windows, a block
// and a tier, and rules of other keys.
const adminPolicy = `
tiers:
  - {name: pro, when: {claim: plan, equals: pro}}
rules:
  - {name: chat, key: user, limits: [3/1s, 5/10s], block: [400ms, 2s], tiers: {pro: [10/1s, 50/1m]}}
  - {name: ip-bytes, key: ip, count: bytes, limits: [1000/10s]}
  - {name: tenant, key: "claim:tenant", limits: [100/10s]}
`

func parseAdminPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	pol, err := policy.Parse("rules.yaml", []byte(adminPolicy))
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

var adminCases = []struct {
	name string
	run  func(t *testing.T, h *adminHarness)
}{
	{"inspect flag rules", func(t *testing.T, h *adminHarness) {
		l, advance := h.limiter(t, Config{Rules: Rules{
			UserMessages: rate(5, 10*time.Second, 500*ms),
			IPMessages:   rate(100, 10*time.Second, 0),
			UserConns:    rate(10, 10*time.Second, 0),
		}})
		ctx := context.Background()
		for range 3 {
			if d := l.Message(ctx, "u", "a"); !d.Allowed {
				t.Fatalf("message: %+v", d)
			}
		}
		if d := l.Handshake(ctx, "u", "a"); !d.Allowed {
			t.Fatalf("handshake: %+v", d)
		}
		advance(200 * ms)
		st := inspect(t, l, KeyRef{Scope: ScopeUser, ID: "u"}, nil)
		if st.Scope != ScopeUser || st.ID != "u" || st.Store != h.store || st.Hold != nil || len(st.Rules) != 2 {
			t.Fatalf("state of u: %+v", st)
		}
		msgs := ruleState(t, st, "user-messages")
		if w := msgs.Windows; len(w) != 1 || w[0].PerMs != 10_000 || w[0].Limit != 5 || w[0].Count != 3 || msgs.BlockLeftMs != 0 {
			t.Fatalf("user-messages: %+v", msgs)
		}
		h.left(t, "user-messages window", msgs.Windows[0].LeftMs, 9800*ms)
		if hs := ruleState(t, st, "user-handshakes"); hs.Windows[0].Count != 1 || hs.Windows[0].Limit != 10 {
			t.Fatalf("user-handshakes: %+v", hs)
		}
		// ip-handshakes is off: only ip-messages, which the handshake did
		// not count.
		st = inspect(t, l, KeyRef{Scope: ScopeIP, ID: "a"}, nil)
		if len(st.Rules) != 1 || st.Rules[0].Rule != "ip-messages" || st.Rules[0].Windows[0].Count != 3 {
			t.Fatalf("state of a: %+v", st)
		}
		// Another key, and a scope without flag rules, are empty.
		if st := inspect(t, l, KeyRef{Scope: ScopeUser, ID: "v"}, nil); st.Rules[0].Windows[0].Count != 0 || st.Rules[0].Windows[0].LeftMs != 0 {
			t.Fatalf("state of v: %+v", st)
		}
		if st := inspect(t, l, KeyRef{Scope: "claim:tenant", ID: "u"}, nil); len(st.Rules) != 0 {
			t.Fatalf("a claim key under the flag rules: %+v", st)
		}
		for _, bad := range []KeyRef{{Scope: "users", ID: "u"}, {Scope: ScopeUser}} {
			if _, err := l.Inspect(ctx, bad, nil); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("inspect %+v: %v, want ErrBadRequest", bad, err)
			}
		}
		// The JSON an admin API serves.
		b, err := json.Marshal(inspect(t, l, KeyRef{Scope: ScopeUser, ID: "u"}, nil))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`"rule":"user-messages"`, `"perMs":10000`, `"count":3`, `"leftMs":`, `"blockLeftMs":0`, `"strikes":0`} {
			if !strings.Contains(string(b), want) {
				t.Fatalf("JSON %s lacks %s", b, want)
			}
		}
	}},
	{"reset flag rules", func(t *testing.T, h *adminHarness) {
		l, _ := h.limiter(t, Config{Rules: Rules{
			UserMessages: rate(2, 10*time.Second, 10*time.Second),
			UserConns:    rate(10, 10*time.Second, 0),
		}})
		ctx := context.Background()
		l.Handshake(ctx, "u", "a")
		l.Message(ctx, "u", "a")
		l.Message(ctx, "u", "a")
		if d := l.Message(ctx, "u", "a"); d.Allowed || d.Blocked || d.RetryAfter != 10*time.Second {
			t.Fatalf("3rd message: %+v, want the block", d)
		}
		if d := l.Message(ctx, "u", "b"); d.Allowed || !d.Blocked {
			t.Fatalf("message in the block: %+v", d)
		}
		st := inspect(t, l, KeyRef{Scope: ScopeUser, ID: "u"}, nil)
		msgs := ruleState(t, st, "user-messages")
		h.left(t, "block", msgs.BlockLeftMs, 10*time.Second)
		if msgs.Windows[0].Count != 0 {
			t.Fatalf("the refusal drops the counter: %+v", msgs)
		}
		if err := l.Reset(ctx, KeyRef{Scope: ScopeUser, ID: "u"}, nil); err != nil {
			t.Fatal(err)
		}
		st = inspect(t, l, KeyRef{Scope: ScopeUser, ID: "u"}, nil)
		for _, r := range st.Rules {
			if r.BlockLeftMs != 0 || r.Windows[0].Count != 0 || r.Windows[0].LeftMs != 0 {
				t.Fatalf("after the reset: %+v", st)
			}
		}
		// The budget is full again: 2, then the block.
		for i := range 2 {
			if d := l.Message(ctx, "u", "a"); !d.Allowed {
				t.Fatalf("message %d after the reset: %+v", i+1, d)
			}
		}
		if d := l.Message(ctx, "u", "a"); d.Allowed || d.Blocked {
			t.Fatalf("3rd message after the reset: %+v", d)
		}
	}},
	{"hold", func(t *testing.T, h *adminHarness) {
		l, advance := h.limiter(t, Config{Rules: Rules{
			UserMessages: rate(1000, 10*time.Second, time.Second),
			IPMessages:   rate(1000, 10*time.Second, time.Second),
		}})
		ctx := context.Background()
		chat := polRule("chat", policy.CountMessages, win(1000, 10*time.Second))
		joins := polRule("joins", policy.CountHandshakes, win(1000, 10*time.Second))
		tenant := polRule("tenant", policy.CountMessages, win(1000, 10*time.Second))
		tenant.Key = policy.Key{Kind: policy.KeyClaim, Name: "tenant"}
		hold := func(scope, id string, d time.Duration) {
			t.Helper()
			if err := l.Hold(ctx, KeyRef{Scope: scope, ID: id}, d, "abuse"); err != nil {
				t.Fatal(err)
			}
		}
		hold(ScopeUser, "u", 300*ms)
		hold(ScopeIP, "a", 300*ms)
		hold("claim:tenant", "acme", 300*ms)
		h.held(t, "message of u", l.Message(ctx, "u", "b"), ScopeUser, KindMessage, 300*ms)
		h.held(t, "messages of u", l.Messages(ctx, "u", "b", 5), ScopeUser, KindMessage, 300*ms)
		h.held(t, "handshake of u", l.Handshake(ctx, "u", "b"), ScopeUser, KindConnection, 300*ms)
		h.held(t, "message from a", l.Message(ctx, "v", "a"), ScopeIP, KindMessage, 300*ms)
		h.held(t, "charge of u", l.Charge(ctx, KindMessage, charges("u", chat), 1, 0), ScopeUser, KindMessage, 300*ms)
		h.held(t, "handshake charge of u", l.Charge(ctx, KindConnection, []Charge{
			{Rule: joins, Limits: joins.Limits, Key: "w"}, {Rule: chat, Limits: chat.Limits, Key: "u", GuardOnly: true},
		}, 1, 0), ScopeUser, KindConnection, 300*ms)
		h.held(t, "charge of acme", l.Charge(ctx, KindMessage, []Charge{
			{Rule: chat, Limits: chat.Limits, Key: "w"}, {Rule: tenant, Limits: tenant.Limits, Key: "acme"},
		}, 1, 0), "claim:tenant", KindMessage, 300*ms)
		// Keys that are not held, or not under the held scope, pass.
		if d := l.Message(ctx, "v", "b"); !d.Allowed {
			t.Fatalf("message of v from b: %+v", d)
		}
		if d := l.Charge(ctx, KindMessage, charges("acme", chat), 1, 0); !d.Allowed {
			t.Fatalf("a user named acme: %+v", d)
		}
		st := inspect(t, l, KeyRef{Scope: ScopeUser, ID: "u"}, nil)
		if st.Hold == nil || st.Hold.Reason != "abuse" {
			t.Fatalf("state of u: %+v", st)
		}
		h.left(t, "hold", st.Hold.LeftMs, 300*ms)
		// Both held: the user's scope, the longer retry.
		hold(ScopeUser, "x", 100*ms)
		h.held(t, "user and ip held", l.Message(ctx, "x", "a"), ScopeUser, KindMessage, 300*ms)
		advance(300 * ms)
		for _, d := range []Decision{l.Message(ctx, "u", "a"), l.Handshake(ctx, "u", "a"), l.Charge(ctx, KindMessage, charges("acme", tenant), 1, 0)} {
			if !d.Allowed {
				t.Fatalf("after the holds ended: %+v", d)
			}
		}
		if l.holds.cur.Load() != nil {
			t.Fatal("the holds ended, and decisions still look them up")
		}
		if st := inspect(t, l, KeyRef{Scope: ScopeUser, ID: "u"}, nil); st.Hold != nil {
			t.Fatalf("state of u after the hold: %+v", st)
		}
		// Reset lifts a hold.
		hold(ScopeUser, "u", time.Hour)
		h.held(t, "held for an hour", l.Message(ctx, "u", "a"), ScopeUser, KindMessage, time.Hour)
		if err := l.Reset(ctx, KeyRef{Scope: ScopeUser, ID: "u"}, nil); err != nil {
			t.Fatal(err)
		}
		if d := l.Message(ctx, "u", "a"); !d.Allowed {
			t.Fatalf("after the reset: %+v", d)
		}
		for _, bad := range []struct {
			ref KeyRef
			d   time.Duration
		}{{KeyRef{Scope: "tenant", ID: "u"}, time.Second}, {KeyRef{Scope: ScopeUser}, time.Second}, {KeyRef{Scope: ScopeUser, ID: "u"}, 0}} {
			if err := l.Hold(ctx, bad.ref, bad.d, ""); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("hold %+v for %v: %v, want ErrBadRequest", bad.ref, bad.d, err)
			}
		}
	}},
	{"policy rules", func(t *testing.T, h *adminHarness) {
		l, _ := h.limiter(t, Config{})
		pol := parseAdminPolicy(t)
		chat := pol.Rule("chat")
		cs := charges("alice", chat)
		ctx := context.Background()
		for range 2 {
			if d := l.Charge(ctx, KindMessage, cs, 1, 0); !d.Allowed {
				t.Fatalf("charge: %+v", d)
			}
		}
		ref := KeyRef{Scope: "user", ID: "alice"}
		st := inspect(t, l, ref, pol)
		if len(st.Rules) != 1 || st.Rules[0].Rule != "chat" {
			t.Fatalf("rules of a user key: %+v", st)
		}
		ws := st.Rules[0].Windows
		want := []WindowState{
			{PerMs: 1000, Limit: 3, TierLimits: map[string]int64{"pro": 10}, Count: 2},
			{PerMs: 10_000, Limit: 5, Count: 2},
			{PerMs: 60_000, TierLimits: map[string]int64{"pro": 50}},
		}
		h.left(t, "1s window", ws[0].LeftMs, time.Second)
		h.left(t, "10s window", ws[1].LeftMs, 10*time.Second)
		for i := range 2 {
			ws[i].LeftMs = 0
		}
		if !reflect.DeepEqual(ws, want) {
			t.Fatalf("windows %+v, want %+v", ws, want)
		}
		// Over the limit: blocked, every window dropped, a strike.
		l.Charge(ctx, KindMessage, cs, 1, 0)
		if d := l.Charge(ctx, KindMessage, cs, 1, 0); d.Allowed || d.RetryAfter != 400*ms {
			t.Fatalf("4th: %+v", d)
		}
		r := inspect(t, l, ref, pol).Rules[0]
		h.left(t, "block", r.BlockLeftMs, 400*ms)
		if r.Strikes != 1 || r.Windows[0].Count != 0 || r.Windows[1].Count != 0 {
			t.Fatalf("after the refusal: %+v", r)
		}
		if err := l.Reset(ctx, ref, pol); err != nil {
			t.Fatal(err)
		}
		if r := inspect(t, l, ref, pol).Rules[0]; r.Strikes != 0 || r.BlockLeftMs != 0 || r.Windows[0].Count != 0 {
			t.Fatalf("after the reset: %+v", r)
		}
		// A full budget, and the first step of the ladder again: the
		// strike went with the reset.
		for i := range 3 {
			if d := l.Charge(ctx, KindMessage, cs, 1, 0); !d.Allowed {
				t.Fatalf("charge %d after the reset: %+v", i+1, d)
			}
		}
		if d := l.Charge(ctx, KindMessage, cs, 1, 0); d.Allowed || d.RetryAfter != 400*ms {
			t.Fatalf("4th after the reset: %+v, want the ladder's first step", d)
		}
		// Other keys of the policy: their own rules only.
		if st := inspect(t, l, KeyRef{Scope: "claim:tenant", ID: "acme"}, pol); len(st.Rules) != 1 || st.Rules[0].Rule != "tenant" {
			t.Fatalf("a claim key: %+v", st)
		}
	}},
	{"revocations", func(t *testing.T, h *adminHarness) {
		l, advance := h.limiter(t, Config{})
		var log eventLog
		l.OnEvent(log.add)
		ctx := context.Background()
		now := l.now()
		if err := l.Revoke(ctx, Revocation{Subject: "mallory", Until: now.Add(300 * ms), Reason: "stolen"}); err != nil {
			t.Fatal(err)
		}
		if err := l.Revoke(ctx, Revocation{TokenID: "jti-1", Until: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if r, ok := l.Revoked("mallory", "jti-9"); !ok || r.Subject != "mallory" || r.Reason != "stolen" || !r.Until.Equal(now.Add(300*ms).Truncate(ms)) {
			t.Fatalf("mallory: %+v %v", r, ok)
		}
		if r, ok := l.Revoked("alice", "jti-1"); !ok || r.TokenID != "jti-1" || r.Subject != "" {
			t.Fatalf("jti-1: %+v %v", r, ok)
		}
		if r, ok := l.Revoked("alice", ""); ok {
			t.Fatalf("alice: %+v", r)
		}
		rs, err := l.Revocations(ctx)
		if err != nil || len(rs) != 2 || rs[0].Subject != "mallory" || rs[1].TokenID != "jti-1" {
			t.Fatalf("revocations %+v, %v", rs, err)
		}
		if err := l.Unrevoke(ctx, "", "jti-1"); err != nil {
			t.Fatal(err)
		}
		if _, ok := l.Revoked("", "jti-1"); ok {
			t.Fatal("jti-1 still revoked")
		}
		advance(300 * ms)
		if _, ok := l.Revoked("mallory", ""); ok {
			t.Fatal("mallory still revoked after the end")
		}
		if rs, err := l.Revocations(ctx); err != nil || len(rs) != 0 {
			t.Fatalf("revocations after the end %+v, %v", rs, err)
		}
		// The handler heard each change, in order, from this Limiter.
		log.wait(t, "the unrevoke event", time.Second, func(e Event) bool { return e.Type == EventUnrevoke })
		var got []string
		for _, e := range log.all() {
			if e.Origin != l.origin {
				t.Fatalf("event %+v, want origin %s", e, l.origin)
			}
			got = append(got, e.Type+" "+e.Subject+e.TokenID)
		}
		if want := []string{"revoke mallory", "revoke jti-1", "unrevoke jti-1"}; !reflect.DeepEqual(got, want) {
			t.Fatalf("events %q, want %q", got, want)
		}
		for _, bad := range []Revocation{{Until: now.Add(time.Hour)}, {Subject: "a", TokenID: "b", Until: now.Add(time.Hour)}, {Subject: "a", Until: now}} {
			if err := l.Revoke(ctx, bad); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("revoke %+v: %v, want ErrBadRequest", bad, err)
			}
		}
	}},
	{"publish", func(t *testing.T, h *adminHarness) {
		l, _ := h.limiter(t, Config{})
		ctx := context.Background()
		// Without a handler, an event goes nowhere here.
		if err := l.Publish(ctx, Event{Type: EventDisconnect, Scope: ScopeUser, ID: "early"}); err != nil {
			t.Fatal(err)
		}
		var log eventLog
		l.OnEvent(log.add)
		if err := l.Publish(ctx, Event{Type: EventDisconnect, Scope: ScopeUser, ID: "u", Origin: "forged"}); err != nil {
			t.Fatal(err)
		}
		e := log.wait(t, "the disconnect", time.Second, func(e Event) bool { return e.Type == EventDisconnect })
		if e.ID != "u" || e.Origin != l.origin {
			t.Fatalf("event %+v", e)
		}
		for _, bad := range []Event{{}, {Type: EventHold, Scope: ScopeUser, ID: "u"}, {Type: EventRevoke, Subject: "s"}} {
			if err := l.Publish(ctx, bad); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("publish %+v: %v, want ErrBadRequest", bad, err)
			}
		}
		if evs := log.all(); len(evs) != 1 {
			t.Fatalf("events %+v, want the one disconnect", evs)
		}
	}},
}

func runAdminCases(t *testing.T, h *adminHarness) {
	for _, c := range adminCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, h)
		})
	}
}

func TestAdminMemory(t *testing.T) {
	runAdminCases(t, memoryAdminHarness())
}

func TestAdminRedis(t *testing.T) {
	s := startRedis(t)
	t.Run("cases", func(t *testing.T) { runAdminCases(t, redisAdminHarness(s.url())) })
	t.Run("replicas", func(t *testing.T) { testAdminReplicas(t, s.url(), s.cli, ModeExact) })
	t.Run("replicas lease mode", func(t *testing.T) { testAdminReplicas(t, s.url(), s.cli, ModeLease) })
	t.Run("keys", func(t *testing.T) { testAdminKeys(t, s.url(), s.cli) })
}

// testAdminReplicas runs two Limiters on one Redis: what an admin call
// does on one, the other sees within a second.
func testAdminReplicas(t *testing.T, url string, cli func(...string) string, mode Mode) {
	cfg := Config{RedisURL: url, KeyPrefix: keyPrefix(t), Timeout: testTimeout, Mode: mode,
		Rules: Rules{UserMessages: rate(1000, 10*time.Second, time.Second)}}
	a, b := newLimiter(t, cfg), newLimiter(t, cfg)
	var logA, logB eventLog
	a.OnEvent(logA.add)
	b.OnEvent(logB.add)
	within(t, "both subscribed", 5*time.Second, func() bool { return a.subscribed.Load() && b.subscribed.Load() })
	ctx := context.Background()

	// A hold made on a: b refuses within a second, and b's handler hears of it.
	if d := b.Message(ctx, "u", "ip"); !d.Allowed {
		t.Fatalf("before the hold: %+v", d)
	}
	if err := a.Hold(ctx, KeyRef{Scope: ScopeUser, ID: "u"}, time.Minute, "spam"); err != nil {
		t.Fatal(err)
	}
	e := logB.wait(t, "b hears the hold", time.Second, func(e Event) bool { return e.Type == EventHold })
	if e.Scope != ScopeUser || e.ID != "u" || e.Reason != "spam" || e.Origin != a.origin || time.Until(e.Until) <= 50*time.Second {
		t.Fatalf("hold event %+v", e)
	}
	// A handler told of a hold finds it in force.
	if d := b.Message(ctx, "u", "ip"); d.Rule != HoldRule {
		t.Fatalf("b after the hold event: %+v", d)
	}
	// Reset on b: a lets the user through again.
	if err := b.Reset(ctx, KeyRef{Scope: ScopeUser, ID: "u"}, nil); err != nil {
		t.Fatal(err)
	}
	within(t, "a lets the reset user through", time.Second, func() bool { return a.Message(ctx, "u", "ip").Allowed })

	// A revocation made on a: b's copy has it, and b's handler is told.
	if err := a.Revoke(ctx, Revocation{TokenID: "jti-a", Until: time.Now().Add(time.Minute), Reason: "leaked"}); err != nil {
		t.Fatal(err)
	}
	e = logB.wait(t, "b hears the revocation", time.Second, func(e Event) bool { return e.Type == EventRevoke && e.TokenID == "jti-a" })
	if e.Reason != "leaked" || e.Origin != a.origin {
		t.Fatalf("revoke event %+v", e)
	}
	if _, ok := b.Revoked("", "jti-a"); !ok {
		t.Fatal("b's handler heard of the revocation before b's copy had it")
	}
	if err := b.Unrevoke(ctx, "", "jti-a"); err != nil {
		t.Fatal(err)
	}
	within(t, "a drops the revocation", time.Second, func() bool { _, ok := a.Revoked("", "jti-a"); return !ok })

	// A published event reaches both handlers, once each.
	if err := a.Publish(ctx, Event{Type: EventDisconnect, Scope: ScopeIP, ID: "192.0.2.1"}); err != nil {
		t.Fatal(err)
	}
	isDisconnect := func(e Event) bool { return e.Type == EventDisconnect && e.ID == "192.0.2.1" }
	logB.wait(t, "b hears the disconnect", time.Second, isDisconnect)
	logA.wait(t, "a hears its own disconnect", time.Second, isDisconnect)

	// A revocation written where no event announces it (as if published
	// while b's subscription was down): b's re-read finds it and tells
	// the handler. A record that ended is deleted from the hash.
	until := time.Now().Add(time.Minute).UnixMilli()
	cli("hset", b.revoked.hash, "sub|mallory", fmt.Sprintf(`{"untilMs":%d,"reason":"raw"}`, until),
		"jti|old", fmt.Sprintf(`{"untilMs":%d}`, time.Now().Add(-time.Minute).UnixMilli()))
	within(t, "b re-reads the revocation", 2*time.Second, func() bool { _, ok := b.Revoked("mallory", ""); return ok })
	e = logB.wait(t, "b's synthesized revoke event", time.Second, func(e Event) bool { return e.Type == EventRevoke && e.Subject == "mallory" })
	if e.Origin != "" || e.Reason != "raw" || e.Until.UnixMilli() != until {
		t.Fatalf("synthesized event %+v", e)
	}
	within(t, "the ended record is deleted", 2*time.Second, func() bool { return cli("hexists", b.revoked.hash, "jti|old") == "0" })
	if cli("hexists", b.revoked.hash, "sub|mallory") != "1" {
		t.Fatal("the revocation in force was deleted")
	}
	// The same for a hold: the copy follows the hash, and a hold deleted
	// behind the replicas' backs ends within a second too.
	cli("hset", b.holds.hash, "ip|192.0.2.9", fmt.Sprintf(`{"untilMs":%d}`, until))
	within(t, "b re-reads the hold", 2*time.Second, func() bool { return b.Message(ctx, "v", "192.0.2.9").Rule == HoldRule })
	cli("hdel", b.holds.hash, "ip|192.0.2.9")
	within(t, "b re-reads the deletion", 2*time.Second, func() bool { return b.Message(ctx, "v", "192.0.2.9").Allowed })
}

// testAdminKeys reads the records' layout with redis-cli.
func testAdminKeys(t *testing.T, url string, cli func(...string) string) {
	p := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: url, KeyPrefix: p, Timeout: testTimeout})
	ctx := context.Background()
	if err := l.Hold(ctx, KeyRef{Scope: "claim:a|b", ID: "x|y"}, time.Minute, "why"); err != nil {
		t.Fatal(err)
	}
	if err := l.Revoke(ctx, Revocation{Subject: "s", Until: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	var v recordValue
	if err := json.Unmarshal([]byte(cli("hget", p+":admin:holds", "claim:a%7Cb|x|y")), &v); err != nil || v.Reason != "why" ||
		time.Until(time.UnixMilli(v.UntilMs)) <= 50*time.Second {
		t.Fatalf("hold field: %+v, %v", v, err)
	}
	if got := cli("hkeys", p+":admin:revoked"); got != "sub|s" {
		t.Fatalf("revocation fields %q", got)
	}
	// The escaped scope reads back as it was: the copy after a re-read
	// still holds it.
	l.kickReload()
	within(t, "the re-read", time.Second, func() bool {
		return l.Charge(ctx, KindMessage, []Charge{{Rule: &policy.Rule{Name: "r", Key: policy.Key{Kind: policy.KeyClaim, Name: "a|b"}}, Key: "x|y"}}, 1, 0).Rule == HoldRule
	})
}

// TestRecordsReread forces the interleavings of a re-read with the events
// (see records): a reply read before an event must not undo it.
func TestRecordsReread(t *testing.T) {
	var r records[revKey]
	r.init("h", revField, parseRevField, true)
	now := time.Now()
	a, b, c := revKey{subject: "a"}, revKey{subject: "b"}, revKey{subject: "c"}
	rec := func(reason string) record { return record{until: now.Add(time.Minute), reason: reason} }
	r.set(a, rec("a"), false, now)
	r.set(b, rec("b"), false, now)

	// A re-read is sent; then events add c and delete a; then the reply,
	// read before those writes, arrives holding a and b.
	since := r.reading()
	r.set(c, rec("c"), false, now)
	r.set(a, record{}, true, now)
	added := r.replace(map[revKey]record{a: rec("a"), b: rec("b2")}, since, now)
	got := r.snapshot(now)
	if _, ok := got[a]; ok {
		t.Fatal("the stale reply undid the deletion of a")
	}
	if _, ok := got[c]; !ok {
		t.Fatal("the stale reply undid the addition of c")
	}
	if got[b].reason != "b2" {
		t.Fatalf("b is %+v, want the reply's", got[b])
	}
	if len(added) != 0 {
		t.Fatalf("added %+v, want none: the copy had every key the reply did", added)
	}
	// The next re-read, begun after the events, is the truth.
	since = r.reading()
	added = r.replace(map[revKey]record{a: rec("a3"), b: rec("b2")}, since, now)
	got = r.snapshot(now)
	if len(got) != 2 || got[a].reason != "a3" {
		t.Fatalf("after a fresh re-read %+v", got)
	}
	if len(added) != 1 || added[a].reason != "a3" {
		t.Fatalf("added %+v, want a", added)
	}
	if len(r.changed) != 0 {
		t.Fatalf("changes %v kept after a re-read begun after them", r.changed)
	}
	// Records that ended are not kept, nor announced.
	r.replace(map[revKey]record{b: {until: now.Add(-time.Second)}}, r.reading(), now)
	if r.cur.Load() != nil {
		t.Fatalf("the copy holds %+v, want none", r.snapshot(now))
	}
}

// TestHoldFieldsRoundTrip: every scope's field reads back as its key.
func TestHoldFieldsRoundTrip(t *testing.T) {
	for _, ref := range []KeyRef{
		{Scope: "user", ID: "u|v"}, {Scope: "ip", ID: "::1"}, {Scope: "connection", ID: "c1"},
		{Scope: "claim:a|b%7C", ID: "x"}, {Scope: "header:X-Org", ID: "%7C"},
	} {
		k, err := ref.parse()
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := parseHoldField(holdField(k)); !ok || got != k {
			t.Fatalf("%+v: field %q reads back as %+v, %v", ref, holdField(k), got, ok)
		}
	}
}

// TestAdminResubscribe restarts Redis under two replicas: their
// subscriptions come back (rueidis subscribes again on the new
// connection, or subscribeEvents does), and events flow again.
func TestAdminResubscribe(t *testing.T) {
	s := startRedis(t)
	cfg := Config{RedisURL: s.url(), KeyPrefix: keyPrefix(t), Timeout: testTimeout}
	a, b := newLimiter(t, cfg), newLimiter(t, cfg)
	var logB eventLog
	b.OnEvent(logB.add)
	within(t, "both subscribed", 5*time.Second, func() bool { return a.subscribed.Load() && b.subscribed.Load() })
	s.stop()
	s.start()
	// Events published before b subscribed again are lost: publish until
	// one arrives.
	ctx := context.Background()
	n := 0
	within(t, "b hears a disconnect after the restart", 10*time.Second, func() bool {
		n++
		_ = a.Publish(ctx, Event{Type: EventDisconnect, Scope: ScopeUser, ID: fmt.Sprint(n)})
		time.Sleep(20 * time.Millisecond)
		return len(logB.all()) > 0
	})
	if err := a.Hold(ctx, KeyRef{Scope: ScopeIP, ID: "192.0.2.1"}, time.Minute, ""); err != nil {
		t.Fatal(err)
	}
	e := logB.wait(t, "b hears the hold", time.Second, func(e Event) bool { return e.Type == EventHold })
	// From a through Pub/Sub, or (rarely) from b's own once-a-second re-read
	// of the store when that came first.
	if e.Origin != a.origin && e.Origin != "" || e.ID != "192.0.2.1" {
		t.Fatalf("hold event %+v, want the hold a made", e)
	}
}
