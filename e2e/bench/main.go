// Command bench is wsgate's load harness: it puts the gate side by side with nginx and
// HAProxy as WebSocket proxies in front of the same Go echo backend, on the same machine, in
// the same run, and writes BENCHMARKS.md and BENCHMARKS.png at the repository root.
//
// It is its own module, so that the product module carries none of it. `make bench` builds it
// and runs it from the repository root, as root when nginx and HAProxy should be measured:
//
//	go -C e2e/bench build -o /tmp/bench . && /tmp/bench
//
// It builds the gate from the working tree, starts a backend (this binary with -backend), nginx,
// HAProxy, redis-server and five gates (memory store, Redis exact, Redis lease, and the memory
// and exact gates with their rules as a rules file), each on its
// own loopback port, and measures, interleaved over -reps repetitions and reported as medians:
//
//   - S1: 50 connections × 16 messages in flight × 64 B, round trips per second;
//   - S2: 1 connection × 1 message in flight × 64 B, p50/p99 round trip, and what each proxy
//     adds over the direct-to-backend figure of the same repetition;
//   - proxy CPU per 1,000 round trips during S1 (utime+stime of the proxy's processes);
//   - Redis requests per round trip during S1, for the Redis gates;
//   - handshakes per second with a JWT, a new token each time and one token reused;
//
// and once, before the repetitions, the RSS per idle proxied connection at 9,000 connections;
// and last, a rolling restart: 2,000 clients on one gate, SIGTERM with --drain-spread 10s and
// then 0, every client reconnecting to a second gate the moment its close arrives, reported as
// reconnects per 100 ms and replies lost (-rolling runs it alone and rewrites only its section);
// and six rules on one message: four gates, each on its own redis-server (a six-rule rules file
// and the flag rules, each in exact and lease mode), reported as Redis calls per message by
// command (from INFO commandstats) at 1 message in flight, under S1's load and into a block, and
// messages per second (-rules6 runs it alone and rewrites only its section).
// Every process it starts is killed when it ends, on error and on SIGINT/SIGTERM too.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var nan = math.NaN()

// config holds the harness's flags; the defaults are the load shapes the report describes.
type config struct {
	reps                      int
	s1Dur                     time.Duration
	s1Warm                    time.Duration // load before each S1 window starts
	s1Conns                   int
	s1Inflight                int
	size                      int
	s2Rounds                  int
	idleConns                 int
	activeConns               int
	activeSettle, activeWatch time.Duration
	scale                     []scaleShape // S1 at scale
	scaleReps                 int
	upgDur                    time.Duration
	upgWorkers                int
	leaseSize                 int
	gateBin                   string
	gateBinB                  string // a second build, measured as one more gate of gateBMode
	gateBMode                 string // memory, exact or lease
	out                       string
	chart                     string
	micro                     string
	skipS1                    bool // measure less while trying something out; the report is then partial
	skipUpg                   bool
	only                      string // comma-separated target keys to measure (direct is always measured)
	rolling                   rollingConfig
	rollingOnly               bool // run only the rolling restart; its section replaces the one in the report
	rules6                    rules6Config
	rules6Only                bool     // run only the six-rule scenario; its section replaces the one in the report
	flags                     []string // the flags given, name and value, for the report's command line
}

func main() {
	var cfg config
	backend := flag.String("backend", "", "run only the echo backend on this address (used by the harness itself)")
	flag.IntVar(&cfg.reps, "reps", 5, "repetitions of each measurement, interleaved across targets; figures are medians")
	flag.DurationVar(&cfg.s1Dur, "s1-duration", 5*time.Second, "length of one S1 repetition")
	flag.DurationVar(&cfg.s1Warm, "s1-warmup", time.Second, "load before each S1 window (and each six-rule load window) is measured, so that the window starts with every message in flight")
	flag.IntVar(&cfg.s1Conns, "s1-conns", 50, "S1 connections")
	flag.IntVar(&cfg.s1Inflight, "s1-inflight", 16, "S1 messages in flight per connection")
	flag.IntVar(&cfg.size, "size", 64, "message payload bytes (text frames)")
	flag.IntVar(&cfg.s2Rounds, "s2-rounds", 3000, "S2 round trips timed per repetition")
	flag.IntVar(&cfg.idleConns, "idle-conns", 9000, "idle connections for the RSS measurement; 0 skips it")
	flag.IntVar(&cfg.activeConns, "active-conns", 9000, "connections for the realistic idle measurement (one message each, then idle with pings and scrapes); 0 skips it")
	flag.DurationVar(&cfg.activeSettle, "active-settle", 10*time.Second, "wait after the last message before the realistic idle measurement")
	flag.DurationVar(&cfg.activeWatch, "active-watch", 90*time.Second, "how long the realistic idle measurement watches RSS")
	flag.DurationVar(&cfg.upgDur, "upgrade-duration", time.Second, "length of one handshake-rate repetition per token kind")
	flag.IntVar(&cfg.upgWorkers, "upgrade-workers", 8, "concurrent handshakes")
	flag.IntVar(&cfg.leaseSize, "lease-size", 1000, "--lease-size of the lease-mode gate, when the gate has that flag")
	scale := flag.String("scale", "50x16,500x16,2000x16,8000x4", "S1 at scale: comma-separated CONNSxINFLIGHT shapes; empty skips it")
	flag.IntVar(&cfg.scaleReps, "scale-reps", 3, "repetitions of each S1-at-scale shape, interleaved across targets")
	flag.StringVar(&cfg.gateBin, "gate-bin", "", "gate binary to measure; empty builds the working tree")
	flag.StringVar(&cfg.gateBinB, "gate-bin-b", "", "a second gate binary, measured as one more gate (gate-b, of -gate-b-mode) in the same repetitions, for an A/B of two builds; the report adds their paired ratios to the gate of that mode")
	flag.StringVar(&cfg.gateBMode, "gate-b-mode", "memory", "the limit mode of -gate-bin-b's gate: memory, exact or lease (its own Redis key prefix)")
	flag.StringVar(&cfg.out, "out", "BENCHMARKS.md", "report file")
	flag.StringVar(&cfg.chart, "chart", "BENCHMARKS.png", "chart image, next to the report")
	flag.StringVar(&cfg.micro, "micro", "", "file with the micro-benchmark output to include in the report")
	flag.BoolVar(&cfg.skipS1, "skip-s1", false, "skip S1 (for quick experiments; the report is partial)")
	flag.BoolVar(&cfg.skipUpg, "skip-upgrades", false, "skip the handshake rates (for quick experiments; the report is partial)")
	flag.StringVar(&cfg.only, "only", "", "measure only these targets, e.g. nginx,gate-exact (for quick experiments; the report is partial)")
	flag.BoolVar(&cfg.rollingOnly, "rolling", false, "run only the rolling restart and replace its section of the report, leaving the rest")
	flag.IntVar(&cfg.rolling.conns, "rolling-conns", 2000, "rolling restart: connections on the gate that is stopped; 0 skips it")
	flag.DurationVar(&cfg.rolling.spread, "rolling-spread", 10*time.Second, "rolling restart: --drain-spread of the first row (the second has 0)")
	flag.DurationVar(&cfg.rolling.every, "rolling-every", 200*time.Millisecond, "rolling restart: each connection sends a message this often")
	flag.DurationVar(&cfg.rolling.delay, "rolling-reply-delay", 50*time.Millisecond, "rolling restart: the backend answers each message this late")
	flag.BoolVar(&cfg.rules6Only, "rules6", false, "run only the six-rule scenario and replace its section of the report, leaving the rest")
	flag.IntVar(&cfg.rules6.reps, "rules6-reps", 3, "six rules on one message: repetitions, interleaved across its four gates; 0 skips it")
	flag.DurationVar(&cfg.rules6.dur, "rules6-duration", time.Second, "six rules on one message: one repetition of the load at S1's shape")
	flag.IntVar(&cfg.rules6.seq, "rules6-seq", 1500, "six rules on one message: messages sent one at a time per repetition")
	flag.IntVar(&cfg.rules6.blocked, "rules6-blocked", 1000, "six rules on one message: messages sent into a block")
	flag.Parse()
	// The report shows the command that made it, so the flags given, not the defaults.
	flag.Visit(func(f *flag.Flag) {
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() && f.Value.String() == "true" {
			cfg.flags = append(cfg.flags, "-"+f.Name)
			return
		}
		cfg.flags = append(cfg.flags, "-"+f.Name, f.Value.String())
	})
	cfg.rules6.conns, cfg.rules6.inflight, cfg.rules6.size, cfg.rules6.warm = cfg.s1Conns, cfg.s1Inflight, cfg.size, cfg.s1Warm
	var err error
	if cfg.scale, err = parseShapes(*scale); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if !slices.Contains([]string{"memory", "exact", "lease"}, cfg.gateBMode) {
		fmt.Fprintf(os.Stderr, "bench: -gate-b-mode %q: want memory, exact or lease\n", cfg.gateBMode)
		os.Exit(2)
	}

	if *backend != "" {
		if err := runBackend(*backend); err != nil {
			fmt.Fprintln(os.Stderr, "backend:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// results holds every repetition's figures, by target key.
type results struct {
	s1       map[string][]s1Result
	s2       map[string][]s2Result
	added    map[string][]s2Result // proxy minus direct, same repetition
	upgFresh map[string][]upgRate
	upgSame  map[string][]upgRate
	idle     map[string]idleResult
	active   map[string]idleResult
	scale    map[scaleShape]map[string][]s1Result
	redisRTT []s2Result
	rolling  []rollingResult
	rules6   *rules6Result // nil when it did not run
	errs     map[string][]string
}

func (r *results) fail(key string, err error) {
	fmt.Fprintf(os.Stderr, "  %s: %v\n", key, err)
	r.errs[key] = append(r.errs[key], err.Error())
}

func run(ctx context.Context, cfg config) (err error) {
	started := time.Now()
	if _, err := os.Stat(filepath.Join("e2e", "bench", "go.mod")); err != nil {
		return errors.New("run from the repository root (make bench)")
	}
	// The load generator holds 9,000 sockets; children inherit the raised limit (Go restores the
	// original soft limit for children unless the program sets it itself).
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		// The proxies hold two sockets per connection.
		for _, n := range []*int{&cfg.idleConns, &cfg.activeConns, &cfg.rolling.conns} {
			if lim.Cur < 2*uint64(*n)+1000 {
				fmt.Fprintf(os.Stderr, "bench: open-files limit %d is below twice %d connections; lowering them\n", lim.Cur, *n)
				*n = max(0, (int(lim.Cur)-1000)/2)
			}
		}
	}
	m := describeMachine()
	others0 := othersTicks()

	tmp, err := os.MkdirTemp("", "wsgate-bench-")
	if err != nil {
		return err
	}
	e := &env{tmp: tmp, ps: &procs{}}
	defer func() {
		e.ps.stopAll()
		if err == nil {
			os.RemoveAll(tmp)
		} else {
			err = fmt.Errorf("%w (logs kept in %s)", err, tmp)
		}
	}()

	e.gateBin, e.gateBinB = cfg.gateBin, cfg.gateBinB
	if e.gateBin == "" {
		fmt.Fprintln(os.Stderr, "bench: building the gate (go build .)")
		if err := e.buildGate(ctx); err != nil {
			return err
		}
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	e.secretFile = filepath.Join(tmp, "jwt-secret")
	if err := os.WriteFile(e.secretFile, secret, 0o600); err != nil {
		return err
	}
	s := &signer{secret: secret}

	if cfg.rollingOnly || cfg.rules6Only {
		fmt.Fprintln(os.Stderr, "bench: starting the backend")
		if _, err := e.startBackend(); err != nil {
			return err
		}
		var errs []error
		if cfg.rollingOnly {
			errs = append(errs, runRollingOnly(ctx, cfg, m, e, s))
		}
		if cfg.rules6Only && ctx.Err() == nil {
			e.probeLease(cfg.leaseSize)
			errs = append(errs, runRules6Only(ctx, cfg, m, e, s))
		}
		return errors.Join(errs...)
	}
	fmt.Fprintln(os.Stderr, "bench: starting backend, nginx, HAProxy, redis-server and the gates")
	direct, err := e.startBackend()
	if err != nil {
		return err
	}
	if err := e.startRedis(); err != nil {
		return err
	}
	e.probeLease(cfg.leaseSize)
	targets := []*target{direct}
	for _, start := range []func() (*target, error){
		e.startNginx, e.startHAProxy,
		func() (*target, error) { return e.startGate("memory") },
		func() (*target, error) { return e.startGate("exact") },
		func() (*target, error) { return e.startGate("lease") },
		func() (*target, error) { return e.startGate("rules") },
		func() (*target, error) { return e.startGate("rules-exact") },
	} {
		t, err := start()
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	if e.gateBinB != "" {
		t, err := e.startGateAs(keyB, "wsgate "+cfg.gateBMode+" B", cfg.gateBMode)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	var live []*target
	for _, t := range targets {
		if cfg.only != "" && t.key != "direct" && t.key != keyB && !slices.Contains(strings.Split(cfg.only, ","), t.key) {
			continue
		}
		if t.skip == "" {
			live = append(live, t)
		} else {
			fmt.Fprintf(os.Stderr, "bench: %s: %s\n", t.name, t.skip)
		}
	}

	r := &results{
		s1: map[string][]s1Result{}, s2: map[string][]s2Result{}, added: map[string][]s2Result{},
		upgFresh: map[string][]upgRate{}, upgSame: map[string][]upgRate{},
		idle: map[string]idleResult{}, active: map[string]idleResult{}, errs: map[string][]string{},
		scale: map[scaleShape]map[string][]s1Result{},
	}

	fmt.Fprintln(os.Stderr, "bench: warm-up")
	for _, t := range live {
		if _, err := runS1(ctx, t, s, cfg.s1Conns, cfg.s1Inflight, cfg.size, 0, time.Second); err != nil {
			r.fail(t.key, fmt.Errorf("warm-up: %w", err))
		}
	}
	if _, errs := runS2(ctx, live, s, cfg.size, 200); len(errs) > 0 {
		for k, err := range errs {
			r.fail(k, fmt.Errorf("warm-up: %w", err))
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	// Each proxy's RSS before the first bulk of connections: the base of both memory figures.
	base := map[string]int64{}
	for _, t := range live {
		if t.proxy {
			base[t.key] = rssKiB(tree(t.proc.pid()))
		}
	}
	if cfg.idleConns > 0 {
		for _, t := range live {
			if !t.proxy {
				continue
			}
			fmt.Fprintf(os.Stderr, "bench: idle %d connections through %s\n", cfg.idleConns, t.name)
			res, err := runIdle(ctx, t, s, e.backendAddr, cfg.idleConns)
			if err != nil {
				r.fail(t.key, err)
				continue
			}
			r.idle[t.key] = res
			fmt.Fprintf(os.Stderr, "  %s: %d KiB -> %d KiB, %.2f KiB per connection\n", t.name, res.before, res.after, res.perConnKiB)
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}

	if cfg.activeConns > 0 {
		for _, t := range live {
			if !t.proxy {
				continue
			}
			fmt.Fprintf(os.Stderr, "bench: %d connections, one message each, then idle for %v through %s\n", cfg.activeConns, cfg.activeSettle+cfg.activeWatch, t.name)
			res, err := runIdleActive(ctx, t, s, e.backendAddr, cfg.activeConns, base[t.key], cfg.activeSettle, cfg.activeWatch)
			if err != nil {
				r.fail(t.key, err)
				continue
			}
			r.active[t.key] = res
			fmt.Fprintf(os.Stderr, "  %s: %d KiB -> highest %d KiB, %.2f KiB per connection\n", t.name, res.before, res.after, res.perConnKiB)
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}

	for rep := range cfg.reps {
		order := repOrder(live, rep, cfg.reps)
		fmt.Fprintf(os.Stderr, "bench: repetition %d/%d\n", rep+1, cfg.reps)
		if e.redisAddr != "" {
			if rtt, err := evalshaRTT(e.redisAddr, 3000); err == nil {
				r.redisRTT = append(r.redisRTT, rtt)
			} else {
				r.fail("redis", err)
			}
		}
		s2, errs := runS2(ctx, order, s, cfg.size, cfg.s2Rounds)
		for k, err := range errs {
			r.fail(k, err)
		}
		for _, t := range order {
			if res, ok := s2[t.key]; ok {
				r.s2[t.key] = append(r.s2[t.key], res)
				fmt.Fprintf(os.Stderr, "  S2 %-16s p50 %6.1f us  p99 %6.1f us\n", t.name, res.p50, res.p99)
			}
		}
		if d, ok := s2["direct"]; ok {
			for k, v := range s2 {
				if k != "direct" {
					r.added[k] = append(r.added[k], s2Result{p50: v.p50 - d.p50, p99: v.p99 - d.p99})
				}
			}
		}
		for _, t := range order {
			if cfg.skipS1 {
				break
			}
			res, err := runS1(ctx, t, s, cfg.s1Conns, cfg.s1Inflight, cfg.size, cfg.s1Warm, cfg.s1Dur)
			if err != nil {
				r.fail(t.key, err)
				continue
			}
			res.rep = rep
			r.s1[t.key] = append(r.s1[t.key], res)
			fmt.Fprintf(os.Stderr, "  S1 %-16s %8.0f rt/s  %6.2f ms CPU/1k", t.name, res.rate, res.cpuPer1k)
			if !math.IsNaN(res.redisPerMsg) {
				fmt.Fprintf(os.Stderr, "  %.4f Redis req/rt (take %d, block check %d, other %d; %.0f messages decided without Redis; %.1f%% of decisions over %s s)",
					res.redisPerMsg, res.redis.take, res.redis.check, res.redis.other, res.fallbacks, 100*res.slowShare(), slowCall)
			}
			fmt.Fprintln(os.Stderr)
		}
		for _, t := range order {
			if cfg.skipUpg {
				continue
			}
			kinds := []bool{true, false}
			if !t.gate {
				kinds = kinds[:1] // nothing verifies the token: one plain upgrade rate
			}
			for _, fresh := range kinds {
				rate, err := runUpgrades(ctx, t, s, cfg.upgWorkers, cfg.upgDur, fresh)
				if err != nil {
					r.fail(t.key, err)
					continue
				}
				if fresh {
					r.upgFresh[t.key] = append(r.upgFresh[t.key], upgRate{rep, rate})
				} else {
					r.upgSame[t.key] = append(r.upgSame[t.key], upgRate{rep, rate})
				}
			}
			if t.gate {
				fmt.Fprintf(os.Stderr, "  handshakes %-16s new token %6.0f/s  same token %6.0f/s\n", t.name,
					lastRate(r.upgFresh[t.key]), lastRate(r.upgSame[t.key]))
			} else {
				fmt.Fprintf(os.Stderr, "  handshakes %-16s plain %6.0f/s\n", t.name, lastRate(r.upgFresh[t.key]))
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	for rep := range cfg.scaleReps {
		order := repOrder(live, rep, cfg.scaleReps)
		for _, sh := range cfg.scale {
			fmt.Fprintf(os.Stderr, "bench: S1 at %d connections x %d in flight, repetition %d/%d\n", sh.conns, sh.inflight, rep+1, cfg.scaleReps)
			if r.scale[sh] == nil {
				r.scale[sh] = map[string][]s1Result{}
			}
			for _, t := range order {
				res, err := runS1(ctx, t, s, sh.conns, sh.inflight, cfg.size, cfg.s1Warm, cfg.s1Dur)
				if err != nil {
					r.fail(t.key, fmt.Errorf("S1 at %d x %d: %w", sh.conns, sh.inflight, err))
					continue
				}
				res.rep = rep
				r.scale[sh][t.key] = append(r.scale[sh][t.key], res)
				fmt.Fprintf(os.Stderr, "  S1 %-16s %8.0f rt/s  %6.2f ms CPU/1k\n", t.name, res.rate, res.cpuPer1k)
				if err := ctx.Err(); err != nil {
					return err
				}
			}
		}
	}

	if cfg.rolling.conns > 0 {
		rows, errs := runRolling(ctx, e, s, cfg.rolling)
		r.rolling = rows
		for _, err := range errs {
			r.fail("rolling", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	if cfg.rules6.reps > 0 {
		r.rules6 = runRules6(ctx, e, s, cfg.rules6)
		for _, w := range r.rules6.rows {
			for _, msg := range w.errs {
				r.errs["rules6"] = append(r.errs["rules6"], w.name+": "+msg)
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	// Whatever else ran on the machine meanwhile: CPU of every process outside this harness's
	// tree, read before cleanup.
	elapsed := time.Since(started)
	m.otherCPU = float64(othersTicks()-others0) / clockTicks / (elapsed.Seconds() * float64(m.ncpu))
	m.elapsed = elapsed

	rep := buildReport(cfg, m, e, targets, r)
	fmt.Println(rep.table)
	if err := os.WriteFile(cfg.out, []byte(rep.markdown), 0o644); err != nil {
		return err
	}
	if err := renderChart(cfg.chart, rep.chartHeading, rep.panels); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s and %s in %v\n", cfg.out, cfg.chart, elapsed.Round(time.Second))
	if len(r.errs) > 0 {
		var keys []string
		for k := range r.errs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		fmt.Fprintf(os.Stderr, "bench: some measurements failed (%s); see the report\n", strings.Join(keys, ", "))
	}
	return nil
}

// upgRate is one repetition's handshake rate on one target.
type upgRate struct {
	rep  int // the repetition, which pairs it with nginx's
	rate float64
}

// repOrder is the order of the targets in repetition rep of reps: a row of a Williams design,
// the sequence 0, 1, n-1, 2, n-2, … shifted by the row's number, the rows spread over the n
// there are when there are fewer repetitions. A rotation (each repetition starting at the next
// target) let only the first few targets of the list go first when there were fewer
// repetitions than targets, and kept each target right after the same one in every
// repetition, so that whatever one left behind (closes still arriving, a heap to collect, a
// warm CPU cache) always weighed on the same next one. Here the first targets are spread over
// the list and, for an even n, no target follows the same one twice in n repetitions: each
// ordered pair is in one row of the design only (for an odd n, see below).
func repOrder[T any](xs []T, rep, reps int) []T {
	n := len(xs)
	row := rep % max(1, n)
	if reps <= n {
		row = rep * n / reps // distinct rows, spread out
	}
	out := make([]T, 0, n)
	for i := range n {
		k := (i + 1) / 2 // 0, 1, 1, 2, 2, …: odd positions go up from 1
		if i%2 == 0 {
			k = (n - i/2) % n // even positions go down from n-1 (0 first)
		}
		out = append(out, xs[(k+row)%n])
	}
	if n%2 == 1 && rep%2 == 1 {
		// For an odd n the rows alone repeat pairs sooner (at n = 3 they are a rotation); the
		// design for odd n adds the rows reversed.
		slices.Reverse(out)
	}
	return out
}

func lastRate(v []upgRate) float64 {
	if len(v) == 0 {
		return nan
	}
	return v[len(v)-1].rate
}

// median ignores NaNs; NaN when nothing is left.
func median(v []float64) float64 {
	var w []float64
	for _, x := range v {
		if !math.IsNaN(x) {
			w = append(w, x)
		}
	}
	if len(w) == 0 {
		return nan
	}
	slices.Sort(w)
	if len(w)%2 == 1 {
		return w[len(w)/2]
	}
	return (w[len(w)/2-1] + w[len(w)/2]) / 2
}

// scaleShape is one row of S1 at scale: connections, and messages in flight on each.
type scaleShape struct{ conns, inflight int }

// parseShapes parses "500x16,8000x4".
func parseShapes(v string) ([]scaleShape, error) {
	var out []scaleShape
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		c, i, ok := strings.Cut(f, "x")
		conns, err1 := strconv.Atoi(c)
		inflight, err2 := strconv.Atoi(i)
		if !ok || err1 != nil || err2 != nil || conns < 1 || inflight < 1 {
			return nil, fmt.Errorf("-scale: %q is not CONNSxINFLIGHT (e.g. 2000x16)", f)
		}
		out = append(out, scaleShape{conns, inflight})
	}
	return out, nil
}

// runRollingOnly is -rolling: the rolling restart alone, its section written into the report
// in place of the one there (or added), the rest of the report left as it was.
func runRollingOnly(ctx context.Context, cfg config, m machine, e *env, s *signer) error {
	if cfg.rolling.conns <= 0 {
		return errors.New("-rolling needs -rolling-conns above 0")
	}
	rows, errs := runRolling(ctx, e, s, cfg.rolling)
	if err := ctx.Err(); err != nil {
		return err
	}
	var msgs []string
	for _, err := range errs {
		msgs = append(msgs, err.Error())
	}
	section := rollingSection(cfg.rolling, rows, msgs, m, e.tmp, true)
	if err := writeSection(cfg.out, rollingHeading, section); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote the rolling-restart section of %s\n", cfg.out)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return nil
}

// runRules6Only is -rules6: the six-rule scenario alone, its section written into the report in
// place of the one there (or added), the rest of the report left as it was.
func runRules6Only(ctx context.Context, cfg config, m machine, e *env, s *signer) error {
	if cfg.rules6.reps <= 0 {
		return errors.New("-rules6 needs -rules6-reps above 0")
	}
	res := runRules6(ctx, e, s, cfg.rules6)
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := writeSection(cfg.out, rules6Heading, rules6Section(res, m, e.tmp, e.leaseArgs, true)); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote the six-rule section of %s\n", cfg.out)
	var errs []error
	for _, w := range res.rows {
		for _, msg := range w.errs {
			errs = append(errs, fmt.Errorf("%s: %s", w.name, msg))
		}
	}
	return errors.Join(errs...)
}

// writeSection prints section and puts it into the report at out in place of the section that
// starts with heading (or adds it), leaving the rest of the report as it was.
func writeSection(out, heading, section string) error {
	old, err := os.ReadFile(out)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	doc := string(old)
	if doc == "" {
		doc = "# wsgate benchmarks\n\n"
	}
	fmt.Print(section)
	return os.WriteFile(out, []byte(spliceSection(doc, heading, section)), 0o644)
}
