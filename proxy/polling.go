package proxy

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/holo/wsgate/limit"
)

// engine.io's polling transport through the gate. The request that opens
// a session is a handshake: it counts under the connection rules and is
// refused while a block lasts. A GET that reads the session's packets
// counts against nothing (what the server sends is never limited); it is
// bounded by MaxPassRequests like every pass-through request. A POST counts
// the packets it carries, each one message, engine.io's control packets
// excepted.
//
// A refusal is said in the protocol. A refused open gets a session of the
// gate's own, which answers every socket.io CONNECT with a CONNECT_ERROR.
// A refused POST reaches the upstream cut to the packets that were
// granted, followed by a close packet, so that the server ends the session
// and answers its pending GET; that answer, or the gate itself when no GET
// is pending, gives the client its last packets and the refusal event; the
// client's next GET gets the close packet from the gate.

const (
	// maxSessions bounds the sessions the gate keeps for its refusals.
	// Past it a refusal is a plain 429, as for any HTTP request.
	maxSessions = 10000
	// sessionTTL is how long the gate keeps a session: the client comes
	// back for its packets at once.
	sessionTTL = 30 * time.Second
	// defaultPollBody bounds a POST body the gate reads to count its
	// packets, when MaxMessageBytes is zero. socket.io's own default
	// (maxHttpBufferSize) is 1e6.
	defaultPollBody = 1 << 20
	// maxResponseRewrite bounds an upstream answer the gate adds the
	// refusal to.
	maxResponseRewrite = 8 << 20
)

// session is an engine.io session the gate answers for: one it opened
// itself to refuse a handshake (fake), or one of the upstream's whose
// client it refused.
type session struct {
	d    limit.Decision
	fake bool
	// out holds the packets a GET takes next; wake has a token whenever
	// out grew or the session ended.
	out   [][]byte
	wake  chan struct{}
	ended bool
	// For a refused upstream session: the namespace of the refused
	// packet, and whether the refusal went out.
	nsp       string
	delivered bool
	expires   time.Time
	// answered are the namespaces a session of the gate's own has
	// refused: a CONNECT repeated gets no second answer.
	answered []string
}

// sessions are the gate's sessions by sid.
type sessions struct {
	mu sync.Mutex
	t  sidTable[*session]
}

func newSessions() *sessions {
	return &sessions{t: newSidTable(func(s *session) time.Time { return s.expires })}
}

// add registers s under sid for the client whose IP key is ip; false when
// the table, or that client's share of it, is full.
func (ss *sessions) add(sid, ip string, s *session) bool {
	now := time.Now()
	s.expires = now.Add(sessionTTL)
	s.wake = make(chan struct{}, 1)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.t.put(sid, ip, s, now)
}

func (ss *sessions) get(sid string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.t.get(sid)
	if ok && time.Now().After(s.expires) {
		ss.t.remove(sid)
		return nil
	}
	return s
}

// maxSessionsPerIP bounds the entries one client IP holds in a sidTable:
// a client that makes sessions up, or is refused again and again, cannot
// fill the table for everyone else.
const maxSessionsPerIP = 64

// sidTable holds what the gate keeps per engine.io session, by sid,
// bounded by maxSessions in all and maxSessionsPerIP per client IP key.
// A new entry sweeps the expired ones (expires says when) when it would
// not fit, at most once a second, and otherwise when sessionTTL has passed
// since the last sweep: a session its client never comes back to leaves
// with the next entry after its expiry. Callers hold a lock.
type sidTable[V any] struct {
	m       map[string]sidEntry[V]
	perIP   map[string]int
	expires func(V) time.Time
	swept   time.Time // the last sweep
}

type sidEntry[V any] struct {
	v  V
	ip string
}

func newSidTable[V any](expires func(V) time.Time) sidTable[V] {
	return sidTable[V]{m: make(map[string]sidEntry[V]), perIP: make(map[string]int), expires: expires}
}

func (t *sidTable[V]) get(sid string) (V, bool) {
	e, ok := t.m[sid]
	return e.v, ok
}

// put sets sid's entry to v, for the client whose IP key is ip; false
// when it does not fit.
func (t *sidTable[V]) put(sid, ip string, v V, now time.Time) bool {
	if e, ok := t.m[sid]; ok {
		t.drop(e.ip)
	} else {
		if now.Sub(t.swept) >= sessionTTL || !t.fits(ip) && now.Sub(t.swept) >= time.Second {
			t.sweep(now)
		}
		if !t.fits(ip) {
			return false
		}
	}
	t.m[sid] = sidEntry[V]{v: v, ip: ip}
	t.perIP[ip]++
	return true
}

// fits reports whether a new entry of the client whose IP key is ip fits.
func (t *sidTable[V]) fits(ip string) bool {
	return len(t.m) < maxSessions && t.perIP[ip] < maxSessionsPerIP
}

func (t *sidTable[V]) remove(sid string) {
	if e, ok := t.m[sid]; ok {
		delete(t.m, sid)
		t.drop(e.ip)
	}
}

// drop takes one entry off ip's count.
func (t *sidTable[V]) drop(ip string) {
	if t.perIP[ip]--; t.perIP[ip] <= 0 {
		delete(t.perIP, ip)
	}
}

// sweep removes the expired entries.
func (t *sidTable[V]) sweep(now time.Time) {
	t.swept = now
	for sid, e := range t.m {
		if now.After(t.expires(e.v)) {
			delete(t.m, sid)
			t.drop(e.ip)
		}
	}
}

// signal wakes the GET waiting on s, if any. Callers hold ss.mu.
func (s *session) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pollBodyLimit bounds the POST bodies the gate reads whole.
func (p *Proxy) pollBodyLimit() int64 {
	if p.cfg.MaxMessageBytes > 0 {
		return p.cfg.MaxMessageBytes
	}
	return defaultPollBody
}

// servePolling handles an engine.io polling request of an admitted
// client. It reports whether it answered the request; when it did not, the
// caller passes r (whose body it may have replaced) to the upstream.
func (pt *passThrough) servePolling(w http.ResponseWriter, r *http.Request, cl client, eio eioRequest) bool {
	p := pt.p
	switch {
	case eio.sid == "" && r.Method == http.MethodGet:
		return p.pollOpen(w, r, cl)
	case eio.sid == "":
		return p.limitRequest(w, r, cl)
	case r.Method == http.MethodGet:
		if s := p.web.sessions.get(eio.sid); s != nil {
			p.answerPoll(w, r, s)
			return true
		}
		return false
	case r.Method == http.MethodPost:
		return p.pollPost(w, r, cl, eio.sid)
	}
	return p.limitRequest(w, r, cl)
}

// pollOpen decides the request that opens a session like a handshake.
// Refused, it opens a session of the gate's own instead.
func (p *Proxy) pollOpen(w http.ResponseWriter, r *http.Request, cl client) bool {
	cr := p.rulesFor(r, cl, "")
	if cr != nil && cr.adm.Denied {
		p.denied(w, r, cl)
		return true
	}
	if p.cfg.Limiter == nil {
		return false
	}
	d := p.decideHandshake(r.Context(), cl, cr)
	refused := p.enforce(d, cr.tierName())
	if d.Allowed {
		return false
	}
	sid := newConnID()
	p.logRefusal(d, p.refusalOf(r, cl, "handshake", "polling", sid))
	if !refused {
		return false
	}
	if !p.web.sessions.add(sid, cl.ipKey, &session{d: d, fake: true}) {
		p.writeLimited(w, r, d)
		return true
	}
	p.writePoll(w, r, sioOpen(sid))
	return true
}

// answerPoll answers a GET of a session of the gate's own: the packets it
// holds, waiting up to CloseTimeout for some; a close packet when it ended
// or nothing came.
func (p *Proxy) answerPoll(w http.ResponseWriter, r *http.Request, s *session) {
	ss := p.web.sessions
	timer := time.NewTimer(p.cfg.CloseTimeout)
	defer timer.Stop()
	for {
		ss.mu.Lock()
		ended := s.ended || !s.fake && s.delivered
		if !s.fake && !s.delivered {
			// The event alone: the close comes with the next GET. In one
			// payload the close would end the session before
			// socket.io-client, which hands packets to the app a tick
			// later, had given the event to the app.
			s.delivered = true
			s.out = append(s.out, p.sioEvent(s.nsp, s.d))
		}
		out := s.out
		s.out = nil
		ss.mu.Unlock()
		switch {
		case len(out) > 0:
			p.writePoll(w, r, bytes.Join(out, []byte{eioSep}))
			return
		case ended:
			p.writePoll(w, r, []byte{eioClose})
			return
		}
		select {
		case <-s.wake:
		case <-timer.C:
			ss.mu.Lock()
			s.ended = true
			ss.mu.Unlock()
		case <-r.Context().Done():
			return
		}
	}
}

// pollPost counts the packets of a POST to an upstream session and, when
// one is refused, ends the session. A POST to a session of the gate's own
// is answered by the gate: each CONNECT gets its CONNECT_ERROR.
func (p *Proxy) pollPost(w http.ResponseWriter, r *http.Request, cl client, sid string) bool {
	body, err := io.ReadAll(io.LimitReader(r.Body, p.pollBodyLimit()+1))
	switch {
	case err != nil && isTimeout(err):
		w.Header().Set("Connection", "close")
		p.allowCORS(w, r)
		writeError(w, http.StatusRequestTimeout, "request body timed out")
		p.countHTTP(http.StatusRequestTimeout)
		return true
	case err != nil && r.Context().Err() != nil:
		return true // the client left
	case err != nil:
		// A body net/http could not read (a malformed chunk): engine.io
		// would fail it too.
		w.Header().Set("Connection", "close")
		p.allowCORS(w, r)
		writeError(w, http.StatusBadRequest, "malformed request body")
		p.countHTTP(http.StatusBadRequest)
		return true
	case int64(len(body)) > p.pollBodyLimit():
		p.allowCORS(w, r)
		writeError(w, http.StatusRequestEntityTooLarge, "payload too large")
		p.countHTTP(http.StatusRequestEntityTooLarge)
		return true
	}
	if s := p.web.sessions.get(sid); s != nil {
		p.ownPost(s, body)
		p.writePoll(w, r, []byte("ok"))
		return true
	}
	cr := p.rulesFor(r, cl, sid)
	if cr != nil && cr.adm.Denied {
		p.denied(w, r, cl)
		return true
	}
	if n := countPackets(body); n > 0 && p.cfg.Limiter != nil {
		v := p.decideAll(r.Context(), cl, cr, sid, body, n)
		if !v.first.Allowed {
			// One line per POST, as per connection and block on a
			// WebSocket: a dropped packet among allowed ones too.
			p.logRefusal(v.first, p.refusalOf(r, cl, "message", "polling", sid))
		}
		if v.notice != nil {
			p.web.drops.notify(sid, cl.ipKey, v.notice)
		}
		body = v.out
		switch {
		case v.refused != nil:
			if !p.web.sessions.add(sid, cl.ipKey, &session{d: v.d, nsp: namespace(v.refused)}) {
				p.writeLimited(w, r, v.d)
				return true
			}
			// The upstream gets what was granted, then the close that ends
			// its session.
			if len(body) > 0 {
				body = append(body[:len(body):len(body)], eioSep)
			}
			body = append(body, eioClose)
		case len(body) == 0:
			// Every packet was dropped: the upstream gets nothing (an
			// empty payload would be a parse error that ends its session).
			p.writePoll(w, r, []byte("ok"))
			return true
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return false
}

// ownPost reads the packets a client POSTs to a session of the gate's own:
// a CONNECT gets a CONNECT_ERROR on the next GET, once per namespace and
// for maxOwnAnswers namespaces at most (what the gate holds for a refused
// client stays small whatever it sends), and a close ends the session.
func (p *Proxy) ownPost(s *session, body []byte) {
	ss := p.web.sessions
	ss.mu.Lock()
	defer ss.mu.Unlock()
	packets(body, func(pkt []byte, _ int) bool {
		switch {
		case len(pkt) >= 2 && pkt[0] == eioMessage && pkt[1] == sioTypeConnect && s.fake:
			if nsp := namespace(pkt); len(s.answered) < maxOwnAnswers && !slices.Contains(s.answered, nsp) {
				s.answered = append(s.answered, nsp)
				s.out = append(s.out, sioConnectError(nsp, s.d))
			}
		case len(pkt) == 1 && pkt[0] == eioClose:
			s.ended = true
		}
		return true
	})
	s.signal()
}

// maxOwnAnswers bounds the namespaces a session of the gate's own answers:
// a socket.io client asks for a few.
const maxOwnAnswers = 16

// pollVerdict is what the limits decided for the packets of a POST.
type pollVerdict struct {
	// out is the payload the upstream gets: the packets granted, in their
	// order, up to the refused one.
	out []byte
	// d is the last decision.
	d limit.Decision
	// refused is the packet whose refusal ends the session (never under
	// Shadow); nil when none.
	refused []byte
	// notice is the refusal event of the last packet a rule dropped.
	notice []byte
	// first is the first decision that refused a packet (dropped, closing
	// or under Shadow): the POST's log line. Not Allowed when none did.
	first limit.Decision
}

// decideAll decides the n messages of a POST to session sid, in as many
// limiter calls as it takes.
//
// Under a rules file with classes or byte rules each packet is decided on
// its own, as a message of its class and size; a packet refused by a rule
// that drops is cut out of the payload and its refusal event queued for
// the session's next GET (pollingdrop.go), up to the rule's close-after.
func (p *Proxy) decideAll(ctx context.Context, cl client, cr *connRules, sid string, body []byte, n int) pollVerdict {
	v := pollVerdict{out: body, first: limit.Decision{Allowed: true}}
	if cr != nil && cr.perMessage() {
		v.d = limit.Decision{Allowed: true, Kind: limit.KindMessage}
		var kept [][]byte
		cut := false // a packet was left out of out
		packets(body, func(pkt []byte, _ int) bool {
			if len(pkt) == 0 || isControlPacket(pkt) {
				kept = append(kept, pkt)
				return true
			}
			class, also := cr.pol.ClassOf(pkt)
			v.d = p.decideRules(ctx, cr, ask{n: 1, class: class, also: also, bytes: int64(len(pkt))})
			if !v.d.Allowed && v.first.Allowed {
				v.first = v.d
			}
			if !p.enforce(v.d, cr.tier) {
				kept = append(kept, pkt)
				return true
			}
			cut = true
			if p.dropsPacket(sid, cl.ipKey, cr.ruleOf(v.d), cr.tier, pkt) {
				v.notice = p.sioEvent(namespace(pkt), v.d)
				return true
			}
			v.refused = pkt
			return false
		})
		if cut {
			v.out = trimSeps(bytes.Join(kept, []byte{eioSep}))
		}
		return v
	}
	granted := 0
	for granted < n {
		v.d = p.decideRequest(ctx, cl, cr, n-granted)
		if !v.d.Allowed && v.first.Allowed {
			v.first = v.d
		}
		if p.enforce(v.d, cr.tierName()) {
			var end int
			end, v.refused = cutAfter(body, granted)
			v.out = body[:end]
			return v
		}
		// Under Shadow a refusal lets one message pass.
		granted += max(v.d.Granted, 1)
	}
	return v
}

// trimSeps drops the separators at the ends of a payload, where they
// would make empty packets.
func trimSeps(b []byte) []byte {
	return bytes.Trim(b, string(rune(eioSep)))
}

// writePoll writes a polling answer of the gate's own.
func (p *Proxy) writePoll(w http.ResponseWriter, r *http.Request, payload []byte) {
	p.allowCORS(w, r)
	w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(payload)
	p.countHTTP(http.StatusOK)
}

// refusePollAnswer adds the refusal to the upstream's answer to a GET of a
// session the gate refused while the GET was pending: the packets the
// upstream sent, then the refusal event instead of the upstream's close.
func (p *Proxy) refusePollAnswer(res *http.Response, sid string) error {
	ss := p.web.sessions
	s := ss.get(sid)
	if s == nil || s.fake {
		return nil
	}
	ss.mu.Lock()
	if s.delivered {
		ss.mu.Unlock()
		return nil
	}
	s.delivered = true
	ss.mu.Unlock()
	var got []byte
	if res.StatusCode == http.StatusOK {
		var err error
		if got, err = decodedBody(res); err != nil {
			return err
		}
	}
	// The upstream's packets but its close, then the event; the next GET
	// gets the close from the gate (see answerPoll).
	if bytes.Equal(got, []byte{eioClose}) {
		got = nil
	}
	got = bytes.TrimSuffix(got, []byte{eioSep, eioClose})
	out := make([]byte, 0, len(got)+160)
	if len(got) > 0 {
		out = append(append(out, got...), eioSep)
	}
	out = append(out, p.sioEvent(s.nsp, s.d)...)
	res.StatusCode, res.Status = http.StatusOK, "200 OK"
	res.Body = io.NopCloser(bytes.NewReader(out))
	res.ContentLength = int64(len(out))
	res.Header.Del("Content-Encoding")
	res.Header.Set("Content-Type", "text/plain; charset=UTF-8")
	res.Header.Set("Content-Length", strconv.Itoa(len(out)))
	return nil
}

// errTooLong is an upstream answer too long to rewrite.
var errTooLong = errors.New("upstream answer too long to add the refusal to")

// decodedBody reads res's body, undoing engine.io's gzip or deflate.
func decodedBody(res *http.Response) ([]byte, error) {
	defer res.Body.Close()
	var r io.Reader = res.Body
	switch res.Header.Get("Content-Encoding") {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(res.Body)
		if err != nil {
			return nil, err
		}
		r = zr
	case "deflate":
		zr, err := zlib.NewReader(res.Body)
		if err != nil {
			return nil, err
		}
		r = zr
	default:
		return nil, errors.New("upstream answer in an unknown encoding")
	}
	b, err := io.ReadAll(io.LimitReader(r, maxResponseRewrite+1))
	if err == nil && len(b) > maxResponseRewrite {
		err = errTooLong
	}
	return b, err
}

// writeLimited writes the refusal of a pass-through request: 429,
// Retry-After and the JSON body.
func (p *Proxy) writeLimited(w http.ResponseWriter, r *http.Request, d limit.Decision) {
	secs := int64((d.RetryAfter + time.Second - 1) / time.Second)
	p.allowCORS(w, r)
	w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	w.Header().Set("Content-Type", "application/json")
	body := limitBody(d)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusTooManyRequests)
	_, _ = w.Write(body)
	p.countHTTP(http.StatusTooManyRequests)
}
