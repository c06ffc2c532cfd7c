// Package limit decides whether a WebSocket message or handshake may pass,
// per identity and per client IP, with fixed-window rules and blocks whose
// state is shared across replicas in Redis (or kept in process).
//
// The semantics are those of rate-limiter-flexible's RateLimiterRedis: a
// window opens at the first counted event of a key, the event after the
// Limit-th one inside the window is refused, and a rule with a block then
// refuses every event of that key for the block duration, after which the
// budget is full again. A refused event never counts.
//
// # Exact and lease modes
//
// In ModeExact (the default) every message is counted in Redis: of N+k
// concurrent attempts on a key with N left, across any number of replicas,
// exactly N pass.
//
// In ModeLease each Limiter reserves slices of a message rule's window budget
// (Config.LeaseSize units per Redis call, atomically, out of what is left of
// the window) and decides locally until its slice is spent. A slice is only
// ever carved out of the N units of one window, so the bound is:
//
//   - at most N messages of a key pass per window, all replicas together: no
//     overshoot. Unused units are never returned; they lapse with the window
//     they were taken from. A Limiter stops using a slice at the window's end
//     as Redis reported it (measured from before the request was sent, less
//     1ms and 0.1% for clock granularity and rate), and when a block ends the
//     window early: before a slice is taken the key's block key is read
//     through the client-side cache, so Redis pushes an invalidation when it
//     changes; the slice is then put on hold, and kept only if a new read of
//     the block key within Block/2 of the push finds no block (the push is
//     also sent when an expired block key is deleted, which is harmless).
//   - the price is undershoot: a Limiter that finds the window's budget spent
//     refuses and blocks the key, as in exact mode, while other replicas may
//     still hold unused units, so a key can be refused after as few as
//     N - (replicas-1) x LeaseSize messages of a window.
//
// Two assumptions stand behind "at most N": the replicas' and Redis's clocks
// advance at the same rate within 0.1%, and an invalidation reaches a replica
// within Block/2 of the write it announces. Should a replica's connection
// stall for longer, it could spend in the window after a block the units it
// held (at most LeaseSize each), so the general bound is N +
// (replicas-1) x LeaseSize per window, within "replicas x LeaseSize".
// Failure-mode fallbacks are outside these bounds, as in exact mode.
// Lease mode uses one connection per Redis node, so that the invalidations
// and the lease replies arrive in order. Handshakes, and the memory store,
// are always exact.
//
// Round trips in lease mode: about 1/LeaseSize per message and rule (one
// script per slice), plus one cached block read per key every 5s; with the
// default LeaseSize of N/10 a busy key far below its limit costs well under
// 0.01 round trips per message, a key held at its limit about 10/N.
//
// # Concurrent connections per IP
//
// Limiter.OpenConn bounds the connections one client IP holds open at once
// across replicas (Config.IPMaxConns). In Redis each IP has a sorted set of
// connection ids scored by an expiry from Redis's clock; each Limiter
// refreshes its live ids every ConnTTL/3, so the ids of a replica that
// crashed age out within ConnTTL.
package limit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Refusal scopes and kinds reported in a Decision.
const (
	ScopeUser      = "user"
	ScopeIP        = "ip"
	KindMessage    = "message"
	KindConnection = "connection"
)

// Store names reported in a Decision and by Limiter.StoreName.
const (
	storeMemory = "memory"
	storeRedis  = "redis"
)

const (
	defaultPrefix  = "ws-rate"
	defaultTimeout = 50 * time.Millisecond
	// closedRetry is the RetryAfter of a refusal decided by FailClosed.
	closedRetry = time.Second
	// maxIDLen bounds the identity or IP inside a key; longer ones are hashed.
	maxIDLen = 128
)

// errRedisDown is the Err of a fallback decision taken without trying Redis,
// because the last call failed and the background probe has not seen Redis
// answer since.
var errRedisDown = errors.New("redis unreachable")

// Config configures a Limiter. The zero Config is a Limiter with every rule
// disabled on the memory store.
type Config struct {
	// Rules are the four rules; a zero Rule is disabled and touches no key.
	Rules Rules
	// KeyPrefix starts every Redis key; "" means "ws-rate". It must not
	// contain '{' or '}', which would break the keys' Cluster hash tags.
	KeyPrefix string
	// RedisURL selects Redis, parsed by rueidis.ParseURL (redis://, rediss://,
	// several addr= for a Cluster, master_set= for Sentinel). "" means the
	// in-process memory store, right for a single replica.
	RedisURL string
	// FailureMode decides while Redis is unreachable or slower than Timeout;
	// the zero value is FailLocal.
	FailureMode FailureMode
	// Timeout is the deadline of every Redis decision; 0 means 50ms. Message
	// decisions made without a cancelable context share deadlines in steps
	// of 5ms, so one of them may take up to 5ms longer.
	Timeout time.Duration
	// Logger receives Redis state changes; nil means discard.
	Logger *slog.Logger
	// Now is the clock of the memory store (also the FailLocal fallback);
	// nil means time.Now. The Redis store takes time from Redis only.
	Now func() time.Time
	// Mode says how the message rules use Redis: ModeExact (the zero value)
	// counts every message in Redis; ModeLease takes slices of a key's
	// window budget and decides locally until a slice is spent (see the
	// package doc for its bound). Handshakes and the memory store are exact
	// in both modes.
	Mode Mode
	// LeaseSize is how many units of a message rule's window budget one
	// Redis call reserves in ModeLease; 0 means max(1, Limit/10) per rule.
	// It is capped at each rule's Limit, and ignored in ModeExact.
	LeaseSize int
	// IPMaxConns bounds the connections one client IP holds open at the
	// same time, across every replica sharing the Redis (see OpenConn);
	// 0 means no bound.
	IPMaxConns int
	// ConnTTL is how long a connection's registration lives in Redis
	// without a refresh. Each Limiter refreshes its live ones every
	// ConnTTL/3, so the connections of a replica that died stop counting
	// within ConnTTL. 0 means 60s; it must be at least 30ms.
	ConnTTL time.Duration
}

// Decision is the verdict on one message or handshake.
type Decision struct {
	Allowed bool
	// Scope is the refusing rule's scope, ScopeUser or ScopeIP; ScopeUser
	// when both refuse. Empty when allowed.
	Scope string
	// Kind is KindMessage for Limiter.Message, KindConnection for
	// Limiter.Handshake.
	Kind string
	// RetryAfter is how long until the client may try again: the remaining
	// block, or the remaining window of a rule without block. When both
	// scopes refuse it is the longer of the two.
	RetryAfter time.Duration
	// Store is the store that decided: "memory" or "redis". A FailLocal
	// fallback reports "memory"; FailOpen and FailClosed report "redis".
	Store string
	// Fallback is true when Redis failed or timed out and the FailureMode
	// decided.
	Fallback bool
	// Err is the Redis error behind a fallback.
	Err error
	// Granted is how many of the events asked about pass, in order: at
	// least 1 and at most the number asked about when Allowed, 0 when the
	// first is refused. A caller granted fewer asks again for the rest.
	Granted int
}

// rule is one of the four rules with what a store needs to apply it.
type rule struct {
	Rule
	scope string
	// prefix is "<p>:um:{" and so on; a key is prefix + id + "}".
	prefix string
	// limit, window and block are the Lua script's arguments.
	limit, window, block string
	// lease is the units one lease takes in ModeLease, a script argument.
	lease string
}

// counter is one rule applied to one identity or IP.
type counter struct {
	rule *rule
	id   string // safe inside a hash tag, see safeID
	// blockRule, when set, names the rule whose block key the counting
	// script checks instead of this rule's own: a handshake's connection
	// counter checks the message rule's block of the same identity (same
	// hash tag, so same slot). With Redis that is a handshake's block check
	// (blocks it has seen refuse without a round trip, see blockMemo).
	blockRule *rule
}

func (c counter) enabled() bool { return c.rule != nil && c.rule.Enabled() }

// checked reports whether the counting script must see the counter: to
// count it, or only to check its blockRule's block (a disabled connection
// rule under a blocking message rule; the script counts nothing at limit 0).
func (c counter) checked() bool {
	return c.enabled() || (c.blockRule != nil && c.blockRule.Enabled() && c.blockRule.Block > 0)
}

// blocks reports whether the rule can block, so its block key is worth a look.
func (c counter) blocks() bool { return c.enabled() && c.rule.Block > 0 }

func (c counter) key() string { return c.rule.prefix + c.id + "}" }
func (c counter) blockKey() string {
	if c.blockRule != nil {
		return c.blockRule.prefix + c.id + "}:blk"
	}
	return c.rule.prefix + c.id + "}:blk"
}

// outcome is one counter's verdict.
type outcome struct {
	denied  bool
	blocked bool // refused by a block (the Redis store says so; the memory store does not)
	retry   time.Duration
}

// store is what a Limiter asks of the memory and the Redis stores.
type store interface {
	// blocked returns the remaining block of the counters that can block
	// (zero when not blocked).
	blocked(ctx context.Context, cs [2]counter) ([2]time.Duration, error)
	// take counts up to n (>= 1) events against both enabled counters, or
	// none: when one refuses, the other is left (or refunded) as it was.
	// It counts as many as the counter closest to its limit has left, and
	// returns that number, which is 0 only when a counter refuses.
	take(ctx context.Context, cs [2]counter, n int) ([2]outcome, int, error)
}

// Limiter decides messages and handshakes. It is safe for concurrent use.
type Limiter struct {
	rules     [4]rule // um, im, uc, ic
	mode      FailureMode
	timeout   time.Duration
	deadlines deadlines // of the Redis calls of decisions
	log       *slog.Logger

	mem *memory // the store without RedisURL, the FailLocal fallback with it

	redisOpt rueidis.ClientOption
	useRedis bool
	rs       atomic.Pointer[redisStore] // nil until the first connection
	up       atomic.Bool

	lease *leases // the local slices in ModeLease with Redis; nil otherwise

	blocks blockMemo // blocks seen in Redis's answers, for handshakes

	conns *conns // nil without IPMaxConns

	stop      chan struct{}
	bg        context.Context // canceled by Close; bounds background calls
	cancelBg  context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New validates cfg and returns a Limiter. With a RedisURL it connects at
// once; when Redis is down it starts degraded (the FailureMode decides) and
// connects in the background. Errors wrap ErrBadRule, ErrBadFailureMode,
// ErrBadMode or ErrBadConfig.
func New(cfg Config) (*Limiter, error) {
	l := &Limiter{
		mode:    cfg.FailureMode,
		timeout: cfg.Timeout,
		log:     cfg.Logger,
		stop:    make(chan struct{}),
	}
	if l.mode < FailLocal || l.mode > FailClosed {
		return nil, fmt.Errorf("%w %d", ErrBadFailureMode, int(l.mode))
	}
	if cfg.Mode != ModeExact && cfg.Mode != ModeLease {
		return nil, fmt.Errorf("%w %d", ErrBadMode, int(cfg.Mode))
	}
	if cfg.LeaseSize < 0 {
		return nil, fmt.Errorf("%w: negative lease size %d", ErrBadConfig, cfg.LeaseSize)
	}
	if cfg.IPMaxConns < 0 {
		return nil, fmt.Errorf("%w: negative IP max conns %d", ErrBadConfig, cfg.IPMaxConns)
	}
	if cfg.ConnTTL != 0 && cfg.ConnTTL < minConnTTL {
		return nil, fmt.Errorf("%w: conn TTL %v below %v", ErrBadConfig, cfg.ConnTTL, minConnTTL)
	}
	if l.timeout < 0 {
		return nil, fmt.Errorf("%w: negative timeout %v", ErrBadConfig, l.timeout)
	}
	if l.timeout == 0 {
		l.timeout = defaultTimeout
	}
	l.deadlines.timeout = l.timeout
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	prefix := cfg.KeyPrefix
	if prefix == "" {
		prefix = defaultPrefix
	}
	if strings.ContainsAny(prefix, "{}") {
		return nil, fmt.Errorf("%w: key prefix %q contains '{' or '}'", ErrBadConfig, prefix)
	}
	for i, r := range []struct {
		name, scope, tag string
		rule             Rule
	}{
		{"user message", ScopeUser, "um", cfg.Rules.UserMessages},
		{"IP message", ScopeIP, "im", cfg.Rules.IPMessages},
		{"user connection", ScopeUser, "uc", cfg.Rules.UserConns},
		{"IP connection", ScopeIP, "ic", cfg.Rules.IPConns},
	} {
		if err := r.rule.validate(); err != nil {
			return nil, fmt.Errorf("%w: %s rule %q: %v", ErrBadRule, r.name, r.rule.String(), err)
		}
		if i >= 2 {
			r.rule.Block = 0 // connection rules never block
		}
		l.rules[i] = rule{
			Rule:   r.rule,
			scope:  r.scope,
			prefix: prefix + ":" + r.tag + ":{",
			limit:  fmt.Sprint(r.rule.Limit),
			window: fmt.Sprint(r.rule.Window.Milliseconds()),
			block:  fmt.Sprint(r.rule.Block.Milliseconds()),
		}
		size := cfg.LeaseSize
		if size == 0 {
			size = max(1, r.rule.Limit/10)
		}
		l.rules[i].lease = fmt.Sprint(min(size, max(1, r.rule.Limit)))
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	l.mem = newMemory(now)
	l.bg, l.cancelBg = context.WithCancel(context.Background())
	if cfg.IPMaxConns > 0 {
		l.conns = newConns(cfg.IPMaxConns, cfg.ConnTTL, prefix)
	}
	if cfg.RedisURL == "" {
		return l, nil
	}
	opt, err := rueidis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("%w: redis url: %v", ErrBadConfig, err)
	}
	if opt.Dialer.Timeout == 0 {
		// The background reconnect and Close wait for a dial at most this long.
		opt.Dialer.Timeout = 2 * time.Second
	}
	if opt.CacheSizeEachConn == 0 {
		opt.CacheSizeEachConn = blockCacheBytes
	}
	if cfg.Mode == ModeLease {
		l.lease = newLeases(&l.rules[0], &l.rules[1])
		opt.OnInvalidations = l.lease.invalidate
		// A slice is trusted only while the invalidation of its block key
		// would have reached us: that push must come on the connection that
		// runs the lease script, and rueidis spreads commands over several
		// connections to a standalone Redis unless told otherwise.
		opt.PipelineMultiplex = -1
	}
	l.redisOpt = opt
	l.useRedis = true
	if err := l.connect(); err != nil {
		l.log.Warn("redis unreachable at start, limiting with the failure mode until it answers",
			"failure_mode", l.mode.String(), "err", err)
	}
	l.wg.Add(1)
	go l.watchRedis()
	if l.conns != nil {
		l.wg.Add(1)
		go l.refreshConns()
	}
	return l, nil
}

// Message decides one data message of identity user from client IP ip.
// It never blocks longer than Config.Timeout (plus up to 5ms, see
// Config.Timeout) or the caller's context.
func (l *Limiter) Message(ctx context.Context, user, ip string) Decision {
	return l.Messages(ctx, user, ip, 1)
}

// Messages decides the next n (>= 1) data messages of user from ip that
// have arrived together, in one store call: the first Decision.Granted of
// them pass; when fewer than n were granted, the caller asks again for the
// rest, and a refusal (Granted 0) is the refusal of the first message
// asked about. At the moment of the call the outcome is the one n calls
// of Message would have had: the same messages pass, the same one is
// refused. Granted messages stay granted: a block that starts afterwards
// (from another connection or replica) does not reach them, as it does not
// reach a message already relayed. A relay that reads several buffered
// messages at once asks about all of them, which saves a Redis round trip
// per message under load. On a Redis Cluster, where the two rules live on
// different nodes, n is taken as 1.
func (l *Limiter) Messages(ctx context.Context, user, ip string, n int) Decision {
	user, ip = safeID(user), safeID(ip)
	cs := [2]counter{{rule: &l.rules[0], id: user}, {rule: &l.rules[1], id: ip}}
	return l.decide(ctx, KindMessage, cs, cs, max(n, 1))
}

// Handshake decides one WebSocket handshake: refused while a message rule
// blocks user or ip, or over a connection rule.
func (l *Limiter) Handshake(ctx context.Context, user, ip string) Decision {
	user, ip = safeID(user), safeID(ip)
	blk := [2]counter{{rule: &l.rules[0], id: user}, {rule: &l.rules[1], id: ip}}
	cs := [2]counter{
		{rule: &l.rules[2], id: user, blockRule: &l.rules[0]},
		{rule: &l.rules[3], id: ip, blockRule: &l.rules[1]},
	}
	return l.decide(ctx, KindConnection, blk, cs, 1)
}

// RedisUp reports whether a Redis client is connected and the last Redis
// call succeeded. It is false on the memory store.
func (l *Limiter) RedisUp() bool { return l.up.Load() }

// StoreName returns "redis" when Config.RedisURL is set, else "memory".
func (l *Limiter) StoreName() string {
	if l.useRedis {
		return storeRedis
	}
	return storeMemory
}

// Close stops the background reconnect loop, waits for it and closes the
// Redis client. It is safe to call more than once.
func (l *Limiter) Close() error {
	l.closeOnce.Do(func() {
		close(l.stop)
		l.cancelBg()
		l.wg.Wait()
		if rs := l.rs.Load(); rs != nil {
			rs.client.Close()
		}
		l.up.Store(false)
	})
	return nil
}

func (l *Limiter) decide(ctx context.Context, kind string, blk, cs [2]counter, n int) Decision {
	if !l.useRedis {
		d, _ := decide(ctx, l.mem, kind, blk, cs, n)
		d.Store = storeMemory
		return d
	}
	rs := l.rs.Load()
	if rs == nil || !l.up.Load() {
		return l.fallback(ctx, kind, blk, cs, n, errRedisDown)
	}
	rctx, cancel := l.deadlines.context(ctx)
	var d Decision
	var err error
	switch {
	case kind == KindConnection:
		d, err = l.handshake(rctx, rs, blk, cs)
	case l.lease != nil:
		d, err = l.lease.decide(rctx, rs, cs, n)
	default:
		d, err = decide(rctx, rs, kind, blk, cs, n)
	}
	cancel()
	if err == nil && kind == KindMessage {
		l.noteMessage(cs, d)
	}
	if err != nil {
		// A caller that gave up is not Redis's fault, nor are slices
		// invalidated again and again.
		if ctx.Err() == nil && !errors.Is(err, errLeaseLost) {
			l.markDown(err)
		}
		return l.fallback(ctx, kind, blk, cs, n, err)
	}
	l.markUp()
	d.Store = storeRedis
	return d
}

func (l *Limiter) fallback(ctx context.Context, kind string, blk, cs [2]counter, n int, err error) Decision {
	var d Decision
	switch l.mode {
	case FailOpen:
		d = Decision{Allowed: true, Kind: kind, Store: storeRedis, Granted: n}
	case FailClosed:
		d = Decision{Scope: ScopeUser, Kind: kind, RetryAfter: closedRetry, Store: storeRedis}
	default:
		d, _ = decide(ctx, l.mem, kind, blk, cs, n)
		d.Store = storeMemory
	}
	d.Fallback = true
	d.Err = err
	return d
}

func (l *Limiter) markDown(err error) {
	if l.lease != nil {
		// Whether the connection survived and still tracks the block keys
		// is unknown: the slices wait for a fresh read of them.
		l.lease.flush()
	}
	if l.up.CompareAndSwap(true, false) {
		l.log.Warn("redis unreachable, limiting with the failure mode",
			"failure_mode", l.mode.String(), "err", err)
	}
}

func (l *Limiter) markUp() {
	if l.up.CompareAndSwap(false, true) {
		l.log.Info("redis reachable, limiting with redis")
	}
}

// decide applies the block checks of blk and then up to n events to the
// counters of cs.
func decide(ctx context.Context, s store, kind string, blk, cs [2]counter, n int) (Decision, error) {
	left, err := s.blocked(ctx, blk)
	if err != nil {
		return Decision{}, err
	}
	if d, refused := verdict(kind, blk, left[0] > 0, left[1] > 0, left[0], left[1]); refused {
		return d, nil
	}
	out, granted, err := s.take(ctx, cs, n)
	if err != nil {
		return Decision{}, err
	}
	return counted(kind, cs, out, granted), nil
}

// counted is the Decision of a store's take: refused by the first counter
// that refused, else granted events allowed.
func counted(kind string, cs [2]counter, out [2]outcome, granted int) Decision {
	d, refused := verdict(kind, cs, out[0].denied, out[1].denied, out[0].retry, out[1].retry)
	if !refused {
		d.Granted = granted
	}
	return d
}

func verdict(kind string, cs [2]counter, deny0, deny1 bool, retry0, retry1 time.Duration) (Decision, bool) {
	switch {
	case deny0:
		return Decision{Scope: cs[0].rule.scope, Kind: kind, RetryAfter: max(retry0, retry1)}, true
	case deny1:
		return Decision{Scope: cs[1].rule.scope, Kind: kind, RetryAfter: retry1}, true
	}
	return Decision{Allowed: true, Kind: kind, Granted: 1}, false
}

// safeID makes an identity or IP safe inside a key's {hash tag}: one that is
// empty, longer than maxIDLen, holds '{' or '}', or could be mistaken for a
// hashed one is replaced by "sha256:" and its hex SHA-256. (An empty tag "{}"
// would make Redis Cluster hash the whole key, putting a counter and its
// block key in different slots.)
func safeID(id string) string {
	if id != "" && len(id) <= maxIDLen && !strings.ContainsAny(id, "{}") && !strings.HasPrefix(id, "sha256:") {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}
