package limit

import (
	"context"
	"sync"
	"time"
)

// maxBlockMemo bounds the blocks a Limiter remembers.
const maxBlockMemo = 1 << 16

// blockMemo remembers, with Redis, the blocks this Limiter has seen in
// Redis's answers, until they end, so that the handshakes of a blocked
// identity are refused without a round trip.
//
// Why not the client-side cached block check that messages use: every
// handshake would read its identity's block key through rueidis's cache,
// and rueidis keeps an entry (several hundred bytes) per key read, so every
// connected user would cost that much memory for as long as the entry
// lives, to spare a round trip only to the few that are blocked. A block
// lives exactly its TTL (the gate never deletes a block key), so a
// remembered one is stale only if Redis loses it (a flush, a restart
// without persistence), and then for the rest of that block at most; one
// set by another replica is learnt from the first refusal the counting
// script gives here, which checks blocks itself.
type blockMemo struct {
	mu sync.Mutex
	m  map[memKey]time.Time // the block's end, on this process's monotonic clock
}

// note remembers that c's rule blocks c's identity for d from now.
func (b *blockMemo) note(c counter, d time.Duration) {
	if d <= 0 || !c.blocks() {
		return
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[memKey]time.Time)
	}
	if len(b.m) >= maxBlockMemo {
		for k, until := range b.m {
			if !until.After(now) {
				delete(b.m, k)
			}
		}
		for k := range b.m {
			if len(b.m) < maxBlockMemo {
				break
			}
			delete(b.m, k) // full of live blocks: forget some; their next refusal costs a round trip
		}
	}
	b.m[memKey{c.rule, c.id}] = now.Add(d)
}

// left returns the remembered block of each counter of blk (zero when none).
func (b *blockMemo) left(blk [2]counter) (left [2]time.Duration) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, c := range blk {
		if !c.blocks() {
			continue
		}
		k := memKey{c.rule, c.id}
		if until, ok := b.m[k]; ok {
			if until.After(now) {
				left[i] = until.Sub(now)
			} else {
				delete(b.m, k)
			}
		}
	}
	return left
}

// handshake decides a handshake with Redis: refused at once while a block
// this Limiter has seen lasts, else by the counting script, which also
// checks the message rules' blocks (counter.blockRule).
func (l *Limiter) handshake(ctx context.Context, rs *redisStore, blk, cs [2]counter) (Decision, error) {
	left := l.blocks.left(blk)
	if d, refused := verdict(KindConnection, blk, left[0] > 0, left[1] > 0, left[0], left[1]); refused {
		return d, nil
	}
	out, granted, err := rs.take(ctx, cs, 1)
	if err != nil {
		return Decision{}, err
	}
	for i, o := range out {
		if o.blocked {
			l.blocks.note(blk[i], o.retry)
		}
	}
	return counted(KindConnection, cs, out, granted), nil
}

// noteMessage remembers the block behind a refused message decision: a
// message rule with a block refuses only by blocking.
func (l *Limiter) noteMessage(cs [2]counter, d Decision) {
	if d.Allowed {
		return
	}
	i := 0
	if d.Scope == ScopeIP {
		i = 1
	}
	l.blocks.note(cs[i], d.RetryAfter)
}
