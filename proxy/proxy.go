// Package proxy is the gate itself: the HTTP listener's handler that
// upgrades WebSocket clients, dials the upstream with the same path and
// query, relays frames both ways through package frames, passes every other
// request through to the upstream, and drains connections on shutdown.
//
// The limiter and the authenticator are consumed through the small
// interfaces declared here; metrics are recorded into a *metrics.Metrics.
// A connection pair's owners and lifecycle are stated in pair.go;
// docs/ARCHITECTURE.md is the map of the whole gate.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/internal/netpoll"
	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/metrics"
	"github.com/holo/wsgate/policy"
)

// Limiter decides whether a data message or a handshake may pass.
// *limit.Limiter implements it.
type Limiter interface {
	// Client makes a user key and an IP key ready for MessagesOf, once per
	// connection, and MessagesOf decides the next n messages of that
	// client that arrived together; Decision.Granted of them pass (see
	// limit.Limiter.Messages).
	Client(user, ip string) *limit.Client
	MessagesOf(ctx context.Context, c *limit.Client, n int) limit.Decision
	Handshake(ctx context.Context, user, ip string) limit.Decision
	// Charge decides n events of a rules file's policy against the rules
	// that apply (see limit.Limiter.Charge).
	Charge(ctx context.Context, kind string, charges []limit.Charge, n int, bytes int64) limit.Decision
	// OpenConn registers an open connection of ip against the concurrent
	// connection bound; release is called when the connection ends.
	OpenConn(ctx context.Context, ip string) (d limit.Decision, release func())
	// Holding reports whether an operator's hold may be in force, and
	// Held whether one refuses the client of user key user and ip key ip
	// (see limit.Limiter.Held).
	Holding() bool
	Held(kind, user, ip string) (limit.Decision, bool)
}

// storeNamer is what Config.Limiter may also implement (limit.Limiter
// does): "memory" when no decision waits for another process.
type storeNamer interface {
	StoreName() string
}

// nowDecider is what Config.Limiter may also implement (limit.Limiter
// does): a decision of messages that asks Redis nothing, when one can be
// made (see limit.Limiter.MessagesNow and ChargeNow).
type nowDecider interface {
	MessagesNow(c *limit.Client, n int) (limit.Decision, bool)
	ChargeNow(kind string, charges []limit.Charge, n int, bytes int64) (limit.Decision, bool)
}

// Authenticator verifies the token of a handshake or request and cleans
// what goes upstream. *auth.Verifier implements it.
type Authenticator interface {
	Authenticate(ctx context.Context, r *http.Request) (auth.Identity, error)
	PrepareUpstream(h http.Header, q url.Values) (protocols []string, offeredMarker bool)
}

// ClientIPResolver finds the client behind a connection's peer address.
// clientip.Resolver implements it.
type ClientIPResolver interface {
	ClientIP(peer netip.Addr, xff []string) netip.Addr
	IsTrusted(a netip.Addr) bool
	Key(a netip.Addr) string
	ForwardedFor(peer netip.Addr, xff []string) string
}

// Config configures a Proxy. Only Upstream is required; the zero value of
// every other field is usable and its comment says what it means.
type Config struct {
	// Upstream is the backend's http:// (or https://) base URL. WebSocket
	// handshakes go to its ws:// (wss://) form; each request's path is
	// joined to Upstream's path and its query kept.
	Upstream *url.URL
	// MaxMessageBytes bounds a data message (the sum of its frames) in both
	// directions: close 1009 when over. Zero means no limit.
	MaxMessageBytes int64
	// MaxHeaderBytes bounds the request line and headers of a request:
	// 431 when over. Zero means no check beyond the http.Server's own.
	MaxHeaderBytes int
	// HandshakeTimeout bounds a WebSocket handshake from the request to
	// the relay starting, upstream handshake included. Zero means 10s.
	HandshakeTimeout time.Duration
	// DialTimeout bounds connecting to the upstream and its handshake: 504
	// when over. Zero means 5s.
	DialTimeout time.Duration
	// IdleTimeout closes a connection pair (1001 "idle timeout" both ways)
	// when no frame has passed either way for this long. Zero means never.
	IdleTimeout time.Duration
	// MessageTimeout bounds how long a client message may take to arrive
	// once its first frame has started: close 1008 when over (a trickled,
	// never-ending message). Zero means no bound.
	MessageTimeout time.Duration
	// WriteTimeout bounds a write to a client that does not read: the gate
	// stops reading the upstream meanwhile (backpressure) and drops the
	// client when over. Zero means no bound.
	WriteTimeout time.Duration
	// PingInterval sends the gate's own pings to each client; a client
	// that sends nothing for two intervals is closed (1001 "ping timeout").
	// The client's pongs to these pings are consumed. Zero means none.
	PingInterval time.Duration
	// ControlFrameRate bounds the control frames a client sends per
	// connection: close 1008 when over. The zero Rule means no bound.
	ControlFrameRate limit.Rule
	// Compression negotiates permessage-deflate (RFC 7692, no context
	// takeover) with clients that offer it; the upstream leg stays
	// uncompressed. Without it the offer is declined and RSV1 frames get
	// 1002.
	Compression bool
	// MaxConns refuses handshakes with 503 while this many connections are
	// open or being opened. Zero means no bound.
	MaxConns int
	// CloseTimeout is how long a side gets to answer a forwarded close
	// frame before both connections are closed. Zero means 5s.
	CloseTimeout time.Duration

	// Draining (drain.go). DrainSpread spreads the closes of Shutdown and
	// Drain evenly over this window. Zero means all at once.
	DrainSpread time.Duration
	// DrainCode is the close code of a drained connection: 1012 (service
	// restart) or 1001 (going away). Zero means 1012.
	DrainCode ws.StatusCode
	// MaxConnAge closes a connection older than this, less a random tenth,
	// the way a drain does, so that sockets rebalance onto new replicas.
	// Zero means never.
	MaxConnAge time.Duration
	// MaxPendingHandshakes bounds the WebSocket handshakes in progress;
	// over it a handshake waits a little, then gets 503 with a jittered
	// Retry-After. Zero means no bound.
	MaxPendingHandshakes int

	// Limiter decides on messages and handshakes. Nil means no limits.
	Limiter Limiter
	// Rules is the rules file's policy in force, decided by Limiter.Charge;
	// nil means the flag rules (Limiter.MessagesOf and Limiter.Handshake).
	Rules *policy.Live
	// Shadow evaluates limits and counts would-be refusals without
	// refusing anything.
	Shadow bool
	// Auth verifies tokens before any upstream dial. Nil means every client
	// is anonymous and the request goes upstream as it came.
	Auth Authenticator
	// IdentityHeader carries the verified subject upstream; inbound headers
	// of that name are always removed first. Empty means none is sent.
	IdentityHeader string
	// StripHeaders are removed from every request before it goes upstream.
	StripHeaders []string

	// Bounds of the pass-through path (requests that are not WebSocket
	// handshakes). A long poll is a request whose response the backend
	// holds, so PassResponseTimeout must exceed the longest hold (a
	// socket.io server answers a poll within its ping interval, 25s by
	// default); its body, if any, is short.
	//
	// PassBodyTimeout bounds receiving a request's body, from when the
	// gate starts passing the request on: 408 when over. It never cuts a
	// request whose body has arrived. Zero means no bound.
	PassBodyTimeout time.Duration
	// PassResponseTimeout bounds the wait for the upstream's response
	// headers once the request has been sent: 504 when over. Zero means no
	// bound.
	PassResponseTimeout time.Duration
	// MaxPassRequests refuses a request with 503 while this many are in
	// flight, so that clients cannot hold every upstream connection and
	// goroutine. Zero means no bound.
	MaxPassRequests int
	// AllowedOrigins refuses a browser whose Origin matches none of these
	// patterns (auth.OriginAllowed) with 403. Empty means any origin.
	AllowedOrigins []string
	// CloseOnTokenExpiry closes a connection with 1008 "token expired" when
	// its token's exp passes, plus the leeway Auth reports (a Leeway
	// method, as auth.Verifier has): the handshake took the token until
	// then.
	CloseOnTokenExpiry bool
	// ClientIP resolves the client address behind trusted proxies. Nil
	// means the socket peer, no proxy trusted, IPv6 grouped by /64.
	ClientIP ClientIPResolver

	// Web apps (web.go): socket.io spoken in its own protocol, routes that
	// need no token, the refusal log lines.
	//
	// SocketIOPath is where socket.io lives (socket.io's "path", e.g.
	// "/socket.io/"): a request under it with EIO=4 in its query is
	// engine.io 4 (socket.io 3 and 4), whose refusals the gate sends as
	// socket.io packets and whose polling requests it counts by packet.
	// Empty means none: every connection is plain WebSocket.
	SocketIOPath string
	// SocketIOEvent names the socket.io event that carries a refusal to
	// the app. Empty means "wsgate:limited".
	SocketIOEvent string
	// SkipAuth lists the routes admitted without a token, as anonymous
	// clients (still counted by the rules, keyed by their IP). Nil means
	// none.
	SkipAuth []Route
	// SkipAuthPreflight admits CORS preflights (OPTIONS with Origin and
	// Access-Control-Request-Method) without a token, as SkipAuth does.
	SkipAuthPreflight bool
	// HealthPaths are passed to the upstream for GET and HEAD without a
	// token, an Origin check or any limit: the backend's health checks.
	// Nil means none.
	HealthPaths []string
	// Revoked reports whether a verified token is revoked, by its subject
	// or its jti: its handshake gets 401 (auth failure "revoked"). It is
	// called on every authenticated handshake and must not block. Nil:
	// nothing is revoked. Open connections of a token revoked later are
	// closed by Disconnect.
	Revoked func(subject, tokenID string) bool

	// LogSubject adds the verified subject to the refusal log lines, next
	// to the identity key. False means only the key (a hash) is logged.
	LogSubject bool

	// Metrics receives the gate's metrics. Nil means metrics are kept in a
	// registry nobody reads.
	Metrics *metrics.Metrics
	// Logger receives the access log and errors. Nil means discard.
	Logger *slog.Logger
}

// ErrNoUpstream is returned by New when Config.Upstream is not an absolute
// http or https URL.
var ErrNoUpstream = errors.New("proxy: upstream must be an http:// or https:// URL with a host")

// Proxy is an http.Handler that relays WebSocket connections and passes
// other requests through to the upstream. Create it with New.
type Proxy struct {
	cfg      Config
	wsBase   url.URL
	log      *slog.Logger
	m        *metrics.Metrics
	pass     http.Handler
	draining atomic.Bool
	running  atomic.Bool  // the keeper and the poller were started (started)
	conns    atomic.Int64 // pairs open or being opened, for MaxConns

	pl   *netpoll.Poller // parks idle directions; nil when the platform has none
	tick time.Duration   // the keeper's period
	// remoteLimits: a message's decision may wait for Redis, so a direction
	// yields its poller worker's batch first (direction.yield), unless
	// nowLimits decides it without a call.
	remoteLimits bool
	nowLimits    nowDecider // Config.Limiter's when remoteLimits, or nil

	// netDial dials the upstream with net.Dialer (dialUpstream), keepAlive
	// its TCP keepalive period.
	netDial   func(ctx context.Context, network, addr string) (net.Conn, error)
	keepAlive time.Duration

	keeperStop, keeperDone chan struct{} // nil until the first pair

	hooks testHooks

	// relayCtx is the context of the relay's message decisions: a refusal
	// closes the connection (limit.ClosesOnRefusal), unless Shadow lets the
	// refused messages pass.
	relayCtx context.Context

	web web // the state of the web-app features (web.go)

	// Counters of the per-frame path, resolved once.
	msgsIn, msgsOut, bytesIn, bytesOut prometheus.Counter
	decisions                          [2]decisionCounters // by cause: rules, fallback; tier ""
	tierDecisions                      sync.Map            // tier name → *[2]decisionCounters
	slots                              handshakeSlots      // MaxPendingHandshakes
	// stopDrains is closed when Shutdown begins; drains are the
	// StartDrain goroutines, which it waits for.
	stopDrains          chan struct{}
	drains              sync.WaitGroup
	durMemory, durRedis prometheus.Observer

	mu    sync.Mutex
	pairs map[*pair]struct{}
	// aborting is set by Shutdown when its grace runs out and it aborts
	// the pairs: a pair tracked after that (its handshake reserved its
	// place before) is aborted as they were.
	aborting bool
	wg       sync.WaitGroup // one per pair, done when both of its goroutines have ended
}

// New validates cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	u := cfg.Upstream
	if u == nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, ErrNoUpstream
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = 5 * time.Second
	}
	if cfg.DrainCode == 0 {
		cfg.DrainCode = frames.StatusServiceRestart
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New(prometheus.NewRegistry(), "", "")
	}
	if cfg.ClientIP == nil {
		cfg.ClientIP = peerOnly{}
	}
	w, err := newWeb(&cfg)
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg:        cfg,
		wsBase:     *u,
		log:        cfg.Logger,
		m:          cfg.Metrics,
		pairs:      make(map[*pair]struct{}),
		web:        w,
		stopDrains: make(chan struct{}),
	}
	p.remoteLimits = cfg.Limiter != nil
	if s, ok := cfg.Limiter.(storeNamer); ok && s.StoreName() == "memory" {
		p.remoteLimits = false
	}
	if p.remoteLimits {
		p.nowLimits, _ = cfg.Limiter.(nowDecider)
	}
	p.relayCtx = context.Background()
	if !cfg.Shadow {
		p.relayCtx = limit.ClosesOnRefusal(p.relayCtx)
	}
	p.wsBase.Scheme = "ws"
	if u.Scheme == "https" {
		p.wsBase.Scheme = "wss"
	}
	p.msgsIn = p.m.Messages.WithLabelValues(metrics.ClientToUpstream)
	p.msgsOut = p.m.Messages.WithLabelValues(metrics.UpstreamToClient)
	p.bytesIn = p.m.MessageBytes.WithLabelValues(metrics.ClientToUpstream)
	p.bytesOut = p.m.MessageBytes.WithLabelValues(metrics.UpstreamToClient)
	p.decisions = p.newDecisionCounters("")
	p.durMemory = p.m.LimiterDuration.WithLabelValues("memory")
	p.durRedis = p.m.LimiterDuration.WithLabelValues("redis")
	p.keepAlive = upstreamKeepAlive(u)
	p.netDial = (&net.Dialer{KeepAlive: p.keepAlive}).DialContext
	p.pass = p.newPassThrough()
	p.tick = keeperTick(&p.cfg)
	if cfg.MaxPendingHandshakes > 0 {
		p.slots = make(handshakeSlots, cfg.MaxPendingHandshakes)
	}
	return p, nil
}

// dialUpstream connects to the upstream's address for a handshake: on a
// socket of the gate's own, waited for in the poller (netpoll.DialTCP),
// when there is a poller and the upstream speaks plain WebSocket, so that
// the pair takes the socket as it is; with net.Dialer otherwise (TLS, a
// zoned IPv6 address, no poller, a gate that drains: its poller stops at
// shutdown, and a dial that the stop ends fails with netpoll.ErrClosed,
// which upstreamFailed answers with 503). A host name is resolved first,
// and its addresses are tried in turn until one connects.
func (p *Proxy) dialUpstream(ctx context.Context, network, addr string) (net.Conn, error) {
	pl := p.started()
	if pl == nil || p.wsBase.Scheme != "ws" || p.draining.Load() {
		return p.netDial(ctx, network, addr)
	}
	aps, err := resolveUpstream(ctx, addr)
	if err != nil {
		return nil, err
	}
	if aps == nil {
		return p.netDial(ctx, network, addr)
	}
	c, err := dialAny(ctx, pl, aps, p.keepAlive)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// errNoAddress is dialAny's answer to a name without addresses.
var errNoAddress = errors.New("proxy: the upstream's name has no address")

// dialAny dials the addresses aps in turn until one connects, and returns
// the first error when none does.
func dialAny(ctx context.Context, pl *netpoll.Poller, aps []netip.AddrPort, keepAlive time.Duration) (*netpoll.Conn, error) {
	var first error
	for i, ap := range aps {
		c, err := dialPart(ctx, pl, ap, keepAlive, len(aps)-i)
		if err == nil || errors.Is(err, netpoll.ErrClosed) {
			return c, err
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if first == nil {
		first = &net.OpError{Op: "dial", Net: "tcp", Err: errNoAddress}
	}
	return nil, first
}

// dialPart dials ap, one of the last left addresses to try, with a share
// of ctx's time, as net.Dialer does: an address that never answers leaves
// the others time to be tried.
func dialPart(ctx context.Context, pl *netpoll.Poller, ap netip.AddrPort, keepAlive time.Duration, left int) (*netpoll.Conn, error) {
	if dl, ok := ctx.Deadline(); ok && left > 1 {
		const least = 2 * time.Second // net.Dialer's floor for a share
		if rest := time.Until(dl); rest > least {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, max(rest/time.Duration(left), least))
			defer cancel()
		}
	}
	return pl.DialTCP(ctx, ap, keepAlive)
}

// resolveUpstream returns the addresses to dial for addr (host:port): nil when
// only net.Dialer can dial it (a zoned address).
func resolveUpstream(ctx context.Context, addr string) ([]netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		if ap.Addr().Zone() != "" {
			return nil, nil
		}
		return []netip.AddrPort{ap}, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	pn, err := net.DefaultResolver.LookupPort(ctx, "tcp", port)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	aps := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		if ip.Zone() != "" {
			return nil, nil
		}
		aps = append(aps, netip.AddrPortFrom(ip, uint16(pn)))
	}
	return aps, nil
}

// upstreamKeepAlive is the TCP keepalive period of connections to the upstream: none to a
// loopback address (the sidecar's own pod, where a peer cannot vanish without a reset, and four
// setsockopt calls per handshake are a tenth of its system calls), Go's 30 s default elsewhere.
func upstreamKeepAlive(u *url.URL) time.Duration {
	h := u.Hostname()
	if ip, err := netip.ParseAddr(h); h == "localhost" || (err == nil && ip.IsLoopback()) {
		return -1
	}
	return 30 * time.Second
}

// ServeHTTP upgrades WebSocket handshakes (detected by token match on
// Connection and Upgrade) and passes every other request through.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.checkRequest(w, r) {
		return
	}
	if isWebSocket(r) {
		p.serveWebSocket(w, r)
		return
	}
	p.servePassThrough(w, r)
}

// checkRequest answers a request that no route takes, and reports
// whether r may go on.
func (p *Proxy) checkRequest(w http.ResponseWriter, r *http.Request) bool {
	if max := p.cfg.MaxHeaderBytes; max > 0 && headerSize(r) > max {
		writeError(w, http.StatusRequestHeaderFieldsTooLarge, "request header fields too large")
		return false
	}
	if p.ambiguousEIO(r) {
		writeError(w, http.StatusBadRequest, "EIO, transport or sid given more than once")
		return false
	}
	return true
}

// Active reports how many connection pairs are open.
func (p *Proxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pairs)
}

// Shutdown refuses new WebSocket handshakes with 503 and drains every
// pair (drain.go), spread over Config.DrainSpread: the upstream is sent
// close 1001 "going away", the replies it still sends reach the client,
// then the client gets the drain's text frame and close. It waits until
// every pair has ended or ctx is done; then it aborts what is left and
// waits for it to go.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if !p.draining.Swap(true) { // under p.mu: track adds no pair, StartDrain no drain after this
		close(p.stopDrains)
	}
	p.mu.Unlock()
	p.drains.Wait()
	p.Drain(ctx, 1, p.cfg.DrainSpread)
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		p.mu.Lock()
		p.aborting = true
		for pr := range p.pairs {
			pr.cut()
		}
		p.mu.Unlock()
		<-done
		err = fmt.Errorf("proxy: shutdown: %w", ctx.Err())
	}
	// No pair is left and none can start: stop the keeper and the poller.
	p.mu.Lock()
	stop, stopped := p.keeperStop, p.keeperDone
	p.keeperStop = nil
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		<-stopped
	}
	if stop != nil && p.pl != nil {
		if cerr := p.pl.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("proxy: shutdown: %w", cerr)
		}
	}
	return err
}

// countRelayed counts messages and payload bytes written to a side.
func (p *Proxy) countRelayed(fromClient bool, msgs, bytes int64) {
	if fromClient {
		if msgs > 0 {
			p.msgsIn.Add(float64(msgs))
		}
		if bytes > 0 {
			p.bytesIn.Add(float64(bytes))
		}
		return
	}
	if msgs > 0 {
		p.msgsOut.Add(float64(msgs))
	}
	if bytes > 0 {
		p.bytesOut.Add(float64(bytes))
	}
}

// spawn starts a direction's first run: on a worker of the poller's pool,
// or, for a source the poller cannot hold, on a goroutine of its own.
func (p *Proxy) spawn(d *direction) {
	if p.pooled(d) {
		p.pl.Go(&d.desc)
		return
	}
	go d.run()
}

// wake kicks a direction: a parked one runs, a running one looks at its
// pair's state before it parks again. A direction the poller cannot hold
// looks at it once per keeper tick on its own.
func (p *Proxy) wake(d *direction) {
	if p.pooled(d) {
		p.pl.Wake(&d.desc)
	}
}

// pooled reports whether d runs on the poller's workers: there is a
// poller, and d's source is a socket it can hold.
func (p *Proxy) pooled(d *direction) bool {
	return p.pl != nil && d.src().fd >= 0
}

// reserve counts a handshake about to upgrade its client as a pair that
// Shutdown waits for; it reports false once Shutdown has begun. The pair
// made next is track's, or the reservation is given back (wg.Done).
func (p *Proxy) reserve() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining.Load() {
		return false
	}
	p.wg.Add(1)
	return true
}

// track shows a reserved pair to the keeper, drains and Shutdown. One that
// Shutdown began to drain before it was tracked is drained at once: its
// client has its 101 and gets the drain's notice and close; and cut as well
// once Shutdown's grace ran out.
func (p *Proxy) track(pr *pair) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pairs[pr] = struct{}{}
	if p.draining.Load() {
		pr.end(p.drainEnding())
	}
	if p.aborting {
		pr.cut()
	}
}

// started starts the keeper and the poller for the first pair, unless the
// proxy drains (Shutdown stops them), and returns the poller: nil where
// there is none.
func (p *Proxy) started() *netpoll.Poller {
	if p.running.Load() {
		return p.pl
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keeperDone == nil && !p.draining.Load() {
		p.keeperStop, p.keeperDone = make(chan struct{}), make(chan struct{})
		go p.keeper(p.keeperStop, p.keeperDone)
		pl, err := netpoll.New(0)
		if err != nil {
			p.log.Warn("idle connections keep a goroutine each: no poller", "err", err)
		}
		p.pl = pl
		p.running.Store(true) // after p.pl: whoever sees it sees the poller
	}
	return p.pl
}

// testHooks let a test force an interleaving: each runs, when set, on the
// goroutine of the direction at the named moment. Set them before the
// first connection.
type testHooks struct {
	beforePark func(*direction) // right before the direction parks in the poller
	afterBatch func(*direction) // right after a frame joined the direction's batch
	upgrading  func()           // right before a handshake's 101 to the client
	handed     func()           // when Serve hands a connection to net/http
}

// peerOnly is the ClientIPResolver without trusted proxies.
type peerOnly struct{}

func (peerOnly) ClientIP(peer netip.Addr, _ []string) netip.Addr { return peer.Unmap() }
func (peerOnly) IsTrusted(netip.Addr) bool                       { return false }
func (peerOnly) ForwardedFor(peer netip.Addr, _ []string) string { return peer.Unmap().String() }
func (peerOnly) Key(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		pf, _ := a.Prefix(64)
		return pf.String()
	}
	return a.String()
}
