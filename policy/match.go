package policy

import (
	"net/http"
	"net/netip"
)

// Client is what the policy knows of a connection at its handshake.
type Client struct {
	Path string
	IP   netip.Addr
	// IPKey is what rules keyed by ip count under: the address, or the
	// IPv6 prefix it belongs to (--ipv6-prefix), as the flag rules do, so
	// that a client cannot get a budget per address of its prefix.
	// IP.String() when empty.
	IPKey string
	// User is the key of the verified identity (the client IP's when the
	// connection has no token); Subject is the token's subject, "" without.
	User, Subject string
	// Claims are the verified token's claims; nil without a token.
	Claims map[string]any
	Header http.Header
	// Conn identifies the connection, for connection keys.
	Conn string
}

// Admission is the policy's verdict on a connection at its handshake.
type Admission struct {
	// Denied: the client is on the deny list; the handshake is refused (403).
	Denied bool
	// Allowed: the client is on the allow list; it skips every rule.
	Allowed bool
	// Tier is the client's tier, or nil.
	Tier *Tier
	// Handshake are the handshake rules that apply, Messages the message
	// rules (each still filtered by the message's class). Both are empty
	// for a denied, allowed or exempt client.
	Handshake, Messages []Applied
	// Skipped are the rules that do not apply for want of a key: the
	// claim or header they count per is absent.
	Skipped []*Rule
}

// Exempt reports whether the client skips every rule: on the allow list or
// in an exempt tier.
func (a *Admission) Exempt() bool { return a.Allowed || (a.Tier != nil && a.Tier.Exempt) }

// Applied is a rule as it applies to one client: its key's value and the
// limits of the client's tier.
type Applied struct {
	Rule   *Rule
	Key    string
	Limits []Window
}

// Covers reports whether a message rule counts a message of class (an
// index into Policy.Classes, -1 for none).
func (a *Applied) Covers(p *Policy, class int) bool {
	if class >= 0 && p.Classes[class].Unlimited {
		return false
	}
	return a.Rule.Class == "" || (class >= 0 && p.Classes[class].Name == a.Rule.Class)
}

// CoversAny reports whether a message rule of a class counts a message that
// may also be of the classes in also (a bit per index into
// Policy.Classes). A rule without a class is left to Covers.
func (a *Applied) CoversAny(p *Policy, also uint64) bool {
	if also == 0 || a.Rule.Class == "" {
		return false
	}
	for b := also; b != 0; b &= b - 1 {
		if p.Classes[lowest(b)].Name == a.Rule.Class {
			return true
		}
	}
	return false
}

// Admit applies the policy to a connection at its handshake. A rule keyed
// by a claim or header the connection lacks does not apply to it (as an
// Envoy rate-limit descriptor that is missing an entry): keying every such
// client to one empty value would make them share a budget.
func (p *Policy) Admit(c *Client) Admission {
	var a Admission
	if p.Deny.Has(c.IP, c.Subject) {
		a.Denied = true
		return a
	}
	if p.Allow.Has(c.IP, c.Subject) {
		a.Allowed = true
		return a
	}
	if i := p.TierOf(c.Claims); i >= 0 {
		a.Tier = &p.Tiers[i]
	}
	if a.Exempt() {
		return a
	}
	tier := ""
	if a.Tier != nil {
		tier = a.Tier.Name
	}
	for i := range p.Rules {
		r := &p.Rules[i]
		if !r.AppliesToPath(c.Path) {
			continue
		}
		key, ok := keyOf(r.Key, c)
		if !ok {
			a.Skipped = append(a.Skipped, r)
			continue
		}
		ap := Applied{Rule: r, Key: key, Limits: r.LimitsFor(tier)}
		if r.Handshakes() {
			a.Handshake = append(a.Handshake, ap)
		} else {
			a.Messages = append(a.Messages, ap)
		}
	}
	return a
}

// keyOf returns the value a rule's counter is kept under for c.
func keyOf(k Key, c *Client) (string, bool) {
	switch k.Kind {
	case KeyIP:
		if c.IPKey != "" {
			return c.IPKey, true
		}
		return c.IP.String(), c.IP.IsValid()
	case KeyConnection:
		return c.Conn, c.Conn != ""
	case KeyClaim:
		return ClaimString(c.Claims, splitPath(k.Name))
	case KeyHeader:
		v := c.Header.Get(k.Name)
		return v, v != ""
	}
	return c.User, c.User != ""
}
