package limit

import (
	"context"
	"crypto/sha1"
	"encoding/hex"

	"github.com/redis/rueidis"
)

// luaLib is the Lua shared by the counting scripts.
//
// life returns the remaining ms of counter c's window, opening it (window
// ms) when the counter has no expiry yet. refuse applies a refusal of
// counter c whose guard block key is g: with a block (ms) it sets g for
// the block and drops c, so the budget is full when the block ends, and
// returns the block; without, it returns the window's remaining life.
const luaLib = `
local function life(c, window)
  local t = redis.call('PTTL', c)
  if t < 0 then
    redis.call('PEXPIRE', c, window)
    t = tonumber(window)
  end
  return t
end
local function refuse(c, g, window, block)
  if block > 0 then
    redis.call('SET', g, '1', 'PX', block)
    redis.call('DEL', c)
    return block
  end
  return life(c, window)
end
`

// takeScript decides one or more takes in order, each as if alone: the
// takes of several connections sent together in one call (batcher). A
// take counts up to n events against up to two rules atomically. Its
// KEYS are (counter, guard block key) pairs, one per counted rule, then
// the guard block keys of rules checked for blocks only (a handshake's
// disabled connection rule under a message rule that blocks). Its ARGV are
// k (counted rules) and m (key groups), a (limit, window ms, block ms)
// triple per counted rule, then n; the takes' KEYS and ARGV follow one
// another. For each take it returns a frame (batcher): the number of
// values, then a (refused, retry ms) pair per key
// group (refused 0; 1 over its limit; 2 by its guard, a block in force),
// in the order of its KEYS, then the number of events counted: as many as
// the rule closest to its limit has left (n with no counted rule), and 0
// when one refuses. A guard that exists refuses its rule without
// counting; otherwise nothing is written unless every rule allows, except
// that a rule refusing its (limit+1)-th event refuses as luaLib's refuse
// does.
//
// A take whose counted rules all block counts first: one INCRBY per
// counter, taken back (DECRBY, or DEL of a counter it opened) when a rule
// refuses and trimmed when one grants fewer than n, instead of a GET and an
// INCRBY; the script is atomic, so no client sees the difference (its
// replicas and AOF get the writes). Each redis.call is a command of its own
// inside Redis, and the GETs were the dearest part of a take: Redis spends
// about a fifth less time per take (INFO commandstats, takes alone and in
// groups of 20). Such a take's refusal writes anyway (its block), and the
// takes after it meet the block, so counting first adds writes once per
// block. A rule without a block refuses every event over its limit, and
// counting first would make each of those refusals two writes (replicated,
// and refused by a Redis out of memory): such takes read first.
var takeScript = newScript(luaLib + `
-- takeEarly counts the events of a take whose counted rules all block
-- before checking them (see above). Its guards were checked.
local function takeEarly(res, o, kb, ab, k, m, n)
  local want, denied, got = n, false, {}
  for i = 1, k do
    local c = KEYS[kb+2*i-1]
    got[i] = redis.call('INCRBY', c, ARGV[ab+3*k+1])
    if got[i] == n then redis.call('PEXPIRE', c, ARGV[ab+3*i-1]) end
    local used, limit = got[i] - n, tonumber(ARGV[ab+3*i-2])
    if used >= limit then
      denied = true
      res[o+2*i-1] = 1
    else
      want = math.min(want, limit - used)
    end
  end
  for i = 1, k do
    local c = KEYS[kb+2*i-1]
    if denied then
      if got[i] == n then redis.call('DEL', c) else redis.call('DECRBY', c, n) end
      if res[o+2*i-1] == 1 then
        res[o+2*i] = refuse(c, KEYS[kb+2*i], ARGV[ab+3*i-1], tonumber(ARGV[ab+3*i]))
      end
    elseif want < n then
      redis.call('DECRBY', c, n - want)
    end
  end
  if not denied then res[o+2*m+1] = want end
end
local function take(res, kb, ab, k, m)
  local o = #res
  local want = tonumber(ARGV[ab+3*k+1])
  local denied = false
  for i = 1, m do
    local g = KEYS[kb+2*i]
    if i > k then g = KEYS[kb+k+i] end
    local b = redis.call('PTTL', g)
    res[o+2*i-1] = 0; res[o+2*i] = 0
    if b > 0 then
      res[o+2*i-1] = 2; res[o+2*i] = b; denied = true
    end
  end
  res[o+2*m+1] = 0
  if denied then return end
  local early = k > 0
  for i = 1, k do
    if tonumber(ARGV[ab+3*i]) <= 0 then early = false end
  end
  if early then return takeEarly(res, o, kb, ab, k, m, want) end
  for i = 1, k do
    local c, limit = KEYS[kb+2*i-1], tonumber(ARGV[ab+3*i-2])
    local used = tonumber(redis.call('GET', c) or '0')
    if used >= limit then
      denied = true
      res[o+2*i-1] = 1
      res[o+2*i] = refuse(c, KEYS[kb+2*i], ARGV[ab+3*i-1], tonumber(ARGV[ab+3*i]))
    else
      want = math.min(want, limit - used)
    end
  end
  if denied then return end
  for i = 1, k do
    local c = KEYS[kb+2*i-1]
    if redis.call('INCRBY', c, want) == want then
      redis.call('PEXPIRE', c, ARGV[ab+3*i-1])
    end
  end
  res[o+2*m+1] = want
end
local res, kb, ab = {}, 0, 0
while ab < #ARGV do
  local k, m = tonumber(ARGV[ab+1]), tonumber(ARGV[ab+2])
  local o = #res + 1
  res[o] = 0
  take(res, kb, ab+2, k, m)
  res[o] = #res - o
  kb = kb + k + m
  ab = ab + 3 + 3*k
end
return res
`)

// leaseScript reserves units of one or two rules' window budgets, for one
// or more calls in order (several connections' calls sent together:
// batcher). A call's KEYS hold (counter, block key) pairs and its ARGV the
// number of rules, then (limit, window ms, block ms, units) quadruples; the
// calls' KEYS and ARGV follow one another. It answers each call with a
// frame (batcher): the number of values, then a (granted, ms) pair per
// rule: granted > 0 units with the window's remaining life, or 0 with the
// retry of a refusal by the window, or -1 with the block's retry.
// Negative units ask for a renewal (leases.ahead) of a slice still held:
// a window with no unit left then grants 0 without a refusal, since no
// message has gone over the limit yet.
// A rule whose block key exists refuses, even with under a millisecond left,
// which PTTL reports as 0, for a retry of 1ms: a slice taken then would be
// dropped by the announcement of the key's deletion. A rule whose window
// has no unit left refuses as luaLib's refuse does.
// Each rule is decided on its own: a grant is this replica's to spend
// later, so one rule refusing leaves nothing to refund on the other.
var leaseScript = newScript(luaLib + `
local res, k, a = {}, 0, 0
while a < #ARGV do
  local r = tonumber(ARGV[a+1])
  local o = #res + 1
  res[o] = 2*r
  for i = 1, r do
    local c, g = KEYS[k+2*i-1], KEYS[k+2*i]
    local limit, window = tonumber(ARGV[a+4*i-2]), ARGV[a+4*i-1]
    local block, want = tonumber(ARGV[a+4*i]), tonumber(ARGV[a+4*i+1])
    local b = redis.call('PTTL', g)
    res[o+2*i-1] = 0
    if b >= 0 then
      res[o+2*i-1] = -1; res[o+2*i] = math.max(b, 1)
    else
      local used = tonumber(redis.call('GET', c) or '0')
      if used >= limit and want < 0 then
        res[o+2*i] = 1
      elseif used >= limit then
        res[o+2*i] = refuse(c, g, window, block)
      else
        local n = math.min(math.abs(want), limit - used)
        redis.call('INCRBY', c, n)
        res[o+2*i-1] = n; res[o+2*i] = life(c, window)
      end
    end
  end
  k, a = k + 2*r, a + 1 + 4*r
end
return res
`)

// refundScript takes back ARGV[1] events counted by takeScript on a
// Cluster when the other rule, in another slot, refused. A counter that
// expired meanwhile is left alone rather than recreated without a TTL, and
// one recreated meanwhile by a new window is not taken below zero.
var refundScript = newScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  local v = redis.call('DECRBY', KEYS[1], ARGV[1])
  if v < 0 then
    redis.call('SET', KEYS[1], '0', 'KEEPTTL')
    return 0
  end
  return v
end
return 0
`)

// script is a Lua script run by its SHA-1.
type script struct {
	src, sha string
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{src: src, sha: hex.EncodeToString(sum[:])}
}

// call is one run of a script: its keys and arguments.
type call struct {
	keys, args []string
}

// exec runs the script once per call, pipelined, with EVALSHA, and resends
// with EVAL, pipelined too, only the calls that got NOSCRIPT. (rueidis's Lua.ExecMulti
// would send SCRIPT LOAD to every node of a Cluster on every call; EVALSHA
// on its own reaches the node of the call's keys.)
func (s *script) exec(ctx context.Context, c rueidis.Client, calls ...call) []rueidis.RedisResult {
	if len(calls) == 1 {
		return []rueidis.RedisResult{s.one(ctx, c, calls[0])}
	}
	cmds := make(rueidis.Commands, len(calls))
	for i, k := range calls {
		cmds[i] = s.evalsha(c, k)
	}
	rs := c.DoMulti(ctx, cmds...)
	var again []int
	for i, r := range rs {
		if noScript(r) {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return rs
	}
	eval := make(rueidis.Commands, len(again))
	for j, i := range again {
		eval[j] = s.eval(c, calls[i])
	}
	for j, r := range c.DoMulti(ctx, eval...) {
		rs[again[j]] = r
	}
	return rs
}

// one runs the script once, as exec does.
func (s *script) one(ctx context.Context, c rueidis.Client, k call) rueidis.RedisResult {
	r := c.Do(ctx, s.evalsha(c, k))
	if noScript(r) {
		r = c.Do(ctx, s.eval(c, k))
	}
	return r
}

func (s *script) evalsha(c rueidis.Client, k call) rueidis.Completed {
	return c.B().Evalsha().Sha1(s.sha).Numkeys(int64(len(k.keys))).Key(k.keys...).Arg(k.args...).Build()
}

func (s *script) eval(c rueidis.Client, k call) rueidis.Completed {
	return c.B().Eval().Script(s.src).Numkeys(int64(len(k.keys))).Key(k.keys...).Arg(k.args...).Build()
}

// noScript reports whether Redis did not know the script.
func noScript(r rueidis.RedisResult) bool {
	re, ok := rueidis.IsRedisErr(r.Error())
	return ok && re.IsNoScript()
}

// exec1 runs the script once.
func (s *script) exec1(ctx context.Context, c rueidis.Client, keys, args []string) rueidis.RedisResult {
	return s.one(ctx, c, call{keys, args})
}
