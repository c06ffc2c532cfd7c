package auth

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

const (
	// MarkerProtocol is the subprotocol a browser offers next to
	// "bearer.<jwt>" (RFC 6455 section 11.3.4 lets the client offer several),
	// so that the gate has a protocol to select in its 101 answer. It never
	// goes upstream.
	MarkerProtocol = "wsgate"
	bearerProtocol = "bearer."
)

var hdrProtocol = textproto.CanonicalMIMEHeaderKey("Sec-WebSocket-Protocol")

// extract returns the first token found in r: Authorization bearer, query
// parameter, subprotocol, cookie.
func (v *Verifier) extract(r *http.Request) (string, bool) {
	if tok, ok := bearerToken(r.Header.Get("Authorization")); ok {
		return tok, true
	}
	if r.URL != nil && strings.Contains(r.URL.RawQuery, v.cfg.QueryParam) {
		if tok := r.URL.Query().Get(v.cfg.QueryParam); tok != "" {
			return tok, true
		}
	}
	for _, line := range r.Header[hdrProtocol] {
		for p := range strings.SplitSeq(line, ",") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(p), bearerProtocol); ok && tok != "" {
				return tok, true
			}
		}
	}
	if v.cfg.Cookie != "" {
		if c, err := r.Cookie(v.cfg.Cookie); err == nil && c.Value != "" {
			return c.Value, true
		}
	}
	return "", false
}

// bearerToken parses "Bearer <token>" (the scheme is case-insensitive,
// RFC 6750 section 2.1).
func bearerToken(h string) (string, bool) {
	const scheme = "bearer "
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	tok := strings.TrimSpace(h[len(scheme):])
	return tok, tok != ""
}

// PrepareUpstream edits h and q, which must be the caller's copies of the
// request's header and query, for the request sent upstream. It always
// removes the marker protocol "wsgate"; unless ForwardToken is set (or
// authentication is disabled, when the token is not the gate's business) it
// also removes the Authorization bearer, the token query parameter, the
// "bearer.<jwt>" subprotocol and the token cookie. It returns the
// subprotocols the client offered minus those removed, in order, and whether
// the client offered the marker.
func (v *Verifier) PrepareUpstream(h http.Header, q url.Values) (protocols []string, offeredMarker bool) {
	strip := v.Enabled() && !v.cfg.ForwardToken
	if strip {
		if _, ok := bearerToken(h.Get("Authorization")); ok {
			h.Del("Authorization")
		}
		if q != nil {
			q.Del(v.cfg.QueryParam)
		}
		if v.cfg.Cookie != "" {
			stripCookie(h, v.cfg.Cookie)
		}
	}
	lines := h[hdrProtocol]
	if len(lines) == 0 {
		return nil, false
	}
	for _, line := range lines {
		for p := range strings.SplitSeq(line, ",") {
			p = strings.TrimSpace(p)
			switch {
			case p == "":
			case p == MarkerProtocol:
				offeredMarker = true
			case strip && strings.HasPrefix(p, bearerProtocol):
			default:
				protocols = append(protocols, p)
			}
		}
	}
	if len(protocols) == 0 {
		delete(h, hdrProtocol)
	} else {
		h[hdrProtocol] = []string{strings.Join(protocols, ", ")}
	}
	return protocols, offeredMarker
}

// stripCookie removes every cookie named name from the Cookie lines of h,
// keeping the other pairs byte for byte.
func stripCookie(h http.Header, name string) {
	lines := h["Cookie"]
	if len(lines) == 0 {
		return
	}
	var out []string
	for _, line := range lines {
		var kept []string
		for pair := range strings.SplitSeq(line, ";") {
			pair = strings.TrimSpace(pair)
			if pair == "" {
				continue
			}
			n, _, _ := strings.Cut(pair, "=")
			if strings.TrimSpace(n) == name {
				continue
			}
			kept = append(kept, pair)
		}
		if len(kept) > 0 {
			out = append(out, strings.Join(kept, "; "))
		}
	}
	if len(out) == 0 {
		h.Del("Cookie")
		return
	}
	h["Cookie"] = out
}
