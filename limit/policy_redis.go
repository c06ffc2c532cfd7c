package limit

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/holo/wsgate/policy"
	"github.com/redis/rueidis"
)

// keysOf appends the Redis keys of charge c, whose key value is id (see
// safeID), to keys: its block key, its strikes key and, unless it only
// guards, one counter per window:
//
//	<prefix>:r:<rule>:<tag>:{<id>}:blk          exists while the key is blocked
//	<prefix>:r:<rule>:<tag>:{<id>}:str          refusals of the ladder, until ResetStrikes of quiet
//	<prefix>:r:<rule>:<tag>:<window ms>:{<id>}  one per window
//
// where <tag> is the rule's key kind (keyTag). A fixed window's counter
// holds the units counted and expires at the window's end. A GCRA
// window's holds "<units> <µs>": how many units its theoretical arrival
// time was ahead of the rate at that Redis time, and expires when it is no
// longer ahead. (Units rather than µs keep intervals shorter than a µs,
// those of byte rules, exact.) The {id} hash tag keeps a charge's keys in
// one Cluster slot.
//
// The keys are cut from one string: a decision without a ChargeKeys (a
// handshake, an HTTP request) builds every charge's keys anew, and at
// thousands of connections building each apart made the rules file's
// decisions most of the gate's garbage.
func keysOf(keys []string, prefix string, c *Charge, id string) []string {
	kind := keyTag(c.Rule.Key)
	base := len(prefix) + len(":r:") + len(c.Rule.Name) + 1 + len(kind) + 1
	tag := len(id) + 2
	var ws []policy.Window
	if !c.GuardOnly {
		ws = c.Limits
	}
	size := 2 * (base + tag + len(":blk"))
	var digits [20]byte
	for _, w := range ws {
		size += base + len(strconv.AppendInt(digits[:0], w.Per.Milliseconds(), 10)) + 1 + tag
	}
	var b strings.Builder
	b.Grow(size)
	ends := make([]int, 0, 8)
	appendBase := func() {
		b.WriteString(prefix)
		b.WriteString(":r:")
		b.WriteString(c.Rule.Name)
		b.WriteByte(':')
		b.WriteString(kind)
		b.WriteByte(':')
	}
	appendTag := func() {
		b.WriteByte('{')
		b.WriteString(id)
		b.WriteByte('}')
	}
	for _, suffix := range []string{":blk", ":str"} {
		appendBase()
		appendTag()
		b.WriteString(suffix)
		ends = append(ends, b.Len())
	}
	for _, w := range ws {
		appendBase()
		b.Write(strconv.AppendInt(digits[:0], w.Per.Milliseconds(), 10))
		b.WriteByte(':')
		appendTag()
		ends = append(ends, b.Len())
	}
	all, start := b.String(), 0
	for _, end := range ends {
		keys = append(keys, all[start:end])
		start = end
	}
	return keys
}

// ChargeKeys keeps one charge's Redis keys from a decision of a connection
// to its next, so that its messages do not build them anew: in exact mode
// at thousands of busy connections, building them was half of the bytes
// the gate allocated, and most of its garbage collection. A connection
// holds one per rule that applies to its messages and passes it in
// Charge.Keys. The zero value is empty and one pointer long; a decision
// that asks Redis fills it (some hundred bytes per window), and builds the
// keys again when they are not those of its charge (a reload changed the
// rule or its limits, or the key's value changed). A ChargeKeys serves one
// decision at a time.
type ChargeKeys struct{ k *chargeKeys }

// chargeKeys are the keys (keysOf) under prefix of the charge of rule,
// limits, key and guard, whose key value in Redis is id.
type chargeKeys struct {
	prefix string
	rule   *policy.Rule
	limits []policy.Window
	key    string
	guard  bool
	id     string
	keys   []string
}

// of reports whether k holds the keys of charge c under prefix.
func (k *chargeKeys) of(prefix string, c *Charge) bool {
	if k.prefix != prefix || k.rule != c.Rule || k.key != c.Key || k.guard != c.GuardOnly || len(k.limits) != len(c.Limits) {
		return false
	}
	for i, w := range k.limits {
		if w.Per != c.Limits[i].Per {
			return false
		}
	}
	return true
}

// id returns c's key value in Redis keys (safeID), from c.Keys when they
// hold it.
func (c *Charge) id() string {
	if c.Keys != nil && c.Keys.k != nil && c.Keys.k.key == c.Key {
		return c.Keys.k.id
	}
	return safeID(c.Key)
}

// appendKeys appends c's keys (keysOf), whose key value is id, to keys:
// those c.Keys holds when they are c's, else built anew and, with c.Keys,
// kept there.
func (c *Charge) appendKeys(keys []string, prefix, id string) []string {
	if c.Keys == nil {
		return keysOf(keys, prefix, c, id)
	}
	k := c.Keys.k
	if k == nil {
		k = new(chargeKeys)
		c.Keys.k = k
	}
	if !k.of(prefix, c) {
		*k = chargeKeys{prefix: prefix, rule: c.Rule, limits: c.Limits, key: c.Key, guard: c.GuardOnly, id: id,
			keys: keysOf(k.keys[:0], prefix, c, id)}
	}
	return append(keys, k.keys...)
}

// keyBase is the start of every key of charge c.
func keyBase(prefix string, c *Charge) string {
	return prefix + ":r:" + c.Rule.Name + ":" + keyTag(c.Rule.Key) + ":"
}

// appendCounters appends the counters of windows ws to keys.
func appendCounters(keys []string, base, tag string, ws []policy.Window) []string {
	for _, w := range ws {
		keys = append(keys, base+strconv.FormatInt(w.Per.Milliseconds(), 10)+":"+tag)
	}
	return keys
}

// blockKeyOf returns the block key of charge c (the first of keysOf).
func blockKeyOf(prefix string, c *Charge, id string) string {
	return prefix + ":r:" + c.Rule.Name + ":" + keyTag(c.Rule.Key) + ":{" + id + "}:blk"
}

// chargeScript decides the charges of one or more calls, in order and
// each atomically as if alone (several connections' calls sent together:
// batcher), exactly as the memory store's charge does, and in ModeLease
// reserves slices of the windows (policy_lease.go). A call's KEYS hold,
// per charge, its keys as keysOf lists them: block, strikes, then one
// counter per window (none for a charge that only guards). Its ARGV hold
// the number of charges, then per charge:
//
//	gcra (0 or 1), cost of one event, burst (0: each window's limit),
//	reset-strikes ms, ladder length, ladder steps in ms...,
//	window count, then limit, ms, lease and back per window
//
// and last n. The calls' KEYS and ARGV follow one another. A window's
// lease is 0 to count exactly; > 0 to decide as exactly but write a slice:
// what the granted events cost, or lease units
// if more, as far as the limit (a GCRA window: the burst, from its TAT
// now) allows; -1 when the caller decides the window from a slice it
// holds: the script neither checks nor writes it, and drops it with the
// others on a block. A GCRA window's back (a decimal, 0 otherwise) is the
// caller's correction (polSlice.correction): units added to the window's
// TAT, not below the present, and written before it is checked, refusal
// or not. It answers each call with a frame (batcher): the number of
// values, then {refusing charge (1-based, 0 when granted), blocked
// (1: by a block in force), retry ms, limit, granted}, and when granted a
// pair per window with a lease > 0, in order: units written, and the
// window's ms left (fixed) or its TAT's lead in µs (GCRA).
//
// Every charge's block is checked first (a charge with a window to lease is
// blocked while its block key exists, even with under a millisecond left,
// which PTTL reports as 0, for a retry of 1ms: a slice taken then would be
// dropped by the announcement of the key's deletion); then every window,
// in order, and the first with less than one event left refuses. Nothing
// is written unless every window allows, except that a refusal by a rule
// with a ladder blocks the key for the ladder's next step and drops every
// window of the charge, so that the budget is full when the block ends.
// Only GCRA reads the Redis clock (TIME, once per script run: the calls
// of a group are decided at one instant); fixed windows live by their
// keys' TTL, as in luaLib.
var chargeScript = newScript(luaLib + `
local now
local function clock()
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return now
end
-- ahead returns how many units a GCRA window's arrival time is ahead of
-- its rate now (a value of the other algorithm, left by a reload, is 0).
local function ahead(w)
  local u, at = string.match(redis.call('GET', w.key) or '', '^(%S+) (%S+)$')
  if not u then return 0 end
  -- A clock that went back (a failover) drains nothing rather than refill.
  return math.max(tonumber(u) - math.max(clock() - tonumber(at), 0) * w.limit / (w.ms * 1000), 0)
end
-- setAhead writes a GCRA window's units ahead of its rate now.
local function setAhead(w, u)
  if u > 0 then
    redis.call('SET', w.key, string.format('%.17g %d', u, clock()), 'PX', math.max(math.ceil(u * w.ms / w.limit), 1))
  else
    redis.call('DEL', w.key)
  end
end
local function refuse(i, c, w)
  if #c.ladder == 0 then
    local retry
    if c.gcra then
      retry = math.max(math.ceil((w.ahead + c.cost - w.burst) * w.ms / w.limit), 1)
    else
      retry = life(w.key, w.ms)
    end
    return {i, 0, retry, w.limit, 0}
  end
  local s = tonumber(redis.call('GET', c.str) or '0')
  local block = c.ladder[math.min(s, #c.ladder - 1) + 1]
  redis.call('SET', c.blk, '1', 'PX', block)
  redis.call('SET', c.str, s + 1, 'PX', block + c.reset)
  for _, o in ipairs(c.wins) do redis.call('DEL', o.key) end
  return {i, 0, block, w.limit, 0}
end
-- decide answers the charges cs for n events.
local function decide(cs, n)
  for i, c in ipairs(cs) do
    local b = redis.call('PTTL', c.blk)
    if b > 0 or b == 0 and c.leases then return {i, 1, math.max(b, 1), 0, 0} end
  end
  local granted = n
  for i, c in ipairs(cs) do
    for _, w in ipairs(c.wins) do
      local left = granted
      if w.lease < 0 then
        -- decided from the caller's slice
      elseif c.gcra then
        w.burst = c.burst
        if w.burst == 0 then w.burst = w.limit end
        w.ahead = ahead(w)
        if w.back ~= 0 then
          w.ahead = math.max(w.ahead + w.back, 0)
          setAhead(w, w.ahead)
        end
        if c.cost > 0 then left = math.floor((w.burst - w.ahead) / c.cost) end
      else
        -- nil when the window is not open (or holds a GCRA value)
        w.used = tonumber(redis.call('GET', w.key))
        if c.cost > 0 then left = math.floor((w.limit - (w.used or 0)) / c.cost) end
      end
      if left < 1 then return refuse(i, c, w) end
      granted = math.min(granted, left)
    end
  end
  local res = {0, 0, 0, 0, granted}
  for _, c in ipairs(cs) do
    local units = granted * c.cost
    for _, w in ipairs(c.wins) do
      if w.lease < 0 then
        -- decided from the caller's slice
      elseif c.gcra then
        local add = units
        if w.lease > 0 then
          -- left >= granted above: the burst leaves room for units at least
          add = math.max(math.min(math.floor(w.burst - w.ahead), math.max(w.lease, units)), units)
        end
        local u = w.ahead + add
        setAhead(w, u)
        if w.lease > 0 then
          res[#res+1] = add
          res[#res+1] = math.floor(u * w.ms * 1000 / w.limit)
        end
      else
        local add = units
        if w.lease > 0 then
          -- left >= granted above: the limit leaves room for units at least
          add = math.max(math.min(w.limit - (w.used or 0), math.max(w.lease, units)), units)
        end
        if w.used then
          redis.call('INCRBY', w.key, add)
        else
          redis.call('SET', w.key, add, 'PX', w.ms)
        end
        if w.lease > 0 then
          res[#res+1] = add
          res[#res+1] = life(w.key, w.ms)
        end
      end
    end
  end
  return res
end
-- charge reads the call whose ARGV start at a and KEYS at k and answers
-- it; it returns the answer and where the next call's ARGV and KEYS start.
local function charge(a, k)
  local cs = {}
  local nc = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, nc do
    local c = {gcra = ARGV[a] == '1', cost = tonumber(ARGV[a+1]), burst = tonumber(ARGV[a+2]),
      reset = tonumber(ARGV[a+3]), ladder = {}, wins = {}, blk = KEYS[k], str = KEYS[k+1]}
    local steps = tonumber(ARGV[a+4])
    for j = 1, steps do c.ladder[j] = tonumber(ARGV[a+4+j]) end
    a = a + 5 + steps
    local nw = tonumber(ARGV[a])
    a, k = a + 1, k + 2
    for j = 1, nw do
      c.wins[j] = {key = KEYS[k], limit = tonumber(ARGV[a]), ms = tonumber(ARGV[a+1]), lease = tonumber(ARGV[a+2]),
        back = tonumber(ARGV[a+3])}
      c.leases = c.leases or c.wins[j].lease > 0
      a, k = a + 4, k + 1
    end
    cs[#cs+1] = c
  end
  return decide(cs, tonumber(ARGV[a])), a + 1, k
end
local out, a, k = {}, 1, 1
while a <= #ARGV do
  local res
  res, a, k = charge(a, k)
  out[#out+1] = #res
  for _, v in ipairs(res) do out[#out+1] = v end
end
return out
`)

// chargeRefundScript takes back what chargeScript counted for one event on
// a Cluster when a charge in another slot refused. KEYS are counters; ARGV
// holds a (gcra 0 or 1, units) pair per key. A counter that expired
// meanwhile is left alone rather than recreated, and none is taken below
// zero.
var chargeRefundScript = newScript(`
for i = 1, #KEYS do
  local units = tonumber(ARGV[2*i])
  local v = redis.call('GET', KEYS[i])
  if v and ARGV[2*i-1] == '1' then
    local u, at = string.match(v, '^(%S+) (%S+)$')
    if u then
      redis.call('SET', KEYS[i], string.format('%.17g %s', math.max(tonumber(u) - units, 0), at), 'KEEPTTL')
    end
  elseif tonumber(v) and redis.call('DECRBY', KEYS[i], units) < 0 then
    redis.call('SET', KEYS[i], '0', 'KEEPTTL')
  end
end
return 0
`)

// chargeCall appends to k (empty, maybe with room: batcher.buffer) the
// chargeScript call deciding n events of the charges cs[i] for i in idx,
// whose key values are ids[i]. lease[i][j] and back[i][j] are the lease
// and back arguments of window j of cs[i]; a nil lease or lease[i] counts
// exactly, and a nil back or back[i] corrects nothing.
func chargeCall(k call, prefix string, cs []Charge, ids []string, idx []int, n int, bytes int64, lease [][]int64, back [][]float64) call {
	nk, na := 0, 2
	for _, i := range idx {
		c := &cs[i]
		nk += 2
		na += 6 + len(c.Rule.Block)
		if !c.GuardOnly {
			nk += len(c.Limits)
			na += 4 * len(c.Limits)
		}
	}
	k.keys, k.args = slices.Grow(k.keys, nk), slices.Grow(k.args, na)
	k.args = append(k.args, strconv.Itoa(len(idx)))
	for _, i := range idx {
		c := &cs[i]
		k.keys = c.appendKeys(k.keys, prefix, ids[i])
		gcra := "0"
		if c.Rule.Algorithm == policy.GCRA {
			gcra = "1"
		}
		k.args = append(k.args, gcra, strconv.FormatInt(cost(c, bytes), 10), decimal(c.Rule.Burst),
			decimal(c.Rule.ResetStrikes.Milliseconds()), strconv.Itoa(len(c.Rule.Block)))
		for _, b := range c.Rule.Block {
			k.args = append(k.args, decimal(b.Milliseconds()))
		}
		var ws []policy.Window
		if !c.GuardOnly {
			ws = c.Limits
		}
		k.args = append(k.args, strconv.Itoa(len(ws)))
		for j, w := range ws {
			l, b := "0", "0"
			if lease != nil && lease[i] != nil {
				l = strconv.FormatInt(lease[i][j], 10)
			}
			if back != nil && back[i] != nil && back[i][j] != 0 {
				b = strconv.FormatFloat(back[i][j], 'g', -1, 64)
			}
			k.args = append(k.args, decimal(w.Limit), decimal(w.Per.Milliseconds()), l, b)
		}
	}
	k.args = append(k.args, strconv.Itoa(n))
	return k
}

// decimals caches the decimal strings of the rules' numbers (limits,
// bursts, window and block lengths in ms), which every decision sends
// again: a direct-mapped table, each slot the last number formatted there.
// The rules of a gate hold a few such numbers, so they stay; two that share
// a slot are formatted again in turn, as without the table.
var decimals [64]atomic.Pointer[formatted]

type formatted struct {
	v int64
	s string
}

// decimal returns v in decimal, from decimals when it was formatted before.
func decimal(v int64) string {
	if v >= 0 && v < 100 {
		return strconv.FormatInt(v, 10) // strconv's own constants
	}
	slot := &decimals[uint64(v)*0x9e3779b97f4a7c15>>58]
	if f := slot.Load(); f != nil && f.v == v {
		return f.s
	}
	s := strconv.FormatInt(v, 10)
	slot.Store(&formatted{v: v, s: s})
	return s
}

// refundCall is the chargeRefundScript call that takes back one event of
// the charges cs[i] for i in idx; ok is false when they count nothing.
func refundCall(prefix string, cs []Charge, ids []string, idx []int, bytes int64) (k call, ok bool) {
	for _, i := range idx {
		c := &cs[i]
		if c.GuardOnly || len(c.Limits) == 0 {
			continue
		}
		gcra := "0"
		if c.Rule.Algorithm == policy.GCRA {
			gcra = "1"
		}
		units := strconv.FormatInt(cost(c, bytes), 10)
		k.keys = appendCounters(k.keys, keyBase(prefix, c), "{"+ids[i]+"}", c.Limits)
		for range c.Limits {
			k.args = append(k.args, gcra, units)
		}
	}
	return k, len(k.keys) > 0
}

// chargeResult is chargeScript's answer.
type chargeResult struct {
	refused int // the refusing charge in the call, from 1; 0 when granted
	blocked bool
	retry   time.Duration
	limit   int64
	granted int
	// leased holds, when granted, a (units, window ms left) pair per
	// window with a lease > 0, in the call's order.
	leased []int64
}

// parseCharge reads chargeScript's answer to a call with leases windows
// of a lease > 0.
func parseCharge(vs []int64, err error, leases int) (chargeResult, error) {
	if err != nil {
		return chargeResult{}, fmt.Errorf("charge: %w", err)
	}
	want := 5
	if len(vs) > 0 && vs[0] == 0 {
		want += 2 * leases
	}
	if len(vs) != want {
		return chargeResult{}, fmt.Errorf("charge: script returned %d values, want %d", len(vs), want)
	}
	return chargeResult{refused: int(vs[0]), blocked: vs[1] == 1, retry: time.Duration(vs[2]) * time.Millisecond,
		limit: vs[3], granted: int(vs[4]), leased: vs[5:]}, nil
}

// charge decides n events of cs (with key values ids) in Redis, for
// Limiter.Charge. With an error, failed says which charges' calls failed
// (nil: all of them).
//
// The block keys of the charges whose rule blocks are read first through
// rueidis's client-side cache, as a handshake's flag rules' are: a blocked
// key is refused with no round trip, and a block set or deleted by any
// replica invalidates the cached reads. The script checks the blocks
// again, since an invalidation may arrive after the write that caused it.
// A message whose refusal by any of the charges closes its stream (closes:
// ClosesOnRefusal, and refusalsClose) skips the read when its keys live in
// one slot, as the flag rules' messages do.
func (s *redisStore) charge(ctx context.Context, prefix, kind string, cs []Charge, ids []string, n int, bytes int64, closes bool) (Decision, []bool, error) {
	groups := s.slotGroups(ids)
	if kind != KindMessage || len(groups) > 1 || !closes || !refusalsClose(cs) {
		first, left, failed, err := s.chargeBlocked(ctx, prefix, cs, ids, nil)
		if err != nil {
			return Decision{}, failed, err
		}
		if first >= 0 {
			return policyRefusal(&cs[first], kind, true, left, 0), nil, nil
		}
	}
	if len(groups) > 1 {
		d, failed, err := s.chargeSlots(ctx, prefix, kind, cs, ids, groups, bytes)
		d.answered = err == nil
		return d, failed, err
	}
	k := chargeCall(s.charges.buffer(), prefix, cs, ids, groups[0], n, bytes, nil, nil)
	vals, err := s.charges.do(ctx, s.client, k)
	r, err := parseCharge(vals, err, 0)
	if err != nil {
		return Decision{}, nil, err
	}
	d := Decision{Allowed: true, Kind: kind, Granted: r.granted, answered: true}
	if r.refused > 0 {
		d = policyRefusal(&cs[groups[0][r.refused-1]], kind, r.blocked, r.retry, r.limit)
		d.answered = true
	}
	return d, nil, nil
}

// refusalsClose reports whether a refusal by any charge of cs ends the
// client's stream where refusals may (ClosesOnRefusal): each is an enforced
// rule that closes (a dropped message's connection stays, and a shadow
// rule's refusal lets it pass).
func refusalsClose(cs []Charge) bool {
	for i := range cs {
		if r := cs[i].Rule; r.Action != policy.Close || r.Shadow {
			return false
		}
	}
	return true
}

// chargeBlocked returns the first charge of cs blocked by a cached block
// check, and the block left; first is -1 when none is. When seen is not
// nil, seen[i] is set when the block key of cs[i] was read while it
// existed, even if its block has ended since.
func (s *redisStore) chargeBlocked(ctx context.Context, prefix string, cs []Charge, ids []string, seen []bool) (first int, left time.Duration, failed []bool, err error) {
	var idx []int
	var reads []rueidis.CacheableTTL
	for i := range cs {
		if len(cs[i].Rule.Block) > 0 {
			idx = append(idx, i)
			reads = append(reads, rueidis.CT(s.client.B().Pttl().Key(blockKeyOf(prefix, &cs[i], ids[i])).Cache(), blockCacheTTL))
		}
	}
	if len(reads) == 0 {
		return -1, 0, nil, nil
	}
	first = -1
	for j, r := range s.client.DoMultiCache(ctx, reads...) {
		l, existed, e := remainingBlock(r)
		if seen != nil && existed {
			seen[idx[j]] = true
		}
		switch {
		case e != nil:
			if failed == nil {
				failed = make([]bool, len(cs))
				err = e
			}
			failed[idx[j]] = true
		case l > 0 && first < 0:
			first, left = idx[j], l
		}
	}
	if err != nil {
		return -1, 0, failed, err
	}
	return first, left, nil, nil
}

// slotGroups splits the charges (by their key values ids) into the groups
// one script may decide: the charges whose keys share a Cluster slot, in
// their order. Off a Cluster, one group holds them all. The caller must
// not change the groups.
func (s *redisStore) slotGroups(ids []string) [][]int {
	if !s.cluster {
		if len(ids) < len(oneGroup) {
			return oneGroup[len(ids)]
		}
		return allOf(len(ids))
	}
	var groups [][]int
	var slots []uint16
	for i, id := range ids {
		sl := slot(id)
		if g := slices.Index(slots, sl); g >= 0 {
			groups[g] = append(groups[g], i)
		} else {
			slots = append(slots, sl)
			groups = append(groups, []int{i})
		}
	}
	return groups
}

// oneGroup[n] is slotGroups' answer for n charges off a Cluster, made once
// (every message of a rules file needs one).
var oneGroup = func() (gs [17][][]int) {
	for n := range gs {
		gs[n] = allOf(n)
	}
	return gs
}()

// allOf is one group of the charges 0 to n-1.
func allOf(n int) [][]int {
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	return [][]int{all}
}

// chargeSlots decides one event of charges whose keys live in several
// Cluster slots: one script per slot group, pipelined. The groups decide
// on their own, so when one refuses (or fails), the event that the
// others counted is taken back. As for the flag rules, counting one event
// at a time leaves only the refund of a refusal: with n, each group would
// count what it has left and the others' clients would see the excess
// until the refund.
//
// The refusal reported is the one a single script would make: a block in
// force first, then the earliest charge. Unlike a single script, every
// group that refused applied its refusal: two keys over their limits in
// the same event are both blocked.
func (s *redisStore) chargeSlots(ctx context.Context, prefix, kind string, cs []Charge, ids []string, groups [][]int, bytes int64) (Decision, []bool, error) {
	calls := make([]call, len(groups))
	for g, idx := range groups {
		calls[g] = chargeCall(call{}, prefix, cs, ids, idx, 1, bytes, nil, nil)
	}
	var failed []bool
	var err error
	fail := func(g int, e error) {
		if failed == nil {
			failed = make([]bool, len(cs))
			err = e
		}
		for _, i := range groups[g] {
			failed[i] = true
		}
	}
	refusal, res := -1, chargeResult{}
	granted := make([]bool, len(groups))
	for g, r := range chargeScript.exec(ctx, s.client, calls...) {
		vals, e := unframe(r)
		out, e := parseCharge(vals, e, 0)
		switch {
		case e != nil:
			fail(g, e)
		case out.refused == 0:
			granted[g] = true
		default:
			i := groups[g][out.refused-1]
			if refusal < 0 || out.blocked && !res.blocked || out.blocked == res.blocked && i < refusal {
				refusal, res = i, out
			}
		}
	}
	if refusal >= 0 || err != nil {
		var back []call
		var of []int
		for g, ok := range granted {
			if k, counts := refundCall(prefix, cs, ids, groups[g], bytes); ok && counts {
				back, of = append(back, k), append(of, g)
			}
		}
		if len(back) > 0 {
			for j, r := range chargeRefundScript.exec(ctx, s.client, back...) {
				if e := r.Error(); e != nil {
					fail(of[j], fmt.Errorf("refund: %w", e))
				}
			}
		}
	}
	if err != nil {
		return Decision{}, failed, err
	}
	if refusal >= 0 {
		return policyRefusal(&cs[refusal], kind, res.blocked, res.retry, res.limit), nil, nil
	}
	return Decision{Allowed: true, Kind: kind, Granted: 1}, nil, nil
}
