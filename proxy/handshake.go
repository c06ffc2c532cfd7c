package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"golang.org/x/net/http/httpguts"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/metrics"
)

// isWebSocket reports whether r asks for a WebSocket upgrade (RFC 6455
// section 4.1), matching tokens rather than whole header values.
func isWebSocket(r *http.Request) bool {
	return httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") &&
		httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "websocket")
}

// checkHandshake validates what the gate needs of a client handshake
// before it dials the upstream; gobwas/ws checks it again on upgrade.
func checkHandshake(r *http.Request) (int, string) {
	switch {
	case r.Method != http.MethodGet:
		return http.StatusMethodNotAllowed, "websocket handshake must be GET"
	case !r.ProtoAtLeast(1, 1):
		return http.StatusBadRequest, "websocket handshake needs HTTP/1.1"
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		return http.StatusUpgradeRequired, "unsupported Sec-WebSocket-Version (want 13)"
	case len(r.Header.Get("Sec-WebSocket-Key")) != 24:
		return http.StatusBadRequest, "missing or malformed Sec-WebSocket-Key"
	}
	return 0, ""
}

// serveWebSocket handles one handshake: check, limits, dial the upstream,
// upgrade the client with the upstream's subprotocol, relay.
func (p *Proxy) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if p.draining.Load() {
		p.refuse(w, http.StatusServiceUnavailable, "shutting down", metrics.ResultShuttingDown)
		return
	}
	if !p.slots.take(r.Context()) {
		p.refuseBusy(w)
		return
	}
	slotHeld := true
	defer func() {
		if slotHeld {
			p.slots.give()
		}
	}()
	// Counted from here until the pair is released (pair.finish).
	handedOver, counted := false, true
	n := p.conns.Add(1)
	defer func() {
		if !handedOver && counted {
			p.conns.Add(-1)
		}
	}()
	if max := p.cfg.MaxConns; max > 0 && n > int64(max) {
		p.refuse(w, http.StatusServiceUnavailable, "over capacity", metrics.ResultOverCapacity)
		return
	}
	if code, msg := checkHandshake(r); code != 0 {
		if code == http.StatusUpgradeRequired {
			w.Header().Set("Sec-WebSocket-Version", "13")
		}
		p.refuse(w, code, msg, metrics.ResultBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), p.cfg.HandshakeTimeout)
	defer cancel()

	cl, ok := p.admit(w, r)
	if !ok {
		return
	}
	release := func() {}
	defer func() {
		if !handedOver {
			release()
		}
	}()
	eio, isEIO := p.engineIO(r)
	connID := eio.sid
	if connID == "" {
		connID = newConnID()
	}
	cr := p.rulesFor(r, cl, connID)
	if cr != nil && cr.adm.Denied {
		p.denied(w, r, cl)
		return
	}
	if p.cfg.Limiter != nil {
		d := p.decideHandshake(ctx, cl, cr)
		refused := p.refuses(d)
		if !d.Allowed {
			p.enforce(d, cr.tierName())
			p.logRefusal(d, p.refusalOf(r, cl, "handshake", "websocket", connID))
		}
		if !refused {
			// The concurrent-connection bound (--ip-max-conns): registered
			// until the pair is released.
			od, refusedConn, rel := p.openConn(ctx, cl.ipKey, d, cr.tierName())
			refused, release = refusedConn, rel
			if !od.Allowed {
				rf := p.refusalOf(r, cl, "handshake", "websocket", connID)
				rf.openConn = true
				p.logRefusal(od, rf)
				d = od
			}
		}
		if refused {
			// What is left, the refusal and the wait for the client's
			// close (up to --close-timeout), holds neither a pending
			// handshake's slot nor a place under --max-conns: a refused
			// client that never answers must not lock others out.
			slotHeld, counted = false, false
			p.slots.give()
			p.conns.Add(-1)
			p.refuseUpgrade(w, r, splitProtocols(r.Header.Values("Sec-WebSocket-Protocol")), d, eio, isEIO)
			p.m.ConnectionsTotal.WithLabelValues(metrics.ResultRateLimited).Inc()
			return
		}
	}

	target, header, offered, marker := p.upstreamRequest(r, cl)
	var rejected *upstreamResponse
	dialer := ws.Dialer{
		Timeout:   p.cfg.DialTimeout,
		Protocols: offered,
		Header:    ws.HandshakeHeaderHTTP(header),
		Host:      r.Host,
		NetDial:   p.dialUpstream,
		OnStatusError: func(status int, _ []byte, resp io.Reader) {
			rejected = readUpstreamResponse(status, resp)
		},
	}
	upConn, upBuf, hs, err := dialer.Dial(ctx, target)
	if err != nil {
		p.upstreamFailed(w, r, err, rejected)
		return
	}

	// The client gets the upstream's choice; when the upstream chose none
	// and the client offered the marker, the marker, because browsers and
	// the Node ws client fail a handshake whose offered protocols get no
	// answer.
	protocol := hs.Protocol
	if protocol == "" && marker {
		protocol = auth.MarkerProtocol
	}
	if !p.reserve() {
		// Shutdown began while the upstream answered: no 101 for a
		// connection that could only be closed at once.
		_ = upConn.Close()
		if upBuf != nil {
			ws.PutReader(upBuf)
		}
		p.refuse(w, http.StatusServiceUnavailable, "shutting down", metrics.ResultShuttingDown)
		return
	}
	reserved := true
	defer func() {
		if reserved {
			p.wg.Done()
		}
	}()
	if hook := p.hooks.upgrading; hook != nil {
		hook()
	}
	up := ws.HTTPUpgrader{Timeout: p.cfg.HandshakeTimeout}
	if protocol != "" {
		up.Protocol = ws.SelectEqual(protocol)
	}
	var ext *wsflate.Extension
	if p.cfg.Compression {
		ext = &wsflate.Extension{Parameters: deflateParams}
		up.Negotiate = ext.Negotiate
	}
	clConn, clBuf, _, err := up.Upgrade(r, w)
	if err != nil {
		p.log.Debug("client upgrade failed", "err", err)
		_ = upConn.Close()
		if upBuf != nil {
			ws.PutReader(upBuf)
		}
		if clConn != nil {
			_ = clConn.Close()
		}
		p.m.ConnectionsTotal.WithLabelValues(metrics.ResultBadRequest).Inc()
		return
	}

	pr := newPair(p, clConn, upConn, &connInfo{id: connID, sio: isEIO, rules: cr,
		subject: cl.identity.Subject, tokenID: cl.identity.TokenID,
		ip: cl.ip, path: r.URL.Path, protocol: protocol})
	pr.info.userKey, pr.info.ipKey = cl.userKey, cl.ipKey
	if cr != nil {
		// Its messages keep their Redis keys: the relay decides them one
		// after another, as a ChargeKeys needs.
		cr.keepKeys = true
	}
	pr.release = release
	if ext != nil {
		if _, ok := ext.Accepted(); ok {
			pr.deflating = true
			pr.fromClient.s.Compression = true
		}
	}
	pr.expiry = p.tokenExpiry(cl.identity.Expiry)
	var early []byte
	if n := clBuf.Reader.Buffered(); n > 0 {
		early, _ = clBuf.Reader.Peek(n)
	}
	var upEarly []byte
	if upBuf != nil {
		upEarly, _ = upBuf.Peek(upBuf.Buffered())
	}
	pr.prime(early, upEarly)
	if upBuf != nil {
		ws.PutReader(upBuf)
	}
	reserved = false // the pair's now: its finish says Done
	p.track(pr)
	if !cl.identity.Anonymous && p.cfg.Revoked != nil && p.cfg.Revoked(cl.identity.Subject, cl.identity.TokenID) {
		// Revoked while this handshake dialed the upstream: the
		// revocation's Disconnect found no pair to close then.
		pr.end(disconnectEnding(revokedReason))
	}
	p.m.ConnectionsTotal.WithLabelValues(metrics.ResultOK).Inc()
	p.m.HandshakeDuration.Observe(time.Since(start).Seconds())
	handedOver = true
	slotHeld = false
	p.slots.give() // the handshake is done: the relay is not a pending handshake
	pr.run()
}

func peerAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// upstreamResponse is what an upstream answered instead of 101.
type upstreamResponse struct {
	status int
	header http.Header
	body   []byte
}

// maxUpstreamBody bounds the body of a non-101 answer passed to the client.
const maxUpstreamBody = 64 << 10

func readUpstreamResponse(status int, resp io.Reader) *upstreamResponse {
	out := &upstreamResponse{status: status}
	res, err := http.ReadResponse(bufio.NewReader(resp), nil)
	if err != nil {
		return out
	}
	defer res.Body.Close()
	out.header = res.Header
	out.body, _ = io.ReadAll(io.LimitReader(res.Body, maxUpstreamBody))
	return out
}

// upstreamFailed answers a handshake whose upstream dial failed: the
// upstream's own status and body when it answered without 101 (as nginx
// does), 504 on a timeout, 502 otherwise.
func (p *Proxy) upstreamFailed(w http.ResponseWriter, r *http.Request, err error, rejected *upstreamResponse) {
	var se ws.StatusError
	switch {
	case errors.As(err, &se) && rejected != nil:
		for k, vs := range rejected.header {
			if skipResponseHeader(k) {
				continue
			}
			w.Header()[k] = vs
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(rejected.body)))
		w.WriteHeader(rejected.status)
		_, _ = w.Write(rejected.body)
		p.m.ConnectionsTotal.WithLabelValues(metrics.ResultUpstreamStatus).Inc()
		p.log.Info("upstream refused handshake", "status", rejected.status, "path", r.URL.Path)
	case p.draining.Load():
		// The poller stopped under the dial, or the upstream went away
		// with everything else: the gate is shutting down.
		p.refuse(w, http.StatusServiceUnavailable, "shutting down", metrics.ResultShuttingDown)
	case isTimeout(err):
		p.refuse(w, http.StatusGatewayTimeout, "upstream timed out", metrics.ResultUpstreamTimeout)
		p.log.Warn("upstream handshake timed out", "err", err, "path", r.URL.Path)
	default:
		p.refuse(w, http.StatusBadGateway, "upstream unavailable", metrics.ResultUpstreamError)
		p.log.Warn("upstream handshake failed", "err", err, "path", r.URL.Path)
	}
}

func skipResponseHeader(k string) bool {
	switch http.CanonicalHeaderKey(k) {
	case "Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Content-Length", "Trailer",
		"Proxy-Connection", "Sec-Websocket-Accept":
		return true
	}
	return false
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// refuse answers a request with an HTTP error and counts it.
func (p *Proxy) refuse(w http.ResponseWriter, code int, msg, result string) {
	writeError(w, code, msg)
	p.m.ConnectionsTotal.WithLabelValues(result).Inc()
}

// writeError writes {"code":N,"error":"msg"}.
func writeError(w http.ResponseWriter, code int, msg string) {
	body, _ := json.Marshal(struct {
		Code  int    `json:"code"`
		Error string `json:"error"`
	}{code, msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}

// headerSize approximates the bytes of r's request line and headers as
// they came on the wire.
func headerSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n + len(r.Host) + 8
}
