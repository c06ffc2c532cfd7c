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
// # Keys and scripts
//
// Each rule of each identity or IP has a counter key "<prefix>:<rule>:{id}"
// and, for the message rules, a block key "<prefix>:<rule>:{id}:blk"; the
// hash tag keeps the two in one Cluster slot. Two operations use them:
//
//   - check blocks: a PTTL of the message rules' block keys, read through
//     rueidis's client-side cache, so Redis tracks the keys for this client
//     and pushes an invalidation when one is written or deleted. A blocked
//     identity is refused without a round trip, on every replica, until its
//     block ends or an operator deletes the block key. Messages whose
//     refusal closes their stream (ClosesOnRefusal) leave it to the take.
//   - take n: one Lua script counts up to n events against the counters,
//     atomically, refusing when a guarding block key exists or a window's
//     budget is spent; the refusal of a rule with a block sets its block
//     key and drops its counter. A message's counters are guarded by their
//     own rules' block keys, a handshake's connection counters by the
//     message rules' block keys of the same identity and IP.
//
// # Exact and lease modes
//
// In ModeExact (the default) every message is counted in Redis: of N+k
// concurrent attempts on a key with N left, across any number of replicas,
// exactly N pass.
//
// In ModeLease each Limiter reserves slices of a message rule's window budget
// (Config.LeaseSize units per Redis call, atomically, out of what is left of
// the window) and decides locally until its slice is spent. A slice of 16
// units or more is renewed before it runs out: a decision that leaves it
// under half its size has the next slice leased in the background
// (leases.ahead), and the decisions spend the rest meanwhile, so a
// Limiter holds under 1.5 x LeaseSize of a key. A slice is only
// ever carved out of the N units of one window, so the bound is:
//
//   - at most N messages of a key pass per window, all replicas together: no
//     overshoot. Unused units are never returned; they lapse with the window
//     they were taken from. A Limiter stops using a slice at the window's end
//     as Redis reported it (measured from before the request was sent, less
//     1ms and 0.1% for clock granularity and rate), and when a block ends the
//     window early: a slice is taken only after the key's block key was
//     checked through the cache, so Redis tracks it, and the invalidation of
//     that key drops the slice; the next message checks and leases again.
//   - the price is undershoot: a Limiter that finds the window's budget spent
//     refuses and blocks the key, as in exact mode, while other replicas may
//     still hold unused units, so a key can be refused after as few as
//     N - (replicas-1) x 1.5 x LeaseSize messages of a window.
//
// Two assumptions stand behind "at most N": the replicas' and Redis's clocks
// advance at the same rate within 0.1%, and an invalidation reaches a replica
// before the block it announces ends. Should a replica's connection stall
// for longer, it could spend in the window after a block the units it held
// (under 1.5 x LeaseSize each), so the general bound is N + (replicas-1) x
// 1.5 x LeaseSize per window. Failure-mode fallbacks are outside these bounds, as
// in exact mode. Lease mode uses one connection per Redis node, so that the
// invalidations and the lease replies arrive in order. Handshakes, and the
// memory store, are always exact.
//
// Lease mode covers a rules file's rules (Charge) the same way: each rule
// that counts messages or bytes, in fixed or GCRA windows, has a slice per
// key value and window (a byte rule's is bytes), taken, for every window of
// every charge that needs one, by the one script that would have decided
// the event exactly. A message whose charges all have slice left costs no round
// trip, however many rules count it. When a window has no event left in
// Redis, that script decides the event exactly instead: the refusal, the
// block with its ladder and strikes, and the retry are the exact path's.
// Slices are dropped when their rule's block key is invalidated, when the
// node's connection is lost, on Reset of their key, and on a reload (a new
// rule, or other limits, start slices of their own). The bounds above hold
// per fixed window. Handshake rules stay exact. A decision that mixes
// leased and exact charges spends its slices only when the exact ones
// allow it.
//
// A GCRA window's slice is reserved by advancing its TAT (theoretical
// arrival time) by the slice's units times the interval, as far as the
// burst allows at that moment; its units are charged to the TAT when
// reserved, so all replicas together never pass more than the rule's rate
// over time, and a slice not spent before it expires (at the later of the
// TAT's lead when reserved and the window's length) is lost, which
// under-admits, never over-admits. Spent after their place in the TAT,
// units would pass above the burst: the slice keeps the TAT that the exact
// path would have after this replica's events, and its next reservation
// moves the TAT in Redis by the difference before deciding (polSlice). With
// one replica, a leased GCRA window therefore admits exactly what the
// exact path admits. Across replicas, a replica's late units are seen by
// the others only at its next reservation, so in a burst a key can see at
// most burst + (replicas-1) x slice, and the sustained rate stays the
// rule's rate.
//
// # Failures
//
// Health is kept per Redis node (on a Cluster, the master serving a key's
// slot). A call that fails or outlasts Config.Timeout is decided by the
// FailureMode, that call only; failAfter failures in a row (the calls
// caught in one stall count once) mark its node down, and then the
// decisions whose keys live on that node fall back without trying it until
// a background probe sees the node answer. The decisions whose keys live
// on healthy nodes go on with Redis. Background
// work (the refresh of open connections) never changes a node's health.
//
// # Concurrent connections per IP
//
// Limiter.OpenConn bounds the connections one client IP holds open at once
// across replicas (Config.IPMaxConns). In Redis each IP has a sorted set of
// connection ids scored by an expiry from Redis's clock; each Limiter
// refreshes its live ids every ConnTTL/3, so the ids of a replica that
// crashed age out within ConnTTL.
//
// # Operator holds, revocations and events
//
// An operator can read and reset a key's state (Limiter.Inspect,
// Limiter.Reset), hold a key so that every decision about it is refused
// (Limiter.Hold), revoke a subject or a token (Limiter.Revoke, checked with
// Limiter.Revoked), and send events to every replica (Limiter.Publish,
// Limiter.OnEvent). Holds and revocations are kept in Redis and copied
// into each replica, which decides from its copy without I/O; Event
// describes the layout, the sync and its guarantees.
//
// docs/ARCHITECTURE.md places this package in the gate.
package limit

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
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
// because the node holding its keys is marked down (or no client is
// connected yet) and the background probe has not seen it answer since.
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
	// in-process memory store, right for a single replica. Redis must be 6.2
	// or newer.
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
	// Now is the clock of the memory store (also the FailLocal fallback),
	// and of the ends of operator holds and revocations on both stores
	// (wall-clock times, shared by the replicas); nil means time.Now. The
	// Redis store's rules take time from Redis only.
	Now func() time.Time
	// Mode says how the message rules use Redis, the flag rules' and a
	// rules file's (Charge) that count messages or bytes: ModeExact (the
	// zero value) counts every message in Redis; ModeLease takes slices of
	// a key's window budget and decides locally until a slice is spent (see
	// the package doc for its bounds). Handshakes and the memory store are
	// exact in both modes.
	Mode Mode
	// LeaseSize is how many messages of a message rule's window budget one
	// Redis call reserves in ModeLease, per window; 0 means max(1, Limit/10)
	// per rule and window. It is capped at each window's Limit, and ignored
	// in ModeExact. A rules file's byte rule reserves a tenth of its
	// window's byte limit whatever LeaseSize, or the bytes the decision
	// spends if more.
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
	// Kind is the kind of the rule that refused: KindMessage for a message
	// rule, also when its block refuses a handshake; KindConnection for a
	// connection rule and for OpenConn. When allowed, the kind of the call:
	// KindMessage for Limiter.Messages, KindConnection for Limiter.Handshake
	// and Limiter.OpenConn.
	Kind string
	// RetryAfter is how long until the client may try again: the remaining
	// block, or the remaining window of a rule without block. When both
	// scopes refuse it is the longer of the two.
	RetryAfter time.Duration
	// Store is the store that decided: "redis", or "memory" (the memory
	// store, or a FailLocal fallback). It is "" when no store decided: a
	// FailOpen or FailClosed fallback.
	Store string
	// Fallback is true when the FailureMode decided because Redis failed,
	// timed out, or holds the keys on a node marked down.
	Fallback bool
	// Err is the Redis error behind a fallback.
	Err error
	// Granted is how many of the events asked about pass, in order: at
	// least 1 and at most the number asked about when Allowed, 0 when the
	// first is refused. A caller granted fewer asks again for the rest.
	Granted int
	// Blocked is true when a block in force refused the event (a message
	// rule's block, set by an earlier refusal, or an operator hold), false
	// when this event went over its rule's limit. A handshake refused by a block has the
	// blocking message rule's Kind, KindMessage.
	Blocked bool
	// Limit is the refusing rule's N (Config.IPMaxConns for OpenConn);
	// zero when allowed, and for a FailClosed refusal.
	Limit int
	// Rule names the refusing rule of a rules file's policy (Charge);
	// HoldRule for a refusal by an operator hold (Hold); "" for the flag
	// rules and when allowed.
	Rule string
	// answered is true when the decision rests on Redis's reply to a call
	// made for it (or for a lease it waited for), not on a slice spent
	// locally or a cached block: only such a decision clears its nodes'
	// failure streaks (health.ok), which must outlast the decisions made
	// meanwhile without asking Redis. Always false in a Decision a
	// Limiter returns.
	answered bool
}

// rule is one of the four rules with what a store needs to apply it.
type rule struct {
	Rule
	name  string // as Inspect reports it: "user-messages" and so on
	scope string
	kind  string // KindMessage or KindConnection
	// prefix is "<p>:um:{" and so on.
	prefix string
	// limit, window and block are the Lua scripts' arguments.
	limit, window, block string
	// lease is the units one lease takes in ModeLease.
	lease int
}

// key returns the counter key of id.
func (r *rule) key(id string) string { return r.prefix + id + "}" }

// blockKey returns the key whose existence blocks id under this rule.
func (r *rule) blockKey(id string) string { return r.prefix + id + "}:blk" }

// counter is one rule applied to one identity or IP (safe inside a hash
// tag, see safeID). blk, when set (withKeys), is its block key, whose
// beginning is its counter key: the keys of a Redis decision are built
// once, in one string.
type counter struct {
	rule *rule
	id   string
	blk  string
	// A Client's pointers to the counter's entries, or nil: the memory
	// store's (memory.lookup) and lease mode's (leases.lookup).
	mem   **memEntry
	lease **leaseEntry
}

func (c counter) enabled() bool { return c.rule.Enabled() }

// blocks reports whether the rule can block, so its block key is worth a look.
func (c counter) blocks() bool { return c.enabled() && c.rule.Block > 0 }

func (c counter) key() string {
	if c.blk != "" {
		return c.blk[:len(c.blk)-len(":blk")]
	}
	return c.rule.key(c.id)
}

func (c counter) blockKey() string {
	if c.blk != "" {
		return c.blk
	}
	return c.rule.blockKey(c.id)
}

// count is a counter as a take counts it: refused while its guard, a rule
// that blocks the same id, blocks it. A message's counter is its own guard;
// a handshake's connection counter is guarded by the message rule of its
// scope. A refusal blocks the guard when the counter's rule has a block.
type count struct {
	counter
	guard *rule
	gblk  string // the guard's block key, when set (withKeys)
}

func (c count) guardKey() string {
	if c.gblk != "" {
		return c.gblk
	}
	return c.guard.blockKey(c.id)
}

// withKeys builds the keys a Redis decision on cs and ts will name, once
// each (a Client's come built): a message's count is its counter, a
// handshake's count is guarded by its scope's message counter. Other keys
// are built when named.
func withKeys(cs *[2]counter, ts *[2]count) {
	for i := range cs {
		c, t := &cs[i], &ts[i]
		if !c.enabled() {
			continue
		}
		if c.blk == "" {
			c.blk = c.rule.blockKey(c.id)
		}
		if t.rule == c.rule && t.id == c.id {
			t.blk = c.blk
		}
		if t.guard == c.rule && t.id == c.id {
			t.gblk = c.blk
		}
	}
}

// guarded reports whether the guard can block, so a take must check it
// even when the count's own rule is disabled.
func (c count) guarded() bool { return c.guard.Enabled() && c.guard.Block > 0 }

// outcome is one count's verdict.
type outcome struct {
	denied bool
	// blocked: the count's guard refused it (a block in force), rather
	// than its own rule's limit.
	blocked bool
	retry   time.Duration
}

// store is what a Limiter asks of the memory and the Redis stores.
type store interface {
	// blocked returns the remaining block of the counters that can block
	// (zero when not blocked).
	blocked(ctx context.Context, cs [2]counter) ([2]time.Duration, error)
	// take counts up to n (>= 1) events against both enabled counts, or
	// none: when one refuses, the other is left (or refunded) as it was.
	// A count is refused while its guard blocks, even when its own rule
	// is disabled. It counts as many as the count closest to its limit has
	// left, and returns that number, which is 0 only when a count refuses.
	take(ctx context.Context, cs [2]count, n int) ([2]outcome, int, error)
}

// Limiter decides messages and handshakes. It is safe for concurrent use.
type Limiter struct {
	userMsg, ipMsg, userConn, ipConn rule

	mode      FailureMode
	timeout   time.Duration
	deadlines deadlines // of the Redis calls of decisions
	log       *slog.Logger
	prefix    string // starts the Redis keys of a rules file's policy

	mem *memory // the store without RedisURL, the FailLocal fallback with it

	redisOpt rueidis.ClientOption
	useRedis bool
	rs       atomic.Pointer[redisStore] // nil until the first connection

	lease *leases // the local slices in ModeLease with Redis; nil otherwise

	conns *conns // nil without IPMaxConns

	// The operator records and events (admin.go, events.go).
	now        func() time.Time // Config.Now
	origin     string           // this Limiter in the events it publishes
	channel    string           // the events' Pub/Sub channel
	holds      records[holdKey] // by value: a decision's check is one load
	revoked    records[revKey]
	events     eventQueue
	subscribed atomic.Bool   // Redis confirmed the events subscription, for tests (rueidis resubscribes by itself)
	reloadNow  chan struct{} // kicks reloadRecords

	stop      chan struct{}
	bg        context.Context // canceled by Close; bounds background calls
	cancelBg  context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	oldLogged bool // a too old Redis was logged; owned by watchRedis
}

// New validates cfg and returns a Limiter. With a RedisURL it connects at
// once; when Redis is down it starts degraded (the FailureMode decides) and
// connects in the background. A Redis older than 6.2 is refused (ErrOldRedis).
// Errors wrap ErrBadRule, ErrBadFailureMode, ErrBadMode, ErrBadConfig or
// ErrOldRedis.
func New(cfg Config) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Limiter{
		mode:    cfg.FailureMode,
		timeout: cfg.Timeout,
		log:     cfg.Logger,
		stop:    make(chan struct{}),
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
	l.prefix = prefix
	for _, r := range []struct {
		dst                    *rule
		name, scope, kind, tag string
		rule                   Rule
		blocks                 bool
	}{
		{&l.userMsg, flagUserMessages, ScopeUser, KindMessage, "um", cfg.Rules.UserMessages, true},
		{&l.ipMsg, flagIPMessages, ScopeIP, KindMessage, "im", cfg.Rules.IPMessages, true},
		{&l.userConn, flagUserHandshakes, ScopeUser, KindConnection, "uc", cfg.Rules.UserConns, false},
		{&l.ipConn, flagIPHandshakes, ScopeIP, KindConnection, "ic", cfg.Rules.IPConns, false},
	} {
		if !r.blocks {
			r.rule.Block = 0
		}
		size := cfg.LeaseSize
		if size == 0 {
			size = max(1, r.rule.Limit/10)
		}
		*r.dst = rule{
			Rule:   r.rule,
			name:   r.name,
			scope:  r.scope,
			kind:   r.kind,
			prefix: prefix + ":" + r.tag + ":{",
			limit:  strconv.Itoa(r.rule.Limit),
			window: strconv.FormatInt(r.rule.Window.Milliseconds(), 10),
			block:  strconv.FormatInt(r.rule.Block.Milliseconds(), 10),
			lease:  min(size, max(1, r.rule.Limit)),
		}
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	l.mem = newMemory(now)
	l.now = now
	var origin [8]byte
	_, _ = rand.Read(origin[:]) // never fails (crypto/rand)
	l.origin = hex.EncodeToString(origin[:])
	l.channel = prefix + ":admin:events"
	l.holds.init(prefix+":admin:holds", holdField, parseHoldField, cfg.RedisURL != "")
	l.revoked.init(prefix+":admin:revoked", revField, parseRevField, cfg.RedisURL != "")
	l.reloadNow = make(chan struct{}, 1)
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
	if opt.DialCtxFn == nil && opt.DialFn == nil {
		// ParseURL sets its own for unix:// (a Unix socket).
		opt.DialCtxFn = dialRaw
	}
	if cfg.Mode == ModeLease {
		l.lease = newLeases(&l.userMsg, &l.ipMsg, prefix, cfg.LeaseSize)
		opt.OnInvalidations = l.lease.invalidate
		// A slice is trusted only while the invalidation of its block key
		// would reach us: that push must come on the connection that runs
		// the lease script, and rueidis spreads commands over several
		// connections to a node unless told otherwise.
		opt.PipelineMultiplex = -1
	} else {
		// An auto-pipelined call is handed to rueidis's writer goroutine
		// and its reply back from its reader goroutine: on a quiet gate
		// each hand-off is a thread wake, and a decision waits on those
		// more than on Redis. A call on a connection of
		// the blocking pool writes and reads on the calling goroutine.
		// Cached block reads keep the pipelined connection, which receives
		// the invalidations; lease mode cannot do this (its scripts and
		// the invalidations must share a connection, see above).
		opt.DisableAutoPipelining = true
		// A call holds a connection of the pool (rueidis's spool) for
		// one round trip. The decision scripts run at most two calls
		// each at once (batcher), others (connection registrations,
		// refunds, records) one per caller; the pool's bound only caps
		// a burst of those. A connection holds a read and a write
		// buffer of poolBufferBytes, not rueidis's 0.5 MiB defaults. The
		// pool grows on demand; a minute after a connection came back
		// while more than BlockingPoolMinSize were idle, rueidis closes
		// the idle ones beyond that floor, busy or quiet gate alike: the
		// connections a burst then dials again are the ones beyond it.
		opt.BlockingPoolSize = max(64, 4*runtime.GOMAXPROCS(0))
		opt.ReadBufferEachConn = poolBufferBytes
		opt.WriteBufferEachConn = poolBufferBytes
		opt.BlockingPoolCleanup = time.Minute
		opt.BlockingPoolMinSize = 8
		// The pipelined connections only serve the cached block checks.
		// With rueidis's default on a standalone Redis (two with 2 CPUs,
		// four from 4), a decision's two block keys (different slots) land
		// on two of them, and DoMultiCache asks them in parallel: a
		// goroutine and a channel per decision, even when both are cache
		// hits (3.4 µs against 0.9 µs on one).
		opt.PipelineMultiplex = -1
	}
	l.redisOpt = opt
	l.useRedis = true
	if err := l.connect(); err != nil {
		if errors.Is(err, ErrOldRedis) {
			return nil, err
		}
		l.logConnectError(err, "")
	} else if err := l.reload(); err != nil {
		l.log.Warn("admin records not read at start, trying every second", "err", err)
	}
	if l.lease != nil {
		l.lease.renewals = make(chan *renewal, renewQueue)
		l.wg.Add(1)
		go l.renewSlices()
	}
	l.wg.Add(3)
	go l.watchRedis()
	go l.subscribeEvents()
	go l.reloadRecords()
	if l.conns != nil {
		l.wg.Add(1)
		go l.refreshConns()
	}
	return l, nil
}

// closesKey is the context key of ClosesOnRefusal.
type closesKey struct{}

// ClosesOnRefusal returns ctx marked for message decisions (Messages,
// Charge) whose refusal ends the client's stream, as the gate's WebSocket
// relay does with the 429 frame and close 4008. On a standalone or
// Sentinel Redis such a decision leaves the block check to the counting
// script, which checks the same block keys: a read through the client-side
// cache first would spare at most one script call per connection and
// block, and costs a cache lookup on every message. Without the mark (an
// HTTP request refused with 429, a message let pass under shadow), a
// blocked identity is refused from the cache with no round trip for as
// long as it keeps asking. On a Cluster the check stays: there each rule
// is a script of its own, and a blocked user's message would count
// against its IP rule, and could block the IP. The memory store never
// needs the check for a message: its take checks the same blocks.
func ClosesOnRefusal(ctx context.Context) context.Context {
	return context.WithValue(ctx, closesKey{}, true)
}

// closesOnRefusal reports whether ctx is marked by ClosesOnRefusal. It is
// read from the caller's context: a decision's deadline may come from a
// context shared by many (deadlines), which holds no value of theirs.
func closesOnRefusal(ctx context.Context) bool { return ctx.Value(closesKey{}) != nil }

// Message decides one data message of identity user from client IP ip.
// Like Messages, Handshake and Charge, it is refused while an operator
// holds user or ip (Hold), before any store is asked.
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
// reach a message already relayed. On a Redis Cluster, where the two rules
// live on different nodes, n is taken as 1.
//
// When the Redis call fails or times out, the FailureMode decides the
// first message only (Granted at most 1): the call may still have run in
// Redis, counting up to n messages or blocking the key, and the caller's
// next call for the rest is decided by Redis as that left it.
func (l *Limiter) Messages(ctx context.Context, user, ip string, n int) Decision {
	// Its Client keeps no entries: their pointers would move it to the
	// heap, one allocation per call.
	c := l.client(user, ip)
	return l.messages(ctx, c.user, c.ip, c.ids, c.blk, nil, nil, n)
}

// Client is one client's user and address as a Limiter's message
// decisions name them, made once (Limiter.Client) for every message of a
// connection: the ids made safe for Redis keys and, in exact mode, the flag
// message rules' block keys, whose beginnings are the counter keys; and
// pointers to the entries of the memory store and of lease mode that its
// decisions counted on, which the stores keep up to date under their
// locks. It belongs to the Limiter that made it, and is used with no
// other.
type Client struct {
	user, ip string    // as given, for holds
	ids      [2]string // user's and ip's, safe (safeID)
	blk      [2]string // the user's and ip's block keys in exact mode; else ""
	// mem and lease point at the memory store's and lease mode's entries
	// of the user's and ip's message rules, so that a decision finds them
	// without the maps; the stores read and set them under their locks
	// (memory.lookup, leases.lookup).
	mem   [2]*memEntry
	lease [2]*leaseEntry
}

// Client returns user and ip made ready for MessagesOf.
func (l *Limiter) Client(user, ip string) *Client {
	c := l.client(user, ip)
	return &c
}

// client returns the Client of user and ip.
func (l *Limiter) client(user, ip string) Client {
	c := Client{user: user, ip: ip, ids: [2]string{safeID(user), safeID(ip)}}
	if l.useRedis && l.lease == nil {
		c.blk = [2]string{l.userMsg.blockKey(c.ids[0]), l.ipMsg.blockKey(c.ids[1])}
	}
	return c
}

// MessagesOf is Messages for the user and address of c, made by this
// Limiter (c points into its stores).
func (l *Limiter) MessagesOf(ctx context.Context, c *Client, n int) Decision {
	return l.messages(ctx, c.user, c.ip, c.ids, c.blk, &c.mem, &c.lease, n)
}

// MessagesNow is MessagesOf for a decision that asks Redis nothing: in
// ModeLease, n messages of c that its slices hold (up to n are granted, as
// by MessagesOf). ok is false, and nothing is decided, when the decision
// would call Redis or wait for another's call (a slice to lease or being
// refilled, exact mode, the memory store's fallback): MessagesOf decides
// it then. A caller that must not wait behind Redis (the relay's leading
// worker) tries it first.
func (l *Limiter) MessagesNow(c *Client, n int) (d Decision, ok bool) {
	if l.lease == nil || l.Holding() {
		return Decision{}, false
	}
	rs := l.rs.Load()
	if rs == nil {
		return Decision{}, false
	}
	cs, ts := l.messageCounters(c.ids, c.blk, &c.mem, &c.lease)
	if nodes := l.nodesOf(rs, cs, ts); nodes[0].isDown() || nodes[1].isDown() {
		return Decision{}, false
	}
	g, _, _ := l.lease.spend(cs, max(n, 1), false)
	if g == 0 {
		return Decision{}, false
	}
	return Decision{Allowed: true, Kind: KindMessage, Granted: g, Store: storeRedis}, true
}

// messages decides n messages of a Client's fields, with the pointers to
// its entries when it keeps them (mem and lease not nil).
func (l *Limiter) messages(ctx context.Context, user, ip string, ids, blk [2]string, mem *[2]*memEntry, lease *[2]*leaseEntry, n int) Decision {
	if l.Holding() {
		if d, held := l.heldMessage(KindMessage, user, ip); held {
			return d
		}
	}
	cs, ts := l.messageCounters(ids, blk, mem, lease)
	return l.decide(ctx, KindMessage, cs, ts, max(n, 1))
}

// ChargeNow is Charge for a decision that asks Redis nothing: in
// ModeLease, n events that the slices of every charge's windows hold. ok
// is false, and nothing is decided, otherwise (see MessagesNow).
func (l *Limiter) ChargeNow(kind string, charges []Charge, n int, bytes int64) (d Decision, ok bool) {
	if l.lease == nil || l.Holding() || len(charges) == 0 {
		return Decision{}, false
	}
	if g := l.lease.pol.spend(charges, max(n, 1), bytes); g > 0 {
		return Decision{Allowed: true, Kind: kind, Granted: g, Store: storeRedis}, true
	}
	return Decision{}, false
}

// messageCounters are the message rules' counters of ids and blk, with the
// pointers to their entries when a Client keeps them (mem and lease not
// nil), and what a message counts on them.
func (l *Limiter) messageCounters(ids, blk [2]string, mem *[2]*memEntry, lease *[2]*leaseEntry) ([2]counter, [2]count) {
	cs := [2]counter{{rule: &l.userMsg, id: ids[0], blk: blk[0]}, {rule: &l.ipMsg, id: ids[1], blk: blk[1]}}
	for i := range cs {
		if mem != nil {
			cs[i].mem, cs[i].lease = &mem[i], &lease[i]
		}
	}
	return cs, [2]count{{counter: cs[0], guard: &l.userMsg}, {counter: cs[1], guard: &l.ipMsg}}
}

// Handshake decides one WebSocket handshake: refused while a message rule
// blocks user or ip (a refusal of that message rule: Kind KindMessage,
// Blocked), or over a connection rule (Kind KindConnection).
func (l *Limiter) Handshake(ctx context.Context, user, ip string) Decision {
	if l.Holding() {
		if d, held := l.heldMessage(KindConnection, user, ip); held {
			return d
		}
	}
	user, ip = safeID(user), safeID(ip)
	cs := [2]counter{{rule: &l.userMsg, id: user}, {rule: &l.ipMsg, id: ip}}
	ts := [2]count{{counter: counter{rule: &l.userConn, id: user}, guard: &l.userMsg},
		{counter: counter{rule: &l.ipConn, id: ip}, guard: &l.ipMsg}}
	return l.decide(ctx, KindConnection, cs, ts, 1)
}

// RedisUp reports whether a Redis client is connected and at least one of
// its nodes is not marked down (see the package doc's "Failures"). It is
// false on the memory store.
func (l *Limiter) RedisUp() bool {
	rs := l.rs.Load()
	return rs != nil && rs.health.anyUp()
}

// StoreName returns "redis" when Config.RedisURL is set, else "memory".
func (l *Limiter) StoreName() string {
	if l.useRedis {
		return storeRedis
	}
	return storeMemory
}

// Close stops the background work, waits for it and closes the Redis
// client. It is safe to call more than once.
func (l *Limiter) Close() error {
	l.closeOnce.Do(func() {
		l.events.close()
		close(l.stop)
		l.cancelBg()
		l.wg.Wait()
		if rs := l.rs.Load(); rs != nil {
			rs.client.Close()
		}
	})
	return nil
}

func (l *Limiter) decide(ctx context.Context, kind string, cs [2]counter, ts [2]count, n int) Decision {
	if !l.useRedis {
		d, _ := decide(ctx, l.mem, kind, cs, ts, n, kind != KindMessage)
		d.Store = storeMemory
		return d
	}
	rs := l.rs.Load()
	if rs == nil {
		return l.fallback(ctx, kind, cs, ts, n, errRedisDown)
	}
	nodes := l.nodesOf(rs, cs, ts)
	if nodes[0].isDown() || nodes[1].isDown() {
		return l.fallback(ctx, kind, cs, ts, n, errRedisDown)
	}
	var r *refill
	var w *waiter
	if kind == KindMessage && l.lease != nil {
		// Most messages spend from a slice: no call, so no deadline.
		var g int
		if g, r, w = l.lease.spend(cs, n, true); g > 0 {
			return Decision{Allowed: true, Kind: KindMessage, Granted: g, Store: storeRedis}
		}
	}
	rctx, cancel, start := l.deadlines.context(ctx)
	var d Decision
	var err error
	if kind == KindMessage && l.lease != nil {
		// What the slices could not grant: a wait for a refill, or a lease.
		d, err = l.lease.decide(rctx, rs, cs, n, r, w)
	} else {
		withKeys(&cs, &ts)
		d, err = decide(rctx, rs, kind, cs, ts, n, kind != KindMessage || rs.cluster || !closesOnRefusal(ctx))
	}
	cancel()
	if err != nil {
		// A caller that gave up is not Redis's fault, nor a decision that
		// waited for another's lease (that one's call counts).
		if ctx.Err() == nil && !errors.Is(err, errWaited) {
			failed := [2]bool{true, true}
			var ne *nodeError
			if errors.As(err, &ne) {
				failed = ne.failed
			}
			for i, nd := range nodes {
				if failed[i] && rs.health.failed(nd, start, err) && l.lease != nil {
					// Whether that node's connection still tracks the
					// block keys is unknown: no slice outlives this.
					l.lease.flush()
				}
			}
		}
		// The call may have run in Redis: the failure mode decides the
		// first event only, and Redis the rest when asked again.
		return l.fallback(ctx, kind, cs, ts, 1, err)
	}
	if d.answered {
		for _, nd := range nodes {
			rs.health.ok(nd)
		}
		d.answered = false // callers compare Decisions
	}
	d.Store = storeRedis
	return d
}

// nodesOf returns the nodes that hold the keys a decision of cs and ts
// uses (nil for a rule it does not use).
func (l *Limiter) nodesOf(rs *redisStore, cs [2]counter, ts [2]count) (nodes [2]*node) {
	for i := range ts {
		if ts[i].enabled() || ts[i].guarded() || cs[i].blocks() {
			nodes[i] = rs.health.of(ts[i].id)
		}
	}
	return nodes
}

// fallback decides n events by the FailureMode.
func (l *Limiter) fallback(ctx context.Context, kind string, cs [2]counter, ts [2]count, n int, err error) Decision {
	var d Decision
	switch l.mode {
	case FailOpen:
		d = Decision{Allowed: true, Kind: kind, Granted: n}
	case FailClosed:
		d = Decision{Scope: ScopeUser, Kind: kind, RetryAfter: closedRetry}
	default:
		d, _ = decide(ctx, l.mem, kind, cs, ts, n, kind != KindMessage)
		d.Store = storeMemory
	}
	d.Fallback = true
	d.Err = err
	return d
}

// decide takes up to n events from ts, after checking the blocks of cs
// when check is set. The take refuses while a guard blocks, so the check
// only spares the store a take: on Redis it reads through the client-side
// cache, and a blocked client that keeps asking (reconnects, HTTP requests)
// costs no round trip. See ClosesOnRefusal for the messages that skip it.
func decide(ctx context.Context, s store, kind string, cs [2]counter, ts [2]count, n int, check bool) (Decision, error) {
	if check {
		left, err := s.blocked(ctx, cs)
		if err != nil {
			return Decision{}, err
		}
		if d, refused := verdict(kind, blockCounts(cs), blockOutcomes(left)); refused {
			return d, nil
		}
	}
	out, granted, err := s.take(ctx, ts, n)
	if err != nil {
		return Decision{}, err
	}
	d, refused := verdict(kind, ts, out)
	if !refused {
		d.Granted = granted
	}
	_, d.answered = s.(*redisStore)
	return d, nil
}

// blockCounts are the counts whose refusals a block check of cs reports:
// each message counter guarded by its own block.
func blockCounts(cs [2]counter) [2]count {
	return [2]count{{counter: cs[0], guard: cs[0].rule}, {counter: cs[1], guard: cs[1].rule}}
}

// blockOutcomes are the refusals of a block check that found the blocks
// left (zero: not blocked).
func blockOutcomes(left [2]time.Duration) (out [2]outcome) {
	for i, l := range left {
		if l > 0 {
			out[i] = outcome{denied: true, blocked: true, retry: l}
		}
	}
	return out
}

// verdict is the Decision of two counts' outcomes: refused by the first
// that refused (with the longer retry when both did), under the rule that
// refused it: the guard's for a block, the count's own otherwise. Allowed,
// it is one event of kind.
func verdict(kind string, ts [2]count, out [2]outcome) (Decision, bool) {
	refusal := func(i int) Decision {
		r := ts[i].rule
		if out[i].blocked {
			r = ts[i].guard
		}
		return Decision{Scope: r.scope, Kind: r.kind, RetryAfter: out[i].retry, Blocked: out[i].blocked, Limit: r.Limit}
	}
	switch {
	case out[0].denied && out[1].denied:
		d := refusal(0)
		d.RetryAfter = max(out[0].retry, out[1].retry)
		return d, true
	case out[0].denied:
		return refusal(0), true
	case out[1].denied:
		return refusal(1), true
	}
	return Decision{Allowed: true, Kind: kind, Granted: 1}, false
}

// poolBufferBytes sizes the buffers of each Redis connection in exact mode:
// a decision's request and reply are a few hundred bytes.
const poolBufferBytes = 32 << 10

// safeID makes an identity or IP safe inside a key's {hash tag}: one that is
// empty, longer than maxIDLen, holds '{' or '}', or could be mistaken for a
// hashed one is replaced by "sha256:" and its hex SHA-256. (An empty tag "{}"
// would make Redis Cluster hash the whole key, putting a counter and its
// block key in different slots.)
func safeID(id string) string {
	if id != "" && len(id) <= maxIDLen && strings.IndexByte(id, '{') < 0 && strings.IndexByte(id, '}') < 0 && !strings.HasPrefix(id, "sha256:") {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}
