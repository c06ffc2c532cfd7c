package limit

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/rueidis"
)

// batchCalls is how many calls of one script a gate runs at once on a
// standalone Redis; a decision that finds them all running waits in a
// group that goes in one call when one of them returns.
//
// At thousands of busy connections a message costs the gate more in the
// system calls of its own round trip (a write, a read that finds nothing
// yet, a park and a wake) than in its decision, and Redis more in running
// a script call (about 2.6 µs of its 6 for an empty script with the same
// arguments) than in the decision: one call for a group pays both once. A
// single decision (a quiet gate, a latency test) always finds a call free
// and goes alone at once; a group forms only while Redis is answering
// others, so it waits no longer than a decision queued behind those would.
const batchCalls = 2

// groupMax bounds the calls of one group, so that a burst of handshakes
// (a reconnect storm) is not one script run that holds Redis for every
// replica; the calls beyond it form the next group.
const groupMax = 128

// batcher groups the calls of one script that wait for a free call. The
// script must take its calls' KEYS and ARGV one after another and answer
// each with its number of values, then the values (a frame).
//
// slots holds one token per call running; next is the group the next
// waiting call joins, which mu guards. A group's first call is its
// leader: it waits for a slot, closes the group to others (next = nil
// unless a full group was replaced already), runs it, and hands each
// member its frame by closing done.
type batcher struct {
	script *script
	// alone sends every call on its own: on a Cluster, where the calls'
	// keys live in different slots.
	alone bool
	slots chan struct{}
	mu    sync.Mutex
	next  *callGroup
	// free holds the KEYS and ARGV of groups sent, emptied, for the next
	// groups: at thousands of connections, growing them anew for every
	// group was a third of the bytes the gate allocated.
	free []call
	// spare holds, emptied, the KEYS and ARGV of the calls that do took,
	// for the callers' next calls (buffer): with a rules file, a
	// message's call names some twenty keys and seventy arguments, and
	// making those slices for every message was a third of the bytes the
	// gate allocated.
	spare []call
}

// maxGroups bounds batcher.free: the groups under way at once, batchCalls
// sent and the next one forming while they run. With batchCalls alone,
// one group in each such round was dropped and the next grew its slices
// anew: 12% of the bytes a rules file's decisions allocated at 8000×4.
const maxGroups = batchCalls + 1

// maxSpare bounds batcher.spare: about the decisions under way at once
// (the relay's pool of workers).
const maxSpare = 64

// callGroup is one script call made of several. parts and err are written
// by the leader before done is closed.
type callGroup struct {
	call
	members int
	done    chan struct{}
	parts   [][]int64
	err     error
}

func newBatcher(s *script, alone bool) *batcher {
	return &batcher{script: s, alone: alone, slots: make(chan struct{}, batchCalls)}
}

// buffer returns an empty call to append a call's keys and arguments to,
// with the slices of a call that do took before when there is one.
func (b *batcher) buffer() call {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.spare)
	if n == 0 {
		return call{}
	}
	k := b.spare[n-1]
	b.spare = b.spare[:n-1]
	return k
}

// recycle keeps the slices of k, which do took, for buffer. b.mu is held.
func (b *batcher) recycle(k call) {
	if len(b.spare) < maxSpare {
		b.spare = append(b.spare, k.emptied())
	}
}

// emptied returns k's slices with no element, cleared so that they keep
// no key or argument alive.
func (k call) emptied() call {
	clear(k.keys)
	clear(k.args)
	return call{k.keys[:0], k.args[:0]}
}

// do runs k and returns its values: at once in a call of its own when one
// is free, otherwise in the next group's call. It takes k: the caller must
// not use its slices after, which go to buffer's next calls.
func (b *batcher) do(ctx context.Context, c rueidis.Client, k call) ([]int64, error) {
	if b.alone {
		return b.alone1(ctx, c, k)
	}
	select {
	case b.slots <- struct{}{}:
		vals, err := b.alone1(ctx, c, k)
		<-b.slots
		return vals, err
	default:
	}
	b.mu.Lock()
	g := b.next
	leader := g == nil || g.members == groupMax
	if leader {
		g = &callGroup{done: make(chan struct{})}
		if n := len(b.free); n > 0 {
			g.call, b.free = b.free[n-1], b.free[:n-1]
		}
		b.next = g
	}
	at := g.members
	g.members++
	g.keys = append(g.keys, k.keys...)
	g.args = append(g.args, k.args...)
	b.recycle(k)
	b.mu.Unlock()
	if leader {
		b.send(ctx, c, g)
	} else {
		select {
		case <-g.done:
		case <-ctx.Done():
			// The group may still run this call: as for any call that
			// timed out, Redis decides it without the caller.
			return nil, ctx.Err()
		}
	}
	if g.err != nil {
		return nil, g.err
	}
	return g.parts[at], nil
}

// alone1 runs k in a call of its own (rueidis copies its keys and
// arguments into the command) and recycles it.
func (b *batcher) alone1(ctx context.Context, c rueidis.Client, k call) ([]int64, error) {
	vals, err := unframe(b.script.one(ctx, c, k))
	b.mu.Lock()
	b.recycle(k)
	b.mu.Unlock()
	return vals, err
}

// send waits for a free call, closes g to later calls and runs it, until
// the leader's deadline (its members came later with the same timeout, and
// are failed a little early rather than left without a leader) but not
// its cancellation: a handshake whose client hung up still leads the
// decisions of other connections.
func (b *batcher) send(ctx context.Context, c rueidis.Client, g *callGroup) {
	defer close(g.done)
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(context.WithoutCancel(ctx), dl)
		defer cancel()
	} else {
		ctx = context.WithoutCancel(ctx)
	}
	var waited error
	select {
	case b.slots <- struct{}{}:
	case <-ctx.Done():
		waited = ctx.Err()
	}
	b.mu.Lock()
	if b.next == g {
		b.next = nil
	}
	b.mu.Unlock()
	if waited != nil {
		g.err = waited
		return
	}
	vals, err := b.script.one(ctx, c, g.call).AsIntSlice()
	<-b.slots
	b.mu.Lock()
	if len(b.free) < maxGroups {
		b.free = append(b.free, g.call.emptied())
	}
	b.mu.Unlock()
	if err != nil {
		g.err = err
		return
	}
	g.parts, g.err = frames(vals, g.members)
}

// frames splits a script's answer into its calls' frames: each a number
// of values, then the values.
func frames(vals []int64, calls int) ([][]int64, error) {
	parts := make([][]int64, 0, calls)
	for len(vals) > 0 {
		n := vals[0]
		if n < 0 || n > int64(len(vals)-1) {
			return nil, fmt.Errorf("script answer: a frame of %d values in %d", n, len(vals)-1)
		}
		parts = append(parts, vals[1:1+n])
		vals = vals[1+n:]
	}
	if len(parts) != calls {
		return nil, fmt.Errorf("script answer: %d frames for %d calls", len(parts), calls)
	}
	return parts, nil
}

// unframed reads the answer of a call made of calls calls, a frame each.
func unframed(r rueidis.RedisResult, calls int) ([][]int64, error) {
	vals, err := r.AsIntSlice()
	if err != nil {
		return nil, err
	}
	return frames(vals, calls)
}

// unframe reads the answer of a call of its own.
func unframe(r rueidis.RedisResult) ([]int64, error) {
	vals, err := r.AsIntSlice()
	if err != nil {
		return nil, err
	}
	if len(vals) == 0 || vals[0] != int64(len(vals)-1) {
		_, err := frames(vals, 1)
		return nil, err
	}
	return vals[1:], nil
}
