// Command wsgate is a sidecar that protects a WebSocket backend: it
// terminates client WebSockets, limits connections and messages per user
// and per client IP, relays every frame to the backend and back, and
// exports Prometheus metrics.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/internal/demo"
	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/metrics"
	"github.com/holo/wsgate/proxy"
)

// Set by the linker: -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "none"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "wsgate:", err)
		os.Exit(1)
	}
}

// exitBadConfig is the exit code of a bad flag, at start or in check-config.
const exitBadConfig = 2

func newApp() *cli.App {
	cli.VersionPrinter = func(c *cli.Context) {
		fmt.Fprintf(c.App.Writer, "wsgate %s (commit %s)\n", version, commit)
	}
	usageError := func(_ *cli.Context, err error, _ bool) error {
		return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
	}
	return &cli.App{
		Name:            "wsgate",
		Usage:           "limit and relay WebSocket traffic in front of an unmodified backend",
		Version:         version,
		Flags:           flags(true),
		OnUsageError:    usageError,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			cfg, err := configFrom(c, false)
			if err != nil {
				return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
			}
			return serve(c.Context, cfg, nil)
		},
		Commands: []*cli.Command{
			{
				Name:         "check-config",
				Usage:        "validate the flags and environment, print nothing and exit 0, or one line and exit 2",
				Flags:        flags(true),
				OnUsageError: usageError,
				Action: func(c *cli.Context) error {
					if _, err := configFrom(c, false); err != nil {
						return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
					}
					return nil
				},
			},
			{
				Name:         "demo",
				Usage:        "run the gate on the memory store in front of a built-in echo backend and page",
				Flags:        flags(false),
				OnUsageError: usageError,
				Action: func(c *cli.Context) error {
					cfg, err := configFrom(c, true)
					if err != nil {
						return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
					}
					return serveDemo(c.Context, cfg)
				},
			},
		},
	}
}

// Flag categories in --help.
const (
	catListen   = "Listeners"
	catUpstream = "Upstream"
	catLimits   = "Limits"
	catRedis    = "Redis"
	catProtocol = "Protocol"
	catShutdown = "Shutdown"
	catLog      = "Logging"
)

// env names a flag's environment variable: WSGATE_<UPPER_SNAKE>.
func env(name string) []string {
	return []string{"WSGATE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

func flags(upstreamRequired bool) []cli.Flag {
	str := func(name, value, cat, usage string) *cli.StringFlag {
		return &cli.StringFlag{Name: name, Value: value, Category: cat, Usage: usage, EnvVars: env(name)}
	}
	dur := func(name string, value time.Duration, cat, usage string) *cli.DurationFlag {
		return &cli.DurationFlag{Name: name, Value: value, Category: cat, Usage: usage, EnvVars: env(name)}
	}
	upstream := str("upstream", "", catUpstream, "backend base URL, http://host:port; WebSocket handshakes go to its ws:// form with the client's path and query")
	upstream.Required = upstreamRequired
	return []cli.Flag{
		str("listen", ":8080", catListen, "address for clients (WebSocket and pass-through HTTP)"),
		str("admin-listen", ":9090", catListen, "address for /metrics, /healthz and /readyz"),
		upstream,
		dur("upstream-dial-timeout", 5*time.Second, catUpstream, "bound on connecting to the upstream and its handshake (504 when over)"),
		str("max-message-bytes", "1MiB", catProtocol, "largest data message (sum of its frames) in either direction; over it: close 1009 (bytes, or with KiB/MiB/GiB)"),
		str("max-header-bytes", "16KiB", catProtocol, "largest request line + headers; over it: 431"),
		dur("handshake-timeout", 10*time.Second, catProtocol, "bound on reading a request's headers and completing a WebSocket handshake"),
		dur("idle-timeout", 0, catProtocol, "close a connection (1001) after this long without a frame either way; 0 = never"),
		str("user-rate", "100/10s", catLimits, "data messages per identity: N/window (fixed window from the first message); 0 = off"),
		dur("user-block", 5*time.Second, catLimits, "how long an identity over --user-rate stays blocked"),
		str("ip-rate", "300/10s", catLimits, "data messages per client IP: N/window; 0 = off"),
		dur("ip-block", 5*time.Second, catLimits, "how long an IP over --ip-rate stays blocked"),
		str("user-conn-rate", "30/1m", catLimits, "handshakes per identity: N/window; 0 = off"),
		str("ip-conn-rate", "60/1m", catLimits, "handshakes per client IP: N/window; 0 = off"),
		&cli.BoolFlag{Name: "shadow", Category: catLimits, EnvVars: env("shadow"),
			Usage: "evaluate limits and count would-be refusals (holo_ws_limiter_decisions_total{decision=\"shadow_limited\"}) but refuse nothing"},
		str("limit-mode", "exact", catLimits, "exact: every decision consults the store"),
		str("redis-url", "", catRedis, "redis:// or rediss:// URL (several addr= for a Cluster, master_set= for Sentinel); empty = in-process memory store"),
		str("key-prefix", "ws-rate", catRedis, "prefix of every Redis key"),
		str("failure-mode", "local", catRedis, "while Redis is unreachable: local (decide in process), open (allow), closed (refuse)"),
		dur("redis-timeout", 50*time.Millisecond, catRedis, "deadline of every Redis decision; past it --failure-mode decides"),
		dur("shutdown-delay", 5*time.Second, catShutdown, "after SIGTERM, keep serving this long with /readyz at 503 while endpoints update"),
		dur("shutdown-grace", 25*time.Second, catShutdown, "after the delay, time for connections to close (1001) before the process exits"),
		str("log-level", "info", catLog, "debug, info, warn or error"),
		str("log-format", "json", catLog, "json or text"),
	}
}

// config is what the flags say, checked.
type config struct {
	listen, adminListen string
	proxy               proxy.Config
	limits              limit.Config
	shutdownDelay       time.Duration
	shutdownGrace       time.Duration
	logLevel            slog.Level
	logJSON             bool
}

// flagError names the flag a bad value came from.
type flagError struct {
	flag string
	err  error
}

func (e *flagError) Error() string { return "--" + e.flag + ": " + e.err.Error() }
func (e *flagError) Unwrap() error { return e.err }

func configFrom(c *cli.Context, demoMode bool) (*config, error) {
	cfg := &config{
		listen:        c.String("listen"),
		adminListen:   c.String("admin-listen"),
		shutdownDelay: c.Duration("shutdown-delay"),
		shutdownGrace: c.Duration("shutdown-grace"),
	}
	bad := func(flag string, err error) (*config, error) { return nil, &flagError{flag, err} }
	for _, name := range []string{"listen", "admin-listen"} {
		if _, _, err := net.SplitHostPort(c.String(name)); err != nil {
			return bad(name, fmt.Errorf("want host:port, got %q", c.String(name)))
		}
	}
	if !demoMode {
		u, err := url.Parse(c.String("upstream"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("upstream", fmt.Errorf("want http://host:port, got %q", c.String("upstream")))
		}
		cfg.proxy.Upstream = u
	}
	for _, d := range []struct {
		name string
		min  time.Duration
	}{
		{"upstream-dial-timeout", time.Millisecond}, {"handshake-timeout", time.Millisecond},
		{"idle-timeout", 0}, {"shutdown-delay", 0}, {"shutdown-grace", 0},
		{"user-block", 0}, {"ip-block", 0}, {"redis-timeout", time.Millisecond},
	} {
		if v := c.Duration(d.name); v < d.min {
			return bad(d.name, fmt.Errorf("must be at least %v, got %v", d.min, v))
		}
	}
	maxMsg, err := parseBytes(c.String("max-message-bytes"))
	if err != nil {
		return bad("max-message-bytes", err)
	}
	maxHdr, err := parseBytes(c.String("max-header-bytes"))
	if err != nil || maxHdr < 1024 || maxHdr > 1<<30 {
		if err == nil {
			err = fmt.Errorf("must be between 1KiB and 1GiB, got %d", maxHdr)
		}
		return bad("max-header-bytes", err)
	}
	cfg.proxy.MaxMessageBytes = maxMsg
	cfg.proxy.MaxHeaderBytes = int(maxHdr)
	cfg.proxy.HandshakeTimeout = c.Duration("handshake-timeout")
	cfg.proxy.DialTimeout = c.Duration("upstream-dial-timeout")
	cfg.proxy.IdleTimeout = c.Duration("idle-timeout")
	cfg.proxy.Shadow = c.Bool("shadow")

	rules := []struct {
		flag, block string
		dst         *limit.Rule
	}{
		{"user-rate", "user-block", &cfg.limits.Rules.UserMessages},
		{"ip-rate", "ip-block", &cfg.limits.Rules.IPMessages},
		{"user-conn-rate", "", &cfg.limits.Rules.UserConns},
		{"ip-conn-rate", "", &cfg.limits.Rules.IPConns},
	}
	for _, r := range rules {
		rule, err := limit.ParseRule(c.String(r.flag))
		if err != nil {
			return bad(r.flag, err)
		}
		if r.block != "" {
			rule.Block = c.Duration(r.block)
		}
		*r.dst = rule
	}
	if m := c.String("limit-mode"); m != "exact" {
		return bad("limit-mode", fmt.Errorf("unknown mode %q (want exact)", m))
	}
	fm, err := limit.ParseFailureMode(c.String("failure-mode"))
	if err != nil {
		return bad("failure-mode", err)
	}
	cfg.limits.FailureMode = fm
	cfg.limits.RedisURL = c.String("redis-url")
	cfg.limits.KeyPrefix = c.String("key-prefix")
	if cfg.limits.KeyPrefix == "" || strings.ContainsAny(cfg.limits.KeyPrefix, "{} \t\r\n") {
		return bad("key-prefix", fmt.Errorf("must be non-empty without braces or spaces, got %q", cfg.limits.KeyPrefix))
	}
	cfg.limits.Timeout = c.Duration("redis-timeout")
	if u := cfg.limits.RedisURL; u != "" {
		if _, err := rueidis.ParseURL(u); err != nil {
			return bad("redis-url", err)
		}
	}

	if err := cfg.logLevel.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return bad("log-level", fmt.Errorf("want debug, info, warn or error, got %q", c.String("log-level")))
	}
	switch c.String("log-format") {
	case "json":
		cfg.logJSON = true
	case "text":
	default:
		return bad("log-format", fmt.Errorf("want json or text, got %q", c.String("log-format")))
	}
	return cfg, nil
}

// parseBytes reads a size: a plain number of bytes or one with a KiB, MiB
// or GiB suffix (KB, MB, GB are accepted as the same powers of two).
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suffix)) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("want a size like 1048576 or 1MiB, got %q", s)
	}
	return n * mult, nil
}

func newLogger(cfg *config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.logJSON {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// serve runs the gate until SIGTERM or SIGINT, then drains: /readyz turns
// 503 at once, clients are served for the shutdown delay while endpoints
// update, then every connection gets close 1001 and the process exits 0
// within the grace period. started, when not nil, receives the client
// listener's address.
func serve(ctx context.Context, cfg *config, started func(addr string)) error {
	log := newLogger(cfg)
	reg := prometheus.NewRegistry()
	metrics.RegisterRuntime(reg)
	m := metrics.New(reg, version, commit)

	cfg.limits.Logger = log
	lim, err := limit.New(cfg.limits)
	if err != nil {
		return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
	}
	defer lim.Close()
	if cfg.limits.RedisURL != "" {
		m.WatchRedis(lim.RedisUp)
	}
	cfg.proxy.Limiter = lim
	cfg.proxy.Metrics = m
	cfg.proxy.Logger = log
	px, err := proxy.New(cfg.proxy)
	if err != nil {
		return cli.Exit("wsgate: --upstream: "+err.Error(), exitBadConfig)
	}

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	adminLn, err := net.Listen("tcp", cfg.adminListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("--admin-listen: %w", err)
	}
	var ready atomic.Bool
	ready.Store(true)
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	srv := &http.Server{
		Handler:           px,
		ReadHeaderTimeout: cfg.proxy.HandshakeTimeout,
		MaxHeaderBytes:    cfg.proxy.MaxHeaderBytes,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          errLog,
	}
	admin := &http.Server{
		Handler:           metrics.AdminHandler(reg, ready.Load),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          errLog,
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(ln) }()
	go func() { serveErr <- admin.Serve(adminLn) }()
	log.Info("wsgate started", "version", version, "listen", ln.Addr().String(), "admin", adminLn.Addr().String(),
		"upstream", cfg.proxy.Upstream.Redacted(), "store", lim.StoreName())
	if started != nil {
		started(ln.Addr().String())
	}

	sigCtx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	select {
	case <-sigCtx.Done():
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
	stop()
	ready.Store(false)
	log.Info("draining", "delay", cfg.shutdownDelay, "grace", cfg.shutdownGrace, "connections", px.Active())
	again := make(chan os.Signal, 1)
	signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(again)
	select {
	case <-time.After(cfg.shutdownDelay):
	case <-again:
		log.Info("second signal: skipping the shutdown delay")
	}

	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Shutdown(graceCtx) }()
	if err := px.Shutdown(graceCtx); err != nil {
		log.Warn("connections left at the end of the grace period were closed", "err", err)
	}
	if err := <-httpDone; err != nil {
		log.Warn("pass-through requests left at the end of the grace period were cut", "err", err)
		_ = srv.Close()
	}
	_ = admin.Close()
	log.Info("stopped")
	return nil
}

// serveDemo runs the built-in demo backend on a loopback port and the gate
// in front of it, on the memory store unless --redis-url says otherwise.
func serveDemo(ctx context.Context, cfg *config) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo backend: %w", err)
	}
	backend := &http.Server{Handler: demo.Handler(newLogger(cfg)), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = backend.Serve(ln) }()
	defer backend.Close()
	cfg.proxy.Upstream = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	return serve(ctx, cfg, func(addr string) {
		host, port, _ := net.SplitHostPort(addr)
		if host == "" || host == "::" || host == "0.0.0.0" {
			host = "localhost"
		}
		fmt.Fprintf(os.Stderr, "\n  wsgate demo: open http://%s/ in a browser (metrics on %s/metrics)\n\n",
			net.JoinHostPort(host, port), cfg.adminListen)
	})
}
