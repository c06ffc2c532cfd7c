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
	// health: the backend's health check, passed without any limit.
	health bool
}

// admit checks a request's origin and token before anything is dialed. It
// answers the request itself (403, 401) and returns false when it refuses.
// The backend's health check (Config.HealthPaths) is admitted with no
// check at all; a route that skips authentication (Config.SkipAuth, whose
// routes only a clean path matches, and Config.SkipAuthPreflight) is
// admitted without a token, as an anonymous client, after the origin check.
func (p *Proxy) admit(w http.ResponseWriter, r *http.Request) (client, bool) {
	var c client
	c.ip = p.cfg.ClientIP.ClientIP(peerAddr(r), r.Header.Values("X-Forwarded-For"))
	c.ipKey = p.cfg.ClientIP.Key(c.ip)
	c.identity = auth.Identity{Anonymous: true}
	if p.isHealth(r) {
		c.health = true
		c.userKey = c.identity.Key(c.ipKey)
		return c, true
	}
	if len(p.cfg.AllowedOrigins) > 0 && !auth.OriginAllowed(p.cfg.AllowedOrigins, r.Header.Get("Origin")) {
		p.refuse(w, http.StatusForbidden, "origin not allowed", metrics.ResultForbidden)
		return c, false
	}
	if p.cfg.Auth != nil && !p.skipsAuth(r) {
		id, err := p.cfg.Auth.Authenticate(r.Context(), r)
		if err != nil {
			reason := auth.ReasonMalformed
			var ae *auth.Error
			if errors.As(err, &ae) {
				reason = ae.Reason
			}
			p.m.AuthFailures.WithLabelValues(reason).Inc()
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			p.allowCORS(w, r)
			p.refuse(w, http.StatusUnauthorized, "unauthorized: "+reason, metrics.ResultUnauthorized)
			p.log.Info("token refused", "reason", reason, "client_ip", c.ip.String(), "path", r.URL.Path)
			return c, false
		}
		if p.cfg.Revoked != nil && p.cfg.Revoked(id.Subject, id.TokenID) {
			p.m.AuthFailures.WithLabelValues(auth.ReasonRevoked).Inc()
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="token revoked"`)
			p.allowCORS(w, r)
			p.refuse(w, http.StatusUnauthorized, "unauthorized: "+auth.ReasonRevoked, metrics.ResultUnauthorized)
			p.log.Info("token refused", "reason", auth.ReasonRevoked, "client_ip", c.ip.String(), "path", r.URL.Path)
			return c, false
		}
		c.identity = id
	}
	c.userKey = c.identity.Key(c.ipKey)
	return c, true
}
