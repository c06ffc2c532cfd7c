package limit

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

const (
	// blockCacheTTL bounds how long a block check is served from rueidis's
	// client-side cache. Redis invalidates an entry as soon as any client
	// writes the block key, and rueidis caps it by the key's own TTL, so this
	// only bounds how often an idle identity's "not blocked" is re-read.
	blockCacheTTL = 5 * time.Second
	// blockCacheBytes bounds rueidis's client-side cache per Redis
	// connection. Its LRU drops an expired entry only when it is read again
	// or when the cache is full, so with rueidis's default of 128 MiB a gate
	// that sees many distinct users would keep the block checks of every
	// one of them (several hundred bytes each) up to that size per connection: a
	// sidecar's memory limit is smaller. 8 MiB holds about 12,000 users'
	// checks per connection; beyond that the least recently used are
	// re-read from Redis when their user returns.
	blockCacheBytes = 8 << 20
	// probeEvery is how often the background loop tries Redis while it is
	// unreachable (NewClient before the first connection, PING after).
	probeEvery = 500 * time.Millisecond
)

// blockSrc returns the remaining block of KEYS[1] in milliseconds (-2 when
// not blocked). It is run as a cacheable EVAL_RO through DoCache: the script
// text travels only on a cache miss, and EVALSHA_RO is avoided on purpose (on
// a Cluster a SCRIPT LOAD reaches one node, the others answer NOSCRIPT, and
// rueidis caches that error).
const blockSrc = `return redis.call('PTTL', KEYS[1])`

// takeSrc counts up to ARGV[3n+1] events against one or two rules
// atomically. KEYS holds (counter, block key) pairs and ARGV (limit, window
// ms, block ms) triples, then the number of events wanted. It returns
// (verdict, retry ms) pairs, the verdict 1 for allowed, 0 for refused by the
// window's limit, 2 for refused by a block (one on already, or set now),
// then the number of events counted: as many as
// the rule closest to its limit has left, and 0 when a rule refuses. A pair
// with limit 0 is only checked for its block. Nothing is written unless
// every rule allows, except that a rule refusing its (limit+1)-th event
// blocks itself and drops its counter, so the budget is full when the
// block ends.
const takeSrc = `
local n = #KEYS / 2
local want = tonumber(ARGV[3*n+1])
local res = {}
local denied = false
for i = 1, n do
  local b = redis.call('PTTL', KEYS[2*i])
  if b > 0 then
    res[2*i-1] = 2; res[2*i] = b; denied = true
  else
    res[2*i-1] = 1; res[2*i] = 0
  end
end
res[2*n+1] = 0
if denied then return res end
for i = 1, n do
  local c = KEYS[2*i-1]
  local limit = tonumber(ARGV[3*i-2])
  local used = 0
  if limit > 0 then
    used = tonumber(redis.call('GET', c) or '0')
    want = math.min(want, limit - used)
  end
  if limit > 0 and used >= limit then
    denied = true
    res[2*i-1] = 0
    local block = tonumber(ARGV[3*i])
    if block > 0 then
      redis.call('SET', KEYS[2*i], '1', 'PX', block)
      redis.call('DEL', c)
      res[2*i-1] = 2; res[2*i] = block
    else
      local t = redis.call('PTTL', c)
      if t < 0 then
        redis.call('PEXPIRE', c, ARGV[3*i-1])
        t = tonumber(ARGV[3*i-1])
      end
      res[2*i] = t
    end
  end
end
if denied then return res end
for i = 1, n do
  local c = KEYS[2*i-1]
  if tonumber(ARGV[3*i-2]) > 0 and redis.call('INCRBY', c, want) == want then
    redis.call('PEXPIRE', c, ARGV[3*i-1])
  end
end
res[2*n+1] = want
return res
`

// refundSrc takes back ARGV[1] events counted by takeSrc on a Cluster when
// the other rule, in another slot, refused. A counter that expired
// meanwhile is left alone rather than recreated without a TTL, and one
// recreated meanwhile by a new window is not taken below zero.
const refundSrc = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  local v = redis.call('DECRBY', KEYS[1], ARGV[1])
  if v < 0 then
    redis.call('SET', KEYS[1], '0', 'KEEPTTL')
    return 0
  end
  return v
end
return 0
`

var (
	takeScript   = rueidis.NewLuaScript(takeSrc)
	refundScript = rueidis.NewLuaScript(refundSrc)
	takeSHA      = sha1Hex(takeSrc)
)

func sha1Hex(s string) string {
	sum := sha1.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// redisStore is the shared store. On a standalone or Sentinel Redis both
// rules run in one script (one round trip); on a Cluster, where the two keys
// live in different slots, the two scripts are pipelined in one DoMulti and
// a refund undoes the allowed one when the other refuses.
type redisStore struct {
	client  rueidis.Client
	cluster bool
}

func (s *redisStore) blocked(ctx context.Context, cs [2]counter) (left [2]time.Duration, err error) {
	c := s.client
	switch b0, b1 := cs[0].blocks(), cs[1].blocks(); {
	case b0 && b1:
		rs := c.DoMultiCache(ctx,
			rueidis.CT(c.B().EvalRo().Script(blockSrc).Numkeys(1).Key(cs[0].blockKey()).Cache(), blockCacheTTL),
			rueidis.CT(c.B().EvalRo().Script(blockSrc).Numkeys(1).Key(cs[1].blockKey()).Cache(), blockCacheTTL))
		if left[0], err = remainingBlock(rs[0]); err != nil {
			return left, err
		}
		left[1], err = remainingBlock(rs[1])
	case b0 || b1:
		i := 0
		if b1 {
			i = 1
		}
		left[i], err = remainingBlock(c.DoCache(ctx,
			c.B().EvalRo().Script(blockSrc).Numkeys(1).Key(cs[i].blockKey()).Cache(), blockCacheTTL))
	}
	return left, err
}

// remainingBlock turns a possibly cached PTTL into the block left now. A
// cached entry expires after min(pttl, blockCacheTTL) from when it was
// read, so the time since then is that minus the entry's remaining life.
func remainingBlock(r rueidis.RedisResult) (time.Duration, error) {
	pttl, err := r.AsInt64()
	if err != nil {
		return 0, fmt.Errorf("block check: %w", err)
	}
	if pttl <= 0 {
		return 0, nil
	}
	if life := r.CachePTTL(); life >= 0 {
		elapsed := min(pttl, blockCacheTTL.Milliseconds()) - life
		if pttl -= max(elapsed, 0); pttl <= 0 {
			return 0, nil
		}
	}
	return time.Duration(pttl) * time.Millisecond, nil
}

func (s *redisStore) take(ctx context.Context, cs [2]counter, n int) (out [2]outcome, granted int, err error) {
	e0, e1 := cs[0].checked(), cs[1].checked()
	want := strconv.Itoa(n)
	switch {
	case !e0 && !e1:
		return out, n, nil
	case e0 != e1:
		i := 0
		if e1 {
			i = 1
		}
		k := cs[i]
		r := k.rule
		res := takeScript.Exec(ctx, s.client, []string{k.key(), k.blockKey()}, []string{r.limit, r.window, r.block, want})
		granted, err = parseTake(res, out[i:i+1])
		return out, granted, err
	case !s.cluster:
		r0, r1 := cs[0].rule, cs[1].rule
		res := takeScript.Exec(ctx, s.client,
			[]string{cs[0].key(), cs[0].blockKey(), cs[1].key(), cs[1].blockKey()},
			[]string{r0.limit, r0.window, r0.block, r1.limit, r1.window, r1.block, want})
		granted, err = parseTake(res, out[:])
		return out, granted, err
	}
	// On a Cluster the two rules are counted by two scripts on their own
	// nodes. Counting several events there would let each count what it
	// has left and refund the difference a round trip later, and meanwhile
	// the other clients of that key would see a count that is too high
	// (even a false block); one event at a time leaves only the refund of a
	// refusal, as before batching.
	return takeCluster(ctx, s.client, cs)
}

// takeCluster counts one event with one script per rule, pipelined. It
// does not use Lua.ExecMulti, which sends SCRIPT LOAD to every node on
// every call: it sends EVALSHA and resends with EVAL only the commands that
// got NOSCRIPT. The two scripts decide on their own, so when one refused,
// the event the other counted is taken back.
func takeCluster(ctx context.Context, c rueidis.Client, cs [2]counter) (out [2]outcome, granted int, err error) {
	const want = "1"
	var cmds [2]rueidis.Completed
	for i, k := range cs {
		r := k.rule
		cmds[i] = c.B().Evalsha().Sha1(takeSHA).Numkeys(2).Key(k.key(), k.blockKey()).
			Arg(r.limit, r.window, r.block, want).Build()
	}
	rs := c.DoMulti(ctx, cmds[:]...)
	for i, k := range cs {
		if re, ok := rueidis.IsRedisErr(rs[i].Error()); ok && re.IsNoScript() {
			r := k.rule
			rs[i] = c.Do(ctx, c.B().Eval().Script(takeSrc).Numkeys(2).Key(k.key(), k.blockKey()).
				Arg(r.limit, r.window, r.block, want).Build())
		}
	}
	var got [2]int
	var errs [2]error
	got[0], errs[0] = parseTake(rs[0], out[0:1])
	got[1], errs[1] = parseTake(rs[1], out[1:2])
	if errs[0] != nil && errs[1] != nil {
		return out, 0, errors.Join(errs[0], errs[1])
	}
	if errs[0] != nil || errs[1] != nil {
		// One side counted and the other is unknown: take back what the
		// one counted, as for a refusal, then report the failure.
		ok := 0
		if errs[0] != nil {
			ok = 1
		}
		if got[ok] > 0 && cs[ok].enabled() {
			_ = refund(ctx, c, cs[ok], got[ok]) // best effort: the error below is reported
		}
		return out, 0, errors.Join(errs[0], errs[1])
	}
	granted = min(got[0], got[1])
	for i, k := range cs {
		if extra := got[i] - granted; extra > 0 && k.enabled() {
			if err := refund(ctx, c, k, extra); err != nil {
				return out, 0, err
			}
		}
	}
	return out, granted, nil
}

func refund(ctx context.Context, c rueidis.Client, k counter, n int) error {
	if err := refundScript.Exec(ctx, c, []string{k.key()}, []string{strconv.Itoa(n)}).Error(); err != nil {
		return fmt.Errorf("refund: %w", err)
	}
	return nil
}

// parseTake reads takeSrc's (verdict, retry ms) pairs into out and returns
// the number of events it counted.
func parseTake(r rueidis.RedisResult, out []outcome) (int, error) {
	vs, err := r.AsIntSlice()
	if err != nil {
		return 0, fmt.Errorf("take: %w", err)
	}
	if len(vs) != 2*len(out)+1 {
		return 0, fmt.Errorf("take: script returned %d values, want %d", len(vs), 2*len(out)+1)
	}
	for i := range out {
		if vs[2*i] != 1 {
			out[i] = outcome{denied: true, blocked: vs[2*i] == 2, retry: time.Duration(vs[2*i+1]) * time.Millisecond}
		}
	}
	return int(vs[2*len(out)]), nil
}

// connect creates the Redis client. rueidis.NewClient fails at once when
// Redis is down, so a Limiter starts degraded and watchRedis calls this
// again.
func (l *Limiter) connect() error {
	c, err := rueidis.NewClient(l.redisOpt)
	if err != nil {
		return err
	}
	l.rs.Store(&redisStore{client: c, cluster: c.Mode() == rueidis.ClientModeCluster})
	l.markUp()
	return nil
}

// watchRedis brings Redis back after a failure: it connects when no client
// exists yet and PINGs while the last call failed. Decisions do not try
// Redis in between, so an outage costs no Timeout per decision.
func (l *Limiter) watchRedis() {
	defer l.wg.Done()
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		rs := l.rs.Load()
		if rs == nil {
			if err := l.connect(); err != nil {
				l.log.Debug("redis still unreachable", "err", err)
			}
			continue
		}
		if l.up.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		err := rs.client.Do(ctx, rs.client.B().Ping().Build()).Error()
		cancel()
		if err == nil {
			l.markUp()
		}
	}
}
