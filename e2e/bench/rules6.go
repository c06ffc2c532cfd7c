package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
)

// rules6File is a rules file of six rules that all apply to the harness's chat message (see
// rules6Message) from a client with a token (sub and tenant claims) and an X-Device-Id header:
// a user rule with two windows, an IP rule, a byte budget per user, a rule for the message's
// class, a claim-keyed GCRA rule and a header-keyed rule with a block ladder. Every limit is far
// above the load, except the chat rule's for the capped tier, which the blocked-key phase
// exceeds on purpose: its drop action keeps the connection, so the messages after the refusal
// meet the block.
const rules6File = `classes:
  - {name: chat, socketio-event: "chat:send"}
  - {name: subscribe, json-field: {path: method, equals: subscribe}}
tiers:
  - {name: capped, when: {claim: plan, in: [capped]}}
rules:
  - {name: user-messages, key: user, limits: [100000000/10s, 600000000/1m], block: 5s}
  - {name: ip-messages, key: ip, limits: [100000000/10s], block: 5s}
  - {name: user-bytes, key: user, count: bytes, limits: [100000MiB/10s], block: 30s}
  - {name: chat, class: chat, key: user, limits: [10000000/1s, 600000000/1m], action: drop, block: 30s, tiers: {capped: [20/1m]}}
  - {name: tenant, key: "claim:tenant", limits: [100000000/1s], algorithm: gcra, burst: 100000000}
  - {name: device, key: "header:x-device-id", limits: [100000000/10s], block: [5s, 1m]}
`

// rules6CappedLimit is the chat rule's limit for the capped tier (20/1m in rules6File).
const rules6CappedLimit = 20

// rules6Warm is the load each gate gets before the measurements.
const rules6Warm = 500 * time.Millisecond

// rules6Message returns a socket.io chat event, 42["chat:send",{"room":"lobby","text":"mmm"}],
// padded to size bytes when size allows.
func rules6Message(size int) []byte {
	head, tail := `42["chat:send",{"room":"lobby","text":"`, `"}]`
	return []byte(head + string(bytes.Repeat([]byte{'m'}, max(1, size-len(head)-len(tail)))) + tail)
}

// rules6Config is the shape of the scenario.
type rules6Config struct {
	reps     int           // repetitions of both loads, interleaved across the gates; 0 skips the scenario
	dur      time.Duration // one repetition of the load at conns × inflight
	warm     time.Duration // load before each of those windows is measured (S1's -s1-warmup)
	seq      int           // messages one at a time, per repetition
	blocked  int           // messages of a blocked key
	conns    int           // S1's shape
	inflight int
	size     int
}

// rules6Phase is one measurement on one gate: messages, the time they took, and the commands
// Redis ran meanwhile.
type rules6Phase struct {
	msgs      int64
	secs      float64
	cmds      cmdStats
	fallbacks float64
	rep       int // the repetition, which pairs it with the other gates'
}

// rules6Row is one gate of the scenario: the six-rule file or the flag rules, exact or lease,
// each on its own redis-server, so that INFO commandstats counts that gate's commands only.
type rules6Row struct {
	key, name    string
	rules, lease bool
	t            *target
	redis        *proc  // its redis-server
	skip         string // why the row has no figures; "" when it ran
	seq          []rules6Phase
	load         []s1Result
	blockedFirst *rules6Phase // rules-file gates only: the first messages into the block
	blocked      *rules6Phase // and the ones after
	errs         []string
}

func (w *rules6Row) fail(err error) {
	fmt.Fprintf(os.Stderr, "  %s: %v\n", w.name, err)
	w.errs = append(w.errs, err.Error())
}

// rules6Result is the scenario's figures, for the report.
type rules6Result struct {
	rc       rules6Config
	rows     []*rules6Row
	file     string // the rules file's path, for the command lines
	redisCmd string
	source   string // what the gate was built from
	elapsed  time.Duration
	otherCPU float64 // share of the machine's CPU other processes used meanwhile
}

// runRules6 starts a redis-server and a gate for each row, warms each up, then measures, over
// rc.reps repetitions with the gates taking turns: rc.seq messages one at a time on one
// connection (INFO commandstats read before the first and after the last), and the S1 load
// (conns × inflight for dur). Last, on each rules-file gate, one client of the capped tier
// exceeds the chat rule and sends rc.blocked more messages into the block. Every process it
// starts is stopped when it returns.
func runRules6(ctx context.Context, e *env, s *signer, rc rules6Config) *rules6Result {
	started, others0 := time.Now(), othersTicks()
	res := &rules6Result{rc: rc, file: filepath.Join(e.tmp, "rules6.yaml"), source: e.gateSource}
	res.rows = []*rules6Row{
		{key: "r6-rules-exact", name: "six rules, exact", rules: true},
		{key: "r6-rules-lease", name: "six rules, lease", rules: true, lease: true},
		{key: "r6-flags-exact", name: "flag rules, exact"},
		{key: "r6-flags-lease", name: "flag rules, lease", lease: true},
	}
	defer func() {
		for _, w := range res.rows {
			if w.t != nil && w.t.proc != nil {
				e.ps.stop(w.t.proc)
			}
			if w.redis != nil {
				e.ps.stop(w.redis)
			}
		}
		res.elapsed = time.Since(started)
		res.otherCPU = float64(othersTicks()-others0) / clockTicks / (res.elapsed.Seconds() * float64(runtime.NumCPU()))
	}()
	if err := os.WriteFile(res.file, []byte(rules6File), 0o600); err != nil {
		res.rows[0].fail(err)
		return res
	}
	fmt.Fprintln(os.Stderr, "bench: six rules on one message: starting a redis-server and a gate per row")
	var live []*rules6Row
	for _, w := range res.rows {
		if err := e.startRules6Gate(w, res.file); err != nil {
			w.skip = "did not start"
			w.fail(err)
			continue
		}
		if w.skip != "" {
			fmt.Fprintf(os.Stderr, "  %s: %s\n", w.name, w.skip)
			continue
		}
		res.redisCmd = "redis-server --port <port> --bind 127.0.0.1 --save '' --appendonly no"
		live = append(live, w)
	}
	msg := clientFrame(opText, rules6Message(rc.size))
	for _, w := range live {
		// The first call of each script loads it (NOSCRIPT, then EVAL); the figures are of
		// the calls after.
		if _, err := runS1With(ctx, w.t, rules6Dialer(w.t.addr, s, "warm"), msg, rc.conns, rc.inflight, 0, rules6Warm); err != nil {
			w.fail(fmt.Errorf("warm-up: %w", err))
		}
	}
	for rep := range rc.reps {
		order := repOrder(live, rep, rc.reps) // see repOrder: not a rotation, which kept the same gate after each
		fmt.Fprintf(os.Stderr, "bench: six rules on one message, repetition %d/%d\n", rep+1, rc.reps)
		for _, w := range order {
			if err := ctx.Err(); err != nil {
				return res
			}
			ph, err := rules6Sequential(ctx, w.t, s, msg, rc.seq)
			if err != nil {
				w.fail(err)
			} else {
				ph.rep = rep
				w.seq = append(w.seq, ph)
			}
			ld, err := runS1With(ctx, w.t, rules6Dialer(w.t.addr, s, "load"), msg, rc.conns, rc.inflight, rc.warm, rc.dur)
			if err != nil {
				w.fail(err)
				continue
			}
			ld.rep = rep
			w.load = append(w.load, ld)
			fmt.Fprintf(os.Stderr, "  %-18s 1 in flight: %.3f Redis requests/msg;  %dx%d: %8.0f msg/s, %.4f Redis requests/msg\n",
				w.name, perMsg(requests(ph.cmds), ph.msgs), rc.conns, rc.inflight, ld.rate, perMsg(requests(ld.cmds), ld.redis.messages))
			if ld.fallbacks > 0 {
				fmt.Fprintf(os.Stderr, "  %-18s %.0f decisions without Redis (--failure-mode)\n", w.name, ld.fallbacks)
			}
		}
	}
	for _, w := range live {
		if !w.rules || rc.blocked <= 0 || ctx.Err() != nil {
			continue
		}
		first, rest, err := rules6Blocked(ctx, w.t, s, rc)
		if err != nil {
			w.fail(err)
			continue
		}
		w.blockedFirst, w.blocked = &first, &rest
		fmt.Fprintf(os.Stderr, "  %-18s blocked key: %d Redis requests over the first %d refused messages, %d over the next %d\n",
			w.name, requests(first.cmds), first.msgs, requests(rest.cmds), rest.msgs)
	}
	return res
}

// startRules6Gate starts w's redis-server and gate; w.skip says why it did not when that is
// not an error.
func (e *env) startRules6Gate(w *rules6Row, file string) error {
	if w.lease && e.leaseArgs == nil {
		w.skip = "n/a (" + e.leaseNote + ")"
		return nil
	}
	addr, rp, err := e.startRedisAs(w.key + "-redis")
	w.redis = rp
	if err != nil {
		return err
	}
	if addr == "" {
		w.skip = "n/a (redis-server not installed)"
		return nil
	}
	t, err := e.newGate(w.key, w.name)
	if err != nil {
		return err
	}
	if w.rules {
		t.argv = append(t.argv, "--rules-file", file)
	} else {
		t.argv = append(t.argv, gateLimits...)
	}
	t.argv = append(t.argv, "--redis-url", "redis://"+addr, "--key-prefix", "bench-"+w.key)
	if w.lease {
		t.argv = append(t.argv, e.leaseArgs...)
	} else {
		t.argv = append(t.argv, "--limit-mode", "exact")
	}
	t.redis = addr
	w.t = t
	return e.launch(t)
}

// rules6Dialer dials addr as a client every rule of rules6File applies to: connection i is user
// <tag>-<i> of tenant acme, with its own X-Device-Id.
func rules6Dialer(addr string, s *signer, tag string) dialer {
	return func(ctx context.Context, i int) (net.Conn, *bufio.Reader, error) {
		id := tag + "-" + strconv.Itoa(i)
		return dialWSHeader(ctx, addr, "/", http.Header{
			"Authorization": {"Bearer " + s.tokenWith("chat-"+id, `"tenant":"acme"`)},
			"X-Device-Id":   {"device-" + id},
		})
	}
}

// rules6Sequential sends n messages one at a time on one connection, each after the last one's
// echo, and returns the commands Redis ran from the first to the last echo. 100 untimed
// messages go first, so that the connection's block reads are in the client-side cache.
func rules6Sequential(ctx context.Context, t *target, s *signer, msg []byte, n int) (rules6Phase, error) {
	c, br, err := rules6Dialer(t.addr, s, "seq")(ctx, 0)
	if err != nil {
		return rules6Phase{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	var buf []byte
	roundTrip := func() error {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_, err := nextData(c, br, &buf)
		return err
	}
	for range 100 {
		if err := roundTrip(); err != nil {
			return rules6Phase{}, fmt.Errorf("one at a time on %s: %w", t.name, err)
		}
	}
	before, err := t.redisCalls()
	if err != nil {
		return rules6Phase{}, err
	}
	fb0, err := t.fallbacks()
	if err != nil {
		return rules6Phase{}, err
	}
	start := time.Now()
	for range n {
		if err := roundTrip(); err != nil {
			return rules6Phase{}, fmt.Errorf("one at a time on %s: %w", t.name, err)
		}
	}
	secs := time.Since(start).Seconds()
	after, err := t.redisCalls()
	if err != nil {
		return rules6Phase{}, err
	}
	fb1, err := t.fallbacks()
	if err != nil {
		return rules6Phase{}, err
	}
	return rules6Phase{msgs: int64(n), secs: secs, cmds: after.sub(before), fallbacks: fb1 - fb0}, nil
}

// rules6BlockedFirst is how many messages into a block are measured apart: the first read of
// the block key after the refusal that set it misses the client-side cache, which the write
// invalidated.
const rules6BlockedFirst = 10

// rules6Blocked has a client of the capped tier send chat messages one at a time until the
// chat rule drops one (it blocks the user's chat key for 30 s), then rules6BlockedFirst more and
// then rc.blocked more, each answered by the 429 notice, and returns the commands Redis ran for
// each of the two runs.
func rules6Blocked(ctx context.Context, t *target, s *signer, rc rules6Config) (first, rest rules6Phase, err error) {
	c, br, err := dialWSHeader(ctx, t.addr, "/", http.Header{
		"Authorization": {"Bearer " + s.tokenWith("chat-capped", `"tenant":"acme","plan":"capped"`)},
		"X-Device-Id":   {"device-capped"},
	})
	if err != nil {
		return first, rest, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	msg := clientFrame(opText, rules6Message(rc.size))
	var buf []byte
	send := func() (refused bool, err error) {
		if _, err := c.Write(msg); err != nil {
			return false, err
		}
		f, err := nextData(c, br, &buf)
		if err != nil {
			return false, err
		}
		return bytes.HasPrefix(f.payload, []byte(`{"code":429`)), nil
	}
	refused := false
	for i := 0; i <= rules6CappedLimit && !refused; i++ {
		if refused, err = send(); err != nil {
			return first, rest, fmt.Errorf("blocked key on %s: %w", t.name, err)
		}
	}
	if !refused {
		return first, rest, fmt.Errorf("blocked key on %s: no refusal after %d chat messages of the capped tier", t.name, rules6CappedLimit+1)
	}
	into := func(n int) (rules6Phase, error) {
		before, err := t.redisCalls()
		if err != nil {
			return rules6Phase{}, err
		}
		start := time.Now()
		for i := range n {
			ok, err := send()
			if err == nil && !ok {
				err = errors.New("a message passed: the block did not hold")
			}
			if err != nil {
				return rules6Phase{}, fmt.Errorf("blocked key on %s, message %d: %w", t.name, i+1, err)
			}
		}
		secs := time.Since(start).Seconds()
		after, err := t.redisCalls()
		if err != nil {
			return rules6Phase{}, err
		}
		return rules6Phase{msgs: int64(n), secs: secs, cmds: after.sub(before)}, nil
	}
	if first, err = into(rules6BlockedFirst); err != nil {
		return first, rest, err
	}
	rest, err = into(rc.blocked)
	return first, rest, err
}

// nextData reads frames up to the first data frame and returns it, answering pings.
func nextData(c net.Conn, br *bufio.Reader, buf *[]byte) (frame, error) {
	for {
		f, err := readFrame(br, buf)
		if err != nil {
			return frame{}, err
		}
		switch f.op() {
		case opPing:
			if _, err := c.Write(clientFrame(opPong, f.payload)); err != nil {
				return frame{}, err
			}
		case opPong:
		case opClose:
			return frame{}, fmt.Errorf("closed by the gate: % x", f.payload)
		default:
			return f, nil
		}
	}
}

// scriptCommands are the commands the limiter's scripts run. INFO commandstats counts them
// beside the ones a client sends, so they are not requests; PTTL is among them, and the two
// PTTLs of a cached read that missed are counted by its CLIENT CACHING.
var scriptCommands = map[string]bool{
	"get": true, "set": true, "pttl": true, "incrby": true, "decrby": true, "del": true, "exists": true,
	"hget": true, "hdel": true, "pexpire": true, "time": true, "zadd": true, "zcard": true, "zremrangebyscore": true,
}

// requests counts the requests the gate sent: every command but those scripts run and the
// MULTI and EXEC that wrap a cached read (rueidis sends CLIENT CACHING YES, MULTI, PTTL, the
// read, EXEC; CLIENT CACHING counts it once).
func requests(c cmdStats) int64 {
	var n int64
	for name, v := range c {
		if !scriptCommands[name] && name != "multi" && name != "exec" {
			n += v.calls
		}
	}
	return n
}

// decisionRequests counts the requests of decisions: script calls, and cached block reads that
// missed. The rest of requests is background work (re-reads of holds and revocations, health
// probes).
func decisionRequests(c cmdStats) int64 {
	k := c.counts()
	return k.take + k.check
}

// commandRole says who sends a command, for the report.
func commandRole(name string) string {
	switch {
	case name == "evalsha" || name == "eval" || name == "fcall" || name == "fcall_ro" || name == "evalsha_ro" || name == "eval_ro":
		return "gate: a script call"
	case name == "client|caching":
		return "gate: a cached block read that missed (with MULTI, 2 PTTL, EXEC)"
	case name == "multi" || name == "exec":
		return "gate: around a cached read"
	case name == "pttl":
		return "scripts (block checks); 2 per cached read that missed"
	case name == "hgetall":
		return "gate: holds and revocations, re-read every second"
	case name == "ping":
		return "gate: health probe"
	case name == "hello" || name == "client|tracking":
		return "gate: a new connection to Redis"
	case scriptCommands[name]:
		return "scripts"
	}
	return "gate"
}

func perMsg(n, msgs int64) float64 {
	if msgs <= 0 {
		return nan
	}
	return float64(n) / float64(msgs)
}

// loadPhases returns the load repetitions that Redis decided (redisDecided) as phases.
func (w *rules6Row) loadPhases() []rules6Phase {
	ls, _ := redisDecided(w.load)
	out := make([]rules6Phase, len(ls))
	for i, x := range ls {
		out[i] = rules6Phase{msgs: x.redis.messages, cmds: x.cmds, fallbacks: x.fallbacks}
	}
	return out
}

// perMsgMedian is the median over ps of f's count per message.
func perMsgMedian(ps []rules6Phase, f func(cmdStats) int64) float64 {
	return medianOf(ps, func(p rules6Phase) float64 { return perMsg(f(p.cmds), p.msgs) })
}

// scriptMicros is the time Redis spent per script call over ps, in µs (the commands the
// script runs included).
func scriptMicros(ps []rules6Phase) float64 {
	var calls, usec int64
	for _, p := range ps {
		for _, k := range []string{"evalsha", "eval"} {
			calls += p.cmds[k].calls
			usec += p.cmds[k].usec
		}
	}
	return perMsg(usec, calls)
}
