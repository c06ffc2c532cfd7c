package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"time"
)

// passClient carries a pass-through request's admitted client from
// servePassThrough to the reverse proxy's Rewrite, in the request's context.
type passClient struct{}

// newPassThrough returns the handler for requests that are not WebSocket
// handshakes (socket.io's long-polling, REST calls): a reverse proxy to the
// upstream that keeps the client's Host and sends what rewriteUpstream says.
func (p *Proxy) newPassThrough() http.Handler {
	target := p.cfg.Upstream
	transport := &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   p.cfg.DialTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			cl, _ := pr.In.Context().Value(passClient{}).(client)
			p.rewriteUpstream(pr.Out.Header, pr.Out.URL, pr.In, cl, false)
		},
		Transport: transport,
		ErrorLog:  slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			switch {
			case errors.Is(err, context.Canceled):
				// The client left; nobody reads an answer.
			case isTimeout(err):
				writeError(w, http.StatusGatewayTimeout, "upstream timed out")
			default:
				p.log.Warn("pass-through failed", "err", err, "path", r.URL.Path)
				writeError(w, http.StatusBadGateway, "upstream unavailable")
			}
		},
		ModifyResponse: func(res *http.Response) error {
			p.m.HTTPRequests.WithLabelValues(statusClass(res.StatusCode)).Inc()
			return nil
		},
	}
}

// servePassThrough applies the limits to a plain HTTP request and passes
// it to the upstream.
func (p *Proxy) servePassThrough(w http.ResponseWriter, r *http.Request) {
	// A non-WebSocket upgrade (h2c, ...) would become an unlimited tunnel.
	r.Header.Del("Upgrade")
	cl, ok := p.admit(w, r)
	if !ok {
		return
	}
	if p.limitRequest(w, r, cl.userKey, cl.ipKey) {
		p.m.HTTPRequests.WithLabelValues("4xx").Inc()
		return
	}
	p.pass.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), passClient{}, cl)))
}

func statusClass(code int) string {
	switch {
	case code < 200:
		return "1xx"
	case code < 300:
		return "2xx"
	case code < 400:
		return "3xx"
	case code < 500:
		return "4xx"
	}
	return "5xx"
}
