package proxy

import (
	"math"
	"time"
)

// keeperState is the keeper's bookkeeping of one pair. Only the keeper
// goroutine reads or writes it.
//
// Times are milliseconds since the pair started, modulo 2^32 and compared
// by their difference (since), which is right while the two are less than
// 24 days apart: the keeper refreshes them far more often. Counts keep
// their low 32 bits, since only a change matters. A pair holds this for its
// whole life.
type keeperState struct {
	in, out, heard       uint32 // bytes from the client (less the answers to pings), from the upstream, and from the client in all, at the last sweep
	inAt, outAt, heardAt uint32 // when those counts last moved
	nextPing             uint32 // when the next keepalive ping is due
	asked                bool   // a ping asked for (pingDue), not yet seen taken
	forced               bool   // the backstop ran
}

// since is how many milliseconds a is after b.
func since(a, b uint32) int32 { return int32(a - b) }

// keeper is the one goroutine that watches every pair's clock: idle
// timeout, the connection's age (MaxConnAge), the keepalive pings (spread over the interval) and clients that
// stopped answering them, token expiry, a message that takes too long while
// its direction is parked, and the close deadline. One sweep over all pairs
// per tick costs far less than a timer per pair, and a parked pair then
// holds nothing but its state. The keeper never touches a socket: it
// publishes and kicks (pair.end, pair.abort, direction.pingDue).
func (p *Proxy) keeper(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(p.tick)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			p.sweep(now.UnixNano())
		}
	}
}

// keeperTick is a quarter of the shortest period the keeper enforces, at
// most a second and at least 10ms.
func keeperTick(cfg *Config) time.Duration {
	tick := time.Second
	for _, d := range []time.Duration{cfg.IdleTimeout, cfg.PingInterval, cfg.MessageTimeout, cfg.CloseTimeout, cfg.MaxConnAge} {
		if d > 0 {
			tick = min(tick, d/4)
		}
	}
	return max(tick, 10*time.Millisecond)
}

func (p *Proxy) sweep(now int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		p.watch(pr, now)
	}
}

// watch checks one pair's clock.
func (p *Proxy) watch(pr *pair, now int64) {
	k := &pr.keep
	// Activity is bytes read, not frames: a single frame that streams for
	// minutes keeps its connection alive. The client's answers to the
	// gate's pings show that it is there (heard), not that the connection
	// is in use (in).
	at := uint32((now - pr.start) / int64(time.Millisecond))
	heard := pr.fromClient.r.Received()
	if h := uint32(heard); h != k.heard {
		k.heard, k.heardAt = h, at
	}
	if k.asked && !pr.fromUpstream.pingDue.Load() {
		// Taken by the direction since the last sweep. Held back for
		// more than half an interval (the direction was in one long
		// frame), it leaves the client an interval to answer from now:
		// silence counts from an interval before it went out at the
		// latest. (It was asked for at nextPing - ping: no ping is asked
		// for again while one is held back.)
		k.asked = false
		ping := uint32(p.cfg.PingInterval / time.Millisecond)
		if since(at, k.nextPing-ping) > int32(ping/2) && since(at-ping, k.heardAt) > 0 {
			k.heardAt = at - ping
		}
	}
	if in := uint32(heard - pr.fromClient.consumed.Load()); in != k.in {
		k.in, k.inAt = in, at
	}
	if out := uint32(pr.fromUpstream.r.Received()); out != k.out {
		k.out, k.outAt = out, at
	}
	closeTimeout := int64(p.cfg.CloseTimeout)
	if by := pr.life.closeBy.Load(); by != 0 {
		// Closing: only the deadline and the backstop matter now.
		switch {
		case now-by > closeTimeout+int64(p.tick):
			p.backstop(pr)
		case now >= by:
			pr.abort()
		}
		return
	}
	idle, ping := int32(p.cfg.IdleTimeout/time.Millisecond), int32(p.cfg.PingInterval/time.Millisecond)
	switch {
	case idle > 0 && min(since(at, k.inAt), since(at, k.outAt)) >= idle:
		pr.end(&idleEnding)
	case p.cfg.CloseOnTokenExpiry && pr.tokenExpired(now):
		pr.end(&expiredEnding)
	case pr.fromClient.msgDeadline.Load() != 0 && now >= pr.fromClient.msgDeadline.Load():
		pr.end(&messageTimeoutEnding)
	case pr.retire != 0 && now >= pr.retire:
		pr.end(p.drainEnding())
	case ping > 0 && !k.asked && since(at, k.heardAt) > 2*ping:
		// Two intervals without a byte from the client, not even a pong.
		// Not while a ping is held back (the direction to the client is
		// inside one long frame, or a compressed message whose next
		// fragment has not come): the client cannot answer what it was
		// not sent. A client that stops reading meets --write-timeout.
		pr.end(&pingTimeoutEnding)
	case ping > 0 && !k.asked && since(at, k.nextPing) >= 0:
		k.nextPing += uint32(ping)
		if since(at, k.nextPing) >= 0 {
			k.nextPing = at + uint32(ping)
		}
		pr.fromUpstream.pingDue.Store(true)
		k.asked = true
		p.wake(&pr.fromUpstream)
	}
}

// backstop forces a pair that is still open a close timeout after its close
// deadline, two close timeouts or more after its close began: once aborted
// its directions finish at once, so this means one missed a kick. It
// should never run; the metric says if it does.
func (p *Proxy) backstop(pr *pair) {
	if pr.keep.forced {
		return // the directions are on their way out
	}
	pr.keep.forced = true
	p.m.CloseBackstop.Inc()
	p.log.Error("relay: a pair outlived its close deadline; forcing it closed",
		"client_ip", pr.info.ip.String(), "path", pr.info.path)
	pr.cut()
	pr.kick()
}

// leewayReporter is what Config.Auth may also implement (auth.Verifier
// does): the clock skew it tolerates past a token's exp.
type leewayReporter interface {
	Leeway() time.Duration
}

// tokenExpiry is when a connection whose token expires at exp ends under
// CloseOnTokenExpiry, as pair.expiry holds it: exp plus the leeway of
// Config.Auth, since the handshake accepted the token until then and a
// connection lives no shorter than a new handshake with the same token
// would be let in. An Authenticator that reports no leeway allows none.
func (p *Proxy) tokenExpiry(exp time.Time) int64 {
	if exp.IsZero() {
		return 0
	}
	if l, ok := p.cfg.Auth.(leewayReporter); ok {
		exp = exp.Add(l.Leeway())
	}
	return expiryNanos(exp)
}

// tokenExpired reports whether pr's token is past its exp and the leeway.
func (pr *pair) tokenExpired(now int64) bool {
	return pr.expiry != 0 && now >= pr.expiry
}

// lastNano and firstNano bound the times whose UnixNano fits in an int64
// (the years 1678 to 2262); time.Time.UnixNano is undefined outside them.
var (
	lastNano  = time.Unix(0, math.MaxInt64)
	firstNano = time.Unix(0, math.MinInt64)
)

// expiryNanos is a token's exp as pair.expiry holds it, in Unix
// nanoseconds: 0, for no expiry, when exp is zero or after lastNano, since
// a token that outlives int64 nanoseconds never expires while the gate
// runs; math.MinInt64, long past, when exp is before firstNano.
func expiryNanos(exp time.Time) int64 {
	switch {
	case exp.IsZero() || exp.After(lastNano):
		return 0
	case exp.Before(firstNano):
		return math.MinInt64
	}
	return exp.UnixNano()
}
