package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync/atomic"
	"time"

	"github.com/holo/wsgate/metrics"
)

// passThrough is the handler of every request that is not a WebSocket
// handshake (socket.io's long-polling, REST calls): it bounds how many are
// in flight, admits and limits each like a handshake, and passes it to the
// upstream through a reverse proxy that keeps the client's Host and sends
// what rewriteUpstream says.
type passThrough struct {
	p        *Proxy
	rp       *httputil.ReverseProxy
	inFlight atomic.Int64 // requests between the cap check and their end
}

// passRequest is what servePassThrough hands the reverse proxy's hooks
// about one request, in the request's context.
type passRequest struct {
	client client
	body   *timedBody // nil without PassBodyTimeout or without a body
	// pollSid is the engine.io session of a polling GET: its answer may
	// have to carry the refusal of the session (refusePollAnswer).
	pollSid string
}

type passRequestKey struct{}

func passRequestOf(r *http.Request) *passRequest {
	pr, _ := r.Context().Value(passRequestKey{}).(*passRequest)
	return pr
}

func (p *Proxy) newPassThrough() http.Handler {
	target := p.cfg.Upstream
	transport := &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   p.cfg.DialTimeout,
			KeepAlive: upstreamKeepAlive(target),
		}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: p.cfg.PassResponseTimeout,
	}
	pt := &passThrough{p: p}
	pt.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
			p.rewriteUpstream(r.Out.Header, r.Out.URL, r.In, passRequestOf(r.In).client, false)
		},
		Transport: transport,
		ErrorLog:  slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			code, msg := 0, ""
			switch body := passRequestOf(r).body; {
			case body != nil && body.timedOut.Load():
				code, msg = http.StatusRequestTimeout, "request body timed out"
				w.Header().Set("Connection", "close")
			case errors.Is(err, context.Canceled):
				// The client left; nobody reads an answer.
				return
			case isTimeout(err):
				code, msg = http.StatusGatewayTimeout, "upstream timed out"
			default:
				p.log.Warn("pass-through failed", "err", err, "path", r.URL.Path)
				code, msg = http.StatusBadGateway, "upstream unavailable"
			}
			p.allowCORS(w, r)
			writeError(w, code, msg)
			p.countHTTP(code)
		},
		ModifyResponse: func(res *http.Response) error {
			if sid := passRequestOf(res.Request).pollSid; sid != "" {
				if err := p.addPollNotice(res, sid); err != nil {
					return err
				}
				if err := p.refusePollAnswer(res, sid); err != nil {
					return err
				}
			}
			p.countHTTP(res.StatusCode)
			return nil
		},
	}
	return pt
}

// servePassThrough serves a request that is not a WebSocket handshake.
func (p *Proxy) servePassThrough(w http.ResponseWriter, r *http.Request) {
	p.pass.ServeHTTP(w, r)
}

// ServeHTTP refuses a request over MaxPassRequests with 503, applies the
// origin, token and message limits (engine.io polling requests by their
// packets, see polling.go), and passes it to the upstream. The backend's
// health check passes without any of them.
func (pt *passThrough) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := pt.p
	n := pt.inFlight.Add(1)
	defer pt.inFlight.Add(-1)
	if max := p.cfg.MaxPassRequests; max > 0 && n > int64(max) {
		w.Header().Set("Retry-After", "1")
		p.allowCORS(w, r)
		writeError(w, http.StatusServiceUnavailable, "over capacity")
		p.countHTTP(http.StatusServiceUnavailable)
		return
	}
	// A non-WebSocket upgrade (h2c, ...) would become an unlimited tunnel.
	r.Header.Del("Upgrade")
	cl, ok := p.admit(w, r)
	if !ok {
		return
	}
	pr := &passRequest{client: cl}
	timeBody := func() {
		if d := p.cfg.PassBodyTimeout; d > 0 && r.Body != nil && r.Body != http.NoBody {
			if pr.body = newTimedBody(w, r.Body, d); pr.body != nil {
				r.Body = pr.body
			}
		}
	}
	switch eio, isEIO := p.engineIO(r); {
	case cl.health:
	case isEIO && eio.transport == "polling":
		// A POST's body is read before it is decided.
		timeBody()
		if pt.servePolling(w, r, cl, eio) {
			return
		}
		if r.Method == http.MethodGet {
			pr.pollSid = eio.sid
		}
	case p.limitRequest(w, r, cl):
		return
	}
	if pr.body == nil {
		timeBody()
	}
	pt.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), passRequestKey{}, pr)))
}

// timedBody bounds receiving a request body with the connection's read
// deadline, and lifts the deadline once the body has been read to its end.
// The lifting matters: after the body, net/http keeps a read pending on the
// connection to notice a client that hangs up, and a deadline that fires
// there cancels the request, which would cut a long poll whose response
// the backend is still holding. Read may run on the reverse proxy's
// transport goroutine while the handler's goroutine looks at timedOut.
type timedBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	timedOut atomic.Bool
	ended    atomic.Bool
}

// newTimedBody sets the read deadline d from now on w's connection and
// returns body wrapped to lift it; nil when w cannot set deadlines.
func newTimedBody(w http.ResponseWriter, body io.ReadCloser, d time.Duration) *timedBody {
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(d)) != nil {
		return nil
	}
	return &timedBody{ReadCloser: body, rc: rc}
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		if b.ended.CompareAndSwap(false, true) {
			_ = b.rc.SetReadDeadline(time.Time{})
		}
	case err != nil && isTimeout(err):
		b.timedOut.Store(true)
	}
	return n, err
}

// countHTTP counts a pass-through answer in http_requests_total under
// its exact status.
func (p *Proxy) countHTTP(code int) {
	p.m.HTTPRequests.WithLabelValues(metrics.StatusLabel(code)).Inc()
}
