// Package clientip finds the client behind a connection: a Resolver turns
// the socket peer and X-Forwarded-For into the client address and its per-IP
// limit key, believing only proxies named as trusted, and NewProxyListener
// accepts PROXY protocol v1/v2 headers from those proxies alone.
package clientip

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ErrInvalidPrefix is wrapped by ParsePrefixes errors.
var ErrInvalidPrefix = errors.New("want an IP address or CIDR")

// ParsePrefixes parses CIDRs and bare IPs (a bare IP is a /32 or /128).
// Prefixes are masked, and IPv4-mapped IPv6 prefixes become IPv4 prefixes so
// that they match unmapped peers.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		var p netip.Prefix
		if strings.Contains(s, "/") {
			var err error
			if p, err = netip.ParsePrefix(s); err != nil {
				return nil, fmt.Errorf("trusted proxy %q: %w", s, ErrInvalidPrefix)
			}
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("trusted proxy %q: %w", s, ErrInvalidPrefix)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Resolver finds the client address of a request. The zero value trusts
// no proxy and groups IPv6 clients by /64.
type Resolver struct {
	Trusted    []netip.Prefix // proxies whose X-Forwarded-For is believed; nil = none
	IPv6Prefix int            // group IPv6 clients by this prefix length; 0 = 64
}

// IsTrusted reports whether a (unmapped) is inside a Trusted prefix.
func (r Resolver) IsTrusted(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range r.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ClientIP returns the client address: the peer itself unless the peer is a
// trusted proxy; then X-Forwarded-For (every line, comma lists) is walked
// from the right and the first untrusted hop is the client, or the left-most
// hop when all are trusted. Entries left of the first untrusted hop are
// whatever the client wrote and are never consulted. An unparsable entry
// ends the walk and the last trusted hop is the answer.
func (r Resolver) ClientIP(peer netip.Addr, xff []string) netip.Addr {
	cur := peer.Unmap().WithZone("")
	if !r.IsTrusted(cur) {
		return cur
	}
	for i := len(xff) - 1; i >= 0; i-- {
		line := xff[i]
		for line != "" {
			var hop string
			if j := strings.LastIndexByte(line, ','); j >= 0 {
				hop, line = line[j+1:], line[:j]
			} else {
				hop, line = line, ""
			}
			hop = strings.TrimSpace(hop)
			if hop == "" {
				continue
			}
			a, ok := parseHop(hop)
			if !ok {
				return cur
			}
			cur = a
			if !r.IsTrusted(a) {
				return a
			}
		}
	}
	return cur
}

// parseHop accepts "1.2.3.4", "2001:db8::1", "1.2.3.4:80" and "[2001:db8::1]:80".
func parseHop(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	return a.Unmap().WithZone(""), true
}

// Key returns the per-IP limit key of a: the IPv4 address, or the IPv6
// network of IPv6Prefix bits ("2001:db8:1:2::/64"), since one IPv6 client
// usually holds a whole /64. An invalid address yields "invalid".
func (r Resolver) Key(a netip.Addr) string {
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return "invalid"
	}
	if a.Is4() {
		return a.String()
	}
	bits := r.IPv6Prefix
	if bits <= 0 {
		bits = 64
	}
	bits = min(bits, 128)
	p, _ := a.Prefix(bits)
	return p.String()
}

// ForwardedFor returns the X-Forwarded-For to send upstream: the received
// list with the peer appended when the peer is a trusted proxy, just the
// peer otherwise (an untrusted client's list is a forgery).
func (r Resolver) ForwardedFor(peer netip.Addr, xff []string) string {
	p := peer.Unmap().WithZone("").String()
	if !r.IsTrusted(peer) {
		return p
	}
	var b strings.Builder
	for _, line := range xff {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		b.WriteString(line)
		b.WriteString(", ")
	}
	b.WriteString(p)
	return b.String()
}
