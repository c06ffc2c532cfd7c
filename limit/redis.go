package limit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// ErrOldRedis is returned (wrapped) by New when Redis is older than 6.2.
var ErrOldRedis = errors.New("redis too old for the limiter")

// minRedis is the oldest Redis the limiter runs on: it needs RESP3 and
// client-side caching (6.0) and is tested from 6.2 on.
var minRedis = [2]int{6, 2}

const (
	// blockCacheTTL bounds how long a block check is served from rueidis's
	// client-side cache. Redis invalidates an entry as soon as any client
	// writes or deletes the block key, rueidis caps it by the key's own
	// TTL and drops the whole cache when its connection is lost, so this
	// only bounds how often an identity's "not blocked" is read again: an
	// identity checked less often than this pays a second round trip (with
	// 5 s, the first lease-mode messages of 8,000 users that connected over
	// the previous 5 s were 8,000 reads in one burst).
	blockCacheTTL = time.Minute
	// blockCacheBytes bounds rueidis's client-side cache per Redis
	// connection. Its LRU drops an expired entry only when it is read again
	// or when the cache is full, so with rueidis's default of 128 MiB a gate
	// that sees many distinct identities would keep the block checks of
	// every one (several hundred bytes each) up to that size per
	// connection: a sidecar's memory limit is smaller. 8 MiB holds about
	// 12,000 identities' checks per connection; beyond that the least
	// recently used are read from Redis again when their identity returns.
	blockCacheBytes = 8 << 20
	// probeEvery is how often the background loop tries Redis while a node
	// is suspect (NewClient before the first connection, PING after).
	probeEvery = 500 * time.Millisecond
	// topologyEvery is how many probe ticks pass between two reloads of a
	// Cluster's slot map while every node is up.
	topologyEvery = 10
	// repeatEvery is how many probes pass between two warnings that Redis
	// has still not been reached since the start (30s).
	repeatEvery = 60
)

// redisStore is the shared store. On a standalone or Sentinel Redis both
// rules run in one script (one round trip); on a Cluster, where the two keys
// live in different slots, the two scripts are pipelined in one DoMulti and
// a refund undoes the allowed one when the other refuses. Off a Cluster,
// the decision calls that wait for a free one are grouped (batcher).
type redisStore struct {
	client  rueidis.Client
	cluster bool
	health  *health
	takes   *batcher
	charges *batcher
	leases  *batcher
}

// blocked checks the block keys of the counters that can block, through
// the client-side cache.
func (s *redisStore) blocked(ctx context.Context, cs [2]counter) (left [2]time.Duration, err error) {
	left, _, err = s.blocks(ctx, cs)
	return left, err
}

// blocks is blocked that also reports which block keys were read while they
// existed, even if their block has ended since.
func (s *redisStore) blocks(ctx context.Context, cs [2]counter) (left [2]time.Duration, seen [2]bool, err error) {
	c := s.client
	read := func(k counter) rueidis.CacheableTTL {
		return rueidis.CT(c.B().Pttl().Key(k.blockKey()).Cache(), blockCacheTTL)
	}
	var errs [2]error
	switch b0, b1 := cs[0].blocks(), cs[1].blocks(); {
	case b0 && b1:
		rs := c.DoMultiCache(ctx, read(cs[0]), read(cs[1]))
		left[0], seen[0], errs[0] = remainingBlock(rs[0])
		left[1], seen[1], errs[1] = remainingBlock(rs[1])
	case b0:
		left[0], seen[0], errs[0] = remainingBlock(c.DoCache(ctx, read(cs[0]).Cmd, blockCacheTTL))
	case b1:
		left[1], seen[1], errs[1] = remainingBlock(c.DoCache(ctx, read(cs[1]).Cmd, blockCacheTTL))
	}
	return left, seen, failure(errs)
}

// failure joins the errors of the commands sent for each counter, telling
// which failed.
func failure(errs [2]error) error {
	if errs[0] == nil && errs[1] == nil {
		return nil
	}
	return &nodeError{err: errors.Join(errs[0], errs[1]), failed: [2]bool{errs[0] != nil, errs[1] != nil}}
}

// remainingBlock turns a possibly cached PTTL into the block left now, and
// reports whether the key existed when read. A cached entry expires after
// min(pttl, blockCacheTTL) from when it was read, so the time since then is
// that minus the entry's remaining life.
func remainingBlock(r rueidis.RedisResult) (time.Duration, bool, error) {
	pttl, err := r.AsInt64()
	if err != nil {
		return 0, false, fmt.Errorf("block check: %w", err)
	}
	if pttl <= 0 {
		return 0, false, nil
	}
	if life := r.CachePTTL(); life >= 0 {
		elapsed := min(pttl, blockCacheTTL.Milliseconds()) - life
		if pttl -= max(elapsed, 0); pttl <= 0 {
			return 0, true, nil
		}
	}
	return time.Duration(pttl) * time.Millisecond, true, nil
}

// take runs takeScript on the counts of cs that are counted or guarded.
func (s *redisStore) take(ctx context.Context, cs [2]count, n int) (out [2]outcome, granted int, err error) {
	var idx []int
	for i, k := range cs {
		if k.enabled() || k.guarded() {
			idx = append(idx, i)
		}
	}
	switch {
	case len(idx) == 0:
		return out, n, nil
	case len(idx) == 1 || !s.cluster:
		// Counted rules come first in the script's answer.
		if len(idx) == 2 && !cs[0].enabled() && cs[1].enabled() {
			idx[0], idx[1] = 1, 0
		}
		k := takeOf(s.takes.buffer(), cs, idx, n)
		vals, err := s.takes.do(ctx, s.client, k)
		var res [2]outcome
		granted, err = parseTake(vals, err, res[:len(idx)])
		for j, i := range idx {
			out[i] = res[j]
		}
		return out, granted, err
	}
	// On a Cluster the two rules are counted by two scripts on their own
	// nodes. Counting several events there would let each count what it
	// has left and refund the difference a round trip later, and meanwhile
	// the other clients of that key would see a count that is too high
	// (even a false block): one event at a time leaves only the refund of a
	// refusal.
	return s.takeCluster(ctx, cs)
}

// takeCluster counts one event with one script per rule, pipelined. The
// two scripts decide on their own, so when one refused, the event the
// other counted is taken back.
func (s *redisStore) takeCluster(ctx context.Context, cs [2]count) (out [2]outcome, granted int, err error) {
	var calls [2]call
	for i := range cs {
		calls[i] = takeOf(call{}, cs, []int{i}, 1)
	}
	rs := takeScript.exec(ctx, s.client, calls[:]...)
	var got [2]int
	var errs [2]error
	for i, r := range rs {
		vals, err := unframe(r)
		got[i], errs[i] = parseTake(vals, err, out[i:i+1])
	}
	if err := failure(errs); err != nil {
		// One side may have counted while the other is unknown: take back
		// what it counted, as for a refusal, then report the failure.
		for i, k := range cs {
			if errs[i] == nil && got[i] > 0 && k.enabled() {
				_ = s.refund(ctx, k, got[i]) // best effort: the failure is reported
			}
		}
		return out, 0, err
	}
	granted = min(got[0], got[1])
	for i, k := range cs {
		if extra := got[i] - granted; extra > 0 && k.enabled() {
			if err := s.refund(ctx, k, extra); err != nil {
				var errs [2]error
				errs[i] = err
				return out, 0, failure(errs)
			}
		}
	}
	return out, granted, nil
}

func (s *redisStore) refund(ctx context.Context, k count, n int) error {
	if err := refundScript.exec1(ctx, s.client, []string{k.key()}, []string{strconv.Itoa(n)}).Error(); err != nil {
		return fmt.Errorf("refund: %w", err)
	}
	return nil
}

// takeOf appends to t (empty, maybe with room: batcher.buffer) the
// takeScript call of the counts cs[i], i in idx (counted ones first), for
// n events.
func takeOf(t call, cs [2]count, idx []int, n int) call {
	k := 0
	for _, i := range idx {
		if cs[i].enabled() {
			k++
		}
	}
	t.keys, t.args = slices.Grow(t.keys, k+len(idx)), slices.Grow(t.args, 3+3*k)
	t.args = append(t.args, strconv.Itoa(k), strconv.Itoa(len(idx)))
	for _, i := range idx {
		if c := cs[i]; c.enabled() {
			t.keys = append(t.keys, c.key(), c.guardKey())
			t.args = append(t.args, c.rule.limit, c.rule.window, c.rule.block)
		}
	}
	for _, i := range idx {
		if c := cs[i]; !c.enabled() {
			t.keys = append(t.keys, c.guardKey())
		}
	}
	t.args = append(t.args, strconv.Itoa(n))
	return t
}

// parseTake reads one take's values from takeScript, the (refused, retry
// ms) pairs (refused 2: by a block) into out, one per key group, and
// returns the number of events it counted. err is the error of the call.
func parseTake(vs []int64, err error, out []outcome) (int, error) {
	if err != nil {
		return 0, fmt.Errorf("take: %w", err)
	}
	if len(vs) != 2*len(out)+1 {
		return 0, fmt.Errorf("take: script returned %d values, want %d", len(vs), 2*len(out)+1)
	}
	for i := range out {
		if vs[2*i] != 0 {
			out[i] = outcome{denied: true, blocked: vs[2*i] == 2, retry: time.Duration(vs[2*i+1]) * time.Millisecond}
		}
	}
	return int(vs[2*len(out)]), nil
}

// connect creates the Redis client and checks the version of every node.
// rueidis.NewClient fails at once when Redis is down, so a Limiter starts
// degraded and watchRedis calls this again.
func (l *Limiter) connect() error {
	c, err := rueidis.NewClient(l.redisOpt)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(l.bg, max(l.timeout, time.Second))
	defer cancel()
	if err := checkVersion(ctx, c); err != nil {
		c.Close()
		return err
	}
	cluster := c.Mode() == rueidis.ClientModeCluster
	rs := &redisStore{client: c, cluster: cluster, health: newHealth(l.log, l.mode, cluster),
		takes: newBatcher(takeScript, cluster), charges: newBatcher(chargeScript, cluster), leases: newBatcher(leaseScript, cluster)}
	if cluster {
		if err := rs.health.refresh(ctx, c); err != nil {
			l.log.Warn("redis cluster slots unknown, trying every key", "err", err)
		}
	}
	l.rs.Store(rs)
	l.log.Info("redis reachable, limiting with redis")
	return nil
}

// checkVersion refuses a Redis older than minRedis on any node.
func checkVersion(ctx context.Context, c rueidis.Client) error {
	for addr, n := range c.Nodes() {
		info, err := n.Do(ctx, n.B().Info().Section("server").Build()).ToString()
		if err != nil {
			return fmt.Errorf("redis version of %s: %w", addr, err)
		}
		v, ok := parseVersion(info)
		if !ok {
			return fmt.Errorf("redis version of %s: no redis_version in INFO server", addr)
		}
		if v[0] < minRedis[0] || v[0] == minRedis[0] && v[1] < minRedis[1] {
			return fmt.Errorf("%w: %s runs %d.%d, the limiter needs %d.%d or newer",
				ErrOldRedis, addr, v[0], v[1], minRedis[0], minRedis[1])
		}
	}
	return nil
}

// parseVersion reads the major and minor version from INFO server.
func parseVersion(info string) (v [2]int, ok bool) {
	for line := range strings.Lines(info) {
		s, found := strings.CutPrefix(strings.TrimSpace(line), "redis_version:")
		if !found {
			continue
		}
		parts := strings.SplitN(s, ".", 3)
		if len(parts) < 2 {
			return v, false
		}
		var err0, err1 error
		v[0], err0 = strconv.Atoi(parts[0])
		v[1], err1 = strconv.Atoi(parts[1])
		return v, err0 == nil && err1 == nil
	}
	return v, false
}

// watchRedis connects when no client exists yet, and probes the nodes that
// failed since their last success: it marks down a node that died and up a
// node that came back. Decisions do not try a node marked down, so an
// outage costs no Timeout per decision.
func (l *Limiter) watchRedis() {
	defer l.wg.Done()
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for tick := 1; ; tick++ {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		rs := l.rs.Load()
		if rs == nil {
			err := l.connect()
			switch {
			case err == nil:
			case errors.Is(err, ErrOldRedis) && !l.oldLogged:
				l.oldLogged = true
				l.log.Error("redis refused, limiting with the failure mode", "err", err)
			case tick%repeatEvery == 0:
				// Said again, so that a gate limiting per replica for
				// hours does not rest on one line at its start.
				l.logConnectError(err, "still")
			default:
				l.log.Debug("redis still unreachable", "err", err)
			}
			continue
		}
		if rs.health.suspects() == nil && (!rs.cluster || tick%topologyEvery != 0) {
			continue
		}
		ctx, cancel := context.WithTimeout(l.bg, max(l.timeout, time.Second))
		rs.health.probe(ctx, rs.client, l.timeout)
		cancel()
	}
}

// logConnectError says why connect failed: a configuration error (a wrong
// password or user, a database index Redis does not have, a host name that
// does not resolve) as such, at error level, since waiting will not fix it;
// anything else as unreachable. when is "" at the start, "still" later.
func (l *Limiter) logConnectError(err error, when string) {
	args := []any{"failure_mode", l.mode.String(), "err", err}
	if problem := redisConfigProblem(err); problem != "" {
		l.log.Error("redis configuration error ("+problem+"): fix --redis-url; limiting with the failure mode meanwhile", args...)
		return
	}
	msg := "redis unreachable at start, limiting with the failure mode until it answers"
	if when != "" {
		msg = "redis still unreachable since the start, limiting with the failure mode until it answers"
	}
	l.log.Warn(msg, args...)
}

// redisConfigProblem names what err shows to be wrong in the Redis URL,
// "" when err may pass by itself.
func redisConfigProblem(err error) string {
	if dns := (*net.DNSError)(nil); errors.As(err, &dns) && dns.IsNotFound {
		return "unknown host " + dns.Name
	}
	msg := err.Error()
	for _, c := range []struct{ marker, problem string }{
		{"WRONGPASS", "wrong password or user"},
		{"invalid password", "wrong password"},
		{"NOAUTH", "Redis needs a password"},
		{"NOPERM", "the user lacks a permission"},
		{"DB index is out of range", "no such database index"},
		{"invalid DB index", "no such database index"},
	} {
		if strings.Contains(msg, c.marker) {
			return c.problem
		}
	}
	return ""
}
