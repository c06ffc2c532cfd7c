package main

import (
	"bufio"
	_ "embed"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// profileSection is what profiles of the gate found (profile.md): written by hand after a
// profiling session, kept in every report.
//
//go:embed profile.md
var profileSection string

// machine describes where the run happened.
type machine struct {
	date      time.Time
	ncpu      int
	cpuModel  string
	kernel    string
	goVersion string
	nginx     string
	haproxy   string
	redis     string
	idle      string // how an idle CPU waits (cpuidle), which sets what waking one costs
	otherCPU  float64
	elapsed   time.Duration
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "not installed"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func describeMachine() machine {
	m := machine{date: time.Now().UTC(), ncpu: runtime.NumCPU()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpuModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	m.idle = describeIdle()
	m.goVersion = firstLine("go", "version")
	for _, v := range []struct {
		dst  *string
		name string
		arg  string
	}{{&m.nginx, "nginx", "-v"}, {&m.haproxy, "haproxy", "-v"}, {&m.redis, "redis-server", "--version"}} {
		*v.dst = "not installed"
		if bin, err := lookPath(v.name); err == nil {
			*v.dst = firstLine(bin, v.arg)
		}
	}
	return m
}

// describeIdle names the cpuidle driver and, with the haltpoll driver of a
// guest, how long an idle CPU polls before it halts. A halted virtual CPU
// is woken through the hypervisor: where it does not poll, every wait of a
// one-message round trip (S2) can cost such a wake.
func describeIdle() string {
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	driver := read("/sys/devices/system/cpu/cpuidle/current_driver")
	if driver == "" {
		return "unknown"
	}
	s := "cpuidle driver " + driver
	if ns := read("/sys/module/haltpoll/parameters/guest_halt_poll_ns"); driver == "haltpoll" && ns != "" {
		s += ", guest halt polling " + ns + " ns"
		if ns == "0" {
			s += " (off: an idle CPU halts at once)"
		}
	}
	return s
}

// report is what buildReport produces.
type report struct {
	table        string // also printed
	markdown     string
	chartHeading string
	panels       []panel
}

// row is one target's medians.
type row struct {
	t                  *target
	s1, cpu, redisCmds float64
	redisTake          float64 // EVAL/EVALSHA per round trip
	redisCheck         float64 // EVAL_RO per round trip
	redisOther         float64
	fallbacks          []float64 // per S1 repetition
	p50, p99           float64
	add50, add99       float64
	idle               float64 // never-used connections
	active             float64 // connections that sent a message, then idle with pings
	upgFresh, upgSame  float64
	// Against nginx, each the median of the per-repetition ratios (pairedRatio).
	s1x, cpux, upgx float64
	s1res           []s1Result // the S1 repetitions, to pair with another row's
}

func medianOf[T any](v []T, f func(T) float64) float64 {
	w := make([]float64, len(v))
	for i, x := range v {
		w[i] = f(x)
	}
	return median(w)
}

func fmtNum(v float64, prec int) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	s := strconv.FormatFloat(v, 'f', prec, 64)
	// Thousands separators for the integer part of large figures.
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	for i := len(intPart) - 3; i > 0; i -= 3 {
		intPart = intPart[:i] + "," + intPart[i:]
	}
	if neg {
		intPart = "-" + intPart
	}
	if frac != "" {
		return intPart + "." + frac
	}
	return intPart
}

func ratio(v, ref float64) string {
	if math.IsNaN(v) || math.IsNaN(ref) || ref <= 0 {
		return "—"
	}
	return fmtRatio(v / ref)
}

// fmtRatio shows a ratio already taken, such as pairedRatio's.
func fmtRatio(q float64) string {
	if math.IsNaN(q) || math.IsInf(q, 0) {
		return "—"
	}
	return strconv.FormatFloat(q, 'f', 2, 64) + "×"
}

// pairedRatio is the median over the repetitions of xs of f(x) / f(ref), ref being the figure
// of refs from the same repetition (rep says which one a figure belongs to); NaN when no
// repetition has both. A ratio of the two medians would divide figures of different
// repetitions, while the targets measured in one repetition share its conditions (which CPUs
// the processes landed on, a neighbour's burst): the paired ratio cancels them.
func pairedRatio[T any](xs, refs []T, rep func(T) int, f func(T) float64) float64 {
	byRep := map[int]float64{}
	for _, r := range refs {
		byRep[rep(r)] = f(r)
	}
	var q []float64
	for _, x := range xs {
		if ref, ok := byRep[rep(x)]; ok && ref > 0 && !math.IsNaN(ref) {
			q = append(q, f(x)/ref)
		}
	}
	return median(q)
}

func s1Rep(x s1Result) int      { return x.rep }
func s1Rate(x s1Result) float64 { return x.rate }
func s1CPU(x s1Result) float64  { return x.cpuPer1k }
func s1Slow(x s1Result) float64 { return x.slowShare() }

// slowCallMs is slowCall in the report's words.
const slowCallMs = "0.25"

func upgRep(x upgRate) int       { return x.rep }
func upgValue(x upgRate) float64 { return x.rate }

func buildReport(cfg config, m machine, e *env, targets []*target, r *results) report {
	rows := make([]row, len(targets))
	byKey := map[string]*row{}
	for i, t := range targets {
		w := row{t: t, s1: nan, cpu: nan, redisCmds: nan, redisTake: nan, redisCheck: nan, redisOther: nan, p50: nan, p99: nan, add50: nan, add99: nan, idle: nan, active: nan, upgFresh: nan, upgSame: nan,
			s1x: nan, cpux: nan, upgx: nan}
		if t.skip == "" {
			w.s1res = r.s1[t.key]
			w.s1 = medianOf(r.s1[t.key], func(x s1Result) float64 { return x.rate })
			w.s1x = pairedRatio(r.s1[t.key], r.s1["nginx"], s1Rep, s1Rate)
			w.upgx = pairedRatio(r.upgFresh[t.key], r.upgFresh["nginx"], upgRep, upgValue)
			w.p50 = medianOf(r.s2[t.key], func(x s2Result) float64 { return x.p50 })
			w.p99 = medianOf(r.s2[t.key], func(x s2Result) float64 { return x.p99 })
			if t.proxy {
				w.cpu = medianOf(r.s1[t.key], func(x s1Result) float64 { return x.cpuPer1k })
				w.cpux = pairedRatio(r.s1[t.key], r.s1["nginx"], s1Rep, s1CPU)
				w.add50 = medianOf(r.added[t.key], func(x s2Result) float64 { return x.p50 })
				w.add99 = medianOf(r.added[t.key], func(x s2Result) float64 { return x.p99 })
				if res, ok := r.idle[t.key]; ok {
					w.idle = res.perConnKiB
				}
				if res, ok := r.active[t.key]; ok {
					w.active = res.perConnKiB
				}
			}
			if t.redis != "" {
				w.redisCmds = medianOf(r.s1[t.key], func(x s1Result) float64 { return x.redisPerMsg })
				perRT := func(f func(redisCounts) int64) float64 {
					return medianOf(r.s1[t.key], func(x s1Result) float64 { return float64(f(x.redis)) / float64(x.redis.messages) })
				}
				w.redisTake = perRT(func(c redisCounts) int64 { return c.take })
				w.redisCheck = perRT(func(c redisCounts) int64 { return c.check })
				w.redisOther = perRT(func(c redisCounts) int64 { return c.other })
				for _, x := range r.s1[t.key] {
					w.fallbacks = append(w.fallbacks, x.fallbacks)
				}
			}
			w.upgFresh = medianOf(r.upgFresh[t.key], upgValue)
			if t.gate {
				w.upgSame = medianOf(r.upgSame[t.key], upgValue)
			}
		}
		rows[i] = w
		byKey[t.key] = &rows[i]
	}
	ng := byKey["nginx"]
	if ng == nil {
		ng = &row{s1: nan, cpu: nan, add50: nan, add99: nan, idle: nan, active: nan, upgFresh: nan}
	}

	header := []string{"target", "S1 rt/s", "×nginx", "S2 p50 µs", "S2 p99 µs", "added p50 µs", "×nginx",
		"added p99 µs", "×nginx", "CPU ms/1k rt", "×nginx", "KiB/idle conn", "×nginx", "KiB/conn after a message", "×nginx", "Redis req/rt",
		"upgrades/s", "×nginx", "same token"}
	var cells [][]string
	for _, w := range rows {
		name := w.t.name
		if w.t.skip != "" {
			cells = append(cells, []string{name, w.t.skip, "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""})
			continue
		}
		c := []string{name,
			fmtNum(w.s1, 0), fmtRatio(w.s1x),
			fmtNum(w.p50, 1), fmtNum(w.p99, 1),
			dash(w.t.proxy, fmtNum(w.add50, 1)), dash(w.t.proxy, ratio(w.add50, ng.add50)),
			dash(w.t.proxy, fmtNum(w.add99, 1)), dash(w.t.proxy, ratio(w.add99, ng.add99)),
			dash(w.t.proxy, fmtNum(w.cpu, 2)), dash(w.t.proxy, fmtRatio(w.cpux)),
			dash(w.t.proxy && cfg.idleConns > 0, fmtNum(w.idle, 2)), dash(w.t.proxy && cfg.idleConns > 0, ratio(w.idle, ng.idle)),
			dash(w.t.proxy && cfg.activeConns > 0, fmtNum(w.active, 2)), dash(w.t.proxy && cfg.activeConns > 0, ratio(w.active, ng.active)),
			dash(w.t.redis != "", fmtNum(w.redisCmds, 4)),
			fmtNum(w.upgFresh, 0), fmtRatio(w.upgx), dash(w.t.gate, fmtNum(w.upgSame, 0)),
		}
		cells = append(cells, c)
	}
	table := mdTable(header, cells)

	rtt := s2Result{p50: medianOf(r.redisRTT, func(x s2Result) float64 { return x.p50 }),
		p99: medianOf(r.redisRTT, func(x s2Result) float64 { return x.p99 })}
	micro := ""
	if cfg.micro != "" {
		if b, err := os.ReadFile(cfg.micro); err == nil {
			micro = string(b)
		}
	}

	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# wsgate benchmarks\n\n")
	p("Generated by `make bench` (the load harness in `e2e/bench`) on %s in %v. Every figure below comes from that one run; ",
		m.date.Format("2006-01-02 15:04 UTC"), m.elapsed.Round(time.Second))
	p("ratios compare with nginx from the same run. Numbers from another machine, or another run, are not comparable.\n\n")
	if m.otherCPU > 0.05 {
		p("**This run shared the machine.** Processes other than the harness and what it started used about %.0f%% of the "+
			"machine's CPU while it ran, so the absolute figures are noisy and lower than on an idle machine; the interleaving "+
			"and the medians are there so that the comparisons still hold, but ratios within ±10%% should not be read as "+
			"differences.\n\n", 100*m.otherCPU)
	} else {
		p("Processes other than the harness and what it started used about %.0f%% of the machine's CPU while it ran.\n\n",
			100*max(0, m.otherCPU))
	}

	p("## Machine\n\n")
	p("| | |\n| --- | --- |\n")
	p("| CPUs (`nproc`) | %d |\n| CPU | %s |\n| idle CPUs | %s |\n| kernel | %s |\n| Go | %s |\n| nginx | %s |\n| HAProxy | %s |\n| Redis | %s |\n\n",
		m.ncpu, m.cpuModel, m.idle, m.kernel, m.goVersion, m.nginx, m.haproxy, m.redis)
	p("The load generator, the backend, the proxy under test and Redis share these %d CPUs, as a sidecar shares a pod.\n\n", m.ncpu)

	p("## Commands\n\n")
	p("```sh\nmake bench   # as root: apt-get installs nginx and haproxy when missing, then runs:\n")
	p("go test -run '^$' -bench . -benchmem ./frames/ ./limit/ ./auth/ ./auth/clientip/\n")
	p("go -C e2e/bench build -o /tmp/bench . && /tmp/bench%s   # the load harness, this report\n```\n\n", commandFlags(e.tmp, cfg.flags))
	p("Harness settings: %d repetitions, interleaved (each repetition in its own order of the targets, a row of a Williams design: no target after the same one twice in as many repetitions as targets); S1 = %d connections × %d "+
		"messages in flight × %d B, measured for %v per repetition after %v of the same load unmeasured (the window starts with every message in flight); S2 = 1 connection × 1 message in flight × %d B, %d timed round trips "+
		"per target and repetition after 200 untimed, the targets taking turns every %d round trips; handshakes: %d concurrent clients for %v per token kind; idle: %d connections, and %d "+
		"connections that send a message first, once per proxy, after the warm-up.\n\n", cfg.reps, cfg.s1Conns, cfg.s1Inflight, cfg.size, cfg.s1Dur, cfg.s1Warm, cfg.size, cfg.s2Rounds, s2Chunk,
		cfg.upgWorkers, cfg.upgDur, cfg.idleConns, cfg.activeConns)
	p("The processes under test, each on its own loopback port (temp paths shortened to `$TMP`):\n\n```sh\n")
	for _, t := range targets {
		if len(t.argv) > 0 {
			p("%s\n", shellJoin(e.tmp, t.argv))
		}
	}
	if e.redisAddr != "" {
		p("redis-server --port <port> --bind 127.0.0.1 --save '' --appendonly no\n")
	}
	p("```\n\n")
	if e.nginxConf != "" {
		p("<details><summary>nginx.conf</summary>\n\n```nginx\n%s```\n\n</details>\n\n", strings.ReplaceAll(e.nginxConf, e.tmp, "$TMP"))
	}
	if e.haproxyConf != "" {
		p("<details><summary>haproxy.cfg</summary>\n\n```\n%s```\n\n</details>\n\n", e.haproxyConf)
	}

	p("## Results (medians of %d)\n\n", cfg.reps)
	p("%s\n", table)
	if len(cfg.scale) > 0 {
		p("### S1 at scale (medians of %d)\n\n", cfg.scaleReps)
		p("The S1 shape at more connections: round trips per second and proxy CPU per 1,000 round trips, with the ratio to nginx's (the median of the per-repetition ratios).\n\n")
		p("%s\n", scaleTable(cfg, targets, r))
		p("%s\n", scaleFallbacks(cfg, targets, r))
	}
	if cfg.gateBinB != "" {
		p("### B against A\n\nA is the gate-%s target, B the same mode from `-gate-bin-b`.\n\n%s\n", cfg.gateBMode, abTable(cfg, r))
	}
	p("- **S1 rt/s**: round trips per second (a 64 B text message to the backend and its echo back) with 50 connections × 16 in flight.\n")
	p("- **×nginx** of S1, CPU and upgrades: the median over the repetitions of the target's figure divided by nginx's of the same repetition, so it need not equal the ratio of the two medians shown.\n")
	p("- **S2 p50/p99**: one message in flight on one connection. **added** = the target's figure minus the direct-to-backend figure of the same repetition (median of the per-repetition differences).\n")
	p("- **CPU ms/1k rt**: user+system CPU of the proxy's processes (nginx: master and workers; the gate alone, not Redis) per 1,000 round trips during S1; a round trip is one message relayed each way. Read from `/proc/<pid>/stat` at both ends of each S1 window (10 ms ticks).\n")
	p("- **KiB/idle conn**: (VmRSS with %d idle WebSockets open through the proxy − VmRSS before) / %d, summed over the proxy's processes, read once the backend held every connection and RSS had settled. These connections never sent anything.\n", cfg.idleConns, cfg.idleConns)
	p("- **KiB/conn after a message**: the state a chat's connections spend most of their life in. %d connections each send one message and read its echo, then sit idle, answering the proxy's pings (the gate's default `--ping-interval 30s`), while the gate's `/metrics` is scraped every 10 s; from %v after the last echo, VmRSS is read every second for %v, and the figure is (the highest reading − VmRSS before the first bulk of connections, the same base as the idle figure's) / %d.\n", cfg.activeConns, cfg.activeSettle, cfg.activeWatch, cfg.activeConns)
	p("- **Redis req/rt**: requests Redis served per round trip over an S1 window (`INFO commandstats` read at both ends of the window, as the CPU is, with the load running), counted from `INFO commandstats` as the calls of commands that only a client sends (EVAL/EVALSHA, CLIENT CACHING, which rueidis sends with each block check it caches, ZREM, PING), so a script counts once however many commands it runs. The targets below split the figure by kind. Both message rules (user and IP) are on.\n")
	p("- **upgrades/s**: WebSocket handshakes per second with an HS256 token in `Authorization: Bearer`, from %d concurrent clients, each connection dropped right after the 101 and replaced. Through a gate every handshake has a new token (a full verification); *same token* reuses one per client (the verifier's cache). nginx, HAProxy and the backend verify nothing: their figure is the plain upgrade rate.\n", cfg.upgWorkers)
	if !math.IsNaN(rtt.p50) {
		p("- One EVALSHA round trip to this Redis (one-key INCR+PEXPIRE script, timed by the harness): p50 %s µs, p99 %s µs.\n", fmtNum(rtt.p50, 1), fmtNum(rtt.p99, 1))
	}
	p("\n![S1 throughput, S2 added latency, CPU and idle memory per target](%s)\n\n", filepath.Base(cfg.chart))

	p("## Targets\n\n")
	p("| target | figure from this run | |\n| --- | --- | --- |\n")
	for _, line := range append(targetLines(byKey, rtt, micro), scaleTargetLines(cfg, r)...) {
		p("| %s | %s | %s |\n", line[0], line[1], line[2])
	}
	p("\n")

	if cfg.rolling.conns > 0 {
		p("%s", rollingSection(cfg.rolling, r.rolling, r.errs["rolling"], m, e.tmp, false))
	}
	if r.rules6 != nil {
		p("%s", rules6Section(r.rules6, m, e.tmp, e.leaseArgs, false))
	}

	p("%s", profileSection)
	p("## How the gates were run, and what that costs them\n\n")
	// Name the gates that ran (-only and a missing redis-server or lease mode leave some out).
	var gates []string
	rulesFile := ""
	for _, t := range targets {
		if t.gate && t.skip == "" && (cfg.only == "" || slices.Contains(strings.Split(cfg.only, ","), t.key)) {
			gates = append(gates, t.name)
			if strings.HasPrefix(t.key, "gate-rules") {
				rulesFile = "; the rules-file gates have the same four in `--rules-file`"
			}
		}
	}
	p("- %s (%s) verif%s a JWT at each handshake (`--jwt-hmac-secret-file`) and appl%s all four rules (`%s`%s): limits on, far above the load. Each S1 connection is its own user (its own `sub`), all from one IP.\n",
		gatesWord(len(gates)), strings.Join(gates, ", "), plural(len(gates), "ies", "y"), plural(len(gates), "ies", "y"), strings.Join(gateLimits, " "), rulesFile)
	p("- Every other gate flag is at its default, notably `--ping-interval 30s` (the gate pings clients; the load clients answer, nginx and HAProxy send nothing), `--log-level info` (one log line per closed connection, to a file; nginx has `access_log off`, HAProxy no `log`), `--max-message-bytes 1MiB`, `--control-frame-rate 50/1s`, and text frames are UTF-8-checked (the messages are ASCII text frames).\n")
	if e.leaseArgs != nil {
		p("- Lease mode runs with `%s`: with a limit of 10⁸ a slice of N/10 would never go back to Redis during the run, so a smaller slice keeps Redis in the measurement.\n", strings.Join(e.leaseArgs, " "))
	} else {
		p("- Lease mode: not measured; %s.\n", e.leaseNote)
	}
	p("- nginx runs 2 worker processes and HAProxy 2 threads, as the configs above show; the gate uses both CPUs (GOMAXPROCS defaults to 2 here) and its own GC target of 15 with at least 4 MiB of headroom over the live heap (GOGC is not set).\n")
	p("- Every limiter call decides all the messages already buffered on a connection (at most 64): under S1 load one exact-mode Redis call covers several messages, so its Redis req/rt is well under 1; at one message in flight (S2) each message makes its own call, a Redis round trip on the message's path.\n")
	if len(r.errs) > 0 {
		p("\n## Failed measurements\n\n")
		for _, t := range append(targets, &target{key: "redis", name: "redis"}, &target{key: "rolling", name: "rolling restart"}, &target{key: "rules6", name: "six rules on one message"}) {
			for _, msg := range r.errs[t.key] {
				p("- %s: %s\n", t.name, strings.ReplaceAll(msg, "\n", " "))
			}
		}
	}
	if micro != "" {
		p("\n## Micro-benchmarks\n\n```\n%s```\n", micro)
	}

	return report{
		table:        table,
		markdown:     b.String(),
		chartHeading: fmt.Sprintf("wsgate vs nginx vs HAProxy - medians of %d - %s - %d CPUs", cfg.reps, m.date.Format("2006-01-02"), m.ncpu),
		panels:       chartPanels(rows),
	}
}

// gatesWord is the subject of the gates' line: "The gate", "Both gates", "All five gates".
func gatesWord(n int) string {
	words := []string{"No", "The", "Both", "All three", "All four", "All five", "All six", "All seven", "All eight"}
	switch {
	case n == 1:
		return "The gate"
	case n < len(words):
		return words[n] + " gates"
	}
	return "All " + strconv.Itoa(n) + " gates"
}

// plural is one when n is 1, many otherwise.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// commandFlags is the harness's flags as given, for its command line: -micro's file stands as
// <that output> (the micro-benchmarks' output, the line above), the rest quoted for a shell.
func commandFlags(tmp string, flags []string) string {
	var b strings.Builder
	for i := 0; i < len(flags); i++ {
		if flags[i] == "-micro" && i+1 < len(flags) {
			b.WriteString(" -micro <that output>")
			i++
			continue
		}
		b.WriteString(" " + shellJoin(tmp, flags[i:i+1]))
	}
	return b.String()
}

func dash(ok bool, s string) string {
	if !ok {
		return "—"
	}
	return s
}

// shellJoin quotes argv for a shell and shortens the temp dir.
func shellJoin(tmp string, argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		a = strings.ReplaceAll(a, tmp, "$TMP")
		if a == "" || strings.ContainsAny(a, " ;'\"$*?") && !strings.HasPrefix(a, "$TMP") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// mdTable renders a Markdown table padded so that it also reads aligned in a terminal.
func mdTable(header []string, rows [][]string) string {
	width := make([]int, len(header))
	for i, h := range header {
		width[i] = len([]rune(h))
	}
	for _, r := range rows {
		for i, c := range r {
			if i == 1 && r[2] == "" {
				continue // a skipped row's reason may run long
			}
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(cells []string) string {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cells {
			pad := width[i] - len([]rune(c))
			if i == 0 {
				b.WriteString(" " + c + strings.Repeat(" ", max(0, pad)) + " |")
			} else {
				b.WriteString(" " + strings.Repeat(" ", max(0, pad)) + c + " |")
			}
		}
		return b.String() + "\n"
	}
	var b strings.Builder
	b.WriteString(line(header))
	b.WriteString("|")
	for i, w := range width {
		if i == 0 {
			b.WriteString(" " + strings.Repeat("-", w) + " |")
		} else {
			b.WriteString(" " + strings.Repeat("-", w-1) + ": |")
		}
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString(line(r))
	}
	return b.String()
}

// verdict is "met", "not met" or "not measured".
func verdict(ok bool, measured bool) string {
	switch {
	case !measured:
		return "not measured"
	case ok:
		return "**met**"
	default:
		return "**not met**"
	}
}

func has(v ...float64) bool {
	for _, x := range v {
		if math.IsNaN(x) {
			return false
		}
	}
	return true
}

// targetLines checks the performance targets against this run's medians.
func targetLines(byKey map[string]*row, rtt s2Result, micro string) [][3]string {
	get := func(k string) *row {
		if w := byKey[k]; w != nil && w.t.skip == "" {
			return w
		}
		return &row{s1: nan, add50: nan, add99: nan, idle: nan, active: nan, redisCmds: nan, redisTake: nan, redisCheck: nan, redisOther: nan, upgFresh: nan,
			s1x: nan, cpux: nan, upgx: nan, t: &target{}}
	}
	ng, hp := get("nginx"), get("haproxy")
	var out [][3]string
	for _, g := range []struct {
		key, name string
		s1Min     float64
	}{{"gate-memory", "memory store", 1.0}, {"gate-lease", "lease mode", 1.0}, {"gate-exact", "exact mode", 0.7}} {
		w := get(g.key)
		v := w.s1x // the median of the per-repetition ratios, as in the table
		out = append(out, [3]string{fmt.Sprintf("S1 throughput, %s ≥ %.1f× nginx", g.name, g.s1Min),
			fmt.Sprintf("%s rt/s vs %s = %s", fmtNum(w.s1, 0), fmtNum(ng.s1, 0), fmtRatio(v)),
			verdict(v >= g.s1Min, has(v))})
	}
	for _, k := range []string{"gate-memory", "gate-lease"} {
		w := get(k)
		name := strings.TrimPrefix(k, "gate-")
		out = append(out, [3]string{
			fmt.Sprintf("S2, %s: added p50 ≤ nginx's, added p99 ≤ HAProxy's", name),
			fmt.Sprintf("p50 +%s vs +%s µs; p99 +%s vs +%s µs", fmtNum(w.add50, 1), fmtNum(ng.add50, 1), fmtNum(w.add99, 1), fmtNum(hp.add99, 1)),
			verdict(w.add50 <= ng.add50 && w.add99 <= hp.add99, has(w.add50, ng.add50, w.add99, hp.add99))})
	}
	ex := get("gate-exact")
	out = append(out, [3]string{
		"S2, exact: added ≤ nginx's + one Redis round trip (p50 and p99)",
		fmt.Sprintf("p50 +%s vs +%s + %s µs; p99 +%s vs +%s + %s µs", fmtNum(ex.add50, 1), fmtNum(ng.add50, 1), fmtNum(rtt.p50, 1),
			fmtNum(ex.add99, 1), fmtNum(ng.add99, 1), fmtNum(rtt.p99, 1)),
		verdict(ex.add50 <= ng.add50+rtt.p50 && ex.add99 <= ng.add99+rtt.p99, has(ex.add50, ng.add50, rtt.p50, ex.add99, ng.add99))})
	split := func(w *row) string {
		s := fmt.Sprintf("%s requests per round trip: %s EVAL/EVALSHA (decisions), %s block checks missing the client-side cache, %s other",
			fmtNum(w.redisCmds, 4), fmtNum(w.redisTake, 4), fmtNum(w.redisCheck, 4), fmtNum(w.redisOther, 4))
		if len(w.fallbacks) > 0 {
			fb := make([]string, len(w.fallbacks))
			for i, f := range w.fallbacks {
				fb[i] = fmtNum(f, 0)
			}
			s += "; messages decided without Redis (`holo_ws_limiter_decisions_total{cause=\"fallback\"}`: Redis slower than `--redis-timeout` 50ms, or marked down) per repetition: " + strings.Join(fb, ", ")
		}
		if len(w.s1res) > 0 {
			s += fmt.Sprintf("; limiter calls over %s ms (a decision that waited for Redis, its own call or another's lease): %s%%",
				slowCallMs, fmtNum(100*medianOf(w.s1res, s1Slow), 1))
		}
		return s
	}
	out = append(out, [3]string{"Redis round trips per message, exact ≤ 1 (both rules)",
		split(ex), verdict(ex.redisCmds <= 1, has(ex.redisCmds))})
	ls := get("gate-lease")
	out = append(out, [3]string{"Redis round trips per message, lease ≤ 0.05",
		split(ls), verdict(ls.redisCmds <= 0.05, has(ls.redisCmds))})
	blocked := "the load harness sends nothing over a limit"
	if m := regexp.MustCompile(`BenchmarkRedisMessage/blocked\S*\s+\d+\s+([\d.]+) ns/op`).FindStringSubmatch(micro); m != nil {
		blocked = fmt.Sprintf("micro-benchmark `BenchmarkRedisMessage/blocked`: %s ns per decision, far under one Redis round trip (%s µs), so it makes none", m[1], fmtNum(rtt.p50, 1))
	}
	out = append(out, [3]string{"Redis round trips for a blocked key = 0", blocked, "not measured here"})
	for _, k := range []string{"gate-memory", "gate-exact", "gate-lease"} {
		w := get(k)
		stretch := ""
		if w.idle <= 2 {
			stretch = " (stretch ≤ 2 KiB met too)"
		}
		out = append(out, [3]string{fmt.Sprintf("Idle memory ≤ 4 KiB per never-used connection, %s", strings.TrimPrefix(k, "gate-")),
			fmt.Sprintf("%s KiB (nginx %s, HAProxy %s)%s", fmtNum(w.idle, 2), fmtNum(ng.idle, 2), fmtNum(hp.idle, 2), stretch),
			verdict(w.idle <= 4, has(w.idle))})
		out = append(out, [3]string{fmt.Sprintf("Idle memory ≤ 4 KiB per connection after a message, pings and scrapes, %s", strings.TrimPrefix(k, "gate-")),
			fmt.Sprintf("%s KiB (nginx %s, HAProxy %s)", fmtNum(w.active, 2), fmtNum(ng.active, 2), fmtNum(hp.active, 2)),
			verdict(w.active <= 4, has(w.active))})
	}
	for _, k := range []string{"gate-memory", "gate-exact", "gate-lease"} {
		w := get(k)
		out = append(out, [3]string{fmt.Sprintf("Upgrades with a new HS256 token ≥ 5,000/s, %s", strings.TrimPrefix(k, "gate-")),
			fmt.Sprintf("%s/s (plain upgrades: nginx %s/s, HAProxy %s/s)", fmtNum(w.upgFresh, 0), fmtNum(ng.upgFresh, 0), fmtNum(hp.upgFresh, 0)),
			verdict(w.upgFresh >= 5000, has(w.upgFresh))})
	}
	for _, pair := range [][2]string{{"gate-rules", "gate-memory"}, {"gate-rules-exact", "gate-exact"}} {
		w, flags := get(pair[0]), get(pair[1])
		// Both gates run in every repetition of the main table: the ratio pairs them per
		// repetition, as the ×nginx ratios do.
		v := pairedRatio(w.s1res, flags.s1res, s1Rep, s1Rate)
		out = append(out, [3]string{fmt.Sprintf("S1 with a rules file equal to the flag rules within 5%%, %s", strings.TrimPrefix(pair[1], "gate-")),
			fmt.Sprintf("%s rt/s vs %s with the flags = %s", fmtNum(w.s1, 0), fmtNum(flags.s1, 0), fmtRatio(v)),
			// "Equal within 5%" is two-sided: a rules file 10% faster than the flags it
			// restates is as much a sign that they do not do the same work as one 10% slower.
			verdict(math.Abs(v-1) <= 0.05, has(v))})
	}
	allocs := "no micro-benchmark output"
	relayOK, relaySeen := true, false
	for _, m := range regexp.MustCompile(`(BenchmarkRelay\S*)\s.*?\s(\d+) allocs/op`).FindAllStringSubmatch(micro, -1) {
		relaySeen = true
		if m[2] != "0" {
			relayOK = false
		}
	}
	if relaySeen {
		allocs = "`BenchmarkRelay*` allocs/op in the micro-benchmarks below; the `testing.AllocsPerRun` test runs in `make test`"
	}
	out = append(out, [3]string{"Zero allocations per relayed frame", allocs, verdict(relayOK, relaySeen)})
	out = append(out, [3]string{"One write call per frame per side", "not observable from outside the process; not measured by the harness", "not measured"})
	return out
}

// chartPanels turns the medians into the chart's four panels.
func chartPanels(rows []row) []panel {
	label := func(t *target) string {
		return strings.TrimSuffix(strings.ReplaceAll(t.name, "wsgate ", "gate "), " (backend)")
	}
	s1 := panel{title: "S1 round trips/s (higher is better)"}
	lat := panel{title: "S2 added latency, us (lower is better)", legend: "dark: p50   light: p99"}
	cpu := panel{title: "CPU ms per 1000 round trips (lower is better)"}
	mem := panel{title: "KiB RSS per idle connection: never used / after a message (lower is better)"}
	for _, w := range rows {
		if w.t.skip != "" {
			continue
		}
		l := label(w.t)
		s1.bars = append(s1.bars, bar{key: w.t.key, label: l, vals: []float64{w.s1}, texts: []string{fmtNum(w.s1, 0)}})
		if !w.t.proxy {
			continue
		}
		lat.bars = append(lat.bars, bar{key: w.t.key, label: l, vals: []float64{w.add50, w.add99},
			texts: []string{fmtNum(w.add50, 1), fmtNum(w.add99, 1)}})
		cpu.bars = append(cpu.bars, bar{key: w.t.key, label: l, vals: []float64{w.cpu}, texts: []string{fmtNum(w.cpu, 2)}})
		mem.bars = append(mem.bars, bar{key: w.t.key, label: l, vals: []float64{w.idle, w.active},
			texts: []string{fmtNum(w.idle, 2), fmtNum(w.active, 2)}})
	}
	return []panel{s1, lat, cpu, mem}
}

// scaleTable is the S1-at-scale table: one row per target, two column pairs per shape.
func scaleTable(cfg config, targets []*target, r *results) string {
	header := []string{"target"}
	for _, sh := range cfg.scale {
		h := fmt.Sprintf("%d×%d", sh.conns, sh.inflight)
		header = append(header, h+" rt/s", "×nginx", h+" CPU ms/1k", "×nginx")
	}
	rate, cpu := s1Rate, s1CPU
	var cells [][]string
	for _, t := range targets {
		if t.skip != "" {
			continue
		}
		row := []string{t.name}
		for _, sh := range cfg.scale {
			xs, all := redisDecided(r.scale[sh][t.key])
			ngs := r.scale[sh]["nginx"]
			v, c := medianOf(xs, rate), medianOf(xs, cpu)
			// The ratios pair each repetition kept with nginx's of the same repetition.
			vx, cx := pairedRatio(xs, ngs, s1Rep, rate), pairedRatio(xs, ngs, s1Rep, cpu)
			mark := ""
			if all {
				mark = " †"
			}
			row = append(row, fmtNum(v, 0)+mark, fmtRatio(vx), dash(t.proxy, fmtNum(c, 2)+mark), dash(t.proxy, fmtRatio(cx)))
		}
		cells = append(cells, row)
	}
	return mdTable(header, cells)
}

// abTable compares the gate of -gate-bin-b (B) with the gate of its mode (A) measured in the
// same repetitions: for S1 and each shape at scale, the median of B's per-repetition ratios to
// A; for S2, their added latencies' medians (S2 keeps no repetitions).
func abTable(cfg config, r *results) string {
	a, b := "gate-"+cfg.gateBMode, keyB
	header := []string{"measurement", "rt/s B÷A", "CPU ms/1k B÷A", "calls over " + slowCallMs + " ms B / A"}
	row := func(name string, as, bs []s1Result) []string {
		slow := "—"
		if cfg.gateBMode != "memory" {
			slow = fmtNum(100*medianOf(bs, s1Slow), 1) + "% / " + fmtNum(100*medianOf(as, s1Slow), 1) + "%"
		}
		return []string{name, fmtRatio(pairedRatio(bs, as, s1Rep, s1Rate)), fmtRatio(pairedRatio(bs, as, s1Rep, s1CPU)), slow}
	}
	cells := [][]string{row(fmt.Sprintf("S1 %d×%d", cfg.s1Conns, cfg.s1Inflight), r.s1[a], r.s1[b])}
	for _, sh := range cfg.scale {
		cells = append(cells, row(fmt.Sprintf("at scale %d×%d", sh.conns, sh.inflight), r.scale[sh][a], r.scale[sh][b]))
	}
	p50 := func(k string) float64 { return medianOf(r.added[k], func(x s2Result) float64 { return x.p50 }) }
	return mdTable(header, cells) + fmt.Sprintf("\nS2 added p50: B %s µs, A %s µs.\n", fmtNum(p50(b), 1), fmtNum(p50(a), 1))
}

// fallbackShare is the most decisions without Redis, per message, an S1 repetition of a gate on
// Redis may have and still measure Redis: past it, it measures the memory store (the failure
// mode) for part of its messages.
const fallbackShare = 0.01

// redisDecided returns the repetitions in which Redis decided nearly every message (the
// failure mode at most fallbackShare of them), or all of them, with all true, when none
// qualifies. Repetitions of a target without Redis all qualify.
func redisDecided(xs []s1Result) (ls []s1Result, all bool) {
	for _, x := range xs {
		if x.fallbacks <= fallbackShare*float64(x.redis.messages) {
			ls = append(ls, x)
		}
	}
	if len(ls) == 0 {
		return xs, len(xs) > 0
	}
	return ls, false
}

// scaleFallbacks is the footnote of the S1-at-scale table: the share of messages decided without
// Redis in each repetition of each gate on Redis that had any.
func scaleFallbacks(cfg config, targets []*target, r *results) string {
	var parts, slow []string
	for _, t := range targets {
		if t.skip != "" || t.redis == "" {
			continue
		}
		for _, sh := range cfg.scale {
			xs := r.scale[sh][t.key]
			if len(xs) > 0 {
				slow = append(slow, fmt.Sprintf("%s %d×%d %s%%", t.name, sh.conns, sh.inflight, fmtNum(100*medianOf(xs, s1Slow), 1)))
			}
			shares := make([]string, len(xs))
			some := false
			for i, x := range xs {
				f := 0.0
				if x.redis.messages > 0 {
					f = x.fallbacks / float64(x.redis.messages)
				}
				some = some || x.fallbacks > 0
				shares[i] = fmtNum(100*f, 1) + "%"
			}
			if some {
				parts = append(parts, fmt.Sprintf("%s %d×%d: %s", t.name, sh.conns, sh.inflight, strings.Join(shares, ", ")))
			}
		}
	}
	s := fmt.Sprintf("A gate on Redis decides a message with its failure mode (`local`: the memory store) when the Redis call outlasts `--redis-timeout` (50ms) or the node is marked down after three such calls in a row (counted from `holo_ws_limiter_decisions_total{cause=\"fallback\"}`). A repetition in which more than %.0f%% of the messages were decided so measures the memory store for part of them: it is left out of the gate's figures at that row, unless every repetition of the row is, which marks the figures †.", 100*fallbackShare)
	if len(parts) == 0 {
		s += " No repetition here had any."
	} else {
		s += " Messages decided without Redis, per repetition: " + strings.Join(parts, "; ") + "."
	}
	if len(slow) > 0 {
		s += " Limiter calls over " + slowCallMs + " ms (decisions that waited for Redis: their own call, or another decision's lease of the same key), median per row: " + strings.Join(slow, ", ") + "."
	}
	return s + "\n"
}

// scaleTargetLines checks S1 at scale: throughput (memory and lease ≥ 1.0× nginx, exact ≥
// 0.8×) and CPU per round trip (≤ 1.1× nginx's) at every shape.
func scaleTargetLines(cfg config, r *results) [][3]string {
	var out [][3]string
	for _, g := range []struct {
		key, name string
		min       float64
	}{{"gate-memory", "memory store", 1.0}, {"gate-lease", "lease mode", 1.0}, {"gate-exact", "exact mode", 0.8}} {
		var figs []string
		okRate, okCPU, seen := true, true, false
		for _, sh := range cfg.scale {
			xs, all := redisDecided(r.scale[sh][g.key])
			// Medians of the per-repetition ratios, as in the table.
			vx := pairedRatio(xs, r.scale[sh]["nginx"], s1Rep, s1Rate)
			cx := pairedRatio(xs, r.scale[sh]["nginx"], s1Rep, s1CPU)
			if !has(vx, cx) {
				okRate, okCPU = false, false
				continue
			}
			seen = true
			mark := ""
			if all {
				// Not a figure of Redis deciding: it cannot meet the target.
				mark, okRate = " † (not decided by Redis)", false
			}
			okRate = okRate && vx >= g.min
			okCPU = okCPU && cx <= 1.1
			figs = append(figs, fmt.Sprintf("%d×%d: %s, CPU %s%s", sh.conns, sh.inflight, fmtRatio(vx), fmtRatio(cx), mark))
		}
		out = append(out, [3]string{
			fmt.Sprintf("S1 at scale, %s: ≥ %.1f× nginx at every row, CPU per round trip ≤ 1.1× nginx's", g.name, g.min),
			strings.Join(figs, "; "), verdict(okRate && okCPU, seen)})
	}
	return out
}

// rollingHeading starts the rolling-restart section; -rolling replaces the section it starts.
const rollingHeading = "## Rolling restart"

// rollingSection is the rolling-restart section: how it was measured, one row per drain
// spread, and the targets. alone says it was measured by -rolling, apart from the rest.
func rollingSection(rc rollingConfig, rows []rollingResult, errs []string, m machine, tmp string, alone bool) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("%s\n\n", rollingHeading)
	if alone {
		p("Measured by `bench -rolling` on %s in %v (%d CPUs, %s), apart from the rest of this report, which it left as it was.\n\n",
			m.date.Format("2006-01-02 15:04 UTC"), time.Since(m.date).Round(time.Second), m.ncpu, m.cpuModel)
	}
	p("What a deploy does to the replica that takes over. Gate A and gate B (the memory store, the memory gate's flags, each on its "+
		"own port) stand in front of the same backend. %s clients connect to A, each its own user, and each sends a text message "+
		"carrying its sequence number every %v (the first at a random moment within the first %v). After %v, A gets SIGTERM "+
		"with `--shutdown-delay 0s` and the row's `--drain-spread`. The moment a client reads A's close frame it answers it and "+
		"dials B with the same token, ignoring `retryAfterMs` (up to %d dials, back to back); its reconnect time is when B's 101 "+
		"has been read. Reconnects are counted in %v intervals from the first drain close any client saw; *in any 100 ms* is the "+
		"most within any 100 ms window, intervals or not. The *even rate* is the connections over the spread's intervals. *1012 after "+
		"the retry hint* counts the clients whose close was 1012 right after a text frame `{\"code\":1012,\"error\":...,\"retryAfterMs\":N}` "+
		"with N > 0; *A exited* is A's exit status and the time from SIGTERM to its exit.\n\n",
		fmtNum(float64(rc.conns), 0), rc.every, rc.every, rollingWarm, rollingAttempts, rollingBucket)
	p("Replies: the backend answers each message %v after it arrived, so that at any moment about %.0f%% of the connections "+
		"have a reply it has yet to write, and when the gate's close 1001 reaches it, it writes the replies still due and then its "+
		"close. It counts, per connection (tagged by a `?conn=` query, which the gate passes on), the replies it wrote, those "+
		"written after the gate's close, and the sequence number of the last. Each client counts the replies it read from A "+
		"before A's close frame and checks that their sequence numbers follow one another. **replies lost** = Σ max(0, written − "+
		"read) over the connections; **out of order** counts connections whose replies skipped or repeated a number, or whose last "+
		"reply read is not the last the backend wrote. A gate that dropped what the backend sent after the gate's close, or cut a "+
		"connection before relaying it, would show here.\n\n", rc.delay, 100*min(1, float64(rc.delay)/float64(rc.every)))
	header := []string{"`--drain-spread`", "connections", "drain closes, first to last", "peak closes / 100 ms",
		"reconnected", "failed", "reconnects, first to last", "peak reconnects / 100 ms", "in any 100 ms", "even rate / 100 ms",
		"replies written", "after A's close", "replies lost", "out of order", "1012 after the retry hint", "A exited"}
	var cells [][]string
	for _, w := range rows {
		exit := "still running after the drain and a minute"
		switch {
		case w.exitCode >= 0:
			exit = fmt.Sprintf("%d after %v", w.exitCode, w.exitAfter.Round(time.Millisecond))
		case w.exitCode == -1:
			exit = "by a signal"
		}
		cells = append(cells, []string{w.spread.String(), fmtNum(float64(w.conns), 0),
			w.closeSpan.Round(time.Millisecond).String(), strconv.Itoa(w.closePeak),
			fmtNum(float64(w.reconnected), 0), strconv.Itoa(w.failed), w.reconnSpan.Round(time.Millisecond).String(),
			strconv.Itoa(w.peak), strconv.Itoa(w.peakAny), dash(w.spread > 0, fmtNum(w.even(), 0)),
			fmtNum(float64(w.written), 0), fmtNum(float64(w.late), 0), fmtNum(float64(w.lost), 0),
			strconv.Itoa(w.disordered), fmtNum(float64(w.hinted), 0) + " of " + fmtNum(float64(w.drained), 0), exit})
	}
	if len(cells) > 0 {
		p("%s\n", mdTable(header, cells))
	}
	for _, w := range rows {
		if w.spread > 0 && len(w.perSecond) > 0 {
			p("Reconnects per second from the first drain close at `--drain-spread %v`: %s.\n", w.spread, perSecondText(w.perSecond))
		}
	}
	for _, w := range rows {
		var notes []string
		if w.ended > 0 {
			notes = append(notes, fmt.Sprintf("%d connections ended without a close from A", w.ended))
		}
		if w.untracked > 0 {
			notes = append(notes, fmt.Sprintf("the backend gave no final count for %d connections (left out of the reply figures)", w.untracked))
		}
		if w.firstErr != "" {
			notes = append(notes, "first client error: "+w.firstErr)
		}
		if len(notes) > 0 {
			p("- `--drain-spread %v`: %s.\n", w.spread, strings.Join(notes, "; "))
		}
	}
	var spreadRow *rollingResult
	var lost, disorder int64
	complete := len(rows) > 0
	for i, w := range rows {
		if w.spread > 0 && spreadRow == nil {
			spreadRow = &rows[i]
		}
		lost += w.lost
		disorder += int64(w.disordered)
		complete = complete && w.untracked == 0 && w.ended == 0
	}
	p("\n| target | figure from this run | |\n| --- | --- | --- |\n")
	if spreadRow != nil {
		lim := 2 * spreadRow.even()
		// Any 100 ms window holds at least as many as the fixed intervals: the stricter reading.
		p("| peak reconnects per 100 ms ≤ 2× the even-spread rate at `--drain-spread %v` (≤ %s), in any 100 ms window | %d in any 100 ms, %d in the fixed intervals; %s of %s reconnected | %s |\n",
			spreadRow.spread, fmtNum(lim, 0), spreadRow.peakAny, spreadRow.peak, fmtNum(float64(spreadRow.reconnected), 0), fmtNum(float64(spreadRow.conns), 0),
			verdict(float64(spreadRow.peakAny) <= lim && spreadRow.reconnected == spreadRow.conns, true))
	} else {
		p("| peak reconnects per 100 ms ≤ 2× the even-spread rate | no row with a spread | not measured |\n")
	}
	p("| no reply the backend wrote before its close is lost | %s lost, %s out of order, over %d rows | %s |\n\n",
		fmtNum(float64(lost), 0), fmtNum(float64(disorder), 0), len(rows), verdict(lost == 0 && disorder == 0 && complete, len(rows) > 0))
	if len(rows) > 0 {
		p("```sh\n%s   # gate A, first row\n%s   # gate B\n```\n\n", shellJoin(tmp, rows[0].gateA), shellJoin(tmp, rows[0].gateB))
	}
	if alone && len(errs) > 0 { // the full report lists them under Failed measurements
		for _, e := range errs {
			p("- failed: %s\n", strings.ReplaceAll(e, "\n", " "))
		}
		p("\n")
	}
	return b.String()
}

// spliceSection puts section (which starts with heading) into doc in place of the section
// there, or before "## How the gates were run" or "## Micro-benchmarks", or at the end.
func spliceSection(doc, heading, section string) string {
	if i := strings.Index(doc, heading+"\n"); i >= 0 && (i == 0 || doc[i-1] == '\n') {
		rest := doc[i+len(heading):]
		end := len(doc)
		if j := strings.Index(rest, "\n## "); j >= 0 {
			end = i + len(heading) + j + 1
		}
		return doc[:i] + section + doc[end:]
	}
	for _, h := range []string{"\n## How the gates were run", "\n## Micro-benchmarks"} {
		if i := strings.Index(doc, h); i >= 0 {
			return doc[:i+1] + section + doc[i+1:]
		}
	}
	if !strings.HasSuffix(doc, "\n\n") {
		doc = strings.TrimRight(doc, "\n") + "\n\n"
	}
	return doc + section
}

// rules6Heading starts the six-rule section; -rules6 replaces the section it starts.
const rules6Heading = "## Rules file: six rules on one message"

// rules6Section is the six-rule section: how it was measured, the rates and Redis calls per
// message of each gate, the calls by command, and the targets. alone says it was measured by
// -rules6, apart from the rest.
func rules6Section(res *rules6Result, m machine, tmp string, leaseArgs []string, alone bool) string {
	rc := res.rc
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("%s\n\n", rules6Heading)
	if alone {
		p("Measured by `bench -rules6` on %s in %v (%d CPUs, %s), apart from the rest of this report, which it left as it was. "+
			"Processes other than the harness and what it started used about %.0f%% of the machine's CPU meanwhile.",
			m.date.Format("2006-01-02 15:04 UTC"), res.elapsed.Round(time.Second), m.ncpu, m.cpuModel, 100*max(0, res.otherCPU))
		p("\n\n")
	}
	if res.source != "" {
		p("The gate was built from the working tree (%s); the figures are of that build.\n\n", res.source)
	}
	lease := "`--limit-mode lease`"
	if len(leaseArgs) > 0 {
		lease = "`" + strings.Join(leaseArgs, " ") + "`"
	}
	msg := rules6Message(rc.size)
	p("The rules file's speed target: a message matching every rule costs one Redis round trip on a standalone Redis (one "+
		"script over all its keys), one pipelined call per slot group on a Cluster; blocked keys still cost none; lease mode "+
		"covers every rule. Four gates, each with its own redis-server so that `INFO commandstats` counts one gate's commands: "+
		"the six-rule file below in exact mode and with %s, and the flag rules of the gates above (`%s`) in the same two modes. "+
		"Each connection is its own user (an HS256 token with `sub` and `\"tenant\":\"acme\"`, one tenant for all) with its own "+
		"`X-Device-Id` header, all from one IP, and sends the socket.io event `%s` (%d B), to which all six rules apply "+
		"(`wsgate rules explain` lists them); the limits are far above the load, so nothing is refused.\n\n",
		lease, strings.Join(gateLimits, " "), msg, len(msg))
	p("```yaml\n%s```\n\n", rules6File)
	p("- **1 in flight**: one connection sends %s messages one at a time, each after the echo of the last (after 100 untimed, "+
		"so that its block reads are in the client-side cache); each request is its own round trip.\n", fmtNum(float64(rc.seq), 0))
	p("- **%d×%d**: S1's shape, %d connections × %d messages in flight, measured for %v after %v of the same load unmeasured; rueidis pipelines the requests of many "+
		"connections into shared round trips.\n", rc.conns, rc.inflight, rc.conns, rc.inflight, rc.dur, rc.warm)
	p("- **blocked** (six-rule gates, once): a client whose token has `\"plan\":\"capped\"` sends chat messages until the chat "+
		"rule (%d/1m for that tier, `action: drop`, `block: 30s`) drops one, then %d more and %s more, each answered by "+
		"the 429 notice while the connection stays; Redis is read around each run: the first read of the block key after "+
		"the refusal misses the client-side cache, which the block's write invalidated.\n\n", rules6CappedLimit, rules6BlockedFirst, fmtNum(float64(rc.blocked), 0))
	p("The first two phases run %d times, the gates taking turns (each repetition in its own order, as in the main table), after %v of the "+
		"load per gate as a warm-up (the first call of each script loads it). Each phase reads `INFO commandstats` before and "+
		"after; calls per message are medians over the repetitions of calls / messages, as are msg/s. **Requests** are the "+
		"commands the gate sent: every command but those the limiter's scripts run (GET, SET, PTTL, INCRBY, TIME, …) and the "+
		"MULTI/EXEC around a cached read; a block read that missed rueidis's client-side cache counts once, by its CLIENT "+
		"CACHING. **Decision requests** are script calls and cached block reads that missed: the requests without the gate's "+
		"background work (HGETALL of holds and revocations every second, PING health probes).\n\n", rc.reps, rules6Warm)

	byKey := map[string]*rules6Row{}
	var live []*rules6Row
	for _, w := range res.rows {
		byKey[w.key] = w
		if w.skip == "" {
			live = append(live, w)
		}
	}
	take := func(c cmdStats) int64 { return c.counts().take }
	miss := func(c cmdStats) int64 { return c.counts().check }
	type figs struct {
		seqRate, loadRate, cpu, micros float64
		seqDec, seqTake, seqMiss       float64
		loadReq, loadDec, loadTake     float64
		seqReq                         float64
		fallbacks                      []string
		allFellBack                    bool
	}
	get := func(w *rules6Row) figs {
		if w == nil || w.skip != "" {
			return figs{seqRate: nan, loadRate: nan, cpu: nan, micros: nan, seqDec: nan, seqTake: nan, seqMiss: nan,
				loadReq: nan, loadDec: nan, loadTake: nan, seqReq: nan}
		}
		lp := w.loadPhases()
		ls, all := redisDecided(w.load)
		f := figs{
			seqRate:     medianOf(w.seq, func(x rules6Phase) float64 { return float64(x.msgs) / x.secs }),
			loadRate:    medianOf(ls, func(x s1Result) float64 { return x.rate }),
			cpu:         medianOf(ls, func(x s1Result) float64 { return x.cpuPer1k }),
			allFellBack: all,
			micros:      scriptMicros(w.seq),
			seqDec:      perMsgMedian(w.seq, decisionRequests), seqTake: perMsgMedian(w.seq, take), seqMiss: perMsgMedian(w.seq, miss),
			seqReq:  perMsgMedian(w.seq, requests),
			loadReq: perMsgMedian(lp, requests), loadDec: perMsgMedian(lp, decisionRequests), loadTake: perMsgMedian(lp, take),
		}
		for _, x := range w.load {
			f.fallbacks = append(f.fallbacks, fmtNum(x.fallbacks, 0))
		}
		return f
	}
	flagsOf := map[string]string{"r6-rules-exact": "r6-flags-exact", "r6-rules-lease": "r6-flags-lease"}
	load := fmt.Sprintf("%d×%d", rc.conns, rc.inflight)
	header := []string{"gate", "msg/s, 1 in flight", "×flag rules", "msg/s, " + load, "×flag rules", "gate CPU µs/msg, " + load, "Redis µs per script call", "decision requests/msg, 1 in flight", "of which EVALSHA", "requests/msg, 1 in flight",
		"decision requests/msg, " + load, "of which EVALSHA", "requests/msg, " + load, "decisions without Redis, " + load}
	var cells [][]string
	for _, w := range res.rows {
		if w.skip != "" {
			cells = append(cells, append([]string{w.name, w.skip}, make([]string, len(header)-2)...))
			continue
		}
		f := get(w)
		// ×flag rules: the median of the per-repetition ratios to the flag-rule gate of the same
		// mode (the gates take turns in each repetition), over the repetitions both kept.
		seqx, loadx := nan, nan
		if ref := byKey[flagsOf[w.key]]; ref != nil && ref.skip == "" {
			seqRate := func(x rules6Phase) float64 { return float64(x.msgs) / x.secs }
			seqx = pairedRatio(w.seq, ref.seq, func(x rules6Phase) int { return x.rep }, seqRate)
			ls, _ := redisDecided(w.load)
			rs, _ := redisDecided(ref.load)
			loadx = pairedRatio(ls, rs, s1Rep, s1Rate)
		}
		rel := func(q float64) string { return dash(flagsOf[w.key] != "", fmtRatio(q)) }
		mark := ""
		if f.allFellBack {
			mark = " †"
		}
		cells = append(cells, []string{w.name + mark, fmtNum(f.seqRate, 0), rel(seqx), fmtNum(f.loadRate, 0), rel(loadx),
			fmtNum(f.cpu, 1), fmtNum(f.micros, 1), fmtNum(f.seqDec, 4), fmtNum(f.seqTake, 4), fmtNum(f.seqReq, 4),
			fmtNum(f.loadDec, 4), fmtNum(f.loadTake, 4), fmtNum(f.loadReq, 4), strings.Join(f.fallbacks, ", ")})
	}
	p("%s\n", mdTable(header, cells))
	p("- *×flag rules*: against the flag-rule gate of the same mode, the median of the per-repetition ratios. *of which EVALSHA* counts EVAL and EVALSHA.\n")
	p("- *gate CPU µs/msg*: user+system CPU of the gate's process per message under load (10 ms ticks), not Redis's.\n")
	p("- *Redis µs per script call*: the time Redis spent in EVALSHA and EVAL (the commands the script runs included) per call, from `INFO commandstats`, at 1 in flight.\n")
	p("- *decisions without Redis*: `holo_ws_limiter_decisions_total{cause=\"fallback\"}` per repetition of the load: messages the failure mode (`local`) decided because a call outlasted `--redis-timeout` (50ms) or the node was marked down. A repetition where they exceed %.0f%% of its messages is left out of the msg/s, CPU and Redis figures at %s (it measures the memory store for part of its messages), unless every repetition of the row is: such a row is marked †.\n", 100*fallbackShare, load)
	p("- The flag rules decide every message already buffered on a connection in one call (up to 64); a rules file with a byte rule or a class decides one message per call, so under load its requests per message stay at 1 where the flag rules' fall well under 1.\n\n")

	byCommand := func(title string, rows []*rules6Row, phases func(*rules6Row) []rules6Phase) {
		if len(rows) == 0 {
			return
		}
		names := map[string]bool{}
		for _, w := range rows {
			for _, ph := range phases(w) {
				for k := range ph.cmds {
					names[k] = true
				}
			}
		}
		if len(names) == 0 {
			p("%s none.\n\n", strings.TrimSuffix(title, ":"))
			return
		}
		var order []string
		for k := range names {
			order = append(order, k)
		}
		// The gate's own requests first, then what the scripts run; by name within each.
		slices.SortFunc(order, func(a, b string) int {
			if sa, sb := scriptCommands[a], scriptCommands[b]; sa != sb {
				if sb {
					return -1
				}
				return 1
			}
			return strings.Compare(a, b)
		})
		h := []string{"command", "sent by"}
		for _, w := range rows {
			h = append(h, w.name)
		}
		var cs [][]string
		for _, k := range order {
			row := []string{strings.ToUpper(k), commandRole(k)}
			for _, w := range rows {
				row = append(row, fmtNum(perMsgMedian(phases(w), func(c cmdStats) int64 { return c[k].calls }), 4))
			}
			cs = append(cs, row)
		}
		p("%s\n\n%s\n", title, mdTable(h, cs))
	}
	byCommand("Redis calls per message by command, **1 in flight**:", live, func(w *rules6Row) []rules6Phase { return w.seq })
	byCommand(fmt.Sprintf("Redis calls per message by command, **%s**:", load), live, (*rules6Row).loadPhases)
	// The blocked runs as rows of their own: the first messages into the block, and the rest.
	var blockedRows []*rules6Row
	for _, w := range live {
		if w.blocked != nil {
			blockedRows = append(blockedRows,
				&rules6Row{name: fmt.Sprintf("%s, first %d", w.name, w.blockedFirst.msgs), seq: []rules6Phase{*w.blockedFirst}},
				&rules6Row{name: fmt.Sprintf("%s, next %s", w.name, fmtNum(float64(w.blocked.msgs), 0)), seq: []rules6Phase{*w.blocked}})
		}
	}
	byCommand("Redis calls per message by command, **blocked** (every message refused by the block, with the 429 notice):",
		blockedRows, func(w *rules6Row) []rules6Phase { return w.seq })

	p("| target | figure from this run | |\n| --- | --- | --- |\n")
	for _, k := range []string{"r6-rules-exact", "r6-rules-lease"} {
		w := byKey[k]
		f := get(w)
		p("| one Redis round trip per message matching all six rules, standalone Redis, %s mode: decision requests per message at 1 in flight ≤ 1.01 (above 1: the client-side cache refreshing a block read, each every minute) | %s (%s EVAL/EVALSHA, %s cached block reads missing); %s at %s | %s |\n",
			strings.TrimPrefix(k, "r6-rules-"), fmtNum(f.seqDec, 4), fmtNum(f.seqTake, 4), fmtNum(f.seqMiss, 4), fmtNum(f.loadDec, 4), load,
			verdict(f.seqDec <= 1.01, has(f.seqDec)))
	}
	p("| one pipelined call per slot group on a Cluster | the harness runs a standalone Redis | not measured |\n")
	for _, k := range []string{"r6-rules-exact", "r6-rules-lease"} {
		w := byKey[k]
		fig, dec, measured := "no figure", nan, false
		if w != nil && w.blocked != nil {
			c := w.blocked.cmds.counts()
			dec, measured = perMsg(c.take+c.check, w.blocked.msgs), true
			fig = fmt.Sprintf("%s decision requests over %s blocked messages (%s EVAL/EVALSHA, %s cached block reads missing); %s requests in all",
				fmtNum(float64(c.take+c.check), 0), fmtNum(float64(w.blocked.msgs), 0), fmtNum(float64(c.take), 0), fmtNum(float64(c.check), 0),
				fmtNum(float64(requests(w.blocked.cmds)), 0))
			if w.blockedFirst != nil {
				fig += fmt.Sprintf("; before them, %s over the first %d into the block", fmtNum(float64(decisionRequests(w.blockedFirst.cmds)), 0), w.blockedFirst.msgs)
			}
		}
		p("| a blocked key costs no Redis call, %s mode: ≤ 0.01 decision requests per blocked message (cache refreshes) | %s | %s |\n",
			strings.TrimPrefix(k, "r6-rules-"), fig, verdict(dec <= 0.01, measured))
	}
	fl, ff := get(byKey["r6-rules-lease"]), get(byKey["r6-flags-lease"])
	p("| lease mode covers every rule: six rules in lease mode ≤ 0.05 requests per message at %s, the flag rules' lease target | %s (flag rules in lease mode: %s); %s at 1 in flight (flag rules: %s) | %s |\n\n",
		load, fmtNum(fl.loadReq, 4), fmtNum(ff.loadReq, 4), fmtNum(fl.seqReq, 4), fmtNum(ff.seqReq, 4), verdict(fl.loadReq <= 0.05, has(fl.loadReq)))

	p("```sh\n")
	for _, w := range res.rows {
		if w.t != nil && len(w.t.argv) > 0 {
			p("%s   # %s\n", shellJoin(tmp, w.t.argv), w.name)
		}
	}
	if res.redisCmd != "" {
		p("%s   # one per gate\n", res.redisCmd)
	}
	p("```\n\n")
	if alone { // the full report lists them under Failed measurements
		failed := false
		for _, w := range res.rows {
			for _, e := range w.errs {
				p("- failed: %s: %s\n", w.name, strings.ReplaceAll(e, "\n", " "))
				failed = true
			}
		}
		if failed {
			p("\n")
		}
	}
	return b.String()
}
