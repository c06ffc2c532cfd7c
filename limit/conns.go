package limit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

const (
	defaultConnTTL = 60 * time.Second
	minConnTTL     = 30 * time.Millisecond
	// connRetry is the RetryAfter of a connection refused by IPMaxConns: a
	// slot frees when one of the IP's connections ends, which the Limiter
	// cannot foresee.
	connRetry = time.Second
	// refreshBatch is the most IP keys refreshed in one pipelined call.
	refreshBatch = 256
)

// connOpenSrc admits one connection: KEYS[1] is the IP's sorted set of
// connection ids scored by their expiry (ms, Redis's clock), ARGV the bound,
// the TTL in ms and the new id. Expired ids are removed first. It returns 1
// when admitted.
const connOpenSrc = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`

// connRefreshSrc pushes back the expiry of the ids in ARGV[2..] of the set
// KEYS[1] by ARGV[1] ms. An id that aged out meanwhile (this replica could
// not reach Redis for ConnTTL) is added back: its connection is still open,
// and counting it again is what makes the count right after an outage, even
// if the IP is then over its bound until connections end.
const connRefreshSrc = `
local t = redis.call('TIME')
local exp = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], exp, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
`

var (
	connOpenScript    = newScript(connOpenSrc)
	connRefreshScript = newScript(connRefreshSrc)
)

// conns is the state of the concurrent-connection bound.
type conns struct {
	max    int
	ttl    time.Duration
	args   [2]string // the bound and the TTL in ms, script arguments
	prefix string    // "<p>:cc:{"
	idBase string    // this Limiter's part of every connection id
	seq    atomic.Uint64

	mu sync.Mutex
	// live holds the ids this Limiter registered in Redis and has not
	// released, by key: what the refresh keeps alive.
	live map[string]map[string]struct{}
	// mem counts the open connections per IP of the memory store, or of the
	// FailLocal fallback.
	mem map[string]int
}

func newConns(max int, ttl time.Duration, prefix string) *conns {
	if ttl == 0 {
		ttl = defaultConnTTL
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return &conns{
		max:    max,
		ttl:    ttl,
		args:   [2]string{strconv.Itoa(max), strconv.FormatInt(ttl.Milliseconds(), 10)},
		prefix: prefix + ":cc:{",
		idBase: hex.EncodeToString(b[:]) + ":",
		live:   make(map[string]map[string]struct{}),
		mem:    make(map[string]int),
	}
}

func noRelease() {}

// OpenConn registers one connection of client IP ip, refused when ip
// already holds Config.IPMaxConns open connections across every replica
// sharing the Redis (or in this process, on the memory store). A refusal
// has Scope ScopeIP, Kind KindConnection and a RetryAfter of one second.
// When allowed, release must be called once the connection ends; it is
// idempotent and never blocks longer than Config.Timeout (when it cannot
// reach Redis the registration ages out within Config.ConnTTL). With
// IPMaxConns 0 every connection is allowed and release does nothing.
// Redis failures are decided by the FailureMode, as for messages.
func (l *Limiter) OpenConn(ctx context.Context, ip string) (d Decision, release func()) {
	cn := l.conns
	if cn == nil {
		return Decision{Allowed: true, Kind: KindConnection, Store: l.StoreName()}, noRelease
	}
	ip = safeID(ip)
	if !l.useRedis {
		d, release = cn.openMem(ip)
		d.Store = storeMemory
		return d, release
	}
	rs := l.rs.Load()
	if rs == nil {
		return l.connFallback(ip, errRedisDown)
	}
	nd := rs.health.of(ip)
	if nd.isDown() {
		return l.connFallback(ip, errRedisDown)
	}
	key := cn.prefix + ip + "}"
	id := cn.idBase + strconv.FormatUint(cn.seq.Add(1), 36)
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, l.timeout)
	ok, err := connOpenScript.exec1(rctx, rs.client, []string{key}, []string{cn.args[0], cn.args[1], id}).AsInt64()
	cancel()
	if err != nil {
		// An admission that timed out here may still have registered the
		// id in Redis: nothing refreshes it, so it ages out.
		if ctx.Err() == nil && rs.health.failed(nd, start, err) && l.lease != nil {
			l.lease.flush()
		}
		return l.connFallback(ip, fmt.Errorf("open conn: %w", err))
	}
	rs.health.ok(nd)
	if ok == 0 {
		return Decision{Scope: ScopeIP, Kind: KindConnection, RetryAfter: connRetry, Store: storeRedis, Limit: cn.max}, noRelease
	}
	cn.mu.Lock()
	ids := cn.live[key]
	if ids == nil {
		ids = make(map[string]struct{})
		cn.live[key] = ids
	}
	ids[id] = struct{}{}
	cn.mu.Unlock()
	var once atomic.Bool
	return Decision{Allowed: true, Kind: KindConnection, Store: storeRedis}, func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		cn.mu.Lock()
		if ids := cn.live[key]; ids != nil {
			delete(ids, id)
			if len(ids) == 0 {
				delete(cn.live, key)
			}
		}
		cn.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		defer cancel()
		if err := rs.client.Do(ctx, rs.client.B().Zrem().Key(key).Member(id).Build()).Error(); err != nil {
			l.log.Debug("release conn: registration left to age out", "err", err)
		}
	}
}

// connFallback decides a connection by the FailureMode.
func (l *Limiter) connFallback(ip string, err error) (d Decision, release func()) {
	release = noRelease
	switch l.mode {
	case FailOpen:
		d = Decision{Allowed: true, Kind: KindConnection}
	case FailClosed:
		d = Decision{Scope: ScopeIP, Kind: KindConnection, RetryAfter: closedRetry}
	default:
		d, release = l.conns.openMem(ip)
		d.Store = storeMemory
	}
	d.Fallback = true
	d.Err = err
	return d, release
}

// openMem counts one connection of ip in process.
func (cn *conns) openMem(ip string) (Decision, func()) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.mem[ip] >= cn.max {
		return Decision{Scope: ScopeIP, Kind: KindConnection, RetryAfter: connRetry, Limit: cn.max}, noRelease
	}
	cn.mem[ip]++
	var once atomic.Bool
	return Decision{Allowed: true, Kind: KindConnection}, func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		cn.mu.Lock()
		defer cn.mu.Unlock()
		if cn.mem[ip] <= 1 {
			delete(cn.mem, ip)
		} else {
			cn.mem[ip]--
		}
	}
}

// refreshConns pushes back the expiry of this Limiter's live connections
// every ConnTTL/3 until Close (see conns.refresh). Its failures are logged
// and never change a node's health: the decisions find out for themselves.
func (l *Limiter) refreshConns() {
	defer l.wg.Done()
	every := l.conns.ttl / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		rs := l.rs.Load()
		if rs == nil {
			continue
		}
		failed, err := l.conns.refresh(l.bg, rs.client, every, max(l.timeout, time.Second))
		if failed > 0 && l.bg.Err() == nil {
			l.log.Warn("refresh of open connections failed, their registrations may age out",
				"ips", failed, "err", err)
		}
	}
}

// refresh runs connRefreshScript once per IP key, refreshBatch keys per
// pipelined call. The batches are spread over period, each with its own
// deadline of timeout, so a slow batch delays the next ones rather than
// failing them, and refresh returns within about period (plus a timeout
// when batches are slow). It returns how many IP keys failed, and the
// first error.
func (cn *conns) refresh(ctx context.Context, c rueidis.Client, period, timeout time.Duration) (failed int, err error) {
	cn.mu.Lock()
	calls := make([]call, 0, len(cn.live))
	for k, ids := range cn.live {
		a := make([]string, 0, len(ids)+1)
		a = append(a, cn.args[1])
		for id := range ids {
			a = append(a, id)
		}
		calls = append(calls, call{[]string{k}, a})
	}
	cn.mu.Unlock()
	start := time.Now()
	batches := (len(calls) + refreshBatch - 1) / refreshBatch
	for b := range batches {
		if b > 0 {
			if wait := time.Until(start.Add(period * time.Duration(b) / time.Duration(batches))); wait > 0 {
				select {
				case <-ctx.Done():
					return failed, ctx.Err()
				case <-time.After(wait):
				}
			}
		}
		batch := calls[b*refreshBatch : min(len(calls), (b+1)*refreshBatch)]
		bctx, cancel := context.WithTimeout(ctx, timeout)
		berr := cn.refreshKeys(bctx, c, batch)
		cancel()
		if berr != nil {
			failed += len(batch)
			if err == nil {
				err = berr
			}
		}
	}
	return failed, err
}

// refreshKeys refreshes one batch of IP keys, then removes again the ids
// released meanwhile: a release between the snapshot and now may have had
// its ZREM run before the refresh added the id back.
func (cn *conns) refreshKeys(ctx context.Context, c rueidis.Client, batch []call) error {
	var err error
	for _, r := range connRefreshScript.exec(ctx, c, batch...) {
		if e := r.Error(); e != nil && err == nil {
			err = fmt.Errorf("refresh conns: %w", e)
		}
	}
	var zrem rueidis.Commands
	cn.mu.Lock()
	for _, k := range batch {
		for _, id := range k.args[1:] {
			if _, ok := cn.live[k.keys[0]][id]; !ok {
				zrem = append(zrem, c.B().Zrem().Key(k.keys[0]).Member(id).Build())
			}
		}
	}
	cn.mu.Unlock()
	if len(zrem) > 0 {
		for _, r := range c.DoMulti(ctx, zrem...) {
			if e := r.Error(); e != nil && err == nil {
				err = fmt.Errorf("refresh conns: %w", e)
			}
		}
	}
	return err
}
