package proxy

import (
	"net/netip"
	"sort"
	"time"

	"github.com/gobwas/ws"
)

// What the operator's admin API asks of this replica's connections: which
// are open, and closing some of them now.

// Match selects open connections; a connection matches when it matches
// every field set. A Match with no field set matches none.
type Match struct {
	// Subject is the verified token's subject, whatever its issuer.
	Subject string
	// TokenID is the verified token's jti.
	TokenID string
	// IP matches the clients counted as this address by the per-IP limits
	// (an IPv6 client by its prefix, see clientip.Resolver.Key).
	IP netip.Addr
}

func (m Match) empty() bool { return m.Subject == "" && m.TokenID == "" && !m.IP.IsValid() }

// matches reports whether pr is one of m's connections. ipKey is m.IP's
// per-IP key.
func (m Match) matches(pr *pair, ipKey string) bool {
	info := pr.info
	switch {
	case m.Subject != "" && info.subject != m.Subject:
		return false
	case m.TokenID != "" && info.tokenID != m.TokenID:
		return false
	case m.IP.IsValid() && pr.info.ipKey != ipKey:
		return false
	}
	return true
}

// Conn describes one open connection.
type Conn struct {
	ID       string    `json:"id"`
	Subject  string    `json:"subject,omitempty"`
	IP       string    `json:"ip"`
	Path     string    `json:"path"`
	Protocol string    `json:"protocol,omitempty"`
	Opened   time.Time `json:"opened"`
}

// Connections lists the open connections m selects, oldest first.
func (p *Proxy) Connections(m Match) []Conn {
	out := []Conn{}
	p.eachMatch(m, func(pr *pair) {
		info := pr.info
		out = append(out, Conn{ID: info.id, Subject: info.subject, IP: info.ip.String(), Path: info.path,
			Protocol: info.protocol, Opened: time.Unix(0, pr.start).UTC()})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Opened.Before(out[j].Opened) })
	return out
}

// Disconnect closes the open connections m selects with 1008 and reason,
// the way a refusal closes them (the replies in flight still reach the
// client), and returns how many it closed.
func (p *Proxy) Disconnect(m Match, reason string) int {
	e := disconnectEnding(reason)
	n := 0
	p.eachMatch(m, func(pr *pair) {
		pr.end(e)
		n++
	})
	return n
}

// revokedReason is the close reason of a revoked token's connections.
const revokedReason = "token revoked"

// disconnectEnding is how an operator's disconnect ends a pair: 1008 and
// the reason ("disconnected" when none), after the replies in flight.
func disconnectEnding(reason string) *ending {
	if reason == "" {
		reason = "disconnected"
	}
	return &ending{initiator: byGate, afterUpstream: true,
		clientCode: ws.StatusPolicyViolation, clientReason: reason, // frames.WriteClose cuts it
		upCode: ws.StatusGoingAway, upReason: "client disconnected"}
}

// eachMatch calls f, under p.mu, for every open pair m selects.
func (p *Proxy) eachMatch(m Match, f func(*pair)) {
	if m.empty() {
		return
	}
	var ipKey string
	if m.IP.IsValid() {
		ipKey = p.cfg.ClientIP.Key(m.IP)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		if pr.life.load() == phaseOpen && m.matches(pr, ipKey) {
			f(pr)
		}
	}
}
