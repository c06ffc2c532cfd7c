package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// dialTimeout bounds every connect plus handshake of the load clients.
const dialTimeout = 10 * time.Second

// signer makes HS256 tokens (RFC 7519) for the gate's --jwt-hmac-secret-file.
type signer struct {
	secret []byte
	jti    atomic.Int64
}

// token returns a token for sub, valid for an hour, with a fresh jti so that no two are equal.
func (s *signer) token(sub string) string { return s.tokenWith(sub, "") }

// tokenWith is token with more claims: extra is JSON object members, e.g. `"plan":"pro"`.
func (s *signer) tokenWith(sub, extra string) string {
	now := time.Now().Unix()
	if extra != "" {
		extra = "," + extra
	}
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	claims := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil,
		`{"sub":%q,"iat":%d,"exp":%d,"jti":"%d"%s}`, sub, now, now+3600, s.jti.Add(1), extra))
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(hdr + "." + claims))
	return hdr + "." + claims + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// dialWS opens a WebSocket to addr with token as a Bearer credential. Every target gets the
// header; nginx and HAProxy pass it on and the backend ignores it.
func dialWS(ctx context.Context, addr, token string) (net.Conn, *bufio.Reader, error) {
	return dialWSPath(ctx, addr, "/", token)
}

// dialWSPath is dialWS to a path, which may carry a query.
func dialWSPath(ctx context.Context, addr, path, token string) (net.Conn, *bufio.Reader, error) {
	return dialWSHeader(ctx, addr, path, http.Header{"Authorization": {"Bearer " + token}})
}

// dialWSHeader is dialWSPath with the handshake's headers given whole.
func dialWSHeader(ctx context.Context, addr, path string, h http.Header) (net.Conn, *bufio.Reader, error) {
	d := ws.Dialer{
		Timeout: dialTimeout,
		Header:  ws.HandshakeHeaderHTTP(h),
	}
	conn, br, _, err := d.Dial(ctx, "ws://"+addr+path)
	if err != nil {
		return nil, nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, 4096)
	}
	return conn, br, nil
}

// wsConn is one load connection.
type wsConn struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialer opens the i-th connection of a load.
type dialer func(ctx context.Context, i int) (net.Conn, *bufio.Reader, error)

// benchDialer dials addr with a token for subject bench-<i>: each connection its own user.
func benchDialer(addr string, s *signer) dialer {
	return func(ctx context.Context, i int) (net.Conn, *bufio.Reader, error) {
		return dialWS(ctx, addr, s.token("bench-"+strconv.Itoa(i)))
	}
}

// dialMany opens n connections, conc at a time, each with its own subject.
func dialMany(ctx context.Context, addr string, s *signer, n, conc int) ([]wsConn, error) {
	return dialManyWith(ctx, addr, benchDialer(addr, s), n, conc)
}

// dialManyWith opens n connections to addr with dial, conc at a time.
func dialManyWith(ctx context.Context, addr string, dial dialer, n, conc int) ([]wsConn, error) {
	conns := make([]wsConn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, br, err := dial(ctx, i)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = wsConn{c, br}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		closeAll(conns)
		return nil, fmt.Errorf("dial %s: %w (%d of %d failed)", addr, err, len(errs)+1, n)
	}
	return conns, nil
}

func closeAll(conns []wsConn) {
	for _, c := range conns {
		if c.conn != nil {
			c.conn.Close()
		}
	}
}

// s1Result is one repetition of S1 on one target.
type s1Result struct {
	rate        float64 // round trips per second
	cpuPer1k    float64 // ms of proxy CPU per 1,000 round trips
	redisPerMsg float64 // Redis requests per round trip; NaN without Redis
	redis       redisCounts
	cmds        cmdStats // every command Redis ran over the window, by name; nil without Redis
	fallbacks   float64  // messages the gate decided without Redis (--failure-mode) in the window
	calls, slow float64  // the gate's limiter calls decided on Redis in the window, and those over slowCall
	rep         int      // the repetition it belongs to, which pairs it with the other targets' (set by the caller)
}

// slowShare is the share of the window's limiter calls decided on Redis that took over
// slowCall (0 without any).
func (x s1Result) slowShare() float64 {
	if x.calls <= 0 {
		return 0
	}
	return x.slow / x.calls
}

// runS1 keeps conns×inflight messages of size bytes in flight: each echo read is answered by a
// new message on the same connection. The load runs for warm, then for the window d, at both
// ends of which the proxy's CPU, Redis's commands and the gate's fallbacks are read; the round
// trips are those whose echo arrived within the window. The messages still in flight at its
// end are drained but not counted.
func runS1(ctx context.Context, t *target, s *signer, conns, inflight, size int, warm, d time.Duration) (s1Result, error) {
	return runS1With(ctx, t, benchDialer(t.addr, s), clientFrame(opText, bytes.Repeat([]byte{'m'}, size)), conns, inflight, warm, d)
}

// runS1With is runS1 with its own connections (dial) and message (one, a whole client frame).
func runS1With(ctx context.Context, t *target, dial dialer, one []byte, conns, inflight int, warm, d time.Duration) (s1Result, error) {
	base, berr := 0, errors.New("no backend")
	if t.backend != "" {
		base, berr = backendCount(t.backend)
	}
	cs, err := dialManyWith(ctx, t.addr, dial, conns, min(conns, 256))
	if err != nil {
		return s1Result{}, err
	}
	defer func() {
		closeAll(cs)
		// Return once the backend has seen these connections go, as runIdle does: at
		// thousands of connections the proxy's and the backend's teardown would otherwise
		// run into the next target's window.
		if berr == nil {
			waitBackendDown(t.backend, base)
		}
	}()
	t.redisSettled()

	var pids []int
	if t.proc != nil {
		pids = tree(t.proc.pid())
	}
	// The window starts warm after the first messages are sent, not with them: a window that
	// started with the pipeline empty would count the ramp (each connection's first messages,
	// e.g. a lease slice taken per user) and end with conns×inflight messages half relayed, so
	// that its round trips read low and its CPU per round trip high, the more so the more
	// connections and the slower the target. With the load running at both ends, every counter
	// (CPU, Redis, fallbacks, round trips) is read in the same steady state at both.
	start := time.Now().Add(warm)
	end := start.Add(d)
	var total atomic.Int64
	errs := make(chan error, len(cs))
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := s1Loop(c, one, inflight, start, end)
			total.Add(n)
			if err != nil {
				errs <- err
			}
		}()
	}
	// Each end reads the counters in the same order, so that each counter's window is d long.
	read := func() (cpu int64, redis cmdStats, fb float64, calls [2]float64, err error) {
		cpu = cpuTicks(pids, false)
		redis, rerr := t.redisCalls()
		fb, calls, derr := t.decisions()
		return cpu, redis, fb, calls, errors.Join(rerr, derr)
	}
	time.Sleep(time.Until(start))
	cpu0, redis0, fb0, calls0, err0 := read()
	time.Sleep(time.Until(end))
	cpu1, redis1, fb1, calls1, err1 := read()
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return s1Result{}, fmt.Errorf("S1 on %s: %w", t.name, err)
	}
	if err := errors.Join(err0, err1); err != nil {
		return s1Result{}, err
	}
	n := float64(total.Load())
	if n == 0 {
		return s1Result{}, fmt.Errorf("S1 on %s: no round trip completed", t.name)
	}
	r := s1Result{
		rate:        n / d.Seconds(),
		cpuPer1k:    float64(cpu1-cpu0) * 1000 / clockTicks / n * 1000,
		redisPerMsg: nan,
		fallbacks:   fb1 - fb0,
		calls:       calls1[0] - calls0[0],
		slow:        calls1[1] - calls0[1],
	}
	if t.redis != "" {
		// Redis was read at both ends of the window with the load running, so its requests
		// are divided by the round trips of the same window: the messages in flight at the
		// start that were decided before it are matched by those in flight at the end that
		// were decided within it.
		r.cmds = redis1.sub(redis0)
		r.redis = r.cmds.counts()
		r.redis.messages = total.Load()
		r.redisPerMsg = float64(r.redis.total()) / float64(r.redis.messages)
	}
	return r, nil
}

// s1Loop runs one S1 connection and returns the round trips whose echo arrived from start to
// end; it keeps sending until end, then drains what is still in flight.
func s1Loop(c wsConn, one []byte, inflight int, start, end time.Time) (got int64, err error) {
	// A proxy that stops answering fails the repetition instead of hanging the run.
	_ = c.conn.SetDeadline(end.Add(10 * time.Second))
	for range inflight {
		if _, err := c.conn.Write(one); err != nil {
			return 0, err
		}
	}
	var buf []byte
	for pending := inflight; pending > 0; {
		k, err := readEchoes(c.conn, c.br, &buf)
		if err != nil {
			return got, err
		}
		pending -= k
		if now := time.Now(); now.Before(end) {
			if !now.Before(start) {
				got += int64(k)
			}
			// One write per message, as WebSocket clients send them; batching them here would
			// favour proxies that relay bytes over ones that relay frames.
			for range k {
				if _, err := c.conn.Write(one); err != nil {
					return got, err
				}
			}
			pending += k
		}
	}
	return got, nil
}

// s2Result is one repetition of S2 on one target.
type s2Result struct{ p50, p99 float64 } // microseconds

// s2Chunk is how many round trips S2 makes on one target before it moves to
// the next: the targets take turns all along a repetition, so that a change
// in the machine's state (which CPU the processes landed on, a neighbour's
// burst) weighs on every target alike instead of on whichever ran then.
const s2Chunk = 250

// runS2 measures S2 on every target in ts: one connection each, 1 message in
// flight, warm round trips untimed, then rounds timed round trips per target
// taken s2Chunk at a time in turn. A target that fails drops out.
func runS2(ctx context.Context, ts []*target, s *signer, size, rounds int) (map[string]s2Result, map[string]error) {
	type probe struct {
		t   *target
		c   wsConn
		lat []float64
	}
	errs := map[string]error{}
	var ps []*probe
	for _, t := range ts {
		cs, err := dialMany(ctx, t.addr, s, 1, 1)
		if err != nil {
			errs[t.key] = err
			continue
		}
		defer closeAll(cs)
		_ = cs[0].conn.SetDeadline(time.Now().Add(10 * time.Minute))
		ps = append(ps, &probe{t: t, c: cs[0], lat: make([]float64, 0, rounds)})
	}
	one := clientFrame(opText, bytes.Repeat([]byte{'m'}, size))
	var buf []byte
	roundTrip := func(p *probe) (float64, error) {
		t0 := time.Now()
		if _, err := p.c.conn.Write(one); err != nil {
			return 0, err
		}
		for k := 0; k == 0; {
			var err error
			if k, err = readEchoes(p.c.conn, p.c.br, &buf); err != nil {
				return 0, err
			}
		}
		return float64(time.Since(t0).Nanoseconds()) / 1e3, nil
	}
	const warm = 200
	live := ps[:0]
	for _, p := range ps {
		var err error
		for range warm {
			if _, err = roundTrip(p); err != nil {
				break
			}
		}
		if err != nil {
			errs[p.t.key] = fmt.Errorf("S2 on %s: %w", p.t.name, err)
			continue
		}
		live = append(live, p)
	}
	for done := 0; done < rounds && ctx.Err() == nil; done += s2Chunk {
		for _, p := range live {
			if errs[p.t.key] != nil {
				continue
			}
			for range min(s2Chunk, rounds-done) {
				us, err := roundTrip(p)
				if err != nil {
					errs[p.t.key] = fmt.Errorf("S2 on %s: %w", p.t.name, err)
					break
				}
				p.lat = append(p.lat, us)
			}
		}
	}
	out := map[string]s2Result{}
	for _, p := range live {
		if errs[p.t.key] == nil {
			out[p.t.key] = s2Result{p50: percentile(p.lat, 50), p99: percentile(p.lat, 99)}
		}
	}
	return out, errs
}

// runUpgrades opens and drops WebSockets from workers goroutines for d and returns handshakes
// completed within d per second. fresh gives every handshake its own token (a full verification); otherwise each
// worker reuses one token (the verifier's cache).
func runUpgrades(ctx context.Context, t *target, s *signer, workers int, d time.Duration, fresh bool) (float64, error) {
	end := time.Now().Add(d)
	var ok atomic.Int64
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub := "upgrader-" + strconv.Itoa(w)
			tok := s.token(sub)
			for time.Now().Before(end) {
				if fresh {
					tok = s.token(sub)
				}
				c, _, err := dialWS(ctx, t.addr, tok)
				done := time.Now()
				if err != nil {
					errs <- err
					return
				}
				c.Close()
				// A handshake started in the window but finished after it is not one of the
				// window's: counting it would add up to one per worker to a rate over d.
				if !done.After(end) {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("upgrades on %s: %w", t.name, err)
	}
	return float64(ok.Load()) / d.Seconds(), nil
}

// idleResult is the memory cost of idle connections through one proxy.
type idleResult struct {
	perConnKiB float64
	before     int64 // KiB
	after      int64 // KiB
}

// runIdle opens n WebSockets through t, waits until the backend holds all of them and the
// proxy's RSS has settled, and returns the RSS growth per connection.
func runIdle(ctx context.Context, t *target, s *signer, backendAddr string, n int) (idleResult, error) {
	base, err := settledCount(backendAddr)
	if err != nil {
		return idleResult{}, err
	}
	before := rssKiB(tree(t.proc.pid()))
	cs, err := dialMany(ctx, t.addr, s, n, 64)
	if err != nil {
		return idleResult{}, err
	}
	defer func() {
		closeAll(cs)
		// The next target starts once the backend has seen these go, bounded.
		waitBackendDown(backendAddr, base)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := backendCount(backendAddr)
		if err == nil && c >= base+n {
			break
		}
		if time.Now().After(deadline) {
			return idleResult{}, fmt.Errorf("idle on %s: backend holds %d of %d connections after 30s", t.name, c-base, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Settled: two readings 1 s apart within 0.5 %, at most 20 s.
	after := rssKiB(tree(t.proc.pid()))
	for i := 0; i < 20; i++ {
		time.Sleep(time.Second)
		now := rssKiB(tree(t.proc.pid()))
		settled := now-after < after/200 && after-now < after/200
		after = now
		if settled {
			break
		}
	}
	return idleResult{perConnKiB: float64(after-before) / float64(n), before: before, after: after}, nil
}

// runIdleActive measures the memory of connections in the state a chat's connections spend
// most of their life in: n connections that each sent one message and got its echo, then sit
// idle while the proxy pings them (the gate's default --ping-interval 30s; the clients answer)
// and its /metrics is scraped every 10 s. From settle after the last echo, RSS is read every
// second for watch; the result is the highest reading less base, per connection. base is the
// proxy's RSS before any bulk of connections (it does not give back all the memory an earlier
// measurement made it take, so RSS right before this one would under-count).
func runIdleActive(ctx context.Context, t *target, s *signer, backendAddr string, n int, base int64, settle, watch time.Duration) (idleResult, error) {
	if _, err := settledCount(backendAddr); err != nil {
		return idleResult{}, err
	}
	pids := tree(t.proc.pid())
	before := base
	cs, err := dialMany(ctx, t.addr, s, n, 64)
	if err != nil {
		return idleResult{}, err
	}
	defer closeAll(cs)
	one := clientFrame(opText, []byte("hello"))
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			if _, err := c.conn.Write(one); err != nil {
				errs <- err
				return
			}
			if _, err := readEchoes(c.conn, c.br, &buf); err != nil {
				errs <- err
				return
			}
			// Answer the proxy's pings until the connection is closed.
			for {
				if _, err := readEchoes(c.conn, c.br, &buf); err != nil {
					return
				}
			}
		}()
	}
	defer wg.Wait()
	defer closeAll(cs)
	// Every echo has come back once the proxy has counted n messages each way; the harness
	// cannot see that for nginx and HAProxy, so it waits for the last write's echo by time.
	time.Sleep(2 * time.Second)
	select {
	case err := <-errs:
		return idleResult{}, fmt.Errorf("active idle on %s: %w", t.name, err)
	default:
	}
	if err := sleepCtx(ctx, settle); err != nil {
		return idleResult{}, err
	}
	var high int64
	for i := 0; time.Duration(i)*time.Second < watch; i++ {
		if i%10 == 0 {
			_, _ = t.fallbacks() // a /metrics scrape, as Prometheus makes
		}
		high = max(high, rssKiB(pids))
		if err := sleepCtx(ctx, time.Second); err != nil {
			return idleResult{}, err
		}
	}
	return idleResult{perConnKiB: float64(high-before) / float64(n), before: before, after: high}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// percentile returns the p-th percentile of v (sorted in place), nearest rank.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return nan
	}
	slices.Sort(v)
	i := int(p/100*float64(len(v))+0.5) - 1
	return v[max(0, min(i, len(v)-1))]
}

// waitBackendDown waits until the backend holds at most base connections, at most 30 s.
func waitBackendDown(backendAddr string, base int) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := backendCount(backendAddr); err == nil && c <= base {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// settledCount returns the backend's connection count once the closes of
// earlier measurements have reached it: the same count 500 ms apart (at most
// 15 s). A count taken while they still arrive would make the idle
// measurement wait for connections that already left.
func settledCount(backendAddr string) (int, error) {
	last, err := backendCount(backendAddr)
	if err != nil {
		return 0, err
	}
	for range 30 {
		time.Sleep(500 * time.Millisecond)
		c, err := backendCount(backendAddr)
		if err != nil {
			return 0, err
		}
		if c == last {
			break
		}
		last = c
	}
	return last, nil
}
