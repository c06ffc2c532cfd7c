package proxy

import (
	"errors"
	"net/http"
	"net/netip"

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
