package proxy

import (
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// hopHeaders are the hop-by-hop headers (RFC 9110 section 7.6.1): they
// describe the client's connection to the gate and never go upstream.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// handshakeHeaders are the WebSocket handshake's own headers, which the
// dialer of the upstream handshake writes itself.
var handshakeHeaders = []string{
	"Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Accept", "Sec-Websocket-Extensions",
	"Sec-Websocket-Protocol", "Host",
}

// upstreamRequest returns what the upstream handshake for r, admitted as c,
// carries: the ws:// URL, the header (rewriteUpstream's) and the
// subprotocols to offer, and whether the client offered the marker
// protocol.
func (p *Proxy) upstreamRequest(r *http.Request, c client) (target string, h http.Header, protocols []string, marker bool) {
	h = r.Header.Clone()
	u := *r.URL
	protocols, marker = p.rewriteUpstream(h, &u, r, c, true)
	return p.upstreamURL(&u), h, protocols, marker
}

// rewriteUpstream turns h and u, copies of in's header and URL, into what
// goes upstream for in, a request admitted as c. It alone decides what the
// backend sees of a client's request, on the WebSocket path
// (upstreamRequest) and on the pass-through path (the reverse proxy's
// Rewrite), and works in httputil.ReverseProxy's order:
//
//  1. What the client addressed to the gate goes: the hop-by-hop headers
//     and every header that in's Connection names. This comes first, so a
//     client cannot remove a header that the gate sets by naming it there.
//  2. What the client must not tell the backend goes: the token (unless
//     Config.Auth forwards it) and the marker subprotocol, StripHeaders, an
//     inbound identity header, Forwarded (whose entries nobody vouches
//     for) and the X-Forwarded-* headers, each also under any name that
//     reads the same with '_' for '-' (dropGateHeaders); on the WebSocket
//     path also the handshake headers that the upstream dialer writes
//     itself.
//  3. The gate's own headers are set: IdentityHeader for a verified
//     subject; X-Forwarded-For (a trusted proxy's list with the peer
//     appended, the peer alone otherwise); X-Forwarded-Proto and
//     X-Forwarded-Host as a trusted proxy sent them, or else as the gate
//     received the request.
//
// It returns the subprotocols to offer upstream, in the client's order,
// and whether the client offered the marker protocol.
func (p *Proxy) rewriteUpstream(h http.Header, u *url.URL, in *http.Request, c client, handshake bool) (protocols []string, marker bool) {
	// 1.
	for _, line := range in.Header["Connection"] {
		for name := range strings.SplitSeq(line, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
	if !handshake && httpguts.HeaderValuesContainsToken(in.Header["Te"], "trailers") {
		// As ReverseProxy does: tell the backend that trailers reach the
		// client (golang/go#21096).
		h.Set("Te", "trailers")
	}

	// 2.
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
	p.dropGateHeaders(h)
	if handshake {
		for _, name := range handshakeHeaders {
			h.Del(name)
		}
	}

	// 3.
	if name := p.cfg.IdentityHeader; name != "" && !c.identity.Anonymous {
		h.Set(name, c.identity.Subject)
	}
	p.setForwarded(h, in)
	return protocols, marker
}

// forwardedHeaders are the headers of a proxy chain: the gate sets the
// X-Forwarded-* ones itself (setForwarded) and drops Forwarded.
var forwardedHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"}

// dropGateHeaders removes from h what the client may not say to the
// backend in the gate's name: the headers the gate sets or strips
// (forwardedHeaders, IdentityHeader, StripHeaders). A name counts when it
// reads the same with '_' taken for '-' and case ignored, since CGI, Rack
// and WSGI backends see X_Auth_Subject and X-Auth-Subject as one variable
// (HTTP_X_AUTH_SUBJECT), and whichever comes last would win there.
func (p *Proxy) dropGateHeaders(h http.Header) {
	for k := range h {
		if p.isGateHeader(k) {
			delete(h, k)
		}
	}
}

func (p *Proxy) isGateHeader(name string) bool {
	if id := p.cfg.IdentityHeader; id != "" && sameVariable(name, id) {
		return true
	}
	for _, g := range forwardedHeaders {
		if sameVariable(name, g) {
			return true
		}
	}
	for _, s := range p.cfg.StripHeaders {
		if sameVariable(name, s) {
			return true
		}
	}
	return false
}

// sameVariable reports whether header names a and b become the same CGI
// variable: equal once '_' is read as '-' and case is ignored.
func sameVariable(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		if variableByte(a[i]) != variableByte(b[i]) {
			return false
		}
	}
	return true
}

func variableByte(c byte) byte {
	switch {
	case c == '_':
		return '-'
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	}
	return c
}

// setForwarded sets the X-Forwarded-* headers of rewriteUpstream's step 3.
// It reads the values a trusted proxy sent from in, not from h: the reverse
// proxy has removed them from its copy, and a -Proto or -Host that in's
// Connection names was meant for the gate alone. X-Forwarded-For is passed
// on even then: the gate took the client's address from it (admit), and
// the backend must see the client the gate saw, not the proxy.
func (p *Proxy) setForwarded(h http.Header, in *http.Request) {
	peer := peerAddr(in)
	trusted := peer.IsValid() && p.cfg.ClientIP.IsTrusted(peer)
	received := func(name string) []string {
		if !trusted || httpguts.HeaderValuesContainsToken(in.Header["Connection"], name) {
			return nil
		}
		return in.Header.Values(name)
	}
	if peer.IsValid() {
		var chain []string
		if trusted {
			chain = in.Header.Values("X-Forwarded-For")
		}
		h.Set("X-Forwarded-For", p.cfg.ClientIP.ForwardedFor(peer, chain))
	} else {
		h.Del("X-Forwarded-For")
	}
	if v := received("X-Forwarded-Proto"); len(v) > 0 && v[0] != "" {
		h.Set("X-Forwarded-Proto", v[0])
	} else if in.TLS != nil {
		h.Set("X-Forwarded-Proto", "https")
	} else {
		h.Set("X-Forwarded-Proto", "http")
	}
	if v := received("X-Forwarded-Host"); len(v) > 0 && v[0] != "" {
		h.Set("X-Forwarded-Host", v[0])
	} else {
		h.Set("X-Forwarded-Host", in.Host)
	}
}

// upstreamURL is the ws:// URL of the upstream for r: the upstream's path
// joined with r's path, r's raw query kept.
func (p *Proxy) upstreamURL(in *url.URL) string {
	u := p.wsBase
	u.Path, u.RawPath = joinPath(p.wsBase, in)
	u.RawQuery = in.RawQuery
	u.Fragment = ""
	return u.String()
}

func joinPath(base url.URL, in *url.URL) (path, rawPath string) {
	bp := base.EscapedPath()
	if bp == "" || bp == "/" {
		return in.Path, in.RawPath
	}
	joined := strings.TrimSuffix(bp, "/") + "/" + strings.TrimPrefix(in.EscapedPath(), "/")
	u, err := url.Parse(joined)
	if err != nil {
		return joined, ""
	}
	return u.Path, u.RawPath
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
