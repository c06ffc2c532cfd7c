package proxy

import (
	"errors"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/metrics"
)

// client is who is behind a request: the resolved IP, the identity and the
// rate-limit keys of both.
type client struct {
	ip       netip.Addr
	ipKey    string
	userKey  string
	identity auth.Identity
}

// admit checks a request's origin and token before anything is dialed. It
// answers the request itself (403, 401) and returns false when it refuses.
func (p *Proxy) admit(w http.ResponseWriter, r *http.Request) (client, bool) {
	var c client
	c.ip = p.cfg.ClientIP.ClientIP(peerAddr(r), r.Header.Values("X-Forwarded-For"))
	c.ipKey = p.cfg.ClientIP.Key(c.ip)
	if len(p.cfg.AllowedOrigins) > 0 && !auth.OriginAllowed(p.cfg.AllowedOrigins, r.Header.Get("Origin")) {
		p.refuse(w, http.StatusForbidden, "origin not allowed", metrics.ResultForbidden)
		return c, false
	}
	c.identity = auth.Identity{Anonymous: true}
	if p.cfg.Auth != nil {
		id, err := p.cfg.Auth.Authenticate(r.Context(), r)
		if err != nil {
			reason := auth.ReasonMalformed
			var ae *auth.Error
			if errors.As(err, &ae) {
				reason = ae.Reason
			}
			p.m.AuthFailures.WithLabelValues(reason).Inc()
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			p.refuse(w, http.StatusUnauthorized, "unauthorized: "+reason, metrics.ResultUnauthorized)
			p.log.Info("token refused", "reason", reason, "client_ip", c.ip.String(), "path", r.URL.Path)
			return c, false
		}
		c.identity = id
	}
	c.userKey = c.identity.Key(c.ipKey)
	return c, true
}

// prepareUpstream edits h and the query of a request going upstream: the
// token and the marker protocol removed (Auth), spoofable and stripped
// headers removed, the identity header set. It returns the subprotocols to
// offer upstream and whether the client offered the marker "wsgate".
func (p *Proxy) prepareUpstream(h http.Header, u *url.URL, c client) (protocols []string, marker bool) {
	if p.cfg.Auth != nil {
		q := u.Query()
		before := len(q)
		protocols, marker = p.cfg.Auth.PrepareUpstream(h, q)
		if len(q) != before {
			u.RawQuery = q.Encode()
		}
	} else {
		protocols = splitProtocols(h.Values("Sec-WebSocket-Protocol"))
	}
	for _, name := range p.cfg.StripHeaders {
		h.Del(name)
	}
	if name := p.cfg.IdentityHeader; name != "" {
		h.Del(name)
		if !c.identity.Anonymous {
			h.Set(name, c.identity.Subject)
		}
	}
	return protocols, marker
}

// splitProtocols lists subprotocols in the client's order.
func splitProtocols(values []string) []string {
	var ps []string
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				ps = append(ps, s)
			}
		}
	}
	return ps
}
