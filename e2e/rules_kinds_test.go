//go:build e2e

package e2e

// End-to-end tests of the rules file's key kinds, handshake rules, windows,
// GCRA, block ladders and reloads under load, as the README's "Rules file"
// reference describes them.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// retryOf checks p is the 429 JSON of rule under scope and returns its
// retryAfterMs.
func retryOf(t *testing.T, p []byte, rule, scope string) time.Duration {
	t.Helper()
	ruleRefusal(t, p, rule, scope)
	var r struct {
		RetryAfterMs int64 `json:"retryAfterMs"`
	}
	if err := json.Unmarshal(p, &r); err != nil {
		t.Fatalf("refusal %q: %v", p, err)
	}
	return time.Duration(r.RetryAfterMs) * time.Millisecond
}

// forEachStore runs test in parallel subtests, on the memory store and on a
// real Redis, passing the gate's store flags.
func forEachStore(t *testing.T, test func(t *testing.T, store []string)) {
	t.Helper()
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		test(t, nil)
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		test(t, redisURL(startRedisServer(t)))
	})
}

// kindClient is one client of a key-kind case: a token for sub with claims,
// from ip ("" = 127.0.0.1), with an X-Tenant header unless tenant is "".
type kindClient struct {
	sub    string
	claims map[string]any
	ip     string
	tenant string
}

// TestRulesKinds: each key kind keeps one budget per value of its key:
// clients that share the value share the budget, the others do not, and a
// client without the claim or header a rule is keyed by is not limited by
// it. Each case's script is a list of messages, "a+" (client a sends one and
// it passes) or "a-" (it is dropped with the 429 frame naming the rule).
func TestRulesKinds(t *testing.T) {
	t.Parallel()
	acme := map[string]any{"tenant": "acme"}
	for _, tc := range []struct {
		name    string
		key     string
		scope   string
		clients []kindClient
		script  string
	}{
		{
			// Two users on one IP share; the same user from another IP
			// has a budget of its own.
			name: "ip", key: "ip", scope: "ip",
			clients: []kindClient{{sub: "ann"}, {sub: "bob"}, {sub: "ann", ip: "127.0.0.2"}},
			script:  "a+ b+ a+ b- a- c+ c+ c+ c-",
		},
		{
			// Two connections of one user from one IP count apart.
			name: "connection", key: "connection", scope: "connection",
			clients: []kindClient{{sub: "ann"}, {sub: "ann"}},
			script:  "a+ a+ b+ b+ b+ a+ b- a-",
		},
		{
			name: "claim", key: "claim:tenant", scope: "claim:tenant",
			clients: []kindClient{
				{sub: "ann", claims: acme}, {sub: "bob", claims: acme},
				{sub: "carol", claims: map[string]any{"tenant": "globex"}}, {sub: "dave"},
			},
			script: "a+ b+ a+ b- a- c+ c+ c+ c- d+ d+ d+ d+ d+",
		},
		{
			// Dots reach into nested claims.
			name: "nested claim", key: "claim:org.id", scope: "claim:org.id",
			clients: []kindClient{
				{sub: "ann", claims: map[string]any{"org": map[string]any{"id": "acme"}}},
				{sub: "bob", claims: map[string]any{"org": map[string]any{"id": "acme"}}},
				{sub: "carol", claims: map[string]any{"org": map[string]any{"id": "globex"}}},
				{sub: "dave", claims: map[string]any{"org": map[string]any{"name": "acme"}}},
			},
			script: "a+ b+ a+ b- a- c+ c+ c+ c- d+ d+ d+ d+ d+",
		},
		{
			// The rule may spell the header name in any case; it is named
			// in lower case in the scope.
			name: "header", key: "header:x-TENANT", scope: "header:x-tenant",
			clients: []kindClient{{sub: "ann", tenant: "acme"}, {sub: "bob", tenant: "acme"},
				{sub: "carol", tenant: "globex"}, {sub: "dave"}},
			script: "a+ b+ a+ b- a- c+ c+ c+ c- d+ d+ d+ d+ d+",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			secret, secretFile := newHMACSecret(t)
			b := newRecordingBackend(t)
			rules := fmt.Sprintf("rules: [{name: per-key, key: %q, limits: [3/30s], action: drop}]\n", tc.key)
			g, _ := rulesGate(t, b.URL, rules, secretFile)
			conns := make([]*websocket.Conn, len(tc.clients))
			for i, cl := range tc.clients {
				p := bearer(tokenWith(t, secret, cl.sub, cl.claims)).from(cl.ip)
				if cl.tenant != "" {
					p.header.Set("X-Tenant", cl.tenant)
				}
				conns[i] = dialAs(t, g.URL+"/echo", p)
			}
			passed := 0
			for i, step := range strings.Fields(tc.script) {
				c := conns[step[0]-'a']
				msg := step[:1] + "-" + strconv.Itoa(i)
				if step[1] == '+' {
					echoOK(t, c, msg)
					passed++
					continue
				}
				send(t, c, msg)
				ruleRefusal(t, []byte(readText(t, c)), "per-key", tc.scope)
			}
			if got := b.msgs.Load(); got != int64(passed) {
				t.Errorf("the backend received %d messages, want the %d allowed", got, passed)
			}
		})
	}
}

// TestRulesHandshakesByPath: a handshake rule with a path counts only the
// handshakes to matching paths, per key; the one over it gets 101, the 429
// frame naming the rule and close 4008 (the README's "What clients see"),
// the upstream is never dialed, and the connections already open go on.
func TestRulesHandshakesByPath(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL,
		`rules: [{name: joins, path: "/rooms/*", count: handshakes, key: user, limits: [2/30s]}]`+"\n", secretFile)
	ann := bearer(hsToken(t, secret, "ann"))

	first := dialAs(t, g.URL+"/rooms/x", ann)
	echoOK(t, first, "in x")
	echoOK(t, dialAs(t, g.URL+"/rooms/y", ann), "in y")
	for i := range 3 {
		echoOK(t, dialAs(t, g.URL+"/lobby", ann), "lobby "+strconv.Itoa(i))
	}
	c, _, err := tryDial(t, g.URL+"/rooms/x", ann)
	if err != nil {
		t.Fatalf("the third join: %v, want 101 and the 429 frame", err)
	}
	ruleRefusal(t, []byte(readText(t, c)), "joins", "user")
	wantLimitClose(t, c)

	echoOK(t, first, "still in x")
	echoOK(t, dialAs(t, g.URL+"/rooms/x", bearer(hsToken(t, secret, "bob"))), "bob joins x")
	echoOK(t, dialAs(t, g.URL+"/lobby", ann), "lobby again")
	// 2 joins of ann, 4 visits to the lobby, 1 join of bob.
	if got := b.conns.Load(); got != 7 {
		t.Errorf("the backend accepted %d connections, want 7: the refused join must not reach it", got)
	}
	waitMetric(t, g, mRateLimited, map[string]string{"rule": "joins", "kind": "connection"}, 1)
}

// TestRulesMultiWindow: a rule's windows are checked together and a refused
// message counts against none: the short window refuses the 4th message of
// its second, and once it has passed the long window lets 2 more through
// and refuses the next.
func TestRulesMultiWindow(t *testing.T) {
	t.Parallel()
	forEachStore(t, testRulesMultiWindow)
}

func testRulesMultiWindow(t *testing.T, store []string) {
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, "rules: [{name: two-windows, key: user, limits: [3/1s, 5/30s], action: drop}]\n", secretFile, store...)
	c := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "windowed")))
	for _, m := range []string{"1", "2", "3"} {
		echoOK(t, c, m)
	}
	send(t, c, "4, too soon")
	short := retryOf(t, []byte(readText(t, c)), "two-windows", "user")
	if short > time.Second {
		t.Fatalf("refused by the 3/1s window with retryAfterMs %d, want at most 1000", short.Milliseconds())
	}
	time.Sleep(short + 100*time.Millisecond)

	// Had the refused message counted, the 5/30s window would let one
	// more through, not two.
	echoOK(t, c, "4")
	echoOK(t, c, "5")
	send(t, c, "6")
	long := retryOf(t, []byte(readText(t, c)), "two-windows", "user")
	if long < 20*time.Second || long > 30*time.Second {
		t.Fatalf("refused by the 5/30s window with retryAfterMs %d, want about 29000", long.Milliseconds())
	}
	if got := b.msgs.Load(); got != 5 {
		t.Errorf("the backend received %d messages, want the 5 allowed", got)
	}
}

// TestRulesGCRA: a GCRA rule lets its burst through at once, refuses the
// next event until one interval has drained, and then holds its sustained
// rate: a client sending at twice the rate for 2 s gets about burst +
// rate × elapsed messages through, not the burst alone and not all of
// them. On Redis, two gates share the budget.
func TestRulesGCRA(t *testing.T) {
	t.Parallel()
	const (
		rules    = "rules: [{name: smooth, key: user, limits: [5/1s], algorithm: gcra, burst: 3, action: drop}]\n"
		rate     = 5.0
		burstN   = 3
		interval = 200 * time.Millisecond // 1s / 5
	)
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			secret, secretFile := newHMACSecret(t)
			b := newRecordingBackend(t)
			var rs *redisServer
			var g1, g2 *Gate
			if store == "redis" {
				rs = startRedisServer(t)
				g1, _ = rulesGate(t, b.URL, rules, secretFile, redisURL(rs)...)
				g2, _ = rulesGate(t, b.URL, rules, secretFile, redisURL(rs)...)
			} else {
				g1, _ = rulesGate(t, b.URL, rules, secretFile)
				g2 = g1
			}
			tok := bearer(hsToken(t, secret, "smooth-"+store))
			c1 := dialAs(t, g1.URL+"/echo", tok)
			c2 := dialAs(t, g2.URL+"/echo", tok)

			start := time.Now()
			// The burst, on both gates: two written at once, then one.
			if res := burst(c1, []string{"b1", "b2"}); len(res.echoes) != 2 {
				t.Fatalf("the burst's first two: %+v", res)
			}
			echoOK(t, c2, "b3")
			send(t, c1, "b4")
			retry := retryOf(t, []byte(readText(t, c1)), "smooth", "user")
			if retry > interval {
				t.Fatalf("the event after the burst: retryAfterMs %d, want at most one interval (%v)", retry.Milliseconds(), interval)
			}

			// Twice the rate for 2 s, alternating gates; every attempt is
			// answered (echo or drop) before the next.
			passed, refused := burstN, 1
			for i := range 20 {
				time.Sleep(time.Until(start.Add(time.Duration(i+1) * interval / 2)))
				c := []*websocket.Conn{c1, c2}[i%2]
				msg := "s" + strconv.Itoa(i)
				send(t, c, msg)
				p := readText(t, c)
				if p == msg {
					passed++
					continue
				}
				ruleRefusal(t, []byte(p), "smooth", "user")
				refused++
			}
			elapsed := time.Since(start)
			// A GCRA never lets more than burst + rate × span through;
			// the lower bound is loose, for a loaded machine.
			want := burstN + rate*elapsed.Seconds()
			t.Logf("%d passed, %d refused in %v (burst + rate × elapsed = %.1f)", passed, refused, elapsed, want)
			if float64(passed) > want+1 || float64(passed) < 0.7*want-1 {
				t.Errorf("%d messages passed in %v, want about %.1f (burst %d + %v/s × elapsed)",
					passed, elapsed, want, burstN, rate)
			}
			if got := b.msgs.Load(); got != int64(passed) {
				t.Errorf("the backend received %d messages, want the %d allowed", got, passed)
			}
			if rs != nil {
				if keys := rs.keys("*:r:smooth:*"); len(keys) == 0 {
					t.Errorf("no key of the rule in Redis")
				}
				for _, g := range []*Gate{g1, g2} {
					if n := g.Metric(t, mFallback, nil); n != 0 {
						t.Errorf("%v decisions fell back from Redis, want none", n)
					}
				}
			}
		})
	}
}

// TestRulesBlockLadder: each refusal within reset-strikes of the last
// blocks the key for the ladder's next step, handshakes included; the
// budget is whole again when a block ends.
func TestRulesBlockLadder(t *testing.T) {
	t.Parallel()
	forEachStore(t, testRulesBlockLadder)
}

func testRulesBlockLadder(t *testing.T, store []string) {
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, "rules: [{name: strikes, key: user, limits: [2/30s], block: [1s, 3s]}]\n", secretFile, store...)
	tok := bearer(hsToken(t, secret, "striker"))

	// overLimit spends the budget on a new connection and returns the
	// retryAfterMs of the refusal that follows.
	overLimit := func() time.Duration {
		c := dialAs(t, g.URL+"/echo", tok)
		echoOK(t, c, "1")
		echoOK(t, c, "2")
		send(t, c, "3")
		r := retryOf(t, []byte(readText(t, c)), "strikes", "user")
		wantLimitClose(t, c)
		return r
	}
	// blockedHandshake returns the retryAfterMs of a handshake refused by
	// the block in force.
	blockedHandshake := func() time.Duration {
		c, _, err := tryDial(t, g.URL+"/echo", tok)
		if err != nil {
			t.Fatalf("a handshake while blocked: %v, want 101 and the 429 frame", err)
		}
		r := retryOf(t, []byte(readText(t, c)), "strikes", "user")
		wantLimitClose(t, c)
		return r
	}

	if r := overLimit(); r < 900*time.Millisecond || r > time.Second {
		t.Fatalf("the first strike blocks %v, want 1s", r)
	}
	left := blockedHandshake()
	if left > time.Second {
		t.Fatalf("a handshake during the first block: retry %v, want at most 1s", left)
	}
	time.Sleep(left + 50*time.Millisecond)

	if r := overLimit(); r < 2500*time.Millisecond || r > 3*time.Second {
		t.Fatalf("the second strike blocks %v, want 3s", r)
	}
	if r := blockedHandshake(); r <= 1500*time.Millisecond || r > 3*time.Second {
		t.Fatalf("a handshake during the second block: retry %v, want the second step (3s)", r)
	}
	if got := b.msgs.Load(); got != 4 {
		t.Errorf("the backend received %d messages, want the 4 allowed", got)
	}
}

// TestRulesReloadUnderLoad: a reload that raises a limit, while 20
// connections send, closes none of them; their counters survive and the new
// limit applies to them from their next message, up to its last unit.
func TestRulesReloadUnderLoad(t *testing.T) {
	t.Parallel()
	const (
		conns   = 20
		before  = 40 // per connection, paced, around the reload
		oldMax  = 50
		newMax  = 100
		ruleFmt = "rules: [{name: per-conn, key: connection, limits: [%d/30s]}]\n"
	)
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, file := rulesGate(t, b.URL, fmt.Sprintf(ruleFmt, oldMax), secretFile)
	cs := make([]*websocket.Conn, conns)
	for i := range cs {
		cs[i] = dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "loader-"+strconv.Itoa(i))))
	}

	reloaded := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			for j := range before {
				if err := echoCtx(ctx, c, fmt.Sprintf("c%d-%d", i, j)); err != nil {
					t.Errorf("connection %d, message %d (under both limits): %v", i, j+1, err)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			select {
			case <-reloaded:
			case <-ctx.Done():
				return
			}
			// Past the old limit, up to the new one.
			for j := before; j < newMax; j++ {
				if err := echoCtx(ctx, c, fmt.Sprintf("c%d-%d", i, j)); err != nil {
					t.Errorf("connection %d, message %d (under the new limit): %v", i, j+1, err)
					return
				}
			}
			if err := c.Write(ctx, websocket.MessageText, []byte("over")); err != nil {
				t.Errorf("connection %d: %v", i, err)
				return
			}
			_, p, err := c.Read(ctx)
			if err != nil || !strings.Contains(string(p), `"rule":"per-conn"`) {
				t.Errorf("connection %d, message %d: %q %v, want the 429 frame of per-conn", i, newMax+1, p, err)
				return
			}
			_, _, err = c.Read(ctx)
			if websocket.CloseStatus(err) != 4008 {
				t.Errorf("connection %d after the refusal: %v, want close 4008", i, err)
			}
		}()
	}
	defer func() {
		select {
		case <-reloaded:
		default:
			close(reloaded)
		}
		wg.Wait()
	}()

	waitFor(t, "the load to start", func() bool { return b.msgs.Load() >= 100 })
	// As a ConfigMap's update: a new file renamed over the old one.
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf(ruleFmt, newMax)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	if err := g.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if n := b.msgs.Load(); n >= conns*before {
		t.Fatalf("the reload came after the load (%d messages relayed): the test proves nothing", n)
	}
	waitMetric(t, g, mRulesReloads, map[string]string{"result": "ok"}, 1)
	close(reloaded)
	wg.Wait()

	if got := b.msgs.Load(); got != conns*newMax {
		t.Errorf("the backend received %d messages, want %d", got, conns*newMax)
	}
	for range conns {
		if ce := b.nextClose(t); ce.Code != 4008 {
			t.Errorf("the backend saw a connection end with %d %q, want only the limit's 4008", ce.Code, ce.Reason)
		}
	}
	waitMetric(t, g, mRateLimited, map[string]string{"rule": "per-conn"}, conns)
}

// echoCtx sends msg on c and reads its echo; it does not touch a
// testing.T, so goroutines may call it.
func echoCtx(ctx context.Context, c *websocket.Conn, msg string) error {
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return err
	}
	_, p, err := c.Read(ctx)
	if err != nil {
		return err
	}
	if string(p) != msg {
		return fmt.Errorf("got %q, want the echo %q", tail(string(p), 200), msg)
	}
	return nil
}
