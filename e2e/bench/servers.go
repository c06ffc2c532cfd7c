package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// startLimit bounds each server's start.
const startLimit = 20 * time.Second

// target is one thing the load clients talk to: the backend itself or a proxy in front of it.
type target struct {
	key  string // short name used in flags and file names
	name string // row label
	addr string // host:port the clients dial
	// backend is the echo backend's address, whose /count says when this target's
	// connections to it have closed; "" when unknown.
	backend string
	proc    *proc // nil when the row is skipped
	proxy   bool  // false for the direct-to-backend row
	gate    bool
	redis   string   // address of the Redis the gate uses; "" for none
	admin   string   // the gate's admin address (/metrics); "" for others
	argv    []string // command line, for BENCHMARKS.md
	skip    string   // why the row has no figures; "" when it runs
}

// redisCalls returns the commands Redis has served so far, or nil for a target without Redis.
func (t *target) redisCalls() (cmdStats, error) {
	if t.redis == "" {
		return nil, nil
	}
	return commandStats(t.redis)
}

// env is what startAll sets up: the run's temp dir, the processes and the shared pieces.
type env struct {
	tmp         string
	ps          *procs
	backendAddr string
	redisAddr   string
	secretFile  string
	gateBin     string
	gateBinB    string   // -gate-bin-b: the binary of the keyB target
	gateSource  string   // what the gate was built from, for the report; "" for -gate-bin
	leaseArgs   []string // nil when the gate refuses --limit-mode lease
	leaseNote   string
	nginxConf   string
	haproxyConf string
}

// startBackend re-executes the harness binary in -backend mode.
func (e *env) startBackend() (*target, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	e.backendAddr = "127.0.0.1:" + strconv.Itoa(port)
	argv := []string{self, "-backend", e.backendAddr}
	p, err := e.ps.start("backend", filepath.Join(e.tmp, "backend.log"), argv)
	if err != nil {
		return nil, err
	}
	if err := waitTCP(p, e.backendAddr, startLimit); err != nil {
		return nil, err
	}
	return &target{key: "direct", name: "direct (backend)", addr: e.backendAddr, backend: e.backendAddr, proc: p,
		argv: []string{"bench", "-backend", e.backendAddr}}, nil
}

// nginxConfig is a WebSocket reverse proxy as the nginx documentation describes one
// (https://nginx.org/en/docs/http/websocket.html), 2 workers, access log off.
const nginxConfig = `worker_processes 2;
worker_rlimit_nofile 20000;
error_log {{dir}}/error.log warn;
pid {{dir}}/nginx.pid;

events {
    worker_connections 20000;
}

http {
    access_log off;
    client_body_temp_path {{dir}}/client_body;
    proxy_temp_path {{dir}}/proxy;
    fastcgi_temp_path {{dir}}/fastcgi;
    uwsgi_temp_path {{dir}}/uwsgi;
    scgi_temp_path {{dir}}/scgi;

    server {
        listen {{listen}};
        location / {
            proxy_pass http://{{backend}};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
`

// haproxyConfig is HAProxy in HTTP mode with 2 threads; "timeout tunnel" governs a connection
// once it has been upgraded. maxconn is the most a 20,000-file limit allows: HAProxy 2.6
// refuses to start with maxconn 20000 unless it may open 2×maxconn+17 = 40,017 files.
const haproxyConfig = `global
    nbthread 2
    maxconn 9990

defaults
    mode http
    maxconn 9990
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h

frontend ws
    bind {{listen}}
    default_backend echo

backend echo
    server echo1 {{backend}}
`

func fill(tmpl string, kv ...string) string {
	for i := 0; i+1 < len(kv); i += 2 {
		tmpl = strings.ReplaceAll(tmpl, "{{"+kv[i]+"}}", kv[i+1])
	}
	return tmpl
}

func (e *env) startNginx() (*target, error) {
	t := &target{key: "nginx", name: "nginx", proxy: true, backend: e.backendAddr}
	bin, err := lookPath("nginx")
	if err != nil {
		t.skip = "nginx not installed"
		return t, nil
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	t.addr = "127.0.0.1:" + strconv.Itoa(port)
	dir := filepath.Join(e.tmp, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	e.nginxConf = fill(nginxConfig, "dir", dir, "listen", t.addr, "backend", e.backendAddr)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(e.nginxConf), 0o644); err != nil {
		return nil, err
	}
	t.argv = []string{bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf, "-g", "daemon off;"}
	if t.proc, err = e.ps.start("nginx", filepath.Join(dir, "stdout.log"), t.argv); err != nil {
		return nil, err
	}
	return t, waitTCP(t.proc, t.addr, startLimit)
}

func (e *env) startHAProxy() (*target, error) {
	t := &target{key: "haproxy", name: "HAProxy", proxy: true, backend: e.backendAddr}
	bin, err := lookPath("haproxy")
	if err != nil {
		t.skip = "haproxy not installed"
		return t, nil
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	t.addr = "127.0.0.1:" + strconv.Itoa(port)
	e.haproxyConf = fill(haproxyConfig, "listen", t.addr, "backend", e.backendAddr)
	conf := filepath.Join(e.tmp, "haproxy.cfg")
	if err := os.WriteFile(conf, []byte(e.haproxyConf), 0o644); err != nil {
		return nil, err
	}
	t.argv = []string{bin, "-f", conf, "-db"}
	if t.proc, err = e.ps.start("haproxy", filepath.Join(e.tmp, "haproxy.log"), t.argv); err != nil {
		return nil, err
	}
	return t, waitTCP(t.proc, t.addr, startLimit)
}

// lookPath finds a server binary on PATH or in the sbin directories, which a non-root PATH
// often lacks.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", name)
}

// startRedis starts a redis-server without persistence; it does nothing when redis-server is
// missing, and the Redis gates are then skipped.
func (e *env) startRedis() error {
	addr, _, err := e.startRedisAs("redis")
	e.redisAddr = addr
	return err
}

// startRedisAs starts a redis-server without persistence, its files and log named name, and
// returns its address and process; "" and nil when redis-server is missing.
func (e *env) startRedisAs(name string) (string, *proc, error) {
	bin, err := lookPath("redis-server")
	if err != nil {
		return "", nil, nil
	}
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	dir := filepath.Join(e.tmp, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	argv := []string{bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", dir}
	p, err := e.ps.start(name+"-server", filepath.Join(e.tmp, name+".log"), argv)
	if err != nil {
		return "", nil, err
	}
	if err := waitTCP(p, addr, startLimit); err != nil {
		return "", p, err
	}
	return addr, p, nil
}

// buildGate builds the working tree's gate into the temp dir.
func (e *env) buildGate(ctx context.Context) error {
	e.gateBin = filepath.Join(e.tmp, "wsgate")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", e.gateBin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -o %s . failed (pass -gate-bin to use a built gate): %w\n%s", e.gateBin, err, out)
	}
	e.gateSource = treeState()
	return nil
}

// treeState describes the working tree a gate was built from: the commit and the top-level
// directories with uncommitted changes, e.g. "commit f0e881e, uncommitted changes under limit/,
// proxy/"; "" outside a git checkout.
func treeState() string {
	head, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	out := "commit " + strings.TrimSpace(string(head))
	st, err := exec.Command("git", "status", "--porcelain").Output()
	if err != nil {
		return out
	}
	var dirs []string
	for _, line := range strings.Split(string(st), "\n") {
		if len(line) < 4 {
			continue
		}
		d, _, nested := strings.Cut(line[3:], "/")
		if nested {
			d += "/"
		}
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		return out + ", no uncommitted changes"
	}
	slices.Sort(dirs)
	return out + ", uncommitted changes in " + strings.Join(dirs, ", ")
}

// gateLimits are on, and far above anything the harness sends.
var gateLimits = []string{
	"--user-rate", "100000000/10s", "--ip-rate", "100000000/10s",
	"--user-conn-rate", "1000000/1m", "--ip-conn-rate", "1000000/1m",
}

// gateRulesFile is gateLimits as a rules file: the same four rules, by name.
const gateRulesFile = `rules:
  - {name: user-messages, key: user, limits: [100000000/10s], block: 5s}
  - {name: ip-messages, key: ip, limits: [100000000/10s], block: 5s}
  - {name: user-handshakes, key: user, count: handshakes, limits: [1000000/1m]}
  - {name: ip-handshakes, key: ip, count: handshakes, limits: [1000000/1m]}
`

// probeLease asks the gate whether it knows --limit-mode lease (another change adds it).
func (e *env) probeLease(leaseSize int) {
	help, _ := exec.Command(e.gateBin, "--help").CombinedOutput()
	args := []string{"--limit-mode", "lease"}
	if strings.Contains(string(help), "--lease-size") {
		args = append(args, "--lease-size", strconv.Itoa(leaseSize))
	}
	redisURL := "redis://127.0.0.1:6379"
	if e.redisAddr != "" {
		redisURL = "redis://" + e.redisAddr
	}
	check := append([]string{"check-config", "--upstream", "http://127.0.0.1:1", "--redis-url", redisURL}, args...)
	out, err := exec.Command(e.gateBin, check...).CombinedOutput()
	if err != nil {
		e.leaseNote = "the gate refused `" + strings.Join(args, " ") + "`"
		if s := strings.TrimSpace(string(out)); s != "" {
			e.leaseNote += ": " + s
		}
		return
	}
	e.leaseArgs = args
}

// startGate starts one gate; mode is "memory", "exact" or "lease", or
// "rules" and "rules-exact": the memory and exact gates with gateLimits as a
// rules file.
func (e *env) startGate(mode string) (*target, error) {
	return e.startGateAs("gate-"+mode, "wsgate "+mode, mode)
}

// startGateAs is startGate with its own key and row label (the key names its log file) and
// extra flags after the usual ones.
func (e *env) startGateAs(key, name, mode string, extra ...string) (*target, error) {
	switch {
	case mode != "memory" && mode != "rules" && e.redisAddr == "":
		return &target{key: key, name: name, proxy: true, gate: true, skip: "n/a (redis-server not installed)"}, nil
	case mode == "lease" && e.leaseArgs == nil:
		return &target{key: key, name: name, proxy: true, gate: true, skip: "n/a (lease mode not built)"}, nil
	}
	t, err := e.newGate(key, name)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(mode, "rules") {
		file := filepath.Join(e.tmp, "rules.yaml")
		if err := os.WriteFile(file, []byte(gateRulesFile), 0o600); err != nil {
			return nil, err
		}
		t.argv = append(t.argv, "--rules-file", file)
	} else {
		t.argv = append(t.argv, gateLimits...)
	}
	// Each gate on Redis counts under keys of its own.
	prefix := "bench-" + mode
	if key == keyB {
		prefix += "-b"
	}
	switch mode {
	case "rules-exact":
		t.argv = append(t.argv, "--redis-url", "redis://"+e.redisAddr, "--key-prefix", "bench-rules", "--limit-mode", "exact")
		t.redis = e.redisAddr
	case "exact":
		t.argv = append(t.argv, "--redis-url", "redis://"+e.redisAddr, "--key-prefix", prefix, "--limit-mode", "exact")
		t.redis = e.redisAddr
	case "lease":
		t.argv = append(t.argv, "--redis-url", "redis://"+e.redisAddr, "--key-prefix", prefix)
		t.argv = append(t.argv, e.leaseArgs...)
		t.redis = e.redisAddr
	}
	t.argv = append(t.argv, extra...)
	return t, e.launch(t)
}

// keyB is the target of -gate-bin-b: a gate like gate-memory (or gate-exact, gate-lease:
// -gate-b-mode), from another build. Two builds measured in the same repetitions, their
// ratios paired, differ by less than the run-to-run noise of a shared machine does: separate
// runs of one build here moved its ratios to nginx by 10 to 15%.
const keyB = "gate-b"

// newGate returns a gate on two free ports (its listener and its admin listener) with the
// flags every gate has: the backend as upstream and the run's JWT secret. The caller adds its
// limit flags, then starts it with launch.
func (e *env) newGate(key, name string) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	t := &target{key: key, name: name, proxy: true, gate: true, backend: e.backendAddr,
		addr: "127.0.0.1:" + strconv.Itoa(port), admin: "127.0.0.1:" + strconv.Itoa(admin)}
	bin := e.gateBin
	if key == keyB {
		bin = e.gateBinB
	}
	t.argv = []string{bin, "--listen", t.addr, "--admin-listen", t.admin,
		"--upstream", "http://" + e.backendAddr, "--jwt-hmac-secret-file", e.secretFile}
	return t, nil
}

// launch starts the gate t.argv describes, output to <key>.log, and waits until it is ready.
func (e *env) launch(t *target) error {
	var err error
	if t.proc, err = e.ps.start(t.key, filepath.Join(e.tmp, t.key+".log"), t.argv); err != nil {
		return err
	}
	if err := waitTCP(t.proc, t.addr, startLimit); err != nil {
		return err
	}
	return waitReady(t.proc, "http://"+t.admin+"/readyz")
}

// fallbacks returns the messages and handshakes the gate decided with --failure-mode because
// Redis failed, answered after --redis-timeout or was marked down: its
// holo_ws_limiter_decisions_total{cause="fallback"}, which counts each message a decision
// covers (holo_ws_limiter_fallback_total counts decisions, and one may cover several
// messages). 0 for other targets.
func (t *target) fallbacks() (float64, error) {
	return t.metric("holo_ws_limiter_decisions_total", `cause="fallback"`)
}

// slowCall is the limiter call time past which a decision on Redis waited: for its own call
// to Redis, or for another decision's lease of the same key. A decision from a lease slice
// takes about a microsecond.
const slowCall = "0.00025"

// decisions returns, from one scrape of the gate's metrics, its fallbacks (as fallbacks does),
// its limiter calls that Redis decided (holo_ws_limiter_duration_seconds with store="redis": one
// per decision, which may cover several messages), and those of them that took over slowCall.
// 0s for other targets.
func (t *target) decisions() (fb float64, calls [2]float64, err error) {
	text, err := t.scrape()
	if err != nil {
		return 0, calls, err
	}
	const h = "holo_ws_limiter_duration_seconds"
	all := sample(text, h+"_count", `store="redis"`)
	fast := sample(text, h+"_bucket", `store="redis",le="`+slowCall+`"`)
	return sample(text, "holo_ws_limiter_decisions_total", `cause="fallback"`), [2]float64{all, all - fast}, nil
}

// redisSettled waits, at most 10 s, until a gate on Redis reports its Redis up
// (holo_ws_redis_up): the decisions of a storm of handshakes, such as the one that opens an S1
// at thousands of connections, can outlast --redis-timeout on a machine this busy, and three
// in a row mark the node down until the gate's probe finds it again, a few hundred
// milliseconds during which every message is decided by the failure mode. The window measures
// relaying, so it starts once that is over; a gate that stays down is measured as it is.
func (t *target) redisSettled() {
	if t.redis == "" || t.admin == "" {
		return
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if up, err := t.metric("holo_ws_redis_up", ""); err == nil && up == 1 {
			return
		}
	}
}

// metric returns the sum of the samples of the gate's metric name whose labels contain label
// (any sample when it is ""). 0 for other targets.
func (t *target) metric(name, label string) (float64, error) {
	text, err := t.scrape()
	return sample(text, name, label), err
}

// scrape returns the text of the gate's /metrics ("" for other targets).
func (t *target) scrape() (string, error) {
	if t.admin == "" {
		return "", nil
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + t.admin + "/metrics")
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", t.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", t.name, err)
	}
	return string(b), nil
}

// sample returns the sum of the samples of metric name in text (a /metrics scrape) whose labels
// contain label (any sample when it is "").
func sample(text, name, label string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name); ok && (strings.HasPrefix(v, " ") || strings.HasPrefix(v, "{")) && strings.Contains(v, label) {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseFloat(f[len(f)-1], 64)
				sum += n
			}
		}
	}
	return sum
}

func waitReady(p *proc, url string) error {
	c := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startLimit)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.exited() || time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s: %s", p.name, url, p.logTail(2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
