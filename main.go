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
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/auth/clientip"
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

// gcPercent is the gate's GC target unless GOGC says otherwise. The
// per-frame path allocates nothing, so the heap that GC paces is the live
// state of the connections plus handshake garbage, and the RSS an idle
// connection costs follows the target: with 9,000 idle connections, each
// its own JWT user, 5.05 KiB at 50 and 4.37 KiB at 25 (Go's sockets alone
// take about 1.7 KiB of it). The price is more frequent, short collections
// during handshake storms (BENCHMARKS.md's upgrades/s are measured with it).
const gcPercent = 25

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if err := newApp().Run(os.Args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, msg)
			}
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
	catAuth     = "Authentication"
	catClientIP = "Client IP"
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
	strs := func(name, cat, usage string) *cli.StringSliceFlag {
		return &cli.StringSliceFlag{Name: name, Category: cat, Usage: usage, EnvVars: env(name)}
	}
	upstreamUsage := "backend base URL, http://host:port (required); WebSocket handshakes go to its ws:// form with the client's path and query"
	if !upstreamRequired {
		upstreamUsage = "ignored: the demo runs its own backend"
	}
	upstream := str("upstream", "", catUpstream, upstreamUsage)
	return []cli.Flag{
		str("listen", ":8080", catListen, "address for clients (WebSocket and pass-through HTTP)"),
		str("admin-listen", ":9090", catListen, "address for /metrics, /healthz and /readyz"),
		upstream,
		dur("upstream-dial-timeout", 5*time.Second, catUpstream, "bound on connecting to the upstream and its handshake (504 when over)"),
		str("max-message-bytes", "1MiB", catProtocol, "largest data message (sum of its frames) in either direction; over it: close 1009 (bytes, or with KiB/MiB/GiB)"),
		str("max-header-bytes", "16KiB", catProtocol, "largest request line + headers; over it: 431"),
		dur("handshake-timeout", 10*time.Second, catProtocol, "bound on reading a request's headers and completing a WebSocket handshake"),
		dur("idle-timeout", 0, catProtocol, "close a connection (1001) after this long without a frame either way; 0 = never"),
		dur("message-timeout", 60*time.Second, catProtocol, "a client message must arrive whole within this long of its first frame; over it: close 1008; 0 = no bound"),
		dur("write-timeout", 10*time.Second, catProtocol, "a client that reads nothing for this long while the gate writes to it is dropped (the upstream is not read meanwhile); 0 = no bound"),
		dur("ping-interval", 30*time.Second, catProtocol, "the gate's own pings to each client; a client silent for two intervals is closed (1001); 0 = none"),
		&cli.BoolFlag{Name: "compression", Category: catProtocol, EnvVars: env("compression"),
			Usage: "negotiate permessage-deflate (no context takeover) with clients; the upstream leg stays uncompressed"},
		str("control-frame-rate", "50/1s", catProtocol, "control frames (ping, pong, close) a client may send per connection: N/window; over it: close 1008; 0 = no bound"),
		&cli.IntFlag{Name: "max-conns", Category: catListen, EnvVars: env("max-conns"),
			Usage: "connections open at once; over it: HTTP 503 before the upgrade; 0 = unlimited"},
		str("user-rate", "100/10s", catLimits, "data messages per identity: N/window (fixed window from the first message); 0 = off"),
		dur("user-block", 5*time.Second, catLimits, "how long an identity over --user-rate stays blocked"),
		str("ip-rate", "300/10s", catLimits, "data messages per client IP: N/window; 0 = off"),
		dur("ip-block", 5*time.Second, catLimits, "how long an IP over --ip-rate stays blocked"),
		str("user-conn-rate", "30/1m", catLimits, "handshakes per identity: N/window; 0 = off"),
		str("ip-conn-rate", "60/1m", catLimits, "handshakes per client IP: N/window; 0 = off"),
		&cli.BoolFlag{Name: "shadow", Category: catLimits, EnvVars: env("shadow"),
			Usage: "evaluate limits and count would-be refusals (holo_ws_limiter_decisions_total{decision=\"shadow_limited\"}) but refuse nothing"},
		str("limit-mode", "exact", catLimits, "exact: every message consults Redis; lease: each replica takes slices of a key's budget from Redis and decides locally until a slice is spent"),
		&cli.IntFlag{Name: "lease-size", Category: catLimits, EnvVars: env("lease-size"),
			Usage: "units of a message rule's window budget one Redis call reserves in lease mode; 0 = a tenth of the rule's N"},
		&cli.IntFlag{Name: "ip-max-conns", Category: catLimits, EnvVars: env("ip-max-conns"),
			Usage: "connections one client IP may hold open at once, across replicas (shared through Redis, entries expire so a crashed replica's connections age out); over it: 4008; 0 = off"},
		str("redis-url", "", catRedis, "redis:// or rediss:// URL (several addr= for a Cluster, master_set= for Sentinel); empty = in-process memory store"),
		str("key-prefix", "ws-rate", catRedis, "prefix of every Redis key"),
		str("failure-mode", "local", catRedis, "while Redis is unreachable: local (decide in process), open (allow), closed (refuse)"),
		dur("redis-timeout", 50*time.Millisecond, catRedis, "deadline of every Redis decision (message decisions share deadlines in 5ms steps); past it --failure-mode decides"),
		str("jwt-hmac-secret-file", "", catAuth, "file holding the raw bytes of an HS256/384/512 secret"),
		str("jwt-key-file", "", catAuth, "file holding a PEM public key, a JWK or a JWK Set"),
		str("jwks-url", "", catAuth, "JWK Set URL, refreshed in the background; an unknown kid triggers at most one refresh per 10s"),
		strs("jwt-algorithms", catAuth, "allowed signature algorithms (default: those that fit the configured keys)"),
		str("jwt-issuer", "", catAuth, "required iss claim"),
		strs("jwt-audience", catAuth, "accepted aud values (repeatable); the token must carry one"),
		str("jwt-subject-claim", "sub", catAuth, "claim that identifies the user"),
		dur("jwt-leeway", 30*time.Second, catAuth, "clock skew tolerated for exp, nbf and iat"),
		str("token-query-param", "access_token", catAuth, "query parameter that may carry the token (browsers cannot set headers on a WebSocket)"),
		str("token-cookie", "", catAuth, "cookie that may carry the token; empty = off"),
		&cli.BoolFlag{Name: "forward-token", Category: catAuth, EnvVars: env("forward-token"),
			Usage: "keep the token in what goes upstream (header, query parameter, subprotocol)"},
		&cli.BoolFlag{Name: "allow-anonymous", Category: catAuth, EnvVars: env("allow-anonymous"),
			Usage: "with keys configured, admit clients without a token, identified by IP"},
		&cli.BoolFlag{Name: "close-on-token-expiry", Category: catAuth, EnvVars: env("close-on-token-expiry"),
			Usage: "close a connection with 1008 \"token expired\" when its token's exp passes"},
		str("identity-header", "X-Auth-Subject", catAuth, "header carrying the verified subject upstream (inbound ones are removed); empty = none"),
		strs("strip-header", catAuth, "header removed from every request before it goes upstream (repeatable)"),
		strs("allowed-origins", catAuth, "Origin patterns allowed to connect, e.g. https://*.example.com (repeatable); empty = any"),
		strs("trusted-proxies", catClientIP, "CIDRs of proxies (e.g. the ingress) whose X-Forwarded-For and PROXY header are believed (repeatable)"),
		&cli.BoolFlag{Name: "proxy-protocol", Category: catClientIP, EnvVars: env("proxy-protocol"),
			Usage: "accept a PROXY protocol v1/v2 header from --trusted-proxies"},
		&cli.IntFlag{Name: "ipv6-prefix", Value: 64, Category: catClientIP, EnvVars: env("ipv6-prefix"),
			Usage: "group IPv6 clients by this prefix length for per-IP limits"},
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
	auth                auth.Config
	ip                  clientip.Resolver
	proxyProtocol       bool
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
	if demoMode && !c.IsSet("shutdown-delay") {
		// Nothing routes traffic to the demo: Ctrl-C should stop it now.
		cfg.shutdownDelay = 0
	}
	bad := func(flag string, err error) (*config, error) { return nil, &flagError{flag, err} }
	for _, name := range []string{"listen", "admin-listen"} {
		if _, _, err := net.SplitHostPort(c.String(name)); err != nil {
			return bad(name, fmt.Errorf("want host:port, got %q", c.String(name)))
		}
	}
	if !demoMode {
		if c.String("upstream") == "" {
			return bad("upstream", errors.New("required: the backend's http://host:port"))
		}
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
		{"idle-timeout", 0}, {"message-timeout", 0}, {"write-timeout", 0}, {"ping-interval", 0}, {"shutdown-delay", 0}, {"shutdown-grace", 0},
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
	cfg.proxy.MessageTimeout = c.Duration("message-timeout")
	cfg.proxy.WriteTimeout = c.Duration("write-timeout")
	cfg.proxy.PingInterval = c.Duration("ping-interval")
	cfg.proxy.Compression = c.Bool("compression")
	if cfg.proxy.ControlFrameRate, err = limit.ParseRule(c.String("control-frame-rate")); err != nil {
		return bad("control-frame-rate", err)
	}
	if cfg.proxy.MaxConns = c.Int("max-conns"); cfg.proxy.MaxConns < 0 {
		return bad("max-conns", fmt.Errorf("must not be negative, got %d", cfg.proxy.MaxConns))
	}

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
	if cfg.limits.Mode, err = limit.ParseMode(c.String("limit-mode")); err != nil {
		return bad("limit-mode", err)
	}
	if cfg.limits.LeaseSize = c.Int("lease-size"); cfg.limits.LeaseSize < 0 {
		return bad("lease-size", fmt.Errorf("must not be negative, got %d", cfg.limits.LeaseSize))
	}
	if cfg.limits.IPMaxConns = c.Int("ip-max-conns"); cfg.limits.IPMaxConns < 0 {
		return bad("ip-max-conns", fmt.Errorf("must not be negative, got %d", cfg.limits.IPMaxConns))
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

	if err := authConfig(c, cfg); err != nil {
		return nil, err
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

// authConfig reads the authentication and client-IP flags.
func authConfig(c *cli.Context, cfg *config) error {
	cfg.auth = auth.Config{
		HMACSecretFile: c.String("jwt-hmac-secret-file"),
		KeyFile:        c.String("jwt-key-file"),
		JWKSURL:        c.String("jwks-url"),
		Algorithms:     splitList(c.StringSlice("jwt-algorithms")),
		Issuer:         c.String("jwt-issuer"),
		Audiences:      splitList(c.StringSlice("jwt-audience")),
		SubjectClaim:   c.String("jwt-subject-claim"),
		Leeway:         c.Duration("jwt-leeway"),
		QueryParam:     c.String("token-query-param"),
		Cookie:         c.String("token-cookie"),
		ForwardToken:   c.Bool("forward-token"),
		AllowAnonymous: c.Bool("allow-anonymous"),
	}
	for _, f := range []string{"jwt-hmac-secret-file", "jwt-key-file"} {
		if name := c.String(f); name != "" {
			if _, err := os.Stat(name); err != nil {
				return &flagError{f, err}
			}
		}
	}
	if u := cfg.auth.JWKSURL; u != "" {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return &flagError{"jwks-url", fmt.Errorf("want an http(s) URL, got %q", u)}
		}
	}
	if cfg.auth.Leeway < 0 {
		return &flagError{"jwt-leeway", fmt.Errorf("must not be negative")}
	}
	if cfg.auth.QueryParam == "" {
		return &flagError{"token-query-param", fmt.Errorf("must not be empty")}
	}
	trusted, err := clientip.ParsePrefixes(splitList(c.StringSlice("trusted-proxies")))
	if err != nil {
		return &flagError{"trusted-proxies", err}
	}
	bits := c.Int("ipv6-prefix")
	if bits < 1 || bits > 128 {
		return &flagError{"ipv6-prefix", fmt.Errorf("must be between 1 and 128, got %d", bits)}
	}
	cfg.ip = clientip.Resolver{Trusted: trusted, IPv6Prefix: bits}
	cfg.proxyProtocol = c.Bool("proxy-protocol")
	if cfg.proxyProtocol && len(trusted) == 0 {
		return &flagError{"proxy-protocol", fmt.Errorf("needs --trusted-proxies: a PROXY header is only believed from them")}
	}
	cfg.proxy.IdentityHeader = c.String("identity-header")
	cfg.proxy.StripHeaders = splitList(c.StringSlice("strip-header"))
	cfg.proxy.AllowedOrigins = splitList(c.StringSlice("allowed-origins"))
	cfg.proxy.CloseOnTokenExpiry = c.Bool("close-on-token-expiry")
	for _, h := range append([]string{cfg.proxy.IdentityHeader}, cfg.proxy.StripHeaders...) {
		if h != "" && !validHeaderName(h) {
			return &flagError{"identity-header/strip-header", fmt.Errorf("invalid header name %q", h)}
		}
	}
	return nil
}

// splitList flattens repeated flags whose values may also be comma lists
// (as they are in environment variables).
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func validHeaderName(h string) bool {
	for _, c := range h {
		if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return h != ""
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
	cfg.auth.Logger = log
	verifier, err := auth.NewVerifier(ctx, cfg.auth)
	if err != nil {
		return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
	}
	defer verifier.Close()
	if !verifier.Enabled() {
		log.Info("no --jwt-hmac-secret-file, --jwt-key-file or --jwks-url: every client is anonymous, identified by IP")
	}
	for _, reason := range auth.Reasons() {
		m.AuthFailures.WithLabelValues(reason)
	}

	cfg.proxy.Limiter = lim
	cfg.proxy.Auth = verifier
	cfg.proxy.ClientIP = cfg.ip
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
	if cfg.proxyProtocol {
		ln = clientip.NewProxyListener(ln, cfg.ip.Trusted, cfg.proxy.HandshakeTimeout)
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
		Handler:           metrics.AdminHandler(reg, readiness(&ready, cfg.limits, lim)),
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

// readiness is /readyz: false while draining, and under --failure-mode
// closed also while Redis is unreachable (every event would be refused, so
// traffic is better sent to a replica that reaches Redis).
func readiness(ready *atomic.Bool, lc limit.Config, lim *limit.Limiter) func() bool {
	if lc.RedisURL == "" || lc.FailureMode != limit.FailClosed {
		return ready.Load
	}
	return func() bool { return ready.Load() && lim.RedisUp() }
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
