package proxy

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/metrics"
)

// Draining: closing connections on purpose, gently, so that a deploy does
// not make every client reconnect in the same second. A drained
// connection's upstream is sent 1001 "going away"; the replies it still
// sends reach the client; then the client gets a text frame
// {"code":1012,"error":"Service restart","retryAfterMs":N} and the close
// Config.DrainCode. Shutdown drains every connection and Drain a share of
// them, both spreading the closes evenly over a window; the keeper retires
// connections past Config.MaxConnAge the same way; and
// Config.MaxPendingHandshakes keeps a storm of reconnects from piling up
// handshakes.

// drainEnding is how a drained connection ends. Each gets its own
// retryAfterMs.
func (p *Proxy) drainEnding() *ending {
	code, reason, text := p.cfg.DrainCode, "service restart", "Service restart"
	if code == ws.StatusGoingAway {
		reason, text = "going away", "Going away"
	}
	body := fmt.Appendf(nil, `{"code":%d,"error":%q,"retryAfterMs":%d}`, code, text, drainRetry(p.cfg.DrainSpread).Milliseconds())
	return &ending{initiator: byGate, afterUpstream: true,
		clientText: body, clientCode: code, clientReason: reason,
		upCode: ws.StatusGoingAway, upReason: "going away"}
}

// drainRetry is the retryAfterMs told to a drained client: a quarter of a
// second plus a random share of the spread window (of a second at least),
// so that the clients that obey it come back spread out even when they
// were closed together.
func drainRetry(spread time.Duration) time.Duration {
	return 250*time.Millisecond + rand.N(max(time.Second, spread))
}

// Drain closes a share (0 < share <= 1, rounded up to whole connections)
// of the open connections, chosen at random, the way Shutdown does, spread
// evenly over spread. It returns how many it chose once the last close has
// begun; when ctx is done first, it closes the rest at once.
func (p *Proxy) Drain(ctx context.Context, share float64, spread time.Duration) int {
	prs := p.pick(share)
	p.endSpread(ctx, nil, prs, spread)
	return len(prs)
}

// StartDrain drains a share of the open connections as Drain does, in the
// background, and returns how many it chose: none once Shutdown began,
// which stops the drains under way and drains every connection its own
// way.
func (p *Proxy) StartDrain(share float64, spread time.Duration) int {
	prs := p.pick(share)
	p.mu.Lock()
	if p.draining.Load() {
		p.mu.Unlock()
		return 0
	}
	p.drains.Add(1) // under p.mu: Shutdown waits for it
	p.mu.Unlock()
	go func() {
		defer p.drains.Done()
		p.endSpread(context.Background(), p.stopDrains, prs, spread)
	}()
	return len(prs)
}

// pick chooses a share of the open pairs at random.
func (p *Proxy) pick(share float64) []*pair {
	p.mu.Lock()
	prs := make([]*pair, 0, len(p.pairs))
	for pr := range p.pairs {
		if pr.life.load() == phaseOpen {
			prs = append(prs, pr)
		}
	}
	p.mu.Unlock()
	rand.Shuffle(len(prs), func(i, j int) { prs[i], prs[j] = prs[j], prs[i] })
	return prs[:int(math.Ceil(min(max(share, 0), 1)*float64(len(prs))))]
}

// drainTick is the coarsest step of a spread drain: the closes due within
// one tick are made together.
const drainTick = 10 * time.Millisecond

// endSpread drains prs, the i-th of n at spread*i/n from now. A pair that
// ended meanwhile is left alone: only pairs still tracked are ended (under
// p.mu, as the keeper and Shutdown do). When ctx is done it drains the rest
// at once; when stop closes it leaves them.
func (p *Proxy) endSpread(ctx context.Context, stop <-chan struct{}, prs []*pair, spread time.Duration) {
	start, n := time.Now(), len(prs)
	for i := 0; i < n; {
		if ctx.Err() == nil {
			due := start.Add(time.Duration(float64(spread) * float64(i) / float64(n)))
			if wait := time.Until(due); wait > 0 {
				t := time.NewTimer(max(wait, drainTick))
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				case <-stop:
					t.Stop()
					return
				}
				continue
			}
		}
		now := time.Now()
		p.mu.Lock()
		for ; i < n; i++ {
			if ctx.Err() == nil && start.Add(time.Duration(float64(spread)*float64(i)/float64(n))).After(now) {
				break
			}
			if _, ok := p.pairs[prs[i]]; ok {
				prs[i].end(p.drainEnding())
			}
		}
		p.mu.Unlock()
	}
}

// retireAt is when a pair opened at start (unix nanoseconds) is retired
// under MaxConnAge, less a random tenth of it so that connections opened
// together do not all go together; 0 without MaxConnAge.
func retireAt(start int64, age time.Duration) int64 {
	if age <= 0 {
		return 0
	}
	return start + int64(age) - rand.Int64N(int64(age)/10+1)
}

// handshakeSlots bounds the WebSocket handshakes in progress
// (MaxPendingHandshakes); nil means no bound.
type handshakeSlots chan struct{}

// pendingWait is how long a handshake over MaxPendingHandshakes waits for a
// slot before its 503.
const pendingWait = 250 * time.Millisecond

// take takes a slot for a handshake, waiting pendingWait at most; it
// reports whether it got one.
func (s handshakeSlots) take(ctx context.Context) bool {
	if s == nil {
		return true
	}
	select {
	case s <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(pendingWait)
	defer t.Stop()
	select {
	case s <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// give gives back a slot taken by take.
func (s handshakeSlots) give() {
	if s != nil {
		<-s
	}
}

// refuseBusy answers a handshake that found no slot: 503 with a
// Retry-After of 1 to 5 seconds at random, so that the clients told to
// wait do not all come back together.
func (p *Proxy) refuseBusy(w http.ResponseWriter) {
	w.Header().Set("Retry-After", strconv.Itoa(1+rand.IntN(5)))
	p.refuse(w, http.StatusServiceUnavailable, "too many handshakes in progress", metrics.ResultOverCapacity)
}
