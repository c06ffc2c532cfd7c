package limit

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// faultTimeout is the Redis deadline under fault injection, and
// faultMargin how late past it a decision may arrive on a busy machine:
// the point is that it arrives, by the failure mode.
const (
	faultTimeout = 100 * ms
	faultMargin  = 2 * time.Second
)

// TestRedisFaults puts a TCP proxy between Limiters and a real Redis and
// injects faults: replies slower than the Timeout, resets, a blackhole and
// Redis down. Each decision arrives by the failure mode once its deadline
// passes; after recovery Redis decides again and its counter holds the
// events Redis decided (plus at most the ones whose call timed out, which
// Redis may still have run); and nothing leaks: no goroutine, no
// connection through the proxy after Close.
func TestRedisFaults(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	s := startRedis(t)
	cases := []struct {
		name       string
		mode       FailureMode
		inject     func(p *faultProxy)
		heal       func(p *faultProxy)
		mayDecide  bool // the first decision after the fault may still reach Redis
		maySucceed bool // and the calls during the fault may have run in Redis
	}{
		{name: "latency local", mode: FailLocal,
			inject: func(p *faultProxy) { p.setLatency(3 * faultTimeout) }, heal: func(p *faultProxy) { p.setLatency(0) },
			maySucceed: true},
		{name: "latency open", mode: FailOpen,
			inject: func(p *faultProxy) { p.setLatency(3 * faultTimeout) }, heal: func(p *faultProxy) { p.setLatency(0) },
			maySucceed: true},
		{name: "latency closed", mode: FailClosed,
			inject: func(p *faultProxy) { p.setLatency(3 * faultTimeout) }, heal: func(p *faultProxy) { p.setLatency(0) },
			maySucceed: true},
		{name: "reset", mode: FailOpen,
			inject: func(p *faultProxy) { p.reset() }, heal: func(*faultProxy) {},
			mayDecide: true, maySucceed: true},
		{name: "blackhole", mode: FailLocal,
			inject: func(p *faultProxy) { p.setBlackhole(true) }, heal: func(p *faultProxy) { p.setBlackhole(false) },
			maySucceed: true},
		{name: "down", mode: FailClosed,
			inject: func(p *faultProxy) { p.down() }, heal: func(p *faultProxy) { p.up() }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := startProxy(t, s.addr())
			prefix := keyPrefix(t)
			l, err := New(Config{RedisURL: p.url(), KeyPrefix: prefix, Timeout: faultTimeout, FailureMode: c.mode,
				IPMaxConns: 100, ConnTTL: time.Minute,
				Rules: Rules{UserMessages: rate(1000, time.Minute, 0)}})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				l.Close()
				waitFor(t, "no connection through the proxy after Close", func() bool { return p.open() == 0 })
			}()
			ctx := context.Background()
			byRedis, unsure := 0, 0
			decide := func() Decision {
				t.Helper()
				start := time.Now()
				d := l.Message(ctx, "u", "a")
				if took := time.Since(start); took > faultTimeout+faultMargin {
					t.Fatalf("decision took %v, Timeout %v", took, faultTimeout)
				}
				switch {
				case !d.Fallback:
					byRedis++
				case !errors.Is(d.Err, errRedisDown):
					unsure++ // the call was sent and may have run
				}
				return d
			}
			for range 3 {
				if d := decide(); !d.Allowed || d.Fallback {
					t.Fatalf("before the fault: %+v", d)
				}
			}
			_, release := l.OpenConn(ctx, "a")

			c.inject(p)
			d := decide()
			if d.Fallback {
				checkFallback(t, c.mode, d)
			} else if !c.mayDecide {
				t.Fatalf("first decision after the fault: %+v, want a fallback", d)
			}
			for range 5 {
				if d := decide(); d.Fallback {
					checkFallback(t, c.mode, d)
				}
			}
			start := time.Now()
			release() // must not hang on the fault
			if took := time.Since(start); took > faultTimeout+faultMargin {
				t.Fatalf("release took %v", took)
			}
			start = time.Now()
			if d, release := l.OpenConn(ctx, "a"); d.Fallback {
				checkConnFallback(t, c.mode, d)
				release()
			}
			if took := time.Since(start); took > faultTimeout+faultMargin {
				t.Fatalf("OpenConn took %v", took)
			}

			c.heal(p)
			waitUp(t, l)
			// A reset breaks every pooled connection, and one that was idle
			// fails its next call once before rueidis replaces it: wait for
			// three decisions by Redis in a row.
			waitFor(t, "decisions by redis", func() bool {
				for range 3 {
					if d := decide(); d.Fallback || !d.Allowed {
						time.Sleep(50 * ms)
						return false
					}
				}
				return true
			})
			if !c.maySucceed {
				unsure = 0
			}
			got, _ := strconv.Atoi(s.cli("get", prefix+":um:{u}"))
			t.Logf("counter %d: %d decided by redis, %d timed out", got, byRedis, unsure)
			if got < byRedis || got > byRedis+unsure {
				t.Fatalf("counter %d, want %d decided by redis (+ up to %d timed out)", got, byRedis, unsure)
			}
			// A reset breaks every pooled connection; one that was idle
			// fails its next call once, then rueidis replaces it.
			waitFor(t, "OpenConn by redis", func() bool {
				d, release := l.OpenConn(ctx, "a")
				defer release()
				return d.Allowed && !d.Fallback
			})
		})
	}

	t.Run("down at start", func(t *testing.T) {
		p := startProxy(t, s.addr())
		p.down()
		prefix := keyPrefix(t)
		l := newLimiter(t, Config{RedisURL: p.url(), KeyPrefix: prefix, Timeout: faultTimeout, FailureMode: FailLocal,
			Mode: ModeLease, IPMaxConns: 1, Rules: Rules{UserMessages: rate(1000, time.Minute, time.Second)}})
		ctx := context.Background()
		if d := l.Message(ctx, "u", "a"); !d.Allowed || !d.Fallback || d.Store != "memory" {
			t.Fatalf("degraded: %+v", d)
		}
		d, release := l.OpenConn(ctx, "a")
		if !d.Allowed || !d.Fallback || d.Store != "memory" {
			t.Fatalf("degraded OpenConn: %+v", d)
		}
		if d, _ := l.OpenConn(ctx, "a"); d.Allowed || !d.Fallback {
			t.Fatalf("degraded OpenConn over the bound: %+v", d)
		}
		release()
		p.up()
		waitUp(t, l)
		for range 25 {
			if d := l.Message(ctx, "u", "a"); !d.Allowed || d.Fallback || d.Store != "redis" {
				t.Fatalf("after Redis came up: %+v", d)
			}
		}
		// Lease mode: one slice of 100 (Limit/10) serves the 25 messages.
		if got := s.cli("get", prefix+":um:{u}"); got != "100" {
			t.Fatalf("counter %s, want 100", got)
		}
		l.Close()
		waitFor(t, "no connection through the proxy after Close", func() bool { return p.open() == 0 })
	})

	// The two rueidis goroutines are the Cluster clients' of TestCluster
	// (delayed topology refreshes that Close does not wait for); these
	// Limiters use standalone clients.
	goleak.VerifyNone(t, ignore,
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"))
}

func checkFallback(t *testing.T, mode FailureMode, d Decision) {
	t.Helper()
	ok := d.Err != nil && d.Kind == KindMessage
	switch mode {
	case FailLocal:
		ok = ok && d.Store == "memory"
	case FailOpen:
		ok = ok && d.Allowed && d.Store == ""
	case FailClosed:
		ok = ok && !d.Allowed && d.RetryAfter == time.Second && d.Store == ""
	}
	if !ok {
		t.Fatalf("fallback %+v, not by failure mode %v", d, mode)
	}
}

func checkConnFallback(t *testing.T, mode FailureMode, d Decision) {
	t.Helper()
	ok := d.Err != nil && d.Kind == KindConnection
	switch mode {
	case FailLocal:
		ok = ok && d.Allowed && d.Store == "memory"
	case FailOpen:
		ok = ok && d.Allowed && d.Store == ""
	case FailClosed:
		ok = ok && !d.Allowed && d.Scope == ScopeIP && d.Store == ""
	}
	if !ok {
		t.Fatalf("conn fallback %+v, not by failure mode %v", d, mode)
	}
}

// TestRedisBatchTimeout: a batch whose Redis call timed out may still have
// been counted, and have blocked the key, in Redis. The failure mode then
// decides only its first message; the caller asks Redis again about the
// rest, which sees what the timed-out call did.
func TestRedisBatchTimeout(t *testing.T) {
	s := startRedis(t)
	p := startProxy(t, s.addr())
	prefix := keyPrefix(t)
	l := newLimiter(t, Config{RedisURL: p.url(), KeyPrefix: prefix, Timeout: faultTimeout, FailureMode: FailOpen,
		Rules: Rules{UserMessages: rate(12, time.Minute, time.Minute)}})
	ctx := context.Background()
	if d := l.Message(ctx, "u", "a"); !d.Allowed || d.Fallback {
		t.Fatalf("first message: %+v", d)
	}
	p.setLatency(3 * faultTimeout)
	d := l.Messages(ctx, "u", "a", 10)
	if !d.Fallback || !d.Allowed || d.Granted != 1 {
		t.Fatalf("timed-out batch of 10: %+v, want the first message by the failure mode", d)
	}
	p.setLatency(0)
	// The timed-out call ran: Redis counted its 10.
	waitFor(t, "the timed-out call to land", func() bool { return s.cli("get", prefix+":um:{u}") == "11" })
	waitFor(t, "the late reply to pass the proxy", func() bool { return p.inFlight() == 0 })
	d = l.Messages(ctx, "u", "a", 9)
	if d.Fallback || !d.Allowed || d.Granted != 1 {
		t.Fatalf("the other 9: %+v, want 1 granted by Redis", d)
	}
	if d := l.Messages(ctx, "u", "a", 8); d.Fallback || d.Allowed || d.RetryAfter != time.Minute {
		t.Fatalf("the last 8: %+v, want refused by Redis, with the block", d)
	}
}
