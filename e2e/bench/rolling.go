package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// rollingConfig is the shape of the rolling-restart scenario: conns clients on gate A, each
// sending a message every every, the backend answering each delay late; after rollingWarm A gets
// SIGTERM and drains over spread (and, in the comparison row, all at once), and every client
// reconnects to gate B the moment A's close arrives.
type rollingConfig struct {
	conns  int           // 0 skips the scenario
	spread time.Duration // A's --drain-spread in the first row; the second row has 0
	every  time.Duration
	delay  time.Duration
}

// rollingWarm is how long the messages flow before A gets SIGTERM.
const rollingWarm = 2 * time.Second

// rollingBucket is the interval reconnects are counted in.
const rollingBucket = 100 * time.Millisecond

// rollingAttempts bounds the dials to B of one client.
const rollingAttempts = 3

// rollingResult is one row of the scenario.
type rollingResult struct {
	spread       time.Duration
	conns        int
	gateA, gateB []string // command lines

	drained   int // clients that read a close frame from A
	hinted    int // of which close 1012 after a {"code":1012,...,"retryAfterMs":N} text frame
	ended     int // clients whose connection to A ended without a close frame
	closeSpan time.Duration
	closePeak int // most drain closes in one rollingBucket

	reconnected int
	failed      int // clients that could not reconnect in rollingAttempts dials
	reconnSpan  time.Duration
	peak        int   // most reconnects in one rollingBucket, counted from the first drain close
	peakAny     int   // most reconnects within any rollingBucket
	perSecond   []int // reconnects per second from the first drain close

	written    int64 // replies the backend wrote on A's connections
	late       int64 // of which after A's close 1001 reached it
	received   int64 // replies the clients read from A before its close
	lost       int64 // Σ max(0, written − received) per connection
	disordered int   // connections whose replies skipped or repeated a number, or ended on another than the backend's last
	untracked  int   // connections the backend gave no final count for

	exitCode  int           // A's exit status; -1 for a signal, -2 when it had not exited
	exitAfter time.Duration // SIGTERM to A's exit
	firstErr  string        // the first client error, for the report
}

// even is the reconnects per rollingBucket of a perfectly even drain; NaN without a spread.
func (r rollingResult) even() float64 {
	if r.spread <= 0 {
		return nan
	}
	return float64(r.conns) * float64(rollingBucket) / float64(r.spread)
}

// runRolling runs the scenario at each spread in turn; a row that fails is left out and its
// error returned with the others.
func runRolling(ctx context.Context, e *env, s *signer, rc rollingConfig) ([]rollingResult, []error) {
	var out []rollingResult
	var errs []error
	for _, spread := range []time.Duration{rc.spread, 0} {
		fmt.Fprintf(os.Stderr, "bench: rolling restart, %d connections, --drain-spread %v\n", rc.conns, spread)
		res, err := runRollingRow(ctx, e, s, rc, spread)
		if err != nil {
			fmt.Fprintf(os.Stderr, "  rolling restart: %v\n", err)
			errs = append(errs, fmt.Errorf("--drain-spread %v: %w", spread, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		out = append(out, res)
		fmt.Fprintf(os.Stderr, "  closes over %v (peak %d/100ms), %d reconnected over %v, peak %d/100ms (%d in any 100ms), "+
			"replies %d written (%d after the close), %d lost, %d connections out of order; A exited %d after %v\n",
			res.closeSpan.Round(time.Millisecond), res.closePeak, res.reconnected, res.reconnSpan.Round(time.Millisecond),
			res.peak, res.peakAny, res.written, res.late, res.lost, res.disordered, res.exitCode,
			res.exitAfter.Round(time.Millisecond))
	}
	return out, errs
}

// runRollingRow starts gates A and B, runs the clients, SIGTERMs A and collects the figures;
// both gates are gone when it returns.
func runRollingRow(ctx context.Context, e *env, s *signer, rc rollingConfig, spread time.Duration) (rollingResult, error) {
	tag := "spread" + spread.String()
	a, err := e.startGateAs("rolling-a-"+tag, "gate A", "memory", "--shutdown-delay", "0s", "--drain-spread", spread.String())
	if err != nil {
		return rollingResult{}, err
	}
	defer e.ps.stop(a.proc)
	b, err := e.startGateAs("rolling-b-"+tag, "gate B", "memory")
	if err != nil {
		return rollingResult{}, err
	}
	defer e.ps.stop(b.proc)
	res := rollingResult{spread: spread, conns: rc.conns, gateA: a.argv, gateB: b.argv}

	prefix := "roll-" + tag + "-"
	cs := make([]*rollClient, rc.conns)
	deadline := time.Now().Add(rollingWarm + spread + time.Minute)
	if err := dialRolling(ctx, a.addr, s, prefix, rc.delay, cs, deadline); err != nil {
		return res, err
	}
	defer func() {
		for _, c := range cs {
			if c.b != nil {
				c.b.Close()
			}
		}
	}()
	// On SIGINT the clients stop reading at once instead of at their deadline.
	stopWatch := context.AfterFunc(ctx, func() {
		for _, c := range cs {
			c.a.Close()
		}
	})
	defer stopWatch()

	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(ctx, b.addr, rc.every)
		}()
	}
	if err := sleepCtx(ctx, rollingWarm); err != nil {
		for _, c := range cs {
			c.a.Close()
		}
		wg.Wait()
		return res, err
	}
	exited := make(chan time.Time, 1)
	go func() { // watchExit
		t := time.NewTimer(spread + time.Minute)
		defer t.Stop()
		select {
		case <-a.proc.done:
			exited <- time.Now()
		case <-t.C:
			exited <- time.Time{}
		case <-ctx.Done():
			exited <- time.Time{}
		}
	}()
	term := time.Now()
	if err := syscall.Kill(a.proc.pid(), syscall.SIGTERM); err != nil {
		for _, c := range cs {
			c.a.Close()
		}
		wg.Wait()
		<-exited
		return res, fmt.Errorf("SIGTERM to gate A: %w", err)
	}
	wg.Wait()
	if at := <-exited; at.IsZero() {
		res.exitCode = -2
	} else {
		res.exitCode = a.proc.exitCode()
		res.exitAfter = at.Sub(term)
	}

	recs, err := backendReplies(ctx, e.backendAddr, prefix, rc.conns)
	if err != nil {
		return res, err
	}
	res.tally(cs, prefix, recs)
	return res, nil
}

// dialRolling opens the clients' connections to A, 64 at a time, each its own user and tagged
// ?conn=prefix+i for the backend's count.
func dialRolling(ctx context.Context, addr string, s *signer, prefix string, delay time.Duration, cs []*rollClient, deadline time.Time) error {
	sem := make(chan struct{}, 64)
	errs := make(chan error, len(cs))
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			tok := s.token("rolling-" + strconv.Itoa(i))
			path := "/?conn=" + prefix + strconv.Itoa(i) + "&delay=" + delay.String()
			conn, br, err := dialWSPath(ctx, addr, path, tok)
			if err != nil {
				errs <- err
				return
			}
			_ = conn.SetDeadline(deadline) // a gate that stops answering ends the row, not the run
			cs[i] = &rollClient{tok: tok, a: conn, br: br}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		for _, c := range cs {
			if c != nil {
				c.a.Close()
			}
		}
		return fmt.Errorf("dial gate A: %w (%d of %d failed)", err, len(errs)+1, len(cs))
	}
	return nil
}

// rollClient is one client of the scenario. Its run goroutine owns every field but the ones
// under mu, which its sendLoop shares; the harness reads them all once run has returned.
type rollClient struct {
	tok string
	a   net.Conn
	br  *bufio.Reader

	mu     sync.Mutex // serializes writes on a
	sent   int64      // messages sent, under mu
	closed bool       // the client has answered A's close: nothing more is written; under mu

	got, last int64 // replies read from A, and the sequence number of the last one
	gaps      bool  // a reply's sequence number was not the one after the last
	hint      bool  // the drain's {"code":1012,...} text frame came before the close
	code      int   // A's close code; 0 until the close
	closeAt   time.Time
	b         net.Conn // the connection to B once reconnected
	reconnAt  time.Time
	err       error // how the client ended otherwise than reconnected
}

// run reads A until its close, then reconnects to B at once.
func (c *rollClient) run(ctx context.Context, bAddr string, every time.Duration) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.sendLoop(stop, every)
	}()
	defer wg.Wait()
	defer close(stop)
	var buf []byte
	for {
		f, err := readFrame(c.br, &buf)
		if err != nil {
			c.err = fmt.Errorf("gate A: %w", err)
			c.a.Close()
			return
		}
		switch f.op() {
		case opClose:
			c.closeAt = time.Now()
			code := f.payload[:min(len(f.payload), 2)]
			if len(code) == 2 {
				c.code = int(code[0])<<8 | int(code[1])
			}
			c.mu.Lock()
			c.closed = true
			_, _ = c.a.Write(clientFrame(opClose, code)) // RFC 6455 section 5.5.1: answer the close
			c.mu.Unlock()
			c.a.Close()
			c.reconnect(ctx, bAddr)
			return
		case opPing:
			c.mu.Lock()
			_, _ = c.a.Write(clientFrame(opPong, f.payload))
			c.mu.Unlock()
		case opPong:
		default:
			if len(f.payload) > 0 && f.payload[0] == '{' {
				var h struct {
					Code         int    `json:"code"`
					Error        string `json:"error"`
					RetryAfterMs int64  `json:"retryAfterMs"`
				}
				c.hint = json.Unmarshal(f.payload, &h) == nil && h.Code == 1012 && h.Error != "" && h.RetryAfterMs > 0
				continue
			}
			seq := parseSeq(f.payload)
			if seq != c.last+1 {
				c.gaps = true
			}
			c.last = seq
			c.got++
		}
	}
}

// sendLoop sends the next sequence number every every, the first at a random moment within
// the first period so that the clients do not send in step, until stop or the close.
func (c *rollClient) sendLoop(stop <-chan struct{}, every time.Duration) {
	t := time.NewTimer(rand.N(every))
	defer t.Stop()
	var digits [20]byte
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		t.Reset(every)
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		c.sent++
		_, err := c.a.Write(clientFrame(opText, strconv.AppendInt(digits[:0], c.sent, 10)))
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// reconnect dials B, the same token, at once; it tries again at once on failure, up to
// rollingAttempts dials.
func (c *rollClient) reconnect(ctx context.Context, bAddr string) {
	var err error
	for range rollingAttempts {
		var conn net.Conn
		if conn, _, err = dialWS(ctx, bAddr, c.tok); err == nil {
			c.reconnAt = time.Now()
			c.b = conn
			return
		}
	}
	c.err = fmt.Errorf("gate B: %w", err)
}

// replyCount is the backend's final count for one tracked connection.
type replyCount struct {
	written, late, last int64
}

// backendReplies collects the backend's counts for the n connections tagged prefix, waiting
// (at most 10 s) until each has ended there.
func backendReplies(ctx context.Context, backendAddr, prefix string, n int) (map[string]replyCount, error) {
	out := map[string]replyCount{}
	c := http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get("http://" + backendAddr + "/replies?prefix=" + prefix)
		if err != nil {
			return nil, fmt.Errorf("backend /replies: %w", err)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var id string
			var r replyCount
			var done bool
			if _, err := fmt.Sscan(sc.Text(), &id, &r.written, &r.late, &r.last, &done); err == nil && done {
				out[id] = r
			}
		}
		resp.Body.Close()
		if len(out) >= n || time.Now().After(deadline) {
			return out, nil
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// tally turns the clients' records and the backend's counts into the row's figures.
func (r *rollingResult) tally(cs []*rollClient, prefix string, recs map[string]replyCount) {
	var closes, reconns []time.Time
	for i, c := range cs {
		switch {
		case c.code != 0:
			r.drained++
			closes = append(closes, c.closeAt)
			if c.code == 1012 && c.hint {
				r.hinted++
			}
		default:
			r.ended++
		}
		if c.b != nil {
			r.reconnected++
			reconns = append(reconns, c.reconnAt)
		} else if c.code != 0 {
			r.failed++
		}
		if c.err != nil && r.firstErr == "" {
			r.firstErr = c.err.Error()
		}
		rec, ok := recs[prefix+strconv.Itoa(i)]
		if !ok {
			r.untracked++
			continue
		}
		r.written += rec.written
		r.late += rec.late
		r.received += c.got
		r.lost += max(0, rec.written-c.got)
		if c.gaps || c.last != rec.last {
			r.disordered++
		}
	}
	if len(closes) == 0 {
		return
	}
	slices.SortFunc(closes, time.Time.Compare)
	slices.SortFunc(reconns, time.Time.Compare)
	first := closes[0]
	r.closeSpan = closes[len(closes)-1].Sub(first)
	r.closePeak, _ = peaks(closes, first, rollingBucket)
	if len(reconns) > 0 {
		r.reconnSpan = reconns[len(reconns)-1].Sub(reconns[0])
		r.peak, r.peakAny = peaks(reconns, first, rollingBucket)
		for _, t := range reconns {
			i := max(0, int(t.Sub(first)/time.Second))
			for len(r.perSecond) <= i {
				r.perSecond = append(r.perSecond, 0)
			}
			r.perSecond[i]++
		}
	}
}

// peaks returns the most of ts (sorted) in one width-long interval counted from origin, and
// the most within any width-long window.
func peaks(ts []time.Time, origin time.Time, width time.Duration) (fixed, anyWindow int) {
	n := map[int64]int{}
	for _, t := range ts {
		k := int64(t.Sub(origin) / width) // no t is before origin
		n[k]++
		fixed = max(fixed, n[k])
	}
	for i, j := 0, 0; j < len(ts); j++ {
		for ts[j].Sub(ts[i]) >= width {
			i++
		}
		anyWindow = max(anyWindow, j-i+1)
	}
	return fixed, anyWindow
}

// perSecondText lists reconnects per second, for the report.
func perSecondText(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}
