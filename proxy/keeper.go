package proxy

import (
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/metrics"
)

// keeper is the one goroutine that watches every pair's clock: idle
// timeout, the gate's keepalive pings (and clients that stopped answering
// them), token expiry. One sweep over all pairs per tick costs far less
// than a timer per pair, and a parked pair then holds nothing but its state.
func (p *Proxy) keeper(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(p.keeperTick())
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
func (p *Proxy) keeperTick() time.Duration {
	tick := time.Second
	for _, d := range []time.Duration{p.cfg.IdleTimeout, p.cfg.PingInterval} {
		if d > 0 {
			tick = min(tick, d/4)
		}
	}
	return max(tick, 10*time.Millisecond)
}

func (p *Proxy) sweep(now int64) {
	idle := int64(p.cfg.IdleTimeout)
	ping := int64(p.cfg.PingInterval)
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		if pr.ended.Load() {
			continue
		}
		switch {
		case idle > 0 && now-pr.lastSeen.Load() >= idle:
			go pr.end(ending{initiator: metrics.InitiatorGate,
				clientCode: ws.StatusGoingAway, clientReason: "idle timeout",
				upCode: ws.StatusGoingAway, upReason: "idle timeout"})
		case p.cfg.CloseOnTokenExpiry && pr.expiry != 0 && now >= pr.expiry:
			go pr.end(ending{initiator: metrics.InitiatorGate,
				clientCode: ws.StatusPolicyViolation, clientReason: "token expired",
				upCode: ws.StatusGoingAway, upReason: "token expired"})
		case ping > 0 && now-pr.lastPing.Load() > 2*ping:
			// Two intervals without a frame, not even a pong.
			go pr.end(ending{initiator: metrics.InitiatorGate,
				clientCode: ws.StatusGoingAway, clientReason: "ping timeout",
				upCode: ws.StatusGoingAway, upReason: "client went away"})
		case ping > 0 && now-pr.pingSent.Load() >= ping:
			pr.pingSent.Store(now)
			go pr.sendPing()
		}
	}
}
