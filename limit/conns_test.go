package limit

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestOpenConnMemory(t *testing.T) {
	ctx := context.Background()
	l := newLimiter(t, Config{IPMaxConns: 2})
	_, r1 := l.OpenConn(ctx, "a")
	d, r2 := l.OpenConn(ctx, "a")
	if !d.Allowed || d.Kind != KindConnection || d.Store != "memory" {
		t.Fatalf("2nd: %+v", d)
	}
	want := Decision{Scope: ScopeIP, Kind: KindConnection, RetryAfter: time.Second, Store: "memory", Limit: 2}
	if d, _ := l.OpenConn(ctx, "a"); d != want {
		t.Fatalf("3rd: %+v, want %+v", d, want)
	}
	if d, _ := l.OpenConn(ctx, "b"); !d.Allowed {
		t.Fatalf("other IP: %+v", d)
	}
	r1()
	r1() // idempotent: frees one slot, not two
	if d, _ := l.OpenConn(ctx, "a"); !d.Allowed {
		t.Fatalf("after release: %+v", d)
	}
	if d, _ := l.OpenConn(ctx, "a"); d.Allowed {
		t.Fatalf("a double release freed two slots: %+v", d)
	}
	r2()

	off := newLimiter(t, Config{})
	for range 10 {
		if d, release := off.OpenConn(ctx, "a"); !d.Allowed {
			t.Fatalf("IPMaxConns 0: %+v", d)
		} else {
			release()
		}
	}
}

// TestOpenConnRedis: two Limiters share the bound exactly, release frees a
// slot, and the ids of a Limiter closed without releasing (a crash) age out
// after ConnTTL while the live ones of the other are kept alive.
func TestOpenConnRedis(t *testing.T) {
	s := startRedis(t)
	testOpenConn(t, s.url(), s.cli)
}

func testOpenConn(t *testing.T, url string, cli func(...string) string) {
	const max, ttl = 3, 600 * ms
	p := keyPrefix(t)
	cfg := Config{RedisURL: url, KeyPrefix: p, Timeout: testTimeout, IPMaxConns: max, ConnTTL: ttl}
	a, b := newLimiter(t, cfg), newLimiter(t, cfg)
	ctx := context.Background()
	var (
		allowed  atomic.Int32
		mu       sync.Mutex
		releases []func()
		wg       sync.WaitGroup
	)
	for i := range 10 {
		wg.Go(func() {
			l := []*Limiter{a, b}[i%2]
			d, release := l.OpenConn(ctx, "10.0.0.1")
			if d.Fallback || d.Store != "redis" || d.Kind != KindConnection {
				t.Errorf("%+v", d)
			}
			if d.Allowed {
				allowed.Add(1)
				mu.Lock()
				releases = append(releases, release)
				mu.Unlock()
			} else if d.Scope != ScopeIP || d.RetryAfter != time.Second {
				t.Errorf("refusal %+v", d)
			}
		})
	}
	wg.Wait()
	if allowed.Load() != max {
		t.Fatalf("%d of 10 allowed, want %d", allowed.Load(), max)
	}
	key := p + ":cc:{10.0.0.1}"
	if got := cli("zcard", key); got != "3" {
		t.Fatalf("zcard %s", got)
	}
	releases[0]()
	releases[0]()
	if got := cli("zcard", key); got != "2" {
		t.Fatalf("zcard after release %s, want 2", got)
	}
	// Whichever Limiter took it, b now takes the free slot.
	d, last := b.OpenConn(ctx, "10.0.0.1")
	if !d.Allowed {
		t.Fatalf("after release: %+v", d)
	}
	if d, _ := a.OpenConn(ctx, "10.0.0.1"); d.Allowed {
		t.Fatalf("over the bound after release: %+v", d)
	}
	for _, r := range append(releases, last) {
		r()
	}
	// a holds two, b one.
	for _, l := range []*Limiter{a, a, b} {
		if d, _ := l.OpenConn(ctx, "10.0.0.1"); !d.Allowed {
			t.Fatalf("after releasing all: %+v", d)
		}
	}
	// Outlive the TTL: the refresh keeps every live id.
	time.Sleep(2 * ttl)
	if d, _ := b.OpenConn(ctx, "10.0.0.1"); d.Allowed {
		t.Fatalf("live ids expired despite the refresh: %+v", d)
	}
	// a crashes: its two ids age out, b's stays.
	a.Close()
	waitFor(t, "a's ids age out", func() bool {
		d, release := b.OpenConn(ctx, "10.0.0.1")
		release()
		return d.Allowed
	})
	if got := cli("zcard", key); got != "1" {
		t.Fatalf("zcard %s after a's ids aged out, want 1 (b's)", got)
	}
}

// TestOpenConnRefreshAtScale: the refresh of many IPs' connections over a
// slow Redis keeps every one alive, and never sends decisions to the failure
// mode.
func TestOpenConnRefreshAtScale(t *testing.T) {
	s := startRedis(t)
	p := startProxy(t, s.addr())
	prefix := keyPrefix(t)
	const ips, ttl = 4 * refreshBatch, 1200 * ms
	l := newLimiter(t, Config{RedisURL: p.url(), KeyPrefix: prefix, Timeout: testTimeout, FailureMode: FailClosed,
		IPMaxConns: 1, ConnTTL: ttl, Rules: Rules{UserMessages: rate(1000, time.Minute, 0)}})
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < ips; i += 8 {
				if d, _ := l.OpenConn(ctx, fmt.Sprint("10.0.", i/256, ".", i%256)); !d.Allowed || d.Fallback {
					t.Errorf("OpenConn %d: %+v", i, d)
					return
				}
			}
		})
	}
	wg.Wait()
	// Each reply now comes 150ms late: the four pipelined batches of the
	// refresh, one after the other, take longer than the ConnTTL/3 between
	// two refreshes, and less than the ConnTTL.
	p.setLatency(150 * ms)
	time.Sleep(2 * ttl)
	if d := l.Message(ctx, "u", "a"); d.Fallback {
		t.Fatalf("a decision during a slow refresh: %+v", d)
	}
	if !l.RedisUp() {
		t.Fatal("a slow refresh marked Redis down")
	}
	p.setLatency(0)
	if n := len(strings.Fields(s.cli("--scan", "--pattern", prefix+":cc:*"))); n != ips {
		t.Fatalf("%d of %d IPs' connections still registered after %v", n, ips, 2*ttl)
	}
}
